//! `oomprobe replay FILE`: the detectors offline over a recorded series, printing a verdict each
//! time it changes (evaluated hourly, and at the end). A gzip-compressed CSV is read as is.
use std::path::{Path, PathBuf};

use super::OutputFormat;
use crate::detect::{offline::csv, Engine, Verdict};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// CSV with at least `time,kubelet_rss_bytes,pods` (see the README for optional columns),
    /// plain or gzip-compressed.
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Seconds of series between evaluations, 60 to 31622400 (366 days).
    #[arg(long, default_value_t = 3600,
          value_parser = clap::value_parser!(i64).range(60..=31_622_400))]
    pub every: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Csv {
        path: String,
        #[source]
        source: csv::CsvError,
    },
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

fn show(format: OutputFormat, v: &Verdict) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string(v).unwrap_or_default(),
        OutputFormat::Text => {
            let mut s = format!(
                "{} subject={} cause={} slope={:.0}MB/day",
                v.time,
                v.subject.as_str(),
                v.cause.as_str(),
                v.slope_bytes_per_day / 1e6
            );
            if let Some(f) = &v.forecast {
                s.push_str(&format!(
                    " oom_in={:.1}d ({:.1}..{}) against={}",
                    f.expected_seconds / 86400.0,
                    f.earliest_seconds / 86400.0,
                    f.latest_seconds
                        .map_or("never".into(), |l| format!("{:.1}", l / 86400.0)),
                    f.against
                ));
            }
            if !v.supports.is_empty() {
                s.push_str(&format!(" | {}", v.supports.join("; ")));
            }
            if !v.next_checks.is_empty() {
                s.push_str(&format!(" | next: {}", v.next_checks.join("; ")));
            }
            s
        }
    }
}

/// The file's text, gunzipped when it starts with the gzip magic (`report --csv` reads
/// through this too). Errors: the file cannot be read, is not valid gzip, or not UTF-8.
pub fn read_text(file: &Path) -> Result<String, ReplayError> {
    read_series(file).map_err(|source| ReplayError::Read {
        path: file.display().to_string(),
        source,
    })
}

/// [`read_text`]'s reader with a plain I/O error.
/// Only a regular file of at most [`crate::files::MAX_SERIES_BYTES`], plain or decompressed.
pub fn read_series(file: &Path) -> std::io::Result<String> {
    let bytes = crate::files::read_maybe_gzip(file, crate::files::MAX_SERIES_BYTES)?;
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Evaluates the detectors as replay does: every `every` seconds of series (at least 60) and
/// at the last sample, calling `f` with each verdict.
pub fn evaluate_each(
    engine: &mut Engine,
    samples: &[crate::detect::Sample],
    every: i64,
    mut f: impl FnMut(&Verdict),
) {
    let mut next_eval = samples
        .first()
        .map_or(0, |s| s.t.saturating_add(every.max(60)));
    for i in 0..samples.len() {
        let end = i + 1 == samples.len();
        if samples[i].t < next_eval && !end {
            continue;
        }
        next_eval = samples[i].t.saturating_add(every.max(60));
        f(&engine.evaluate(&samples[..=i]));
    }
}

pub fn run(args: ReplayArgs) -> Result<(), ReplayError> {
    let path = args.file.display().to_string();
    let text = read_text(&args.file)?;
    let (samples, unknown) = csv::parse(&text).map_err(|source| ReplayError::Csv {
        path: path.clone(),
        source,
    })?;
    if !unknown.is_empty() {
        tracing::warn!(columns = ?unknown, "ignoring unknown columns");
    }
    let mut engine = Engine::default();
    let mut out = super::Stdout::lock();
    let mut last: Option<(String, String)> = None;
    let mut failed = None;
    evaluate_each(&mut engine, &samples, args.every, |v| {
        let key = (format!("{:?}", v.subject), v.cause.as_str().to_string());
        if failed.is_none() && last.as_ref() != Some(&key) {
            failed = out.line(show(args.format, v)).err();
            last = Some(key);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(out.finish()?)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::detect::Subject;

    /// The healthy series of issue 17 (`detect/testdata/detector-false-alarms/`, README
    /// there): no kubelet verdict at any hourly evaluation, read through replay's own path.
    #[test]
    fn healthy_warm_up_and_slow_scavenger_series_never_call_a_kubelet_leak() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/detect/testdata/detector-false-alarms");
        for name in ["warm-up-after-start.csv.gz", "slow-scavenger-return.csv.gz"] {
            let text = read_text(&dir.join(name)).unwrap();
            let (samples, unknown) = csv::parse(&text).unwrap();
            assert!(unknown.is_empty());
            // Four days of one-minute samples.
            assert_eq!(samples.len(), 4 * 1440, "{name}");
            let mut n = 0;
            evaluate_each(&mut Engine::default(), &samples, 3600, |v| {
                n += 1;
                assert_ne!(
                    v.subject,
                    Subject::Kubelet,
                    "{name} at {}: {:?}",
                    v.time,
                    v.findings
                );
            });
            assert_eq!(n, 96, "{name}");
        }
    }

    #[test]
    fn plain_and_gzip_files_read_the_same() {
        let dir = std::env::temp_dir().join(format!("oomprobe-replay-gz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = "time,kubelet_rss_bytes,pods\n1,2,3\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(dir.join("a.csv.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("a.csv"), text).unwrap();
        assert_eq!(read_text(&dir.join("a.csv.gz")).unwrap(), text);
        assert_eq!(read_text(&dir.join("a.csv")).unwrap(), text);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
