//! Recorded series as CSV: a header with at least `time,kubelet_rss_bytes,pods` (time as RFC 3339
//! or unix seconds), any of [`crate::detect::series::OPTIONAL_COLUMNS`] after them, empty cells for
//! missing values.
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::detect::{series::OPTIONAL_COLUMNS, Sample};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsvError {
    #[error("the header must have time, kubelet_rss_bytes and pods (it has: {0})")]
    Header(String),
    #[error("line {line}: {reason}")]
    Row { line: usize, reason: String },
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<f64>() {
        return Some(n as i64);
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
        let num = |c: usize, what: &str| {
            get(c)
                .parse::<f64>()
                .map_err(|_| row_err(format!("bad {what} {:?}", get(c))))
        };
        let mut s = Sample {
            t: time,
            kubelet_rss_bytes: num(rss, "kubelet_rss_bytes")?,
            pods: num(pods, "pods")?,
            ..Default::default()
        };
        for (c, name) in header.iter().enumerate() {
            if let Some(slot) = s.optional_mut(name) {
                let v = get(c);
                if !v.is_empty() {
                    *slot = Some(
                        v.parse()
                            .map_err(|_| row_err(format!("bad {name} {v:?}")))?,
                    );
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
