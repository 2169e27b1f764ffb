//! Every input with which fuzzing (`cargo xtask fuzz`, fuzz/fuzz_targets/) once crashed,
//! hung or over-allocated the agent, replayed through the same calls as its target: each must
//! now return. The inputs live in `tests/data/fuzz/<target>/`, one file each, named for the bug
//! (the fix and a focused unit test sit next to the code that broke).
use std::path::{Path, PathBuf};

use oomprobe::{
    cgroup::{ancestors, pod_identity, Hierarchy, MemcgState},
    cli::replay::evaluate_each,
    clock::Clock,
    cycle::{Cycle, CycleConfig, KubeletNow, Party},
    detect::{offline::csv, store, Engine},
    forensics::{Correlator, KillRecord, Node, ProcSnapshot},
    kernel::events::{self, Event},
    kubelet::{
        metrics,
        symbols::{parse_pclntab, parse_pclntab_in, Binary},
    },
    output::Output,
};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    // No directory: fuzzing never broke this target (git keeps no empty directories).
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

/// Runs `f` on every input of `target`, naming the file that panics.
fn replay(target: &str, f: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    for (path, data) in inputs(target) {
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("{} still panics", path.display());
        }
    }
}

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

fn kubelet_now(pid: u32, rss_bytes: u64) -> KubeletNow {
    KubeletNow {
        pid,
        rss_bytes,
        usage_bytes: Some(rss_bytes),
        limit_bytes: Some(512 << 20),
        mapped_bytes: rss_bytes,
        cpu_seconds: 1.5,
        node_available_bytes: None,
        node_total_bytes: None,
    }
}

fn render(rec: &KillRecord, cycle: &mut Cycle) {
    let out = Output::Kill(Box::new(rec.clone()));
    let _ = out.json();
    let _ = out.text();
    let party = if rec.victim.comm == "kubelet" {
        Party::Kubelet
    } else {
        Party::Other
    };
    if let Some(ev) = cycle.on_kill(rec, party) {
        let out = Output::Stage(ev);
        let _ = out.json();
        let _ = out.text();
    }
}

/// fuzz_targets/ring_events.rs: tag 0 u16 length + record, 1 u64 now, 2 u32 pid + u64 RSS
/// (a kubelet sample), 3 u64 expire.
fn ring_events(mut data: &[u8]) {
    let mut take = |n: usize| -> Option<Vec<u8>> {
        let (a, b) = (data.get(..n)?, data.get(n..)?);
        data = b;
        Some(a.to_vec())
    };
    let mut correlator = Correlator::new(GoneNode, Clock::with_offset(1_780_000_000_000_000_000));
    let mut cycle = Cycle::new(CycleConfig::default());
    let mut now = 0u64;
    let u64_of = |b: Vec<u8>| u64::from_le_bytes(b.try_into().unwrap());
    while let Some(tag) = take(1) {
        let mut records = Vec::new();
        let mut stages = Vec::new();
        match tag[0] % 4 {
            0 => {
                let Some(len) = take(2) else { break };
                let len = u16::from_le_bytes([len[0], len[1]]);
                let Some(bytes) = take(usize::from(len)) else {
                    break;
                };
                match events::decode(&bytes) {
                    Ok(Event::KubeletExec(e)) => stages
                        .extend(cycle.on_kubelet_start(e.ktime_ns, kubelet_now(e.tgid, 300 << 20))),
                    Ok(ev) => {
                        let _ = ev.field_errors();
                        records.extend(correlator.on_event_at(ev, Some(now)));
                    }
                    Err(e) => {
                        let _ = (e.reason(), e.to_string());
                    }
                }
            }
            1 => {
                let Some(t) = take(8) else { break };
                now = u64_of(t);
            }
            2 => {
                let (Some(pid), Some(rss)) = (take(4), take(8)) else {
                    break;
                };
                let pid = u32::from_le_bytes(pid.try_into().unwrap());
                stages.extend(cycle.on_sample(now, kubelet_now(pid, u64_of(rss))));
            }
            _ => {
                let Some(t) = take(8) else { break };
                records.extend(correlator.expire(u64_of(t)));
            }
        }
        for rec in &records {
            render(rec, &mut cycle);
        }
        for ev in stages {
            let out = Output::Stage(ev);
            let _ = out.json();
            let _ = out.text();
        }
    }
    for rec in correlator.expire(now.saturating_add(10_000_000_000)) {
        render(&rec, &mut cycle);
    }
}

#[test]
fn ring_events_crashes_stay_fixed() {
    replay("ring_events", ring_events);
}

#[test]
fn elf_symbols_crashes_stay_fixed() {
    replay("elf_symbols", |data| {
        let _ = parse_pclntab(data);
        let _ = parse_pclntab_in(data, Some(u64::MAX - 16));
        let bin = Binary::from_bytes("fuzz", data.to_vec());
        let _ = bin.go_functions();
        let _ = bin.probe_points();
        let _ = bin.elf_functions();
        let _ = bin.symtab_address("runtime.sysMap");
    });
}

#[test]
fn cgroup_paths_crashes_stay_fixed() {
    replay("cgroup_paths", |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        for line in text.lines() {
            let _ = pod_identity(line);
            let _ = ancestors(line);
        }
        for h in [
            Hierarchy::V1("/sys/fs/cgroup/memory".into()),
            Hierarchy::V2("/sys/fs/cgroup".into()),
        ] {
            if let Some(p) = h.parse_proc_cgroup(text) {
                let _ = pod_identity(&p);
            }
        }
    });
}

#[test]
fn kubelet_metrics_crashes_stay_fixed() {
    replay("kubelet_metrics", |data| {
        let _ = metrics::parse(&String::from_utf8_lossy(data));
    });
}

#[test]
fn replay_csv_crashes_stay_fixed() {
    replay("replay_csv", |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok((samples, _)) = csv::parse(text) else {
            return;
        };
        evaluate_each(&mut Engine::default(), &samples, 3600, |v| {
            let out = Output::Verdict(v.clone());
            let _ = out.json();
            let _ = out.text();
        });
    });
}

#[test]
fn series_store_crashes_stay_fixed() {
    replay("series_store", |data| {
        let _ = store::parse(data, 1_795_000_000);
        let _ = store::parse(data, 0);
    });
}
