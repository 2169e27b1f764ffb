//! Recorded series as CSV: a header with at least `time,kubelet_rss_bytes,pods` (time as RFC 3339
//! or unix seconds), any of [`crate::detect::series::OPTIONAL_COLUMNS`] after them, empty cells for
//! missing values; `kernel` also takes a release string (`5.15.0-1034-aws`, read as 5.15 by
//! [`KernelVersion::parse_release`]). Every value must be a finite number, not negative (byte counts, counts,
//! seconds, versions and 0/1 flags all are), byte counts within a u64; a row breaking that is
//! an error naming its line, and so is a row with more cells than the header (a shorter row's
//! missing cells are empty). A column named twice is an error. Read with the `csv` crate
//! (quoted cells, CRLF, blank lines skipped, cells trimmed).
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    detect::{series::OPTIONAL_COLUMNS, Sample},
    sampler::KernelVersion,
};

/// Rows a series CSV may have: 2,000,000 (23 days at one a second, far past the 14 days the
/// agent keeps); a sample takes a few hundred bytes in memory, so this bounds a replay's
/// memory where the 512 MiB file bound alone does not (a file of `0,0,0` rows is 83 million
/// samples).
pub const MAX_ROWS: usize = 2_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsvError {
    #[error("the header must have time, kubelet_rss_bytes and pods (it has: {0})")]
    Header(String),
    #[error("line {line}: column {name} appears twice in the header")]
    DuplicateColumn { line: u64, name: String },
    #[error("line {line}: {reason}")]
    Row { line: u64, reason: String },
    #[error("no rows: the file has a header (line {header_line}) but no samples under it")]
    NoRows { header_line: u64 },
}

/// The longest piece of input quoted in an error message, in characters.
const QUOTE_MAX: usize = 64;

/// `cell` cut as [`quote`] cuts it, without quotes.
fn clip(cell: &str) -> String {
    if cell.chars().count() <= QUOTE_MAX {
        return cell.to_string();
    }
    let head: String = cell.chars().take(QUOTE_MAX).collect();
    format!("{head}... ({} bytes)", cell.len())
}

/// `cell` as an error message quotes it: Debug-escaped, cut to [`QUOTE_MAX`] characters with
/// the full length in bytes said, so a huge cell does not flood the terminal or a log.
fn quote(cell: &str) -> String {
    if cell.chars().count() <= QUOTE_MAX {
        return format!("{cell:?}");
    }
    let head: String = cell.chars().take(QUOTE_MAX).collect();
    format!("{head:?}... ({} bytes)", cell.len())
}

/// The latest time accepted (9999-12-31T23:59:59Z).
const MAX_T: f64 = 253_402_300_799.0;

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<f64>() {
        // `as` would turn NaN into 0 and saturate infinities: refuse them instead.
        return (n.is_finite() && (0.0..=MAX_T).contains(&n)).then_some(n as i64);
    }
    // The same years as a number (1970-9999): a date before 1970 was read as a negative time
    // the store's own reader refuses.
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
        .filter(|t| (0..=MAX_T as i64).contains(t))
}

/// The file's line (1-based) at byte `at`, past the blank lines a record may start with: the
/// csv crate's own line count leaves blank lines out.
fn line_at(text: &str, at: u64) -> u64 {
    let at = usize::try_from(at).unwrap_or(usize::MAX).min(text.len());
    let start = at
        + text.as_bytes()[at..]
            .iter()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
    let before = &text.as_bytes()[..start];
    1 + before.iter().filter(|b| **b == b'\n').count() as u64
}

/// The line a csv error is on.
fn error_line(text: &str, e: &::csv::Error) -> u64 {
    e.position().map_or(1, |p| line_at(text, p.byte()))
}

/// Parses a whole CSV file. Unknown columns are ignored (and reported by the caller).
pub fn parse(text: &str) -> Result<(Vec<Sample>, Vec<String>), CsvError> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let (header, header_line): (Vec<String>, u64) = match records.next() {
        None => (Vec::new(), 1),
        Some(Err(e)) => {
            return Err(CsvError::Row {
                line: error_line(text, &e),
                reason: e.to_string(),
            })
        }
        Some(Ok(r)) => (
            r.iter().map(str::to_string).collect(),
            r.position().map_or(1, |p| line_at(text, p.byte())),
        ),
    };
    // A set, not a scan of the columns before each one: a header of 200,000 columns took
    // minutes (quadratic).
    let mut seen = std::collections::HashSet::with_capacity(header.len());
    for h in header.iter().filter(|h| !h.is_empty()) {
        if !seen.insert(h.as_str()) {
            return Err(CsvError::DuplicateColumn {
                line: header_line,
                name: h.clone(),
            });
        }
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(t), Some(rss), Some(pods)) = (col("time"), col("kubelet_rss_bytes"), col("pods"))
    else {
        // A first line with no column this reader knows is not a series header: it may be a
        // token or a key given as the wrong file, so it is described, never quoted.
        let known = header.iter().any(|h| {
            h == "time"
                || h == "kubelet_rss_bytes"
                || h == "pods"
                || OPTIONAL_COLUMNS.contains(&h.as_str())
        });
        if !known {
            return Err(CsvError::Header(format!(
                "no known column in its first line of {} cells (contents not shown: this may not be a series at all)",
                header.len()
            )));
        }
        let mut all = header.join(",");
        if all.chars().count() > QUOTE_MAX {
            all = format!(
                "{}... ({} columns)",
                all.chars().take(QUOTE_MAX).collect::<String>(),
                header.len()
            );
        }
        return Err(CsvError::Header(all));
    };
    let unknown: Vec<String> = header
        .iter()
        .filter(|h| !["time", "kubelet_rss_bytes", "pods"].contains(&h.as_str()))
        .filter(|h| !OPTIONAL_COLUMNS.contains(&h.as_str()))
        .cloned()
        .collect();
    let mut out: Vec<Sample> = Vec::new();
    for record in records {
        let cells = record.map_err(|e| CsvError::Row {
            line: error_line(text, &e),
            reason: e.to_string(),
        })?;
        // The line is counted only for an error: counting it for every row re-read the text
        // from its start each time (quadratic: 40,000 rows took minutes).
        let at = cells.position().map(|p| p.byte());
        let row_err = |reason: String| CsvError::Row {
            line: at.map_or(0, |b| line_at(text, b)),
            reason,
        };
        if out.len() >= MAX_ROWS {
            return Err(row_err(format!(
                "more than {MAX_ROWS} rows (23 days at one a second): thin the series first"
            )));
        }
        if cells.len() > header.len() {
            return Err(row_err(format!(
                "{} cells, the header has {} columns",
                cells.len(),
                header.len()
            )));
        }
        if [t, rss, pods].iter().any(|c| *c >= cells.len()) {
            return Err(row_err(format!(
                "{} cells; the header's {} columns are {}: time, kubelet_rss_bytes and pods must have a cell",
                cells.len(),
                header.len(),
                quote(&header.join(","))
            )));
        }
        let get = |c: usize| cells.get(c).unwrap_or("");
        let time =
            parse_time(get(t)).ok_or_else(|| row_err(format!("bad time {}", quote(get(t)))))?;
        let num = |c: usize, what: &str| -> Result<f64, CsvError> {
            let cell = get(c);
            let v = match cell.parse::<f64>() {
                Ok(v) => v,
                // A release string as `uname -r` gives it: the series' major.minor.
                Err(_) if what == "kernel" => KernelVersion::parse_release(cell)
                    .map(KernelVersion::series_value)
                    .ok_or_else(|| {
                        row_err(format!(
                            "bad kernel {} (a release, 5.15.0-1034-aws, or major.minor as a number, 5.15)",
                            quote(cell)
                        ))
                    })?,
                Err(_) => return Err(row_err(format!("bad {what} {}", quote(cell)))),
            };
            match crate::detect::series::invalid_value(what, v) {
                Some(why) => Err(row_err(format!("{what} {why} ({})", clip(cell)))),
                None => Ok(v),
            }
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
    if out.is_empty() {
        return Err(CsvError::NoRows { header_line });
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
        // A file that is not a series (a token given as the wrong file) is never quoted.
        assert_eq!(
            parse("eyJhbGciOiJSUzI1NiJ9.s3cret\n").unwrap_err().to_string(),
            "the header must have time, kubelet_rss_bytes and pods (it has: no known column in its first line of 1 cells (contents not shown: this may not be a series at all))"
        );
        assert_eq!(
            parse("time,pods\n1,2\n").unwrap_err().to_string(),
            "the header must have time, kubelet_rss_bytes and pods (it has: time,pods)"
        );
        let e = parse("time,kubelet_rss_bytes,pods\nnope,1,2\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: bad time \"nope\"");
        // Before 1970 is refused as an RFC 3339 date as it is as a number.
        let e = parse("time,kubelet_rss_bytes,pods\n1969-01-01T00:00:00Z,1,2\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: bad time \"1969-01-01T00:00:00Z\"");
        let e = parse("time,kubelet_rss_bytes,pods\n-1,1,2\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: bad time \"-1\"");
        let e = parse("time,kubelet_rss_bytes,pods\n5,1,2\n4,1,2\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: time goes backwards");
        // Blank lines are skipped but counted.
        let e = parse("\ntime,kubelet_rss_bytes,pods\n\n5,1,x\n").unwrap_err();
        assert_eq!(e.to_string(), "line 4: bad pods \"x\"");
    }

    #[test]
    fn a_header_of_many_columns_is_read_in_linear_time() {
        // 200,000 unknown columns: the duplicate check is a set (counted, not timed: the
        // header parses and the one row is read).
        let mut text = String::from("time,kubelet_rss_bytes,pods");
        let mut row = String::from("\n5,1,2");
        for i in 0..200_000 {
            text.push_str(&format!(",c{i}"));
            row.push_str(",0");
        }
        text.push_str(&row);
        text.push('\n');
        let (samples, unknown) = parse(&text).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(unknown.len(), 200_000);
        let dup = text.replacen(",c199999", ",c0", 1);
        assert_eq!(
            parse(&dup).unwrap_err().to_string(),
            "line 1: column c0 appears twice in the header"
        );
    }

    #[test]
    fn refuses_duplicate_columns_and_extra_cells() {
        let e =
            parse("time,kubelet_rss_bytes,pods,goroutines,goroutines\n5,1,2,3,4\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: column goroutines appears twice in the header"
        );
        assert!(matches!(
            parse("time,pods,kubelet_rss_bytes,time\n5,1,2,6\n"),
            Err(CsvError::DuplicateColumn { .. })
        ));
        let e = parse("time,kubelet_rss_bytes,pods\n5,1,2\n6,1,2,7\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: 4 cells, the header has 3 columns");
        // A shorter row's missing cells are empty (optional columns), quoted cells and CRLF
        // line ends are read as CSV.
        let (s, _) =
            parse("time,kubelet_rss_bytes,pods,goroutines\r\n\"5\",\"100\", 2 \r\n6,101,2,7\r\n")
                .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].t, s[0].kubelet_rss_bytes, s[0].pods), (5, 100.0, 2.0));
        assert_eq!((s[0].goroutines, s[1].goroutines), (None, Some(7.0)));
        // A required cell missing from a short row is a clear error.
        let e = parse("time,kubelet_rss_bytes,pods\n5,1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: 2 cells; the header's 3 columns are \"time,kubelet_rss_bytes,pods\": time, kubelet_rss_bytes and pods must have a cell"
        );
        // A header and no rows says so.
        let e = parse("\ntime,kubelet_rss_bytes,pods\n\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no rows: the file has a header (line 2) but no samples under it"
        );
        // A huge cell is quoted cut to 64 characters.
        let big = "9".repeat(100) + "x";
        let e = parse(&format!("time,kubelet_rss_bytes,pods\n5,{big},2\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "line 2: bad kubelet_rss_bytes \"{}\"... (101 bytes)",
                "9".repeat(64)
            )
        );
        let e = parse(&format!("{big},pods\n1,2\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the header must have time, kubelet_rss_bytes and pods (it has: {}... (2 columns))",
                "9".repeat(64)
            )
        );
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

    /// Values no real node gives (the trial's: cgroup version 7, a feature gate of 5, a
    /// pressure of 0.5, 1.5 pods, 2^64 goroutines) are refused with the line.
    #[test]
    fn refuses_values_outside_a_columns_domain() {
        let h = "time,kubelet_rss_bytes,pods,cgroup_version,gate_evented_pleg,memory_pressure,goroutines\n60,1,2,1,0,0,10\n";
        for (row, want) in [
            (
                "120,1,2,7,0,0,10",
                "line 3: cgroup_version is neither 1 nor 2 (7)",
            ),
            (
                "120,1,2,2,5,0,10",
                "line 3: gate_evented_pleg is neither 0 nor 1 (5)",
            ),
            (
                "120,1,2,2,1,0.5,10",
                "line 3: memory_pressure is neither 0 nor 1 (0.5)",
            ),
            (
                "120,1,1.5,2,1,1,10",
                "line 3: pods is not a whole count (1.5)",
            ),
            (
                "120,1,2,2,1,1,18446744073709551616",
                "line 3: goroutines is not a whole count (18446744073709551616)",
            ),
        ] {
            let r = parse(&format!("{h}{row}\n"));
            assert_eq!(r.unwrap_err().to_string(), want, "{row}");
        }
        let (ok, _) = parse(&format!("{h}120,1,2,2,1,1,9007199254740992\n")).unwrap();
        assert_eq!(ok[1].cgroup_version, Some(2.0));
        assert_eq!(ok[1].goroutines, Some(9007199254740992.0));
    }

    /// A `kernel` cell as a distribution's `uname -r` gives it is read as the series'
    /// major.minor (it was refused); what is no release is refused with the line.
    #[test]
    fn kernel_cells_take_distribution_releases() {
        let (s, _) = parse(
            "time,kubelet_rss_bytes,pods,kernel\n\
             60,1,2,5.15.0-1034-aws\n\
             120,1,2,\"6.1.0-28-cloud-amd64\"\n\
             180,1,2,5.15\n\
             240,1,2,\n",
        )
        .unwrap();
        let k: Vec<Option<f64>> = s.iter().map(|s| s.kernel).collect();
        assert_eq!(k, [Some(5.15), Some(6.1), Some(5.15), None]);
        for (cell, want) in [
            ("linux", "line 2: bad kernel \"linux\" (a release, 5.15.0-1034-aws, or major.minor as a number, 5.15)"),
            ("5.15x", "line 2: bad kernel \"5.15x\" (a release, 5.15.0-1034-aws, or major.minor as a number, 5.15)"),
            ("-5.15", "line 2: kernel is negative (-5.15)"),
        ] {
            let e = parse(&format!("time,kubelet_rss_bytes,pods,kernel\n60,1,2,{cell}\n")).unwrap_err();
            assert_eq!(e.to_string(), want, "{cell}");
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
