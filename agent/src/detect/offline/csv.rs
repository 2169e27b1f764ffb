//! Recorded series as CSV: a header with at least `time,kubelet_rss_bytes,pods` (time as RFC 3339
//! or unix seconds), any of [`crate::detect::series::OPTIONAL_COLUMNS`] after them, empty cells for
//! missing values. Every value must be a finite number, not negative (byte counts, counts,
//! seconds, versions and 0/1 flags all are), byte counts within a u64; a row breaking that is
//! an error naming its line.
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::detect::{series::OPTIONAL_COLUMNS, Sample};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsvError {
    #[error("the header must have time, kubelet_rss_bytes and pods (it has: {0})")]
    Header(String),
    #[error("line {line}: {reason}")]
    Row { line: usize, reason: String },
}

/// The latest time accepted (9999-12-31T23:59:59Z).
const MAX_T: f64 = 253_402_300_799.0;

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<f64>() {
        // `as` would turn NaN into 0 and saturate infinities: refuse them instead.
        return (n.is_finite() && (0.0..=MAX_T).contains(&n)).then_some(n as i64);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Parses a whole CSV file. Unknown columns are ignored (and reported by the caller).
pub fn parse(text: &str) -> Result<(Vec<Sample>, Vec<String>), CsvError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .map(|(_, l)| l.split(',').map(|c| c.trim().to_string()).collect())
        .unwrap_or_default();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(t), Some(rss), Some(pods)) = (col("time"), col("kubelet_rss_bytes"), col("pods"))
    else {
        return Err(CsvError::Header(header.join(",")));
    };
    let unknown: Vec<String> = header
        .iter()
        .filter(|h| !["time", "kubelet_rss_bytes", "pods"].contains(&h.as_str()))
        .filter(|h| !OPTIONAL_COLUMNS.contains(&h.as_str()))
        .cloned()
        .collect();
    let mut out: Vec<Sample> = Vec::new();
    for (i, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let row_err = |reason: String| CsvError::Row {
            line: i + 1,
            reason,
        };
        let get = |c: usize| cells.get(c).copied().unwrap_or("");
        let time = parse_time(get(t)).ok_or_else(|| row_err(format!("bad time {:?}", get(t))))?;
        let num = |c: usize, what: &str| -> Result<f64, CsvError> {
            let cell = get(c);
            let v = cell
                .parse::<f64>()
                .map_err(|_| row_err(format!("bad {what} {cell:?}")))?;
            if !v.is_finite() {
                return Err(row_err(format!("{what} is not a finite number ({cell})")));
            }
            if v < 0.0 {
                return Err(row_err(format!("{what} is negative ({cell})")));
            }
            // Kernel byte counters are u64: anything beyond is not a measurement.
            if what.ends_with("_bytes") && v > u64::MAX as f64 {
                return Err(row_err(format!(
                    "{what} is beyond a 64-bit byte count ({cell})"
                )));
            }
            Ok(v)
        };
        let mut s = Sample {
            t: time,
            kubelet_rss_bytes: num(rss, "kubelet_rss_bytes")?,
            pods: num(pods, "pods")?,
            ..Default::default()
        };
        for (c, name) in header.iter().enumerate() {
            if s.optional_mut(name).is_some() && !get(c).is_empty() {
                let v = num(c, name)?;
                if let Some(slot) = s.optional_mut(name) {
                    *slot = Some(v);
                }
            }
        }
        if out.last().is_some_and(|p| p.t > s.t) {
            return Err(row_err("time goes backwards".into()));
        }
        out.push(s);
    }
    Ok((out, unknown))
}

/// Writes samples as CSV with every column (the generator's output).
pub fn write(samples: &[Sample]) -> String {
    let mut out = String::from("time,kubelet_rss_bytes,pods");
    for c in OPTIONAL_COLUMNS {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    for s in samples {
        out.push_str(&format!("{},{:.0},{}", s.t, s.kubelet_rss_bytes, s.pods));
        for c in OPTIONAL_COLUMNS {
            out.push(',');
            if let Some(v) = s.optional(c) {
                out.push_str(&format!("{v}"));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_and_rfc3339() {
        let (s, unknown) = parse(
            "time,kubelet_rss_bytes,pods,goroutines,extra\n\
             2026-11-28T00:00:00Z,400000000,30,250,x\n\
             1795910400,410000000,31,,y\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].t, 1795824000);
        assert_eq!(s[0].goroutines, Some(250.0));
        assert_eq!(s[1].goroutines, None);
        assert_eq!(s[1].pods, 31.0);
        assert_eq!(unknown, vec!["extra".to_string()]);
    }

    #[test]
    fn clear_errors() {
        assert!(matches!(parse("a,b\n1,2\n"), Err(CsvError::Header(_))));
        let e = parse("time,kubelet_rss_bytes,pods\nnope,1,2\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: bad time \"nope\"");
        let e = parse("time,kubelet_rss_bytes,pods\n5,1,2\n4,1,2\n").unwrap_err();
        assert!(e.to_string().contains("backwards"));
    }

    #[test]
    fn refuses_nan_infinities_and_negative_counts_with_the_line() {
        let h = "time,kubelet_rss_bytes,pods,goroutines,kubelet_limit_bytes\n5,1,2,,\n";
        for (row, want) in [
            (
                "6,NaN,2,,",
                "line 3: kubelet_rss_bytes is not a finite number (NaN)",
            ),
            (
                "6,1e308,2,,",
                "line 3: kubelet_rss_bytes is beyond a 64-bit byte count (1e308)",
            ),
            ("6,1.5e19,2,,", ""),
            (
                "6,1e309,2,,",
                "line 3: kubelet_rss_bytes is not a finite number (1e309)",
            ),
            (
                "6,inf,2,,",
                "line 3: kubelet_rss_bytes is not a finite number (inf)",
            ),
            (
                "6,-4096,2,,",
                "line 3: kubelet_rss_bytes is negative (-4096)",
            ),
            ("6,1,-1,,", "line 3: pods is negative (-1)"),
            (
                "6,1,2,nan,",
                "line 3: goroutines is not a finite number (nan)",
            ),
            (
                "6,1,2,,-1e9",
                "line 3: kubelet_limit_bytes is negative (-1e9)",
            ),
            ("NaN,1,2,,", "line 3: bad time \"NaN\""),
            ("-inf,1,2,,", "line 3: bad time \"-inf\""),
            ("1e300,1,2,,", "line 3: bad time \"1e300\""),
        ] {
            let r = parse(&format!("{h}{row}\n"));
            if want.is_empty() {
                // Within a u64 byte counter: accepted as given.
                assert_eq!(r.unwrap().0[1].kubelet_rss_bytes, 1.5e19, "{row}");
            } else {
                assert_eq!(r.unwrap_err().to_string(), want, "{row}");
            }
        }
    }

    #[test]
    fn round_trips() {
        let s = vec![Sample {
            t: 60,
            kubelet_rss_bytes: 1e8,
            pods: 3.0,
            kernel: Some(5.15),
            ..Default::default()
        }];
        let (back, _) = parse(&write(&s)).unwrap();
        assert_eq!(back, s);
    }
}
