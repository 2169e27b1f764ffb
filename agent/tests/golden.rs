//! Golden test: the same recorded input gives byte-identical output before and after a
//! refactoring. The expected files were written by the code at commit 63173ac (see
//! `tests/data/golden/README.md`); this test must keep matching them byte for byte.
//!
//! Inputs: two ring-buffer event streams (raw wire records, as read from the `EVENTS` ring)
//! fed through decode -> correlator -> cycle without a kernel: `ring-recorded.hex`, recorded from
//! this kernel by `oomprobe run --record-ring` (`cargo xtask golden --record`), and
//! `ring-synth.hex`, SYNTHESISED from probe-common's wire structs for the corner cases a kernel
//! cannot be made to produce on demand (`cargo xtask golden --synth`); and a series CSV replayed
//! through `oomprobe replay`. `cargo xtask golden --bless` re-writes the expected files.
use std::{fmt::Write as _, path::PathBuf};

use oomprobe::{
    cgroup::MemcgState,
    clock::Clock,
    cycle::{Cycle, CycleConfig, KubeletNow, Party, StageEvent},
    detect::{offline::csv, Engine, Verdict},
    forensics::{Correlator, KillRecord, Node, ProcSnapshot},
    kernel::{
        events::{self, Event},
        probes::{Kernel, ProbeError},
        ring::{Item, QUIET_MARGIN_NS},
    },
    kubelet::{metrics::Latest, tracker::Target},
    metrics::Metrics,
    output::{Output, OutputFormat, Sink, Text},
    pipeline::{Pipeline, PipelineConfig},
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The node at replay time of the recorded stream: its processes have exited and its scratch
/// cgroups are gone, so procfs and cgroupfs answer nothing; what the records say comes from the
/// ring alone.
struct GoneNode;

impl Node for GoneNode {
    fn snapshot(&self, _: u32) -> Option<ProcSnapshot> {
        None
    }
    fn oom_domain(&self, _: Option<&str>, _: Option<&str>) -> Option<MemcgState> {
        None
    }
    fn memcg_state(&self, _: &str) -> Option<MemcgState> {
        None
    }
    fn cgroup_by_id(&self, _: u64) -> Option<String> {
        None
    }
}

/// The node as the synthesised stream has it answer: procfs for the signalled processes,
/// cgroupfs for the OOM domains, the cgroup id index for truncated paths.
struct RecordedNode;

fn domain(path: &str, limit: u64, usage: u64) -> MemcgState {
    MemcgState {
        path: path.into(),
        limit_bytes: Some(limit),
        usage_bytes: Some(usage),
        peak_bytes: Some(usage),
        failcnt: Some(12),
        oom_events: Some(1),
        oom_group: Some(false),
        source: "cgroup_files",
    }
}

impl Node for RecordedNode {
    fn snapshot(&self, pid: u32) -> Option<ProcSnapshot> {
        match pid {
            4201 => Some(ProcSnapshot {
                tgid: Some(4201),
                cgroup: Some(
                    "/kubepods/burstable/pod1f2e3d4c-0000-4000-8000-00000000a001/ctr1".into(),
                ),
                anon_rss_kb: Some(20480),
                file_rss_kb: Some(1024),
                shmem_rss_kb: Some(4),
            }),
            4302 => Some(ProcSnapshot {
                tgid: Some(4300),
                cgroup: Some("/system.slice/app.service".into()),
                anon_rss_kb: Some(512),
                file_rss_kb: Some(256),
                shmem_rss_kb: Some(0),
            }),
            _ => None,
        }
    }
    fn oom_domain(&self, trigger: Option<&str>, victim: Option<&str>) -> Option<MemcgState> {
        match trigger.or(victim) {
            Some(p) if p.starts_with("/oomprobe-test") => {
                Some(domain("/oomprobe-test-1", 32 << 20, 32 << 20))
            }
            Some(p) if p.starts_with("/kubepods") => {
                Some(domain("/kubepods/burstable", 256 << 20, 255 << 20))
            }
            _ => None,
        }
    }
    fn memcg_state(&self, path: &str) -> Option<MemcgState> {
        (path == "/kubelet.slice").then(|| domain(path, 512 << 20, 511 << 20))
    }
    fn cgroup_by_id(&self, id: u64) -> Option<String> {
        (id == 777).then(|| "/kubepods/besteffort/pod9/a/b/c/d/e/f/g/h/deep".to_string())
    }
}

fn kubelet_now(pid: u32, rss_mib: u64) -> KubeletNow {
    KubeletNow {
        pid,
        rss_bytes: rss_mib << 20,
        usage_bytes: Some(rss_mib << 20),
        limit_bytes: Some(512 << 20),
        mapped_bytes: 4096 * rss_mib,
        cpu_seconds: 1.5,
        node_available_bytes: None,
        node_total_bytes: None,
    }
}

// The renderings go through the agent's one output type, as `oomprobe run` writes its stream.
fn json(out: Output) -> String {
    out.json()
}

fn text(out: Output) -> String {
    match out.text() {
        Text::Line(line) => line,
        _ => panic!("not a line of the text stream"),
    }
}

fn render_kill_json(rec: &KillRecord) -> String {
    json(Output::Kill(Box::new(rec.clone())))
}

fn render_kill_text(rec: &KillRecord) -> String {
    text(Output::Kill(Box::new(rec.clone())))
}

fn render_stage_json(ev: &StageEvent) -> String {
    json(Output::Stage(ev.clone()))
}

fn render_stage_text(ev: &StageEvent) -> String {
    text(Output::Stage(ev.clone()))
}

fn render_verdict_json(v: &Verdict) -> String {
    json(Output::Verdict(v.clone()))
}

fn render_verdict_text(v: &Verdict) -> String {
    text(Output::Verdict(v.clone()))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Everything the stream produced, rendered as the agent renders it.
struct Outputs {
    json: String,
    text: String,
    summary: String,
}

/// The run loop's expire tick (`cli/run.rs`).
const TICK_NS: u64 = 250_000_000;

/// Feeds a stream file through decode -> correlator -> cycle. A stream without `expire` lines
/// (a recording) gets the run loop's 250 ms ticks on the grid of its read times, and a last one
/// 10 s after its last record.
fn feed_ring_stream<N: Node>(name: &str, node: N) -> Outputs {
    let stream = read(name);
    let mut correlator = Correlator::new(node, Clock::with_offset(1_780_000_000_000_000_000));
    let ticks = !stream.lines().any(|l| l.starts_with("expire "));
    let mut next_tick: Option<u64> = None;
    let mut last_seen = 0u64;
    let mut cycle = Cycle::new(CycleConfig::default());
    let (mut json, mut text) = (String::new(), String::new());
    let mut decode_errors: Vec<String> = Vec::new();
    let mut kubelet_rss = 300u64;
    for line in stream
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut records = Vec::new();
        let mut stages = Vec::new();
        let (what, rest) = line.split_once(' ').unwrap();
        if ticks {
            let seen: u64 = what.parse().unwrap();
            last_seen = seen;
            let tick = next_tick.get_or_insert(seen + TICK_NS);
            while *tick <= seen {
                records.extend(correlator.expire(*tick));
                *tick += TICK_NS;
            }
        }
        if what == "expire" {
            let now: u64 = rest.parse().unwrap();
            records.extend(correlator.expire(now));
            kubelet_rss += 10;
            stages.extend(cycle.on_sample(now, kubelet_now(5050, kubelet_rss)));
        } else {
            let seen: u64 = what.parse().unwrap();
            match events::decode(&unhex(rest)) {
                Ok(Event::KubeletExec(e)) => {
                    stages.extend(cycle.on_kubelet_start(e.ktime_ns, kubelet_now(e.tgid, 300)));
                }
                Ok(ev) => records.extend(correlator.on_event_at(ev, Some(seen))),
                Err(e) => decode_errors.push(format!("{} {e}", e.reason())),
            }
        }
        for rec in records {
            json.push_str(&render_kill_json(&rec));
            json.push('\n');
            text.push_str(&render_kill_text(&rec));
            text.push('\n');
            let party = if rec.victim.comm == "kubelet" {
                Party::Kubelet
            } else {
                Party::Other
            };
            stages.extend(cycle.on_kill(&rec, party));
        }
        for ev in stages {
            json.push_str(&render_stage_json(&ev));
            json.push('\n');
            text.push_str(&render_stage_text(&ev));
            text.push('\n');
        }
    }
    if ticks {
        let records = correlator.expire(last_seen + 10_000_000_000);
        for rec in records {
            json.push_str(&render_kill_json(&rec));
            json.push('\n');
            text.push_str(&render_kill_text(&rec));
            text.push('\n');
            let party = if rec.victim.comm == "kubelet" {
                Party::Kubelet
            } else {
                Party::Other
            };
            if let Some(ev) = cycle.on_kill(&rec, party) {
                json.push_str(&render_stage_json(&ev));
                json.push('\n');
                text.push_str(&render_stage_text(&ev));
                text.push('\n');
            }
        }
    }
    let mut summary = String::new();
    let _ = writeln!(summary, "correlator: {:?}", correlator.stats);
    let _ = writeln!(summary, "pending: {}", correlator.pending_len());
    for e in decode_errors {
        let _ = writeln!(summary, "decode_error: {e}");
    }
    Outputs {
        json,
        text,
        summary,
    }
}

fn assert_same(name: &str, got: &str) {
    if std::env::var_os("OOMPROBE_GOLDEN_WRITE").is_some() {
        std::fs::write(data(name), got).unwrap();
        return;
    }
    let want = read(name);
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{name} differs from the recorded output at line {}:\nwant: {:?}\ngot:  {:?}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first)
        );
    }
}

#[test]
fn recorded_ring_stream_through_the_correlator_is_byte_identical() {
    let out = feed_ring_stream("ring-recorded.hex", GoneNode);
    assert_same("ring-recorded.expected.jsonl", &out.json);
    assert_same("ring-recorded.expected.txt", &out.text);
    assert_same("ring-recorded.expected.summary", &out.summary);
}

/// The kernel side of a replay: no programs, no maps. Attaching is refused, maps read empty.
struct NoKernel;

impl Kernel for NoKernel {
    fn attach_allocator(
        &mut self,
        _: &std::path::Path,
        _: &[oomprobe::kubelet::symbols::ProbePoint],
        _: Option<u32>,
    ) -> Result<usize, ProbeError> {
        Err(ProbeError::MissingProgram("(no kernel in a replay)"))
    }
    fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        Err(ProbeError::MissingProgram("(no kernel in a replay)"))
    }
    fn watch_tgid(&mut self, _: u32, _: probe_common::KubeletText) -> Result<(), ProbeError> {
        Err(ProbeError::MissingMap("(no kernel in a replay)"))
    }
    fn unwatch_tgid(&mut self, _: u32) {}
    fn watch_memcg(&mut self, _: u64) -> bool {
        true
    }
    fn reclaim_stats(&self) -> Vec<(u64, probe_common::ReclaimStats)> {
        Vec::new()
    }
    fn alloc_stats(&self) -> Vec<(probe_common::AllocKey, probe_common::AllocVal)> {
        Vec::new()
    }
    fn stack(&self, _: i64) -> Vec<u64> {
        Vec::new()
    }
    fn counters(&self) -> Vec<(probe_common::Counter, u64)> {
        Vec::new()
    }
}

/// The recorded stream through the agent's own `Pipeline` (`on_ring_batch`, `on_expire_at`):
/// each record a batch, the run loop's 250 ms expire tick on the grid of the read times and
/// one 10 s after the last record; what the pipeline writes to stdout, in `format`.
fn pipeline_lines(name: &str, format: OutputFormat) -> String {
    let state_dir = std::env::temp_dir().join(format!(
        "oomprobe-golden-{}-{name}-{format:?}",
        std::process::id()
    ));
    let (mut p, _) = golden_pipeline(format, &state_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut next_tick: Option<u64> = None;
    let mut last_seen = 0u64;
    rt.block_on(async {
        for line in read(name)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (seen, hex) = line.split_once(' ').unwrap();
            let seen: u64 = seen.parse().unwrap();
            last_seen = seen;
            let tick = next_tick.get_or_insert(seen + TICK_NS);
            while *tick <= seen {
                // The idle reader's quiet mark, then the loop's expire tick.
                let mark = Item::Quiet(tick.saturating_sub(QUIET_MARGIN_NS));
                p.on_ring_batch(std::iter::once(mark)).await;
                p.on_expire_at(*tick).await;
                *tick += TICK_NS;
            }
            let item = Item::Record(Box::new(events::decode(&unhex(hex))), seen);
            p.on_ring_batch(std::iter::once(item)).await;
        }
        let end = last_seen + 10_000_000_000;
        p.on_ring_batch(std::iter::once(Item::Quiet(end))).await;
        p.on_expire_at(end).await;
    });
    let mut out = p.take_output().join("\n");
    out.push('\n');
    drop(p);
    let _ = std::fs::remove_dir_all(&state_dir);
    out
}

/// The pipeline of the golden tests, writing to a capturing sink, with its metrics; the series
/// store in `state_dir` (the caller removes it).
fn golden_pipeline(
    format: OutputFormat,
    state_dir: &std::path::Path,
) -> (Pipeline<NoKernel, GoneNode>, std::sync::Arc<Metrics>) {
    let cfg = PipelineConfig {
        format,
        // No process has this name: the tracker follows no kubelet.
        target: Target {
            name: "oomprobe-golden-no-kubelet".into(),
            pid: None,
            binary: None,
        },
        kubepods_roots: Vec::new(),
        emit_samples: false,
        // A directory of this run's own (the store may create it), removed by the caller.
        state_dir: state_dir.to_path_buf(),
        cycle: CycleConfig::default(),
        cordon: None,
        report: None,
        // No cordon is armed: nothing is ever sent.
        cordon_done: tokio::sync::mpsc::channel(1).0,
        api_inputs: None,
    };
    let clock = Clock::with_offset(1_780_000_000_000_000_000);
    let metrics = std::sync::Arc::new(Metrics::new());
    let p = Pipeline::with_parts(
        cfg,
        NoKernel,
        (GoneNode, clock),
        Sink::capturing(format),
        metrics.clone(),
        Latest::default(),
    );
    (p, metrics)
}

/// The follow-up record of an eviction, as the run loop hands it from the report worker to
/// the pipeline: written at once after the kill records (one stream line, JSON and text) and
/// counted in `oomprobe_kills_classified_total{reason="evicted"}`.
#[test]
fn a_classified_kill_is_a_stream_line_and_counted() {
    use oomprobe::kubeapi::report::{ClassifiedPod, ClassifiedSender, KillClassified};
    let c = KillClassified {
        time: "2026-11-29T22:10:01.123456789Z".into(),
        ktime_ns: 681688118634,
        pid: 8557,
        sender: ClassifiedSender {
            pid: 8501,
            comm: "containerd-shim".into(),
        },
        pod: ClassifiedPod {
            pod_uid: "0b6c".into(),
            namespace: "default".into(),
            name: "hog".into(),
            container_id: Some("5f1e".into()),
        },
        reason: "evicted",
        evidence: "pod status reason Evicted: The node was low on resource: memory. ".into(),
    };
    for (format, want) in [
        (
            OutputFormat::Json,
            r#"{"event":"kill_classified","time":"2026-11-29T22:10:01.123456789Z","ktime_ns":681688118634,"pid":8557,"sender":{"pid":8501,"comm":"containerd-shim"},"pod":{"pod_uid":"0b6c","namespace":"default","name":"hog","container_id":"5f1e"},"reason":"evicted","evidence":"pod status reason Evicted: The node was low on resource: memory. "}"#,
        ),
        (
            OutputFormat::Text,
            "2026-11-29T22:10:01.123456789Z KILL_CLASSIFIED evicted victim=8557 sender=8501(containerd-shim) pod=default/hog container=5f1e pod status reason Evicted: The node was low on resource: memory. ",
        ),
    ] {
        let state_dir = std::env::temp_dir().join(format!(
            "oomprobe-golden-{}-classified-{format:?}",
            std::process::id()
        ));
        let (mut p, metrics) = golden_pipeline(format, &state_dir);
        let evicted = metrics.kills_classified.with_label_values(&["evicted"]);
        assert_eq!(evicted.get(), 0);
        p.on_kill_classified(c.clone());
        assert_eq!(p.take_output(), [want]);
        assert_eq!(evicted.get(), 1);
        let scrape = metrics.render();
        assert!(
            scrape.contains("\noomprobe_kills_classified_total{reason=\"evicted\"} 1\n"),
            "{scrape}"
        );
        drop(p);
        let _ = std::fs::remove_dir_all(&state_dir);
    }
}

#[test]
fn recorded_ring_stream_through_the_pipeline_is_byte_identical() {
    let json = pipeline_lines("ring-recorded.hex", OutputFormat::Json);
    assert_same("ring-recorded.pipeline.expected.jsonl", &json);
    let text = pipeline_lines("ring-recorded.hex", OutputFormat::Text);
    assert_same("ring-recorded.pipeline.expected.txt", &text);
}

#[test]
fn synthesised_ring_stream_through_the_correlator_is_byte_identical() {
    let out = feed_ring_stream("ring-synth.hex", RecordedNode);
    assert_same("ring-synth.expected.jsonl", &out.json);
    assert_same("ring-synth.expected.txt", &out.text);
    assert_same("ring-synth.expected.summary", &out.summary);
}

#[test]
fn verdicts_of_the_live_loop_are_byte_identical() {
    // The run loop's detect stage over the same series replay reads: its verdict lines.
    let (samples, _) = csv::parse(&read("series.csv")).unwrap();
    let mut engine = Engine::default();
    let (mut json, mut text) = (String::new(), String::new());
    for end in (samples.len() / 8..=samples.len()).step_by(samples.len() / 8) {
        let v = engine.evaluate(&samples[..end]);
        json.push_str(&render_verdict_json(&v));
        json.push('\n');
        text.push_str(&render_verdict_text(&v));
        text.push('\n');
    }
    assert_same("verdicts.expected.jsonl", &json);
    assert_same("verdicts.expected.txt", &text);
}

#[test]
fn replayed_csv_is_byte_identical() {
    for (format, expected) in [
        ("json", "replay.expected.jsonl"),
        ("text", "replay.expected.txt"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oomprobe"))
            .args(["replay", "--format", format])
            .arg(data("series.csv"))
            .output()
            .expect("run oomprobe replay");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same(expected, &String::from_utf8(out.stdout).unwrap());
    }
}
