//! `oomprobe replay FILE`: the detectors offline over a recorded series, printing a verdict each
//! time it changes (evaluated hourly, and at the end).
use std::{io::Write as _, path::PathBuf};

use super::OutputFormat;
use crate::detect::{offline::csv, Engine, Verdict};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// CSV with at least `time,kubelet_rss_bytes,pods` (see the README for optional columns).
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Seconds of series between evaluations.
    #[arg(long, default_value_t = 3600)]
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
}

fn show(format: OutputFormat, v: &Verdict) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string(v).unwrap_or_default(),
        OutputFormat::Text => {
            let mut s = format!(
                "{} subject={} cause={} slope={:.0}MB/day",
                v.time,
                serde_json::to_value(v.subject)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?"),
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

pub fn run(args: ReplayArgs) -> Result<(), ReplayError> {
    let path = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).map_err(|source| ReplayError::Read {
        path: path.clone(),
        source,
    })?;
    let (samples, unknown) = csv::parse(&text).map_err(|source| ReplayError::Csv {
        path: path.clone(),
        source,
    })?;
    if !unknown.is_empty() {
        tracing::warn!(columns = ?unknown, "ignoring unknown columns");
    }
    let engine = Engine::default();
    let mut out = std::io::stdout().lock();
    let mut last: Option<(String, String)> = None;
    let mut next_eval = samples.first().map_or(0, |s| s.t + args.every.max(60));
    for i in 0..samples.len() {
        let end = i + 1 == samples.len();
        if samples[i].t < next_eval && !end {
            continue;
        }
        next_eval = samples[i].t + args.every.max(60);
        let v = engine.evaluate(&samples[..=i]);
        let key = (format!("{:?}", v.subject), v.cause.as_str().to_string());
        if last.as_ref() != Some(&key) {
            let _ = writeln!(out, "{}", show(args.format, &v));
            last = Some(key);
        }
    }
    Ok(())
}
