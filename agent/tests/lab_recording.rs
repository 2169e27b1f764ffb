//! The real kubelet recorded on the lab (`cargo xtask lab record`; provenance in
//! `src/detect/testdata/lab-series/README.md`): the agent's own store file, read as the agent
//! and `oomprobe replay` read it, and what the recording shows. Every figure asserted here is the
//! recording's own (the file is fixed): a change in how the store is decoded or the series
//! summarised shows up here.
use std::path::PathBuf;

use oomprobe::detect::{series::theil_sen, store, Sample};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/detect/testdata/lab-series")
        .join(name)
}

const FULL: &str = "kubelet-v1.34.4-v1.36.1-lab.series.bin.gz";
/// Samples in the recording: 70 minutes at the default 10 s.
const FULL_SAMPLES: usize = 421;
/// Trough slopes 5-10 min after the start, v1.34.4 then v1.36.1, MiB/h (see the test).
const SAME_WINDOW: &str = "37.4 103.2";
/// The v1.36.1 kubelet's trough slope from 10 min after its start to the end, MiB/h.
const LATE: &str = "112.6";

fn samples(name: &str) -> Vec<Sample> {
    let bytes = oomprobe::files::read_maybe_gzip(&data(name), oomprobe::files::MAX_SERIES_BYTES)
        .expect("the recording");
    // Records are dated 2026-11-29: any later "now" keeps them all.
    let loaded = store::parse(&bytes, 1_800_000_000);
    assert!(!loaded.corrupt);
    assert_eq!(loaded.invalid, 0);
    loaded.samples
}

fn timeline() -> Vec<Value> {
    std::fs::read_to_string(data("kubelet-v1.34.4-v1.36.1-lab.timeline.jsonl"))
        .expect("timeline")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn time_of(tl: &[Value], action: &str, phase: Option<&str>) -> i64 {
    tl.iter()
        .find(|e| e["action"] == action && phase.is_none_or(|p| e["detail"]["phase"] == p))
        .and_then(|e| e["t"].as_i64())
        .unwrap_or_else(|| panic!("no {action} {phase:?} in the timeline"))
}

/// The lowest RSS of each 2-minute bucket (the series' troughs, as the detector's baseline
/// takes a low quantile), Theil-Sen over them: MiB per hour.
fn trough_slope_mib_per_hour(s: &[Sample]) -> f64 {
    let mut lows: Vec<(i64, f64)> = Vec::new();
    for x in s {
        let k = x.t / 120;
        match lows.last_mut() {
            Some((b, v)) if *b == k => *v = v.min(x.kubelet_rss_bytes),
            _ => lows.push((k, x.kubelet_rss_bytes)),
        }
    }
    let pts: Vec<(f64, f64)> = lows.iter().map(|(k, v)| ((*k * 120) as f64, *v)).collect();
    theil_sen(&pts).expect("enough points").mid * 3600.0 / 1048576.0
}

/// The detector counts each restart the lab made once (the kubelet down at sample time is RSS 0
/// in the store, then the counter steps a sample later: one restart, not two), dated at the
/// first sample of the new process, within a sample or two of the timeline's action.
#[test]
fn each_restart_the_lab_made_is_counted_once() {
    let tl = timeline();
    let made: Vec<i64> = tl
        .iter()
        .filter(|e| e["detail"]["new_pid"].is_i64())
        .filter_map(|e| e["t"].as_i64())
        .collect();
    let healthy = samples("kubelet-v1.34.4-lab.series.bin.gz");
    let seen = oomprobe::detect::restart_times(&healthy);
    let made_healthy: Vec<i64> = made
        .iter()
        .copied()
        .filter(|&t| t < healthy.last().unwrap().t)
        .collect();
    assert_eq!(made_healthy.len(), 3);
    assert_eq!(
        seen.len(),
        made_healthy.len(),
        "{seen:?} vs {made_healthy:?}"
    );
    for (s, m) in seen.iter().zip(&made_healthy) {
        assert!(
            (0..=20).contains(&(s - m)),
            "restart seen at {s}, made at {m}"
        );
    }
    // The whole recording: the upgrade too.
    assert_eq!(
        oomprobe::detect::restart_times(&samples(FULL)).len(),
        made.len()
    );
    assert_eq!(made.len(), 4);
}

/// The whole recording loads as the agent's store: every record valid, the restarts the lab
/// made (kill -9, graceful stop, the control's restart, the upgrade) counted by the agent.
#[test]
fn the_recording_loads_as_the_agent_wrote_it() {
    let s = samples(FULL);
    assert_eq!(s.len(), FULL_SAMPLES);
    let restarts: Vec<f64> = s.iter().filter_map(|x| x.kubelet_restarts).collect();
    assert_eq!(restarts.first(), Some(&0.0));
    assert_eq!(restarts.last(), Some(&4.0));
    // The healthy prefix bench-detect reads by default is the recording up to the upgrade.
    let healthy = samples("kubelet-v1.34.4-lab.series.bin.gz");
    let swap = time_of(&timeline(), "kubelet_replaced", None);
    assert_eq!(healthy.len(), s.iter().filter(|x| x.t < swap).count());
    assert!(healthy.iter().all(|x| x.t < swap));
}

/// kubernetes#139823 in the real v1.36.1 kubelet: with the same 60 pods and 1 s syncFrequency,
/// its RSS troughs climb faster than the v1.34.4 kubelet's did over the same time after a
/// restart (5 to 10 minutes after each start: the control lasted 10).
#[test]
fn the_v1_36_1_kubelet_climbs_faster_than_v1_34_4_under_the_same_syncs() {
    let s = samples(FULL);
    let tl = timeline();
    let control = time_of(&tl, "phase", Some("control"));
    let swap = time_of(&tl, "kubelet_replaced", None);
    let window = |from: i64| -> Vec<Sample> {
        s.iter()
            .filter(|x| x.t >= from + 300 && x.t < from + 600)
            .cloned()
            .collect()
    };
    let v134 = trough_slope_mib_per_hour(&window(control));
    let v136 = trough_slope_mib_per_hour(&window(swap));
    eprintln!("troughs 5-10 min after the start: v1.34.4 {v134:.1} MiB/h, v1.36.1 {v136:.1} MiB/h");
    assert_eq!(format!("{v134:.1} {v136:.1}"), SAME_WINDOW);
    let late: Vec<Sample> = s.iter().filter(|x| x.t >= swap + 600).cloned().collect();
    let v136_late = trough_slope_mib_per_hour(&late);
    eprintln!("v1.36.1 from 10 min after its start to the end: {v136_late:.1} MiB/h");
    assert_eq!(format!("{v136_late:.1}"), LATE);
}

/// `oomprobe replay` reads the store file as it is: the agent's verdict on 70 minutes of
/// history is that 24 h are needed.
#[test]
fn replay_reads_the_recording() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oomprobe"))
        .args(["replay", "--format", "json"])
        .arg(data(FULL))
        .output()
        .expect("oomprobe replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    // The verdict after 1 h, then the evaluation at the last sample (the same verdict, 70
    // minutes in), marked final; no slope yet in either.
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (l, last) in lines.iter().zip([false, true]) {
        assert_eq!(l["event"], "verdict");
        assert_eq!(l["subject"], "insufficient_history");
        assert_eq!(l["slope_bytes_per_day"], Value::Null);
        assert_eq!(l.get("final"), last.then_some(&Value::Bool(true)));
    }
}

/// The later healthy recordings: every restart their timelines made is counted once, within 20 s
/// after it (the second: `kill -9` and a graceful stop; the third, `--no-restarts`: none, the
/// same kubelet pid from the first action to the last), and every sample is valid.
#[test]
fn the_later_recordings_count_the_restarts_their_timelines_made() {
    for (name, want_samples, want_restarts) in [
        ("kubelet-v1.34.4-lab-2", 361, 2),
        ("kubelet-v1.34.4-lab-3", 421, 0),
    ] {
        let tl: Vec<Value> = std::fs::read_to_string(data(&format!("{name}.timeline.jsonl")))
            .expect("timeline")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let made: Vec<i64> = tl
            .iter()
            .filter(|e| e["detail"]["new_pid"].is_i64())
            .filter_map(|e| e["t"].as_i64())
            .collect();
        assert_eq!(made.len(), want_restarts, "{name}");
        if want_restarts == 0 {
            let pids: std::collections::BTreeSet<i64> = tl
                .iter()
                .filter_map(|e| e["kubelet_pid"].as_i64())
                .collect();
            assert_eq!(pids.len(), 1, "{name}: {pids:?}");
        }
        let s = samples(&format!("{name}.series.bin.gz"));
        assert_eq!(s.len(), want_samples, "{name}");
        let seen = oomprobe::detect::restart_times(&s);
        assert_eq!(seen.len(), made.len(), "{name}: {seen:?} vs {made:?}");
        for (s, m) in seen.iter().zip(&made) {
            assert!(
                (0..=20).contains(&(s - m)),
                "{name}: restart seen at {s}, made at {m}"
            );
        }
    }
}
