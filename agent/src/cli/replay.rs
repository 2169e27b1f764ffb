//! `oomprobe replay FILE`: the detectors offline over a recorded series, printing a verdict each
//! time its subject or cause changes (evaluated hourly), then always the evaluation at the last
//! sample, marked final (JSON `"final":true`, text `final` after the time). The file is the agent's own series store
//! (`series.bin` under `--state-dir`, told by its `OOMPSERI` magic) or a CSV, either plain or
//! gzip-compressed; the file is only read.
use std::path::{Path, PathBuf};

use super::OutputFormat;
use crate::detect::{offline::csv, store, Engine, Sample, Verdict};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The agent's series store (`series.bin` in its --state-dir) or a CSV with at least
    /// `time,kubelet_rss_bytes,pods` (see the README for optional columns), plain or
    /// gzip-compressed; told apart by content.
    pub file: PathBuf,
    /// Output format: one line per verdict (text) or one JSON object per line.
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
    #[error("{path}: not a series store this agent can read: {reason}")]
    Store { path: String, reason: String },
    #[error("{path}: the series store holds no valid sample ({invalid} invalid records dropped)")]
    EmptyStore { path: String, invalid: u64 },
    #[error("{path}: neither a series store (no OOMPSERI magic) nor CSV text (not UTF-8)")]
    NotText { path: String },
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

/// Where a replayed series came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The agent's series store; `invalid`: records dropped because a value was invalid.
    Store { invalid: u64 },
    /// A CSV; `unknown`: its columns the detectors do not read.
    Csv { unknown: Vec<String> },
}

/// Reads a series for replay: the agent's store file or a CSV (each plain or gzip-compressed),
/// told apart by the store's magic. The store is decoded as the live agent loads it
/// ([`store::parse`]: the same validation and the same bounded resolution), so the verdict at
/// its last sample is the live agent's on that file. `now` refuses store records dated more
/// than a day after it. Never writes to `file`. Errors: unreadable, a corrupt or foreign
/// store, a store without a valid sample, a CSV error, bytes that are neither.
pub fn read_input(file: &Path, now: i64) -> Result<(Vec<Sample>, Source), ReplayError> {
    let path = file.display().to_string();
    let bytes = read_bytes(file).map_err(|source| ReplayError::Read {
        path: path.clone(),
        source,
    })?;
    if store::is_store(&bytes) {
        let loaded = store::parse(&bytes, now);
        if loaded.corrupt {
            return Err(ReplayError::Store {
                reason: store::corrupt_reason(&bytes),
                path,
            });
        }
        if loaded.samples.is_empty() {
            return Err(ReplayError::EmptyStore {
                path,
                invalid: loaded.invalid,
            });
        }
        return Ok((
            loaded.samples,
            Source::Store {
                invalid: loaded.invalid,
            },
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| ReplayError::NotText { path: path.clone() })?;
    let (samples, unknown) =
        csv::parse(&text).map_err(|source| ReplayError::Csv { path, source })?;
    Ok((samples, Source::Csv { unknown }))
}

/// One verdict line; `last`: the evaluation at the last sample (JSON `"final":true` after
/// `"event"`, text `final` after the time), printed whether or not it changed.
fn show(format: OutputFormat, v: &Verdict, last: bool) -> String {
    match format {
        // The live agent's verdict line (`"event":"verdict"` first, then the verdict's fields).
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                event: &'static str,
                #[serde(rename = "final", skip_serializing_if = "std::ops::Not::not")]
                last: bool,
                #[serde(flatten)]
                verdict: &'a Verdict,
            }
            serde_json::to_string(&Line {
                event: "verdict",
                last,
                verdict: v,
            })
            .unwrap_or_default()
        }
        OutputFormat::Text => {
            let mut s = format!(
                "{}{} subject={} cause={} slope={}{}",
                v.time,
                if last { " final" } else { "" },
                v.subject.as_str(),
                v.cause.as_str(),
                crate::output::slope_text(v),
                crate::output::workload_slope_text(v)
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

/// [`read_text`]'s reader with a plain I/O error (see [`read_bytes`]).
pub fn read_series(file: &Path) -> std::io::Result<String> {
    String::from_utf8(read_bytes(file)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The file's bytes, gunzipped when it starts with the gzip magic: only a regular file of at
/// most [`crate::files::MAX_SERIES_BYTES`], plain or decompressed (a gzip bomb is refused).
pub fn read_bytes(file: &Path) -> std::io::Result<Vec<u8>> {
    crate::files::read_maybe_gzip(file, crate::files::MAX_SERIES_BYTES)
}

/// Evaluates the detectors as replay does: `samples` (in time order) fed one by one through
/// the live agent's retention ([`store::Retained`]: every sample of the last 6 h, one a minute
/// to 74 h, one per 30 min to 14 days, compacted every [`store::COMPACT_EVERY`] samples), the
/// engine run over what is held every `every` seconds of series (at least 60) and at the last
/// sample, calling `f` with each verdict. Each evaluation's cost is bounded by the retention,
/// not by the length of the recording.
pub fn evaluate_each(engine: &mut Engine, samples: &[Sample], every: i64, f: impl FnMut(&Verdict)) {
    evaluate_held(engine, samples, every, f, |_| {});
}

/// [`evaluate_each`], also calling `held` with the retained series at each evaluation.
fn evaluate_held(
    engine: &mut Engine,
    samples: &[Sample],
    every: i64,
    mut f: impl FnMut(&Verdict),
    mut held: impl FnMut(&[Sample]),
) {
    let mut next_eval = samples
        .first()
        .map_or(0, |s| s.t.saturating_add(every.max(60)));
    let mut series = store::Retained::default();
    for (i, s) in samples.iter().enumerate() {
        series.push(s.clone());
        let end = i + 1 == samples.len();
        if s.t < next_eval && !end {
            continue;
        }
        next_eval = s.t.saturating_add(every.max(60));
        held(series.samples());
        f(&engine.evaluate(series.samples()));
    }
}

pub fn run(args: ReplayArgs) -> Result<(), ReplayError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (samples, source) = read_input(&args.file, now)?;
    match source {
        Source::Csv { unknown } if !unknown.is_empty() => {
            // The first 20 names and how many (a header of 20,000 unknown columns printed
            // them all).
            let shown: Vec<&String> = unknown.iter().take(20).collect();
            tracing::warn!(count = unknown.len(), columns = ?shown, "ignoring unknown columns");
        }
        Source::Store { invalid } if invalid > 0 => {
            tracing::warn!(
                records = invalid,
                "series store records with invalid values were not replayed"
            );
        }
        _ => {}
    }
    let mut engine = Engine::default();
    let mut out = super::Stdout::lock();
    let mut failed = None;
    lines(&mut engine, &samples, args.every, args.format, |l| {
        if failed.is_none() {
            failed = out.line(l).err();
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(out.finish()?)
}

/// Replay's output lines: a verdict each time its subject or cause changes, then always the
/// evaluation at the last sample, marked final (so a replay never ends on a stale state).
fn lines(
    engine: &mut Engine,
    samples: &[Sample],
    every: i64,
    format: OutputFormat,
    mut line: impl FnMut(String),
) {
    let mut last: Option<(String, String)> = None;
    let mut pending: Option<Verdict> = None;
    let mut emit = |v: &Verdict, line: &mut dyn FnMut(String)| {
        let key = (format!("{:?}", v.subject), v.cause.as_str().to_string());
        if last.as_ref() != Some(&key) {
            line(show(format, v, false));
            last = Some(key);
        }
    };
    evaluate_each(engine, samples, every, |v| {
        if let Some(p) = pending.replace(v.clone()) {
            emit(&p, &mut line);
        }
    });
    if let Some(p) = pending {
        line(show(format, &p, true));
    }
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

    /// A recording longer than the agent keeps at full resolution (8 h at one sample a
    /// second) is evaluated over what the agent would hold: every sample of the last 6 h and
    /// one a minute before, not the whole recording.
    #[test]
    fn replay_holds_what_the_live_agent_holds() {
        // A whole minute, so the minute slots before the last 6 h are exactly 120.
        let t0 = 1_789_999_980;
        let samples: Vec<Sample> = (0..8 * 3600i64)
            .map(|i| Sample {
                t: t0 + i,
                kubelet_rss_bytes: 400e6,
                pods: 30.0,
                ..Default::default()
            })
            .collect();
        let mut held = Vec::new();
        evaluate_held(
            &mut Engine::default(),
            &samples,
            3600,
            |_| {},
            |s| held.push((s.len(), s.first().map(|s| s.t), s.last().map(|s| s.t))),
        );
        assert_eq!(held.len(), 8);
        // After 1 h: everything so far (3,601 samples, 10 compactions at 360 changed nothing).
        assert_eq!(held[0], (3601, Some(t0), Some(t0 + 3600)));
        // At the end (28,800 samples, a compaction at the last): 6 h + 1 s of samples, and
        // the first 2 h at one a minute.
        assert_eq!(held[7], (21_601 + 120, Some(t0), Some(t0 + 8 * 3600 - 1)));
        assert!(held.iter().all(|h| h.0 <= 21_721 + store::COMPACT_EVERY));
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oomprobe-replay-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Three days at one sample a minute: flat at 400 MB (a 30 MB sawtooth) for 36 h, then a
    /// 200 MB/day leak; integer values, so the CSV writer's rounding changes nothing.
    fn leaking_samples() -> Vec<Sample> {
        (0..3 * 1440i64)
            .map(|i| {
                let t = 1_790_000_000 + i * 60;
                let leak = (i - 36 * 60).max(0) as f64 * 200e6 / 1440.0;
                Sample {
                    t,
                    kubelet_rss_bytes: (400e6 + (i % 10) as f64 * 3e6 + leak).round(),
                    pods: 30.0,
                    goroutines: Some(150.0),
                    node_mem_available_bytes: Some(4e9),
                    ..Default::default()
                }
            })
            .collect()
    }

    fn verdicts(samples: &[Sample]) -> Vec<Verdict> {
        let mut out = Vec::new();
        evaluate_each(&mut Engine::default(), samples, 3600, |v| {
            out.push(v.clone())
        });
        out
    }

    /// A store written by the live agent's own `Store` replays to the verdicts the detectors
    /// give on the samples the agent holds after reopening it, and to the same verdicts as
    /// the same samples written as CSV; the file is left byte for byte as it was.
    #[test]
    fn the_agents_store_file_replays_as_the_live_agent_and_the_csv_do() {
        let d = tmpdir("store");
        let p = d.join("series.bin");
        {
            let mut st = store::Store::open(&p).unwrap();
            for s in leaking_samples() {
                st.append(s).unwrap();
            }
        }
        let before = std::fs::read(&p).unwrap();
        let (samples, source) = read_input(&p, 1_800_000_000).unwrap();
        assert_eq!(source, Source::Store { invalid: 0 });
        assert_eq!(
            std::fs::read(&p).unwrap(),
            before,
            "replay wrote to its input"
        );
        assert_eq!(samples, leaking_samples());
        // What the live agent evaluates after a restart: the store as it reopens it.
        std::fs::copy(&p, d.join("copy.bin")).unwrap();
        let live = store::Store::open(&d.join("copy.bin")).unwrap();
        assert_eq!(live.samples(), &samples[..]);
        let from_store = verdicts(&samples);
        assert_eq!(from_store.len(), 72);
        let last = from_store.last().unwrap();
        assert_eq!(last.subject, Subject::Kubelet, "{:?}", last.findings);
        assert_eq!(&Engine::default().evaluate(live.samples()), last);
        // The same series as CSV (gzip-compressed too) gives the same verdicts.
        let text = csv::write(&samples);
        std::fs::write(d.join("s.csv"), &text).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&before).unwrap();
        std::fs::write(d.join("series.bin.gz"), gz.finish().unwrap()).unwrap();
        let (csv_samples, src) = read_input(&d.join("s.csv"), 1_800_000_000).unwrap();
        assert_eq!(src, Source::Csv { unknown: vec![] });
        assert_eq!(verdicts(&csv_samples), from_store);
        let (gz_samples, _) = read_input(&d.join("series.bin.gz"), 1_800_000_000).unwrap();
        assert_eq!(gz_samples, samples);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_and_foreign_files_are_clear_errors_and_left_alone() {
        let d = tmpdir("corrupt");
        let good = {
            let p = d.join("series.bin");
            let mut st = store::Store::open(&p).unwrap();
            st.append(leaking_samples()[0].clone()).unwrap();
            drop(st);
            std::fs::read(&p).unwrap()
        };
        let mut future = good.clone();
        future[8] = 9;
        // The one record's RSS (the first column after t) made negative.
        let mut no_valid = good.clone();
        let at = good.len() - 8 * (2 + crate::detect::series::OPTIONAL_COLUMNS.len()) + 8;
        no_valid[at..at + 8].copy_from_slice(&(-1.0f64).to_le_bytes());
        for (name, bytes, want) in [
            (
                "future.bin",
                future,
                "future.bin: not a series store this agent can read: unknown format version 9 (this agent reads 1 and 2)",
            ),
            (
                "short.bin",
                b"OOMPSERI\x02".to_vec(),
                "short.bin: not a series store this agent can read: the header is cut short",
            ),
            (
                "invalid.bin",
                no_valid,
                "invalid.bin: the series store holds no valid sample (1 invalid records dropped)",
            ),
            (
                "foreign.bin",
                vec![0xff, 0xfe, 0x00, 0x01],
                "foreign.bin: neither a series store (no OOMPSERI magic) nor CSV text (not UTF-8)",
            ),
        ] {
            let p = d.join(name);
            std::fs::write(&p, &bytes).unwrap();
            let e = read_input(&p, 1_800_000_000).unwrap_err().to_string();
            assert_eq!(e, format!("{}/{want}", d.display()), "{name}");
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "{name} was modified");
            let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
            assert!(
                left.iter().all(|e| !e.file_name().to_string_lossy().contains("corrupt-")),
                "replay set a file aside"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Replay prints each change, then always the evaluation at the last sample, marked final
    /// (the series keeps leaking after the call: the final line's slope and time are the last
    /// sample's, not the stale ones of the change); too little history has an unknown slope.
    #[test]
    fn replay_ends_with_the_final_evaluation_and_an_unknown_slope_is_not_zero() {
        let samples = leaking_samples();
        let all = verdicts(&samples);
        let mut text = Vec::new();
        lines(
            &mut Engine::default(),
            &samples,
            3600,
            OutputFormat::Text,
            |l| text.push(l),
        );
        let mut json = Vec::new();
        lines(
            &mut Engine::default(),
            &samples,
            3600,
            OutputFormat::Json,
            |l| json.push(l),
        );
        assert_eq!(text.len(), json.len());
        assert!(text.len() >= 3, "{text:#?}");
        let last = all.last().unwrap();
        assert_eq!(all.len(), 72);
        // The first evaluation (1 h of history): no slope.
        assert_eq!(all[0].subject, Subject::InsufficientHistory);
        assert_eq!(all[0].slope_bytes_per_day, None);
        assert!(
            text[0].starts_with(&format!(
                "{} subject=insufficient_history cause=none slope=- |",
                all[0].time
            )),
            "{}",
            text[0]
        );
        let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
        assert_eq!(first["slope_bytes_per_day"], serde_json::Value::Null);
        assert_eq!(first.get("final"), None);
        assert!(
            json[0].starts_with(r#"{"event":"verdict","time":"#),
            "{}",
            json[0]
        );
        // The last line: the evaluation at the last sample, marked final.
        let end = text.last().unwrap();
        let slope = last.slope_bytes_per_day.unwrap();
        assert!(
            end.starts_with(&format!(
                "{} final subject={} cause={} slope={:.0}MB/day",
                last.time,
                last.subject.as_str(),
                last.cause.as_str(),
                slope / 1e6
            )),
            "{end}"
        );
        let end: serde_json::Value = serde_json::from_str(json.last().unwrap()).unwrap();
        assert!(json
            .last()
            .unwrap()
            .starts_with(r#"{"event":"verdict","final":true,"time":"#));
        assert_eq!(end["time"], last.time.as_str());
        // Its fields are the last evaluation's, byte for byte.
        let mut want = serde_json::to_value(last).unwrap();
        want["event"] = "verdict".into();
        want["final"] = true.into();
        // Through text both, so floats parse alike.
        let want: serde_json::Value = serde_json::from_str(&want.to_string()).unwrap();
        assert_eq!(end, want);
        // Only the last line is final.
        assert_eq!(
            json.iter()
                .filter(|l| l.contains(r#""final":true"#))
                .count(),
            1
        );
        assert_eq!(
            text.iter()
                .filter(|l| l.contains(" final subject="))
                .count(),
            1
        );
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
