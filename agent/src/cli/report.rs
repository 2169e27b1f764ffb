//! `oomprobe report [--since DUR] [--html FILE] [--svg FILE]`: the picture of an episode, from
//! the persisted series (`--state-dir`, or a replay CSV with `--csv`) and the agent's JSON event
//! log (`--events`, the output of `oomprobe run --format json` saved to a file). Read-only.
use std::{io::Write as _, path::PathBuf};

use crate::{
    detect::offline::csv,
    report::{html, parse_duration, svg, Episode},
};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Where `oomprobe run` persists its series (`series.bin`).
    #[arg(long, default_value = "/var/lib/oomprobe")]
    pub state_dir: PathBuf,
    /// A series as CSV (the `replay` format, plain or gzip-compressed) instead of the state
    /// directory.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// The agent's JSON event log (`oomprobe run --format json > FILE`): kills, stages, verdicts;
    /// plain or gzip-compressed.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Only the last DUR (`30m`, `6h`, `2d`) before the newest sample or event.
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<f64>,
    /// Write the HTML page (the chart inline, the kills as a table).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write the chart as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("nothing to write: give --html FILE and/or --svg FILE")]
    NoOutput,
    #[error("{0} is both an input and an output (or both outputs): choose another output path")]
    OutputIsInput(String),
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
    #[error("{path} is not CSV: it is the agent's series store (OOMPSERI magic); report reads a store with --state-dir {hint}")]
    StoreAsCsv { path: String, hint: String },
    #[error("{path} is not CSV text (not UTF-8; nor the agent's series store, no OOMPSERI magic)")]
    NotText { path: String },
    #[error("no series store at {0}: give the agent's --state-dir (default /var/lib/oomprobe), or a CSV with --csv FILE")]
    NoStore(String),
    #[error(transparent)]
    Store(crate::detect::store::StoreError),
    #[error("series store {path} is corrupt: {why}")]
    Corrupt { path: String, why: String },
    #[error("series store {path} holds no valid sample: all {invalid} records rejected as invalid (a time or a value out of range, or a required value missing)")]
    Invalid { path: String, invalid: u64 },
    #[error("no series samples and no kill in {from}: nothing to draw{}", if set_aside.is_empty() { String::new() } else { format!(" ({set_aside})") })]
    Empty { from: String, set_aside: String },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The event log's text, plain or gzip-compressed (a rotated `events.jsonl.gz`, told by its
/// magic, not its name), at most [`crate::files::MAX_SERIES_BYTES`] either way.
fn read(path: &std::path::Path) -> Result<String, ReportError> {
    let err = |source| ReportError::Read {
        path: path.display().to_string(),
        source,
    };
    let bytes = crate::files::read_maybe_gzip(path, crate::files::MAX_SERIES_BYTES).map_err(err)?;
    String::from_utf8(bytes).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text (the JSON event log of oomprobe run --format json, plain or gzip-compressed)",
        ))
    })
}

/// How to give `report` the store file `p`: its directory, when the file is that directory's
/// `series.bin`; else any directory it is copied into as `series.bin`.
fn store_hint(p: &std::path::Path) -> String {
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
    match (p.file_name().and_then(|n| n.to_str()), dir) {
        (Some("series.bin"), Some(d)) => format!("{} (its directory)", d.display()),
        (Some("series.bin"), None) => ". (its directory)".to_string(),
        _ => "DIR, the directory of a file named series.bin (a copy of it, uncompressed); `oomprobe replay FILE` reads it as it is".to_string(),
    }
}

/// Why stage events were not drawn, when some were not: no kill record to place the kernel's
/// clock in UTC, either none in the log or every one set aside for its time.
fn unplaced_stages_warning(ep: &crate::report::Episode) -> Option<String> {
    (ep.unplaced_stages > 0).then(|| {
        if ep.set_aside.kills > 0 && ep.kills.is_empty() {
            format!(
                "stage events not drawn: the log's {} set aside (dated outside {}), so none places the kernel clock in UTC",
                match ep.set_aside.kills {
                    1 => "kill record was".to_string(),
                    n => format!("{n} kill records were"),
                },
                ep.set_aside.reason
            )
        } else {
            "stage events not drawn: no kill record in the log to place the kernel clock in UTC"
                .to_string()
        }
    })
}

pub fn run(args: ReportArgs) -> Result<(), ReportError> {
    if args.html.is_none() && args.svg.is_none() {
        return Err(ReportError::NoOutput);
    }
    // An output that is one of the inputs would be overwritten before it is read.
    // Same path, a symlink to it, or a hard link (same device and inode).
    let same = |a: &PathBuf, b: &PathBuf| {
        use std::os::unix::fs::MetadataExt as _;
        a == b
            || matches!(
                (std::fs::canonicalize(a), std::fs::canonicalize(b)),
                (Ok(x), Ok(y)) if x == y
            )
            || matches!(
                (std::fs::metadata(a), std::fs::metadata(b)),
                (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino())
            )
    };
    for out in args.html.iter().chain(&args.svg) {
        let store = args.state_dir.join("series.bin");
        let inputs = args.csv.iter().chain(&args.events).chain(Some(&store));
        if let Some(input) = inputs.into_iter().find(|i| same(out, i)) {
            return Err(ReportError::OutputIsInput(input.display().to_string()));
        }
    }
    if let (Some(h), Some(v)) = (&args.html, &args.svg) {
        if same(h, v) {
            return Err(ReportError::OutputIsInput(h.display().to_string()));
        }
    }
    let (samples, from) = match &args.csv {
        Some(p) => {
            // Plain or gzip-compressed, read as `replay` reads it.
            let bytes = super::replay::read_bytes(p).map_err(|source| ReportError::Read {
                path: p.display().to_string(),
                source,
            })?;
            if crate::detect::store::is_store(&bytes) {
                return Err(ReportError::StoreAsCsv {
                    path: p.display().to_string(),
                    hint: store_hint(p),
                });
            }
            let text = String::from_utf8(bytes).map_err(|_| ReportError::NotText {
                path: p.display().to_string(),
            })?;
            let (s, _) = csv::parse(&text).map_err(|source| ReportError::Csv {
                path: p.display().to_string(),
                source,
            })?;
            (s, p.display().to_string())
        }
        None => {
            let path = args.state_dir.join("series.bin");
            // Only a store that does not exist (ENOENT) is "no store"; one that cannot be
            // read (a symlink loop, a permission) is an error naming why (`store::load`'s).
            let missing = matches!(path.try_exists(), Ok(false));
            match &args.events {
                // The event log alone: its kills and stages, without the memory line.
                Some(events) if missing => {
                    tracing::warn!(store = %path.display(), "no series store: drawing the event log's kills and stages only");
                    (Vec::new(), events.display().to_string())
                }
                None if missing => return Err(ReportError::NoStore(path.display().to_string())),
                _ => {
                    // Read only: a report never rewrites the agent's store.
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    let loaded =
                        crate::detect::store::load(&path, now).map_err(ReportError::Store)?;
                    if loaded.corrupt {
                        let bytes = std::fs::read(&path).unwrap_or_default();
                        return Err(ReportError::Corrupt {
                            path: path.display().to_string(),
                            why: crate::detect::store::corrupt_reason(&bytes),
                        });
                    }
                    if loaded.samples.is_empty() && loaded.invalid > 0 {
                        return Err(ReportError::Invalid {
                            path: path.display().to_string(),
                            invalid: loaded.invalid,
                        });
                    }
                    // Said, so a report drawn from the default directory's store (or another
                    // than the one meant) shows where its series came from.
                    let _ = writeln!(
                        std::io::stderr(),
                        "oomprobe report: series from the store {} (--state-dir {}): {} samples",
                        path.display(),
                        args.state_dir.display(),
                        loaded.samples.len()
                    );
                    (loaded.samples, path.display().to_string())
                }
            }
        }
    };
    let events = match &args.events {
        Some(p) => read(p)?,
        None => String::new(),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut ep = Episode::new(&samples, &events, now);
    // Said before a refusal for nothing to draw, which these lines may explain.
    if ep.long_lines > 0 {
        tracing::warn!(
            lines = ep.long_lines,
            "event log lines longer than {} bytes were skipped unread (no agent record is that long)",
            crate::report::MAX_EVENT_LINE_BYTES
        );
    }
    if ep.memory.is_empty() && ep.kills.is_empty() {
        return Err(ReportError::Empty {
            from,
            set_aside: ep.set_aside.describe(),
        });
    }
    if ep.set_aside.total() > 0 {
        tracing::warn!(
            kills = ep.set_aside.kills,
            stages = ep.set_aside.stages,
            verdicts = ep.set_aside.verdicts,
            "{}",
            ep.set_aside.describe()
        );
    }
    if let Some(s) = args.since {
        ep = ep.since(s);
    }
    if ep.skipped_lines > 0 {
        tracing::warn!(
            lines = ep.skipped_lines,
            "event log lines that are not events were skipped"
        );
    }
    if let Some(why) = unplaced_stages_warning(&ep) {
        tracing::warn!(stages = ep.unplaced_stages, "{why}");
    }
    let write = |path: &PathBuf, text: String| {
        // A FIFO or socket as the output would block at open until something reads it: refused
        // (a character device such as /dev/null or /dev/stdout is written as asked).
        use std::os::unix::fs::FileTypeExt as _;
        if let Ok(m) = std::fs::metadata(path) {
            let t = m.file_type();
            if t.is_fifo() || t.is_socket() {
                return Err(ReportError::Write {
                    path: path.display().to_string(),
                    source: std::io::Error::other("a FIFO or socket, not a file to write"),
                });
            }
        }
        std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.display().to_string(),
            source,
        })
    };
    if let Some(p) = &args.svg {
        write(p, svg(&ep))?;
    }
    if let Some(p) = &args.html {
        write(p, html(&ep))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::Sample, report::Episode};

    /// A stage is placed in UTC by a kill record; when the only kill is set aside for its
    /// time, the warning says so (not that the log has none), and the page's summary counts
    /// one of each in the singular.
    #[test]
    fn stages_unplaced_because_every_kill_was_set_aside_say_so() {
        let samples = [Sample {
            t: 1_795_900_000,
            kubelet_rss_bytes: 50e6,
            ..Default::default()
        }];
        let stage = r#"{"event":"stage","ktime_ns":990000000000,"stage":"pre_oom"}"#;
        let aside = format!(
            "{}\n{stage}",
            r#"{"event":"kill","time":"1970-01-01T00:00:01Z","ktime_ns":1000000000,"kind":"oom_memcg","victim":{"pid":1,"comm":"a"}}"#
        );
        let ep = Episode::new(&samples, &aside, 1_800_000_000);
        assert_eq!(
            unplaced_stages_warning(&ep).as_deref(),
            Some("stage events not drawn: the log's kill record was set aside (dated outside the series' span), so none places the kernel clock in UTC")
        );
        let ep = Episode::new(&samples, stage, 1_800_000_000);
        assert_eq!(
            unplaced_stages_warning(&ep).as_deref(),
            Some("stage events not drawn: no kill record in the log to place the kernel clock in UTC")
        );
        let kept = r#"{"event":"kill","time":"2026-11-28T21:06:40Z","ktime_ns":1000000000000,"kind":"oom_memcg","victim":{"pid":42,"comm":"kubelet"}}"#;
        let ep = Episode::new(&samples, &format!("{kept}\n{stage}"), 1_800_000_000);
        assert_eq!(unplaced_stages_warning(&ep), None);
        let page = crate::report::html(&ep);
        assert!(
            page.contains(r#"<p id="summary">1 sample, 1 kill (1 OOM kill), 1 stage change."#),
            "{page}"
        );
    }
}
