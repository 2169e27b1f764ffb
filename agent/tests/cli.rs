//! The unprivileged verbs run as a user would run them: the built binary, bad input, a full
//! disk or a closed pipe on standard output. Each case asserts the exit status and the one
//! error line the binary prints.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn oomprobe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oomprobe"));
    c.env("RUST_LOG", "warn");
    c
}

/// A directory of this test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("oomprobe-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one `oomprobe: error:` line of a refusal, after asserting exit status 1.
fn refusal(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    let lines: Vec<String> = stderr(o)
        .lines()
        .filter(|l| l.starts_with("oomprobe: error:") || l.starts_with("error:"))
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
    lines[0].clone()
}

/// Runs with standard output on /dev/full.
fn to_dev_full(c: &mut Command) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    c.stdout(full).stderr(Stdio::piped()).output().unwrap()
}

/// Runs with standard output on a pipe whose reader is already gone.
fn to_closed_pipe(c: &mut Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

fn trace(dir: &Scratch, scenario: &str, days: &str) -> PathBuf {
    let o = oomprobe()
        .args(["gen-trace", scenario, "--days", days])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p = dir.path(&format!("{scenario}.csv"));
    std::fs::write(&p, &o.stdout).unwrap();
    p
}

fn write_csv(dir: &Scratch, name: &str, text: &str) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

const NO_SPACE: &str =
    "oomprobe: error: cannot write to standard output: No space left on device (os error 28)";

// bench-detect writes through the same `cli::Stdout` (a debug build needs minutes for even
// --scale 1, so it is not run here).
#[test]
fn a_full_disk_on_stdout_is_an_error_for_every_verb() {
    let dir = Scratch::new("full");
    let csv = trace(&dir, "leak-50", "3");
    let state = dir.path("state");
    for args in [
        vec!["replay", arg(&csv)],
        vec!["replay", arg(&csv), "--format", "json"],
        vec!["gen-trace", "healthy", "--days", "1"],
        vec!["diagnose", "--state-dir", arg(&state)],
    ] {
        let o = to_dev_full(oomprobe().args(&args));
        assert_eq!(refusal(&o), NO_SPACE, "{args:?}");
    }
}

#[test]
fn a_closed_pipe_on_stdout_exits_141_without_a_word() {
    let dir = Scratch::new("pipe");
    let csv = trace(&dir, "leak-50", "3");
    let state = dir.path("state");
    for args in [
        vec!["replay", arg(&csv)],
        vec!["gen-trace", "healthy", "--days", "1"],
        vec!["diagnose", "--state-dir", arg(&state)],
    ] {
        let o = to_closed_pipe(oomprobe().args(&args));
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn report_reads_a_gzip_csv_as_replay_does() {
    let dir = Scratch::new("gz");
    let csv = trace(&dir, "leak-50", "3");
    let gz = dir.path("leak.csv.gz");
    let o = Command::new("gzip")
        .args(["-c", arg(&csv)])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(&gz, &o.stdout).unwrap();
    let (plain_svg, gz_svg) = (dir.path("plain.svg"), dir.path("gz.svg"));
    for (input, out) in [(&csv, &plain_svg), (&gz, &gz_svg)] {
        let o = oomprobe()
            .args(["report", "--csv", arg(input), "--svg", arg(out)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let plain = std::fs::read(&plain_svg).unwrap();
    assert!(plain.starts_with(b"<svg"), "{:?}", &plain[..16]);
    assert_eq!(plain, std::fs::read(&gz_svg).unwrap());
}

#[test]
fn out_of_range_flags_are_refused_with_the_range() {
    let dir = Scratch::new("range");
    let csv = write_csv(&dir, "a.csv", "time,kubelet_rss_bytes,pods\n1,2,3\n");
    for (args, want) in [
        (
            vec!["replay", arg(&csv), "--every", "0"],
            "error: invalid value '0' for '--every <EVERY>': 0 is not in 60..=31622400",
        ),
        (
            vec!["replay", arg(&csv), "--every=-5"],
            "error: invalid value '-5' for '--every <EVERY>': -5 is not in 60..=31622400",
        ),
        (
            vec!["bench-detect", "--scale", "0"],
            "error: invalid value '0' for '--scale <SCALE>': 0 is not in 1..=1000",
        ),
        (
            vec!["bench-detect", "--scale", "18446744073709551615"],
            "error: invalid value '18446744073709551615' for '--scale <SCALE>': 18446744073709551615 is not in 1..=1000",
        ),
        (
            vec!["bench-detect", "--seed", "18446744073709551615"],
            "error: invalid value '18446744073709551615' for '--seed <SEED>': 18446744073709551615 is not in 0..=4294967295",
        ),
        (
            vec!["gen-trace", "leak-1e300"],
            "oomprobe: error: leak-1e300: a leak rate is a number of MB/day above 0 and at most 1000000 (no leak: healthy)",
        ),
        (
            vec!["gen-trace", "leak-NaN"],
            "oomprobe: error: leak-NaN: a leak rate is a number of MB/day above 0 and at most 1000000 (no leak: healthy)",
        ),
        (
            vec!["gen-trace", "leak-0"],
            "oomprobe: error: leak-0: a leak rate is a number of MB/day above 0 and at most 1000000 (no leak: healthy)",
        ),
        (
            vec!["gen-trace", "healthy", "--days", "400"],
            "oomprobe: error: --days 400: a number of days from 0.01 to 366",
        ),
    ] {
        let o = oomprobe().args(&args).output().unwrap();
        assert_eq!(refusal(&o), want, "{args:?}");
    }
}

/// `--real-series` repeats, each file read and checked in turn (named by its path as given);
/// `--real-from`/`--real-to` cut every one of them. All refused before any scoring.
#[test]
fn bench_detect_names_the_recording_it_cannot_use() {
    let lab = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/detect/testdata/lab-series/kubelet-v1.34.4-lab.series.bin.gz");
    let lab = arg(&lab);
    let o = oomprobe()
        .args([
            "bench-detect",
            "--real-series",
            lab,
            "--real-series",
            "/nonexistent/2.bin",
        ])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        "oomprobe: error: the real-noise corpus needs a recorded kubelet series: /nonexistent/2.bin does not exist (pass --real-series PATH: an agent's series.bin or a replay CSV)"
    );
    let dir = Scratch::new("bench-short");
    let short = write_csv(
        &dir,
        "short.csv",
        &(0..14)
            .map(|m| format!("{},90000000,3\n", 1_790_000_000 + m * 60))
            .fold("time,kubelet_rss_bytes,pods\n".to_string(), |a, l| a + &l),
    );
    let o = oomprobe()
        .args([
            "bench-detect",
            "--real-series",
            lab,
            "--real-series",
            arg(&short),
        ])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!(
            "oomprobe: error: {} has 14 one-minute samples, the longest gap-free run 14 min: the real-noise corpus needs 15 min without a gap over 180 s",
            short.display()
        )
    );
    // The window applies to every file: 20 minutes of 2030 pass it, the lab recording (2026)
    // does not.
    let late = write_csv(
        &dir,
        "late.csv",
        &(0..20)
            .map(|m| format!("{},90000000,3\n", 1_900_000_000 + m * 60))
            .fold("time,kubelet_rss_bytes,pods\n".to_string(), |a, l| a + &l),
    );
    let o = oomprobe()
        .args([
            "bench-detect",
            "--real-series",
            arg(&late),
            "--real-series",
            lab,
        ])
        .args(["--real-from", "1900000000"])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!("oomprobe: error: {lab} has 0 one-minute samples, the longest gap-free run 0 min: the real-noise corpus needs 15 min without a gap over 180 s")
    );
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
}

#[test]
fn report_draws_the_event_log_alone() {
    let dir = Scratch::new("events");
    let events = golden("ring-synth.expected.jsonl");
    let kills = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(r#"{"event":"kill""#))
        .count();
    assert_eq!(kills, 14);
    let svg = dir.path("k.svg");
    let o = oomprobe()
        .args(["report", "--events", arg(&events), "--state-dir"])
        .arg(dir.path("no-state"))
        .args(["--svg", arg(&svg)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches(r#"<g class="kill""#).count(), kills);
    // Without --events the missing store is still refused.
    let o = oomprobe()
        .args(["report", "--state-dir"])
        .arg(dir.path("no-state"))
        .args(["--svg", arg(&svg)])
        .output()
        .unwrap();
    assert!(refusal(&o).contains("no series store at"), "{}", stderr(&o));
}

/// A gzip-compressed event log is read as the plain one (told by its magic, not its name);
/// bytes that are not text are an error naming the file.
#[test]
fn report_reads_a_gzip_event_log() {
    use std::io::Write as _;
    let dir = Scratch::new("events-gz");
    let plain = std::fs::read(golden("ring-synth.expected.jsonl")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let events = dir.path("events.jsonl.gz");
    std::fs::write(&events, gz.finish().unwrap()).unwrap();
    let svg = dir.path("k.svg");
    let o = oomprobe()
        .args(["report", "--events", arg(&events), "--state-dir"])
        .arg(dir.path("no-state"))
        .args(["--svg", arg(&svg)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches(r#"<g class="kill""#).count(), 14);
    let binary = dir.path("b.jsonl");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let o = oomprobe()
        .args(["report", "--events", arg(&binary), "--state-dir"])
        .arg(dir.path("no-state"))
        .args(["--svg", arg(&svg)])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!(
            "oomprobe: error: cannot read {}: not UTF-8 text (the JSON event log of oomprobe run --format json, plain or gzip-compressed)",
            binary.display()
        )
    );
}

/// An event log line longer than 1 MiB (a 4 MiB field) is skipped unread and said on stderr
/// with its count; the other lines are drawn.
#[test]
fn report_skips_a_huge_event_line_and_says_so() {
    let dir = Scratch::new("events-huge");
    let golden_events = std::fs::read_to_string(golden("ring-synth.expected.jsonl")).unwrap();
    let huge = format!(
        r#"{{"event":"kill","time":"2026-11-28T21:20:00Z","kind":"oom_memcg","victim":{{"pid":1,"comm":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let events = dir.path("events.jsonl");
    std::fs::write(&events, format!("{huge}\n{golden_events}")).unwrap();
    let svg = dir.path("k.svg");
    let o = oomprobe()
        .args(["report", "--events", arg(&events), "--state-dir"])
        .arg(dir.path("no-state"))
        .args(["--svg", arg(&svg)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "event log lines longer than 1048576 bytes were skipped unread (no agent record is that long) lines=1"
        ),
        "{}",
        stderr(&o)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches(r#"<g class="kill""#).count(), 14);
}

/// Kills dated 1970 and 9999 beside a generated day of 2026 are set aside, counted and said
/// (on stderr, in the page, under the chart); the axis stays on the series' day. An event log
/// alone whose only kill is implausible has nothing to draw, and says why.
#[test]
fn report_sets_aside_events_outside_the_series_span() {
    let dir = Scratch::new("report-span");
    // 2026-09-21T14:13:20Z to 2026-09-22T14:12:20Z, one sample a minute.
    let csv = trace(&dir, "healthy", "1");
    let kill = |time: &str, pid: u32| {
        format!(
            r#"{{"event":"kill","time":"{time}","ktime_ns":{pid}000000000,"kind":"oom_memcg","victim":{{"pid":{pid},"comm":"k{pid}"}}}}"#
        )
    };
    let events = write_csv(
        &dir,
        "events.jsonl",
        &[
            kill("1970-01-01T00:00:00Z", 1),
            kill("2026-09-21T20:00:00Z", 2),
            kill("9999-12-31T23:59:59Z", 3),
        ]
        .join("\n"),
    );
    let (html, svg) = (dir.path("r.html"), dir.path("r.svg"));
    let o = oomprobe()
        .args(["report", "--csv", arg(&csv), "--events", arg(&events)])
        .args(["--html", arg(&html), "--svg", arg(&svg)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let said = "2 kills set aside, dated outside the series' span (2026-09-21T14:03:20Z to 2026-09-22T14:22:20Z)";
    assert!(stderr(&o).contains(said), "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains(&format!("<p id=\"set-aside\">Not drawn: {said}.</p>")),
        "{page}"
    );
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(chart.matches(r#"<g class="kill""#).count(), 1);
    assert!(chart.contains(r#"data-victim="2""#));
    assert!(chart.contains(r#"<text id="set-aside" data-count="2""#));
    // The axis: the series' first and last minute, not 8,000 years.
    assert!(
        chart.contains(">14:13:20<") && chart.contains(">14:12:20<"),
        "{chart}"
    );
    let only = write_csv(&dir, "old.jsonl", &kill("1970-01-01T00:00:00Z", 1));
    let o = oomprobe()
        .args(["report", "--events", arg(&only), "--state-dir"])
        .arg(dir.path("no-state"))
        .args(["--svg", arg(&svg)])
        .output()
        .unwrap();
    // The window ends a day after now.
    let e = refusal(&o);
    let want = format!(
        "oomprobe: error: no series samples and no kill in {}: nothing to draw (1 kill set aside, dated outside plausible times (2014-01-01T00:00:00Z to ",
        only.display()
    );
    assert!(e.starts_with(&want) && e.ends_with("Z))"), "{e}");
}

#[test]
fn report_names_a_corrupt_store_and_what_is_wrong() {
    let dir = Scratch::new("corrupt");
    let svg = dir.path("c.svg");
    let store = dir.path("series.bin");
    for (bytes, why) in [
        (
            &b"hello, not a store"[..],
            "it does not start with the series magic \"OOMPSERI\" (not written by oomprobe run)",
        ),
        (&b""[..], "the file is empty"),
        (
            &b"OOMPSERI\x07\0\0\0\x10\0\0\0"[..],
            "unknown format version 7 (this agent reads 1 and 2)",
        ),
    ] {
        std::fs::write(&store, bytes).unwrap();
        let o = oomprobe()
            .args(["report", "--state-dir", arg(&dir.0), "--svg", arg(&svg)])
            .output()
            .unwrap();
        assert_eq!(
            refusal(&o),
            format!(
                "oomprobe: error: series store {} is corrupt: {why}",
                store.display()
            )
        );
        // Read only: the store is left as it was.
        assert_eq!(std::fs::read(&store).unwrap(), bytes);
    }
}

/// `report` reading a store (`--state-dir`, default /var/lib/oomprobe) says which on stderr, one
/// line: a report of the default directory's store is not drawn silently; `--svg` alone is a
/// whole command (no `--html` needed).
#[test]
fn report_names_the_store_it_read() {
    let dir = Scratch::new("report-store");
    let store = dir.path("series.bin");
    {
        let mut st = oomprobe::detect::store::Store::open(&store).unwrap();
        for i in 0..30 {
            st.append(oomprobe::detect::Sample {
                t: 1_790_000_000 + i * 60,
                kubelet_rss_bytes: 100e6 + i as f64 * 1e5,
                pods: 3.0,
                ..Default::default()
            })
            .unwrap();
        }
    }
    let svg = dir.path("r.svg");
    let o = oomprobe()
        .args(["report", "--state-dir", arg(&dir.0), "--svg", arg(&svg)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let said: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("oomprobe report:"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        said,
        [format!(
            "oomprobe report: series from the store {} (--state-dir {}): 30 samples",
            store.display(),
            dir.0.display()
        )]
    );
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

/// A store whose every record is invalid is said to be so, with the count, by `report` (a
/// refusal) and `diagnose` (the leak verdict's reason), not taken for an empty history.
#[test]
fn a_store_of_only_invalid_records_is_named_not_no_history() {
    let dir = Scratch::new("invalid-store");
    let store = dir.path("series.bin");
    {
        let mut st = oomprobe::detect::store::Store::open(&store).unwrap();
        for i in 0..3 {
            st.append(oomprobe::detect::Sample {
                t: 1_790_000_000 + i * 60,
                kubelet_rss_bytes: -1.0,
                pods: 3.0,
                ..Default::default()
            })
            .unwrap();
        }
    }
    let bytes = std::fs::read(&store).unwrap();
    let why = "holds no valid sample: all 3 records rejected as invalid (a time or a value out of range, or a required value missing)";
    let svg = dir.path("r.svg");
    let o = oomprobe()
        .args(["report", "--state-dir", arg(&dir.0), "--svg", arg(&svg)])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!("oomprobe: error: series store {} {why}", store.display())
    );
    let o = oomprobe()
        .args([
            "diagnose",
            "--format",
            "json",
            "--kubelet-name",
            "no-such-kubelet",
        ])
        .args(["--state-dir", arg(&dir.0)])
        .output()
        .unwrap();
    let verdict = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|c| c["check"] == "leak_verdict")
        .unwrap();
    assert_eq!(verdict["value"], serde_json::Value::Null, "{verdict}");
    assert_eq!(
        verdict["detail"],
        format!("series store {} {why}: no leak verdict", store.display()),
        "{verdict}"
    );
    // Read only: the store is left as it was.
    assert_eq!(std::fs::read(&store).unwrap(), bytes);
}

/// `report --csv` given the agent's store (or bytes that are not text) says what the file is
/// and which flag reads a store, not a raw UTF-8 error.
#[test]
fn report_csv_given_a_store_points_to_state_dir() {
    let dir = Scratch::new("store-as-csv");
    let store = dir.path("series.bin");
    {
        let mut st = oomprobe::detect::store::Store::open(&store).unwrap();
        st.append(oomprobe::detect::Sample {
            t: 1_790_000_000,
            kubelet_rss_bytes: 5e7,
            pods: 3.0,
            ..Default::default()
        })
        .unwrap();
    }
    let other = dir.path("copy.bin");
    std::fs::copy(&store, &other).unwrap();
    let binary = dir.path("b.csv");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    let svg = dir.path("r.svg");
    let run = |csv: &Path| {
        oomprobe()
            .args(["report", "--csv", arg(csv), "--svg", arg(&svg)])
            .output()
            .unwrap()
    };
    let is_store = "is not CSV: it is the agent's series store (OOMPSERI magic); report reads a store with --state-dir";
    assert_eq!(
        refusal(&run(&store)),
        format!(
            "oomprobe: error: {} {is_store} {} (its directory)",
            store.display(),
            dir.0.display()
        )
    );
    assert_eq!(
        refusal(&run(&other)),
        format!(
            "oomprobe: error: {} {is_store} DIR, the directory of a file named series.bin (a copy of it, uncompressed); `oomprobe replay FILE` reads it as it is",
            other.display()
        )
    );
    assert_eq!(
        refusal(&run(&binary)),
        format!(
            "oomprobe: error: {} is not CSV text (not UTF-8; nor the agent's series store, no OOMPSERI magic)",
            binary.display()
        )
    );
}

/// A workload verdict's text line gives the pods' growth as `workload_slope=` beside `slope=`
/// (the kubelet's baseline slope, flat here); the JSON keeps `slope_bytes_per_day` the kubelet's
/// and the workload finding's value is the same figure.
#[test]
fn replay_labels_the_workload_slope() {
    let dir = Scratch::new("workload-slope");
    let csv = trace(&dir, "workload", "5");
    let o = oomprobe().args(["replay", arg(&csv)]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.contains(" final subject=workload "), "{last}");
    let mb = |key: &str, line: &str| -> f64 {
        let v = line.split(&format!(" {key}=")).nth(1).unwrap();
        v[..v.find("MB/day").unwrap()].parse().unwrap()
    };
    let (kubelet, workload) = (mb("slope", last), mb("workload_slope", last));
    assert!(kubelet.abs() < 100.0 && workload > 300.0, "{last}");
    let o = oomprobe()
        .args(["replay", "--format", "json", arg(&csv)])
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8(o.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(v["subject"], "workload");
    let finding = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["detector"] == "workload_trend")
        .unwrap();
    assert_eq!((finding["value"].as_f64().unwrap() / 1e6).round(), workload);
    assert_eq!(
        (v["slope_bytes_per_day"].as_f64().unwrap() / 1e6).round(),
        kubelet
    );
}

/// The exit contract: 2 when any check is BAD (the checks are printed), and the stage of a
/// machine without a kubelet process: `active_oom_or_down` where a kubepods cgroup tree says a
/// kubelet set this node up, else `no_kubelet` (unknown). A --kubeconfig that is not one is
/// refused (exit 1) and never quoted.
#[test]
fn diagnose_without_a_kubelet_exits_2_and_names_the_stage() {
    let dir = Scratch::new("diag");
    let kc = write_csv(&dir, "kubeconfig", "eyJhbGciOiJSUzI1NiJ9.s3cret\n");
    let diagnose = || {
        let mut c = oomprobe();
        c.args([
            "diagnose",
            "--format",
            "json",
            "--kubelet-name",
            "no-such-kubelet",
        ])
        .args(["--state-dir", arg(&dir.path("state"))]);
        c
    };
    let o = diagnose()
        .args(["--kubeconfig", arg(&kc)])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!(
            "oomprobe: error: {} is not a kubeconfig: its YAML does not parse at line 1, column 1 (contents not shown: a kubeconfig may hold credentials)",
            kc.display()
        )
    );
    assert!(o.stdout.is_empty() && !stderr(&o).contains("s3cret"));
    let o = diagnose().output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    let checks: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str| checks.iter().find(|c| c["check"] == name).unwrap().clone();
    assert_eq!(find("kubelet_rss")["verdict"], "bad");
    assert_eq!(
        find("memory_pressure")["detail"],
        "not checked: no API server (not in a cluster; pass --kubeconfig or --kube-api)"
    );
    let kubepods = oomprobe::cgroup::Hierarchy::detect().is_some_and(|h| {
        oomprobe::sampler::KUBEPODS_ROOTS
            .iter()
            .any(|r| h.dir(r).is_dir())
    });
    let stage = find("stage");
    if kubepods {
        assert_eq!(stage["value"], "active_oom_or_down");
        assert_eq!(stage["verdict"], "bad");
    } else {
        assert_eq!(stage["value"], "no_kubelet");
        assert_eq!(stage["verdict"], "unknown");
    }
}

/// A `series.bin` that exists but cannot be read (a symlink loop, a directory) is named with
/// why by diagnose, report and replay; only one that does not exist is "no store".
#[test]
fn an_unreadable_store_is_named_not_taken_for_no_store() {
    let dir = Scratch::new("storeloop");
    let (lp, dp, np) = (dir.path("loop"), dir.path("dir"), dir.path("none"));
    for d in [&lp, &dp, &np] {
        std::fs::create_dir(d).unwrap();
    }
    std::os::unix::fs::symlink("series.bin", lp.join("series.bin")).unwrap();
    std::fs::create_dir(dp.join("series.bin")).unwrap();
    let eloop = "Too many levels of symbolic links (os error 40)";
    let verdict = |state: &Path| {
        let o = oomprobe()
            .args([
                "diagnose",
                "--format",
                "json",
                "--kubelet-name",
                "no-such-kubelet",
            ])
            .args(["--state-dir", arg(state)])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let v: serde_json::Value = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|c| c["check"] == "leak_verdict")
            .unwrap();
        assert_eq!(v["verdict"], "unknown", "{v}");
        v["detail"].as_str().unwrap().to_string()
    };
    let store = |d: &Path| d.join("series.bin").display().to_string();
    assert_eq!(
        verdict(&lp),
        format!("series store {}: {eloop}: no leak verdict", store(&lp))
    );
    assert_eq!(
        verdict(&dp),
        format!(
            "series store {}: not a regular file: no leak verdict",
            store(&dp)
        )
    );
    assert!(verdict(&np).starts_with(&format!("no series in {}:", store(&np))));
    let svg = dir.path("r.svg");
    let events = write_csv(&dir, "events.jsonl", "");
    for extra in [vec![], vec!["--events", arg(&events)]] {
        let o = oomprobe()
            .args(["report", "--state-dir", arg(&lp), "--svg", arg(&svg)])
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(
            refusal(&o),
            format!("oomprobe: error: series store {}: {eloop}", store(&lp)),
            "{extra:?}"
        );
    }
    let o = oomprobe().args(["replay", &store(&lp)]).output().unwrap();
    assert_eq!(
        refusal(&o),
        format!("oomprobe: error: cannot read {}: {eloop}", store(&lp))
    );
}

/// A dynamically linked C/Rust binary (this test's own): the points of the libc it loads,
/// exactly those the agent would attach (`Binary::needed_libc`, then the libc's points).
#[test]
fn probe_points_of_a_dynamic_binary_are_its_libcs() {
    use oomprobe::kubelet::symbols::Binary;
    let exe = std::env::current_exe().unwrap();
    let libc = Binary::open(&exe)
        .unwrap()
        .needed_libc(Path::new("/"))
        .expect("this test binary loads libc.so.6");
    let want: Vec<serde_json::Value> = Binary::open(&libc)
        .unwrap()
        .probe_points()
        .unwrap()
        .iter()
        .map(|p| {
            // The point, and the file its offset is into.
            let mut v = serde_json::to_value(p).unwrap();
            v["file"] = libc.to_str().unwrap().into();
            v
        })
        .collect();
    assert!(want.iter().any(|p| p["role"] == "libc_mmap"), "{want:?}");
    let o = oomprobe()
        .args(["probe-points", "--format", "json", arg(&exe)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, want);
    // The text names the file too, on every line.
    let o = oomprobe()
        .args(["probe-points", arg(&exe)])
        .output()
        .unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), want.len());
    let tail = format!(" file={}", libc.display());
    assert!(text.lines().all(|l| l.ends_with(&tail)), "{text}");
    let o = to_dev_full(oomprobe().args(["probe-points", arg(&exe)]));
    assert_eq!(refusal(&o), NO_SPACE);
    let o = to_closed_pipe(oomprobe().args(["probe-points", arg(&exe)]));
    assert_eq!(o.status.code(), Some(141), "{}", stderr(&o));
}

/// A Go binary's points are into the binary itself: no `file` field, none in the text.
#[test]
fn probe_points_of_a_go_binary_name_no_other_file() {
    let gofmt = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/local/go/bin")])
        .map(|d| d.join("gofmt"))
        .find(|p| p.is_file())
        .expect("no gofmt (Go toolchain) in PATH or /usr/local/go/bin: this test needs a real Go executable");
    for format in ["json", "text"] {
        let o = oomprobe()
            .args(["probe-points", "--format", format, arg(&gofmt)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains("runtime.sysFree"), "{out}");
        assert!(!out.contains("file"), "{out}");
    }
}

/// A --kubelet-metrics-token-file that cannot be read is named in the kubelet_metrics check
/// and no request goes out (it used to go out without an Authorization header, unremarked).
#[test]
fn diagnose_names_a_bad_token_file_and_sends_nothing() {
    let dir = Scratch::new("diagtoken");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let o = oomprobe()
        .args(["diagnose", "--format", "json", "--kubelet-metrics", &url])
        .args(["--kubelet-metrics-token-file", "/dev/zero"])
        .args(["--state-dir", arg(&dir.path("state"))])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(1), "{}", stderr(&o));
    let check = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|c| c["check"] == "kubelet_metrics")
        .unwrap();
    assert_eq!(
        check["detail"],
        "cannot read bearer token file /dev/zero: not a regular file"
    );
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a request went out without the token"
    );
}

/// A `sleep 30` run as `averyverylongkubeletname` (a name longer than the kernel's 15-byte
/// comm, never `kubelet`), returned once exec has set its comm.
fn long_named_sleep(dir: &Scratch) -> std::process::Child {
    let exe = dir.path("averyverylongkubeletname");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let child = Command::new(&exe).arg("30").spawn().unwrap();
    // The comm is set by exec after spawn has returned (vfork): wait for it.
    let comm = format!("/proc/{}/comm", child.id());
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&comm).ok().as_deref() != Some("averyverylongku\n")
        && t0.elapsed().as_secs() < 5
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child
}

/// Serves `body` as the HTTP answer to every connection on a loopback port; the URL.
fn serve(body: &'static str) -> String {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    url
}

/// Every numeric value of `diagnose --format json` is a JSON number (bytes and counts as
/// integers, seconds and ratios as floats) with its `unit`, a yes/no is a boolean, and each
/// check's own figures are fields named with their units; the text keeps its readable values.
#[test]
fn diagnose_json_values_are_typed() {
    // Recorded from a kubelet under stress (trimmed), as tests/tests/diagnose.rs serves it.
    const RECORDED: &str = "# TYPE kubelet_goroutines gauge\n\
kubelet_goroutines{operation=\"pod_worker\"} 410\n\
kubelet_goroutines{operation=\"volume\"} 200\n\
# TYPE kubelet_pleg_relist_duration_seconds histogram\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"0.5\"} 50\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"10\"} 90\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"30\"} 100\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"+Inf\"} 100\n\
kubelet_evictions_total{eviction_signal=\"memory.available\"} 3\n\
kubelet_running_containers{container_state=\"exited\"} 212\n\
kubelet_running_containers{container_state=\"running\"} 45\n\
kubernetes_feature_enabled{name=\"EventedPLEG\",stage=\"ALPHA\"} 0\n\
kubernetes_feature_enabled{name=\"PodCertificateRequest\",stage=\"ALPHA\"} 1\n";
    let dir = Scratch::new("typed");
    // Two hours of a flat kubelet in the agent's own store: an insufficient history.
    {
        let mut st = oomprobe::detect::store::Store::open(&dir.path("state/series.bin")).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for i in 0..120 {
            st.append(oomprobe::detect::Sample {
                t: now - 7200 + i * 60,
                kubelet_rss_bytes: 300e6,
                pods: 10.0,
                ..Default::default()
            })
            .unwrap();
        }
    }
    let url = serve(RECORDED);
    let mut child = long_named_sleep(&dir);
    let run = |format: &str| {
        oomprobe()
            .args(["diagnose", "--format", format, "--kubelet-metrics", &url])
            .args(["--kubelet-name", "averyverylongkubeletname"])
            .args(["--state-dir", arg(&dir.path("state"))])
            .output()
            .unwrap()
    };
    let (json, text) = (run("json"), run("text"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(json.status.code(), Some(2), "{}", stderr(&json));
    let lines = String::from_utf8(json.stdout).unwrap();
    let checks: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} in {checks:?}"))
            .clone()
    };
    // The order: check, value, unit, verdict, detail, then the check's own figures.
    let line = lines
        .lines()
        .find(|l| l.contains(r#""check":"kubelet_rss""#))
        .unwrap();
    assert!(
        line.starts_with(r#"{"check":"kubelet_rss","value":"#),
        "{line}"
    );
    assert!(
        line.contains(r#","unit":"bytes","verdict":"good","detail":"pid "#),
        "{line}"
    );
    let rss = find("kubelet_rss");
    assert!(rss["value"].as_u64().is_some_and(|b| b > 0), "{rss}");
    assert_eq!(rss["unit"], "bytes");
    assert_eq!(rss["pid"].as_u64(), Some(u64::from(child.id())), "{rss}");
    assert_eq!(
        rss["anon_bytes"].as_u64().unwrap()
            + rss["file_bytes"].as_u64().unwrap()
            + rss["shmem_bytes"].as_u64().unwrap(),
        rss["value"].as_u64().unwrap(),
        "{rss}"
    );
    let up = find("kubelet_uptime");
    assert!(up["value"].as_f64().is_some_and(|s| s < 60.0), "{up}");
    assert_eq!(up["unit"], "seconds");
    for (name, value, unit) in [
        ("kubelet_goroutines", serde_json::json!(610), "count"),
        ("pleg_relist_p99", serde_json::json!(28.0), "seconds"),
        ("exited_containers", serde_json::json!(212), "count"),
        ("memory_evictions", serde_json::json!(3), "count"),
        ("pleg_relists_slow", serde_json::json!(0.1), "ratio"),
    ] {
        let c = find(name);
        assert_eq!(
            (&c["value"], c["unit"].as_str()),
            (&value, Some(unit)),
            "{c}"
        );
    }
    assert_eq!(find("exited_containers")["running_containers"], 45);
    let slow = find("pleg_relists_slow");
    assert_eq!(slow["relists"], 100);
    assert_eq!(
        slow["slower_1s_ratio"],
        serde_json::Value::Null,
        "no 1 s bucket served"
    );
    assert_eq!(
        slow["slower_5s_ratio"],
        serde_json::Value::Null,
        "no 5 s bucket served"
    );
    assert_eq!(slow["slower_10s_ratio"], 0.1);
    let gates = find("feature_gates");
    assert_eq!(
        (
            &gates["value"],
            &gates["evented_pleg"],
            &gates["pod_certificate_request"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(true)
        ),
        "{gates}"
    );
    let node = find("node_oom_kills");
    assert!(node["value"].is_u64() && node["unit"] == "count", "{node}");
    let kernel = find("cgroup_and_kernel");
    assert!(kernel["value"].is_boolean(), "{kernel}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(kernel["kernel"], release.trim());
    assert!(kernel["cgroup_version"].is_u64(), "{kernel}");
    let verdict = find("leak_verdict");
    assert_eq!(verdict["value"], "insufficient_history");
    assert_eq!(
        (&verdict["samples"], &verdict["cause"]),
        (&serde_json::json!(120), &serde_json::json!("none"))
    );
    // Too little history: the slope is unknown, not 0.
    assert!(verdict["slope_bytes_per_day"].is_null(), "{verdict}");
    assert_eq!(find("memory_pressure")["value"], serde_json::Value::Null);
    assert!(find("stage")["value"].is_string());
    // The text keeps its readable values.
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("212 exited, 45 running"), "{text}");
    assert!(text.contains("28.00 s"), "{text}");
}

/// A kubelet whose name is longer than the kernel's 15-byte comm is found by its full name.
#[test]
fn diagnose_finds_a_kubelet_with_a_long_name() {
    let dir = Scratch::new("longname");
    let mut child = long_named_sleep(&dir);
    let o = oomprobe()
        .args(["diagnose", "--format", "json"])
        .args(["--kubelet-name", "averyverylongkubeletname"])
        .args(["--state-dir", arg(&dir.path("state"))])
        .output()
        .unwrap();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let rss = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|c| c["check"] == "kubelet_rss")
        .unwrap();
    assert_eq!(rss["verdict"], "good", "{rss}");
    assert!(
        rss["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pid {pid}:")),
        "{rss}"
    );
}

/// Flag values that mean nothing are refused at parsing, naming the flag.
#[test]
fn meaningless_diagnose_flags_are_refused() {
    for (args, want) in [
        (
            vec!["diagnose", "--kubelet-name", ""],
            "error: invalid value '' for '--kubelet-name <KUBELET_NAME>': a process name cannot be empty",
        ),
        (
            vec!["diagnose", "--kubepods-root", ""],
            "error: invalid value '' for '--kubepods-root <KUBEPODS_ROOT>': a cgroup path cannot be empty",
        ),
        (
            vec!["diagnose", "--kube-api", ""],
            "error: invalid value for '--kube-api': a URL cannot be empty (leave the flag out instead)",
        ),
        (
            vec!["run", "--kube-api", ""],
            "error: invalid value for '--kube-api': a URL cannot be empty (leave the flag out instead)",
        ),
        (
            vec!["diagnose", "--kubelet-metrics", ""],
            "error: invalid value for '--kubelet-metrics': a URL cannot be empty (leave the flag out instead)",
        ),
        (
            vec!["run", "--kubelet-metrics", " "],
            "error: invalid value for '--kubelet-metrics': a URL cannot be empty (leave the flag out instead)",
        ),
        // Not a URL: refused at parsing (diagnose used to run and exit 0), the value not
        // echoed (it may be a token pasted into the wrong flag).
        (
            vec!["diagnose", "--kubelet-metrics", "not a url"],
            "error: invalid value for '--kubelet-metrics': not a URL (relative URL without a base; the value is not shown): an http or https URL, e.g. https://10.0.0.1:6443 (--kube-api) or https://10.0.0.1:10250/metrics (--kubelet-metrics)",
        ),
        (
            vec!["run", "--kube-api", "s3cr3t-token"],
            "error: invalid value for '--kube-api': not a URL (relative URL without a base; the value is not shown): an http or https URL, e.g. https://10.0.0.1:6443 (--kube-api) or https://10.0.0.1:10250/metrics (--kubelet-metrics)",
        ),
        (
            vec!["diagnose", "--kubelet-metrics", "file:///etc/passwd"],
            "error: invalid value for '--kubelet-metrics': file:///etc/passwd: the scheme must be http or https",
        ),
        (
            vec!["diagnose", "--node-name", ""],
            "error: invalid value '' for '--node-name <NODE_NAME>': a node name cannot be empty (without --node-name: the hostname)",
        ),
        (
            vec!["run", "--node-name", "../x"],
            "error: invalid value '../x' for '--node-name <NODE_NAME>': \"../x\": not a Kubernetes node name (lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit; at most 253 bytes)",
        ),
        (
            vec!["diagnose", "--kubepods-root", "../../etc"],
            "error: invalid value '../../etc' for '--kubepods-root <KUBEPODS_ROOT>': \"../../etc\": a cgroup path is absolute in the memory hierarchy, e.g. /kubepods or /kubepods.slice",
        ),
        (
            vec!["run", "--kubepods-root", "/kubepods/../../etc"],
            "error: invalid value '/kubepods/../../etc' for '--kubepods-root <KUBEPODS_ROOT>': \"/kubepods/../../etc\": a cgroup path cannot have '.' or '..' components",
        ),
        (
            vec!["diagnose", "--eviction-hard-memory", "0"],
            "error: invalid value '0' for '--eviction-hard-memory <EVICTION_HARD_MEMORY>': \"0\": must be positive, as the kubelet requires (a kubelet without a memory.available threshold: 0%)",
        ),
    ] {
        let o = oomprobe().args(&args).output().unwrap();
        assert_eq!(refusal(&o), want, "{args:?}");
    }
    // What the kubelet accepts is accepted (both used to be refused).
    let dir = Scratch::new("evict");
    for v in ["1.5Gi", "10%"] {
        let o = oomprobe()
            .args(["diagnose", "--eviction-hard-memory", v])
            .args(["--state-dir", arg(&dir.path("state"))])
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(1), "{v}: {}", stderr(&o));
    }
}

/// Pods under a `--kubepods-root` of the operator's are counted, and its tree says a kubelet
/// set this node up (diagnose used to look only under /kubepods and /kubepods.slice).
#[test]
fn diagnose_counts_pods_under_the_kubepods_root_given() {
    let memory = Path::new("/sys/fs/cgroup/memory");
    let unified = Path::new("/sys/fs/cgroup");
    let base = if memory.is_dir() { memory } else { unified };
    let root = format!("/oomprobe-cli-{}-kubepods", std::process::id());
    let pod = base
        .join(&root[1..])
        .join("pod0b4f3a5c-1111-2222-3333-444455556666");
    let container = pod.join("c0ffee");
    std::fs::create_dir_all(&container).unwrap_or_else(|e| {
        panic!(
            "this test needs root to create the cgroup {}: {e}",
            container.display()
        )
    });
    let dir = Scratch::new("podsroot");
    let o = oomprobe()
        .args([
            "diagnose",
            "--format",
            "json",
            "--kubelet-name",
            "no-such-kubelet",
        ])
        .args(["--kubepods-root", &root])
        .args(["--state-dir", arg(&dir.path("state"))])
        .output()
        .unwrap();
    std::fs::remove_dir(&container).unwrap();
    std::fs::remove_dir(&pod).unwrap();
    std::fs::remove_dir(base.join(&root[1..])).unwrap();
    let checks: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str| checks.iter().find(|c| c["check"] == name).unwrap().clone();
    let containers = find("containers");
    assert_eq!(
        (&containers["value"], &containers["pods"]),
        (&serde_json::json!(1), &serde_json::json!(1))
    );
    assert_eq!(find("stage")["value"], "active_oom_or_down");
}

/// A --kubeconfig given by name that cannot be used is refused before any check: exit 1, one
/// line naming the file, nothing on stdout (not an unknown memory_pressure row). `run` refuses
/// it the same way before it loads anything or needs privileges (it used to log "disabled: no
/// API client" and run on, so `--act cordon --act-confirm` with a mistyped kubeconfig silently
/// cordoned nothing); so are its --kube-token-file and --kube-ca-file.
#[test]
fn diagnose_and_run_refuse_a_bad_kubeconfig_by_name() {
    let dir = Scratch::new("kubeconfig");
    let state = dir.path("state");
    let missing = dir.path("missing");
    let fifo = dir.path("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Were the refusal to fail, `run` would still stop before loading anything: the ring
    // recording cannot be created (no such directory).
    let ring = dir.path("no-such-dir/ring");
    for (kc, why) in [
        ("/dev/zero".to_string(), "not a regular file".to_string()),
        (arg(&dir.0).to_string(), "not a regular file".to_string()),
        (arg(&fifo).to_string(), "not a regular file".to_string()),
        (
            arg(&missing).to_string(),
            "No such file or directory (os error 2)".to_string(),
        ),
    ] {
        let want = format!("oomprobe: error: cannot use kubeconfig file {kc}: {why}");
        let o = oomprobe()
            .args(["diagnose", "--state-dir", arg(&state), "--kubeconfig", &kc])
            .output()
            .unwrap();
        assert_eq!(refusal(&o), want);
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let o = oomprobe()
            .args(["run", "--state-dir", arg(&state), "--kubeconfig", &kc])
            .args(["--act", "cordon", "--act-confirm", "--duration", "1"])
            .args(["--record-ring", arg(&ring)])
            .output()
            .unwrap();
        assert_eq!(refusal(&o), want, "run");
    }
    for (args, want) in [
        (
            vec![
                "--kube-api",
                "https://127.0.0.1:1",
                "--kube-token-file",
                arg(&fifo),
            ],
            format!("cannot use token file {}: not a regular file", arg(&fifo)),
        ),
        (
            vec!["--kube-ca-file", arg(&missing)],
            format!("CA file {} does not exist", arg(&missing)),
        ),
    ] {
        for verb in ["diagnose", "run"] {
            let o = oomprobe()
                .args([verb, "--state-dir", arg(&state)])
                .args(&args)
                .args(match verb {
                    "run" => vec!["--duration", "1", "--record-ring", arg(&ring)],
                    _ => vec![],
                })
                .output()
                .unwrap();
            assert_eq!(refusal(&o), format!("oomprobe: error: {want}"), "{verb}");
        }
    }
}

/// A stripped static C binary (built here with the C compiler the Rust build links with):
/// no uprobe point; the refusal says `run` counts such a kubelet's syscalls instead.
#[test]
fn probe_points_of_a_stripped_static_c_binary_name_the_syscalls_fallback() {
    let dir = Scratch::new("static");
    let src = dir.path("a.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let bin = dir.path("a");
    let cc = Command::new("cc")
        .args(["-static", "-s", "-o", arg(&bin), arg(&src)])
        .output()
        .expect("cc (the C compiler the Rust build links with)");
    assert!(cc.status.success(), "cc: {}", stderr(&cc));
    let o = oomprobe()
        .args(["probe-points", arg(&bin)])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!(
            "oomprobe: error: {} is neither a Go binary nor linked with libc's mmap/brk: nothing to probe; `oomprobe run` counts such a kubelet's anonymous mmap/munmap syscalls instead (kubelet_memory mode `syscalls`)",
            arg(&bin)
        )
    );
}

/// A stderr that cannot be written (a full disk under the log file): an error still exits 1,
/// a warning does not stop the verb, gen-trace still writes its trace; never a panic (101).
#[test]
fn a_full_disk_on_stderr_is_never_a_panic() {
    let dir = Scratch::new("stderr-full");
    let csv = write_csv(
        &dir,
        "warn.csv",
        "time,kubelet_rss_bytes,pods,zzz\n1790000000,100000000,3,1\n",
    );
    let run = |args: &[&str]| {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        oomprobe()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(full)
            .output()
            .unwrap()
    };
    assert_eq!(
        run(&["replay", "/nonexistent/series.csv"]).status.code(),
        Some(1)
    );
    assert_eq!(
        run(&["probe-points", "/nonexistent/kubelet"]).status.code(),
        Some(1)
    );
    // The unknown column's warning is lost; the replay itself runs.
    let o = run(&["replay", arg(&csv)]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!o.stdout.is_empty());
    let o = run(&["gen-trace", "healthy", "--days", "1"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("time,"));
}

/// `report --html FIFO`: refused at once (opening a FIFO nobody reads blocks forever).
#[test]
fn report_refuses_a_fifo_as_its_output() {
    let dir = Scratch::new("report-fifo");
    let csv = write_csv(
        &dir,
        "s.csv",
        "time,kubelet_rss_bytes,pods\n1790000000,100000000,3\n1790000060,100000000,3\n",
    );
    let fifo = dir.path("out.html");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = oomprobe()
        .args(["report", "--csv", arg(&csv), "--html", arg(&fifo)])
        .output()
        .unwrap();
    assert_eq!(
        refusal(&o),
        format!(
            "oomprobe: error: cannot write {}: a FIFO or socket, not a file to write",
            fifo.display()
        )
    );
}

/// A kubeconfig's exec credential plugin runs bounded: one that prints without end is stopped
/// at 1 MiB (kube-rs read it whole: `cat /dev/zero` grew diagnose to 16 GB in 20 s), and one
/// that fails has its output, which may hold a token, never shown.
#[test]
fn diagnose_bounds_a_kubeconfigs_exec_plugin() {
    let dir = Scratch::new("exec-plugin");
    let state = dir.path("state");
    let kc = dir.path("kubeconfig");
    // The token is in the plugin's output only (kube-rs's error names the command line).
    let plugin = dir.path("plugin.sh");
    std::fs::write(&plugin, "echo s3cret-token\nexit 3\n").unwrap();
    let failing = format!("[{:?}]", arg(&plugin));
    for (command, args, said) in [
        (
            "/bin/cat",
            r#"["/dev/zero"]"#,
            "the kubeconfig's exec credential plugin /bin/cat printed more than 1048576 bytes",
        ),
        (
            "/bin/sh",
            failing.as_str(),
            "the kubeconfig's exec credential plugin /bin/sh failed (exit status: 3)",
        ),
    ] {
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
                 clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
                 users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {command}\n      args: {args}\n\
                 contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n"
            ),
        )
        .unwrap();
        let o = oomprobe()
            .args([
                "diagnose",
                "--format",
                "json",
                "--state-dir",
                arg(&state),
                "--node-name",
                "n1",
                "--kubeconfig",
                arg(&kc),
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(stderr(&o).contains(said), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(!out.contains("s3cret") && !stderr(&o).contains("s3cret"));
        // The token's bytes as kube-rs's error printed the plugin's output: "s3cret" is
        // [115, 51, 99, 114, 101, 116].
        assert!(!out.contains("115, 51, 99, 114, 101, 116"), "{out}");
        assert!(
            out.lines().any(|l| l.contains("\"memory_pressure\"")),
            "{out}"
        );
    }
}
