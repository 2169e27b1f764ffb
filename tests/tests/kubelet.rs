//! Kubelet attribution on this real kernel: symbol resolution on real Kubernetes binaries, real
//! uprobe hits in a real Go (and C) stand-in kubelet, restarts followed.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use oomprobe_tests::{
    bin, cgroup_name, go_functions_at, spawn_path_in, standin_kubelet, Agent, ScratchCgroup, MIB,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn probe_points(binary: &std::path::Path) -> Vec<Value> {
    let out = Command::new(bin("oomprobe"))
        .args(["probe-points", "--format", "json"])
        .arg(binary)
        .output()
        .expect("run probe-points");
    assert!(
        out.status.success(),
        "probe-points {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn role<'a>(points: &'a [Value], role: &str) -> Option<&'a Value> {
    points.iter().find(|p| p["role"] == role)
}

/// The file offset of `addr` through `binary`'s PT_LOAD segments, as readelf lists them.
fn readelf_offset(binary: &std::path::Path, addr: u64) -> u64 {
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(binary)
        .output()
        .expect("readelf");
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::split_whitespace)
        .filter_map(|mut w| (w.next() == Some("LOAD")).then(|| w.collect::<Vec<_>>()))
        .find_map(|w| {
            let (off, vaddr, filesz) = (hex(w[0]), hex(w[1]), hex(w[3]));
            (addr >= vaddr && addr < vaddr + filesz).then(|| addr - vaddr + off)
        })
        .unwrap_or_else(|| panic!("{addr:#x} in no PT_LOAD of {}", binary.display()))
}

#[test]
fn probe_points_resolve_on_real_stripped_kubernetes_binaries() {
    // Google's stripped kubectl builds (Go 1.20-1.24 runtimes) that this machine kind ships:
    // every one must be here and check out; a missing one fails rather than shrinking the test.
    for v in 27..=33 {
        let path = std::path::PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{v}"));
        assert!(
            path.exists(),
            "{} is missing: this test needs the Google Cloud SDK's kubectl builds",
            path.display()
        );
        let points = probe_points(&path);
        let roles = ["go_heap_map", "go_sys_alloc", "go_free"];
        let found: Vec<&Value> = roles
            .iter()
            .map(|r| {
                role(&points, r).unwrap_or_else(|| panic!("kubectl 1.{v}: no {r} in {points:?}"))
            })
            .collect();
        // Each point is the entry of the function it names, by Go's own reader: the address is
        // in that function and the byte before it is not; its file offset is readelf's.
        let addrs: Vec<u64> = found
            .iter()
            .map(|p| p["address"].as_u64().unwrap())
            .collect();
        let before: Vec<u64> = addrs.iter().map(|a| a - 1).collect();
        let at = go_functions_at(&path, None, &addrs);
        let prev = go_functions_at(&path, None, &before);
        for (i, p) in found.iter().enumerate() {
            assert_eq!(p["source"], "pclntab", "kubectl 1.{v} is stripped: {p}");
            let symbol = p["symbol"].as_str().unwrap();
            assert_eq!(
                at[i], symbol,
                "kubectl 1.{v}: Go places {:#x} in {}: {p}",
                addrs[i], at[i]
            );
            assert_ne!(
                prev[i], symbol,
                "kubectl 1.{v}: {symbol} starts before {:#x}",
                addrs[i]
            );
            assert_eq!(
                p["offset"].as_u64().unwrap(),
                readelf_offset(&path, addrs[i]),
                "kubectl 1.{v}: {p}"
            );
        }
    }
}

#[test]
fn stripped_and_unstripped_go_builds_agree_with_the_symbol_table() {
    let full = probe_points(&standin_kubelet("go"));
    let stripped = probe_points(&standin_kubelet("go-stripped"));
    assert!(full.iter().all(|p| p["source"] == "symtab"), "{full:?}");
    assert!(
        stripped.iter().all(|p| p["source"] == "pclntab"),
        "{stripped:?}"
    );
    assert_eq!(full.len(), stripped.len());
    for (a, b) in full.iter().zip(&stripped) {
        assert_eq!(a["symbol"], b["symbol"]);
        // Same code, same layout: the pclntab offset must equal the symtab one.
        assert_eq!(a["offset"], b["offset"], "{a} vs {b}");
    }
}

#[test]
fn neither_go_nor_libc_is_a_clear_error() {
    let out = Command::new(bin("oomprobe"))
        .args(["probe-points"])
        .arg(standin_kubelet("static"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither a Go binary nor linked with libc"),
        "{err}"
    );
}

/// Reads the stand-in's JSON stats lines until `done`.
fn read_done(p: &mut oomprobe_tests::Proc) -> Value {
    let lines = p.read_until("{\"pid\"");
    let _ = lines;
    loop {
        let lines = p.read_until("{");
        let last = lines.last().cloned().unwrap_or_default();
        let v: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
        if v["done"] == true {
            return v;
        }
        assert!(!lines.is_empty(), "stand-in ended without finishing");
    }
}

#[test]
fn go_kubelet_growth_is_attributed_to_its_call_site() {
    let kubelet = standin_kubelet("go");
    let agent = Agent::builder()
        .args(&[
            "--kubelet-bin",
            kubelet.to_str().unwrap(),
            "--attribution-interval",
            "1",
        ])
        .start();
    let cg = ScratchCgroup::create(&cgroup_name("gokubelet"), Some(512 * MIB)).unwrap();
    let mut k = spawn_path_in(
        &cg,
        &kubelet,
        &[
            "-total-mib",
            "64",
            "-interval-ms",
            "2",
            "-stats-ms",
            "100000",
        ],
    );
    let pid = u64::from(k.pid());
    let done = read_done(&mut k);
    let leaked = done["leaked"].as_u64().unwrap();
    assert_eq!(leaked, 64 * MIB);
    let heap_sys = done["heap_sys"].as_u64().unwrap();

    let rep = agent.wait_for_event(WAIT, "kubelet_memory with the whole leak", |v| {
        v["event"] == "kubelet_memory"
            && v["pid"].as_u64() == Some(pid)
            && v["top_call_sites"][0]["bytes"].as_u64().unwrap_or(0) >= leaked
    });
    assert_eq!(rep["mode"], "uprobes");
    let top = &rep["top_call_sites"][0];
    assert_eq!(top["function"], "main.leakPodCache", "{rep}");
    let site = top["bytes"].as_u64().unwrap() as f64;
    assert!(
        (site - leaked as f64).abs() / (leaked as f64) < 0.05,
        "call site {site} vs leaked {leaked}"
    );
    let heap_mapped = rep["by_entry_point"]["runtime.sysMapOS"]
        .as_u64()
        .or(rep["by_entry_point"]["runtime.sysMap"].as_u64())
        .expect("heap map entry point") as f64;
    // The heap the runtime reports (HeapSys) was mapped through sysMap: never more than that.
    assert!(
        heap_mapped >= heap_sys as f64 * 0.95 && heap_mapped <= heap_sys as f64 * 1.15,
        "heap mapped {heap_mapped} vs runtime HeapSys {heap_sys}"
    );
}

#[test]
fn c_kubelet_growth_is_attributed_through_libc() {
    let kubelet = standin_kubelet("c");
    let agent = Agent::builder()
        .args(&["--attribution-interval", "1"])
        .start();
    let cg = ScratchCgroup::create(&cgroup_name("ckubelet"), Some(512 * MIB)).unwrap();
    // The libc uprobes can only be attached once the new process exists (~30 ms after exec);
    // the stand-in leaks from its first millisecond, so the bytes of that gap must come from
    // the syscall tracepoints, which count the process until its first uprobe hit.
    let mut k = spawn_path_in(
        &cg,
        &kubelet,
        &["-total-mib", "32", "-interval-ms", "2", "-delay-ms", "0"],
    );
    let pid = u64::from(k.pid());
    let done = read_done(&mut k);
    let leaked = done["leaked"].as_u64().unwrap() as f64;
    let rep = agent.wait_for_event(WAIT, "kubelet_memory for the C stand-in", |v| {
        v["event"] == "kubelet_memory"
            && v["pid"].as_u64() == Some(pid)
            && v["mapped_bytes"].as_f64().unwrap_or(0.0) >= leaked * 0.95
    });
    assert_eq!(rep["mode"], "uprobes", "{rep}");
    assert!(rep["by_entry_point"]["mmap"].as_u64().is_some(), "{rep}");
    // glibc has no frame pointers: the call site comes from the stack scan, and it is the
    // stand-in's own function that called malloc, with the bytes its uprobes saw (the gap
    // before them is counted from syscalls, where the caller is unknown).
    let top = &rep["top_call_sites"][0];
    assert_eq!(top["function"], "leak_pod_cache", "{rep}");
    let site_bytes = top["bytes"].as_f64().unwrap();
    let probed = rep["by_entry_point"]["mmap"].as_f64().unwrap();
    assert!(
        site_bytes >= probed * 0.95 && site_bytes <= probed,
        "call site {site_bytes} vs {probed} seen by the mmap uprobe: {rep}"
    );
    let mapped = rep["mapped_bytes"].as_f64().unwrap();
    assert!(
        (mapped - leaked).abs() / leaked < 0.05,
        "mapped {mapped} vs leaked {leaked}"
    );
}

#[test]
fn static_kubelet_falls_back_to_syscalls_and_agent_keeps_running() {
    let kubelet = standin_kubelet("static");
    let agent = Agent::builder()
        .args(&["--attribution-interval", "1"])
        .start();
    let cg = ScratchCgroup::create(&cgroup_name("statickubelet"), Some(512 * MIB)).unwrap();
    let mut k = spawn_path_in(&cg, &kubelet, &["-total-mib", "16", "-interval-ms", "2"]);
    let pid = u64::from(k.pid());
    let done = read_done(&mut k);
    let leaked = done["leaked"].as_f64().unwrap();
    agent.wait_for_log(WAIT, "falling back to mmap/munmap syscall tracepoints");
    let rep = agent.wait_for_event(WAIT, "kubelet_memory via syscalls", |v| {
        v["event"] == "kubelet_memory"
            && v["pid"].as_u64() == Some(pid)
            && v["mapped_bytes"].as_f64().unwrap_or(0.0) >= leaked * 0.95
    });
    assert_eq!(rep["mode"], "syscalls", "{rep}");
}

/// `munmap(p, SIZE_MAX)` from the kubelet (it fails with EINVAL and unmaps nothing) is counted
/// as an implausible length and left out of the bytes: 3 such calls, exactly 3 counted, the
/// mapped bytes still the leak's (before, the kernel's per-CPU sum wrapped by 2^64 - 1 each).
#[test]
fn implausible_munmap_lengths_are_counted_not_attributed() {
    let kubelet = standin_kubelet("pressure");
    let agent = Agent::builder()
        .metrics(19477)
        .args(&["--attribution-interval", "1"])
        .start();
    let cg = ScratchCgroup::create(&cgroup_name("badmunmap"), Some(512 * MIB)).unwrap();
    let mut k = spawn_path_in(&cg, &kubelet, &["-total-mib", "16", "-bad-munmap", "3"]);
    let pid = u64::from(k.pid());
    let done = read_done(&mut k);
    let leaked = done["leaked"].as_f64().unwrap();
    let series = r#"oomprobe_events_dropped_total{kind="alloc",reason="implausible_length"}"#;
    let t = std::time::Instant::now();
    let mut counted = None;
    while t.elapsed() < WAIT {
        counted = oomprobe_tests::metric(&agent.scrape(), series);
        if counted == Some(3.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(counted, Some(3.0), "{series}");
    let rep = agent.wait_for_event(WAIT, "kubelet_memory with the whole leak", |v| {
        v["event"] == "kubelet_memory"
            && v["pid"].as_u64() == Some(pid)
            && v["mapped_bytes"].as_f64().unwrap_or(0.0) >= leaked * 0.95
    });
    let mapped = rep["mapped_bytes"].as_f64().unwrap();
    assert!(
        mapped <= leaked * 1.05 + 4.0 * MIB as f64,
        "mapped {mapped} vs leaked {leaked}: {rep}"
    );
}

#[test]
fn kubelet_restart_is_followed_within_a_second() {
    let kubelet = standin_kubelet("go");
    // Started before any kubelet runs: it must pick the kubelet up when it appears.
    let agent = Agent::builder()
        .args(&["--attribution-interval", "1"])
        .start();
    agent.wait_for_log(WAIT, "no kubelet running yet");
    let cg = ScratchCgroup::create(&cgroup_name("restart"), Some(512 * MIB)).unwrap();
    let args = ["-chunk-kib", "64", "-interval-ms", "10"];

    let mut first = spawn_path_in(&cg, &kubelet, &args);
    let pid1 = u64::from(first.pid());
    agent.wait_for_event(WAIT, "first kubelet_start", |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(pid1)
    });
    let status = Command::new("/bin/kill")
        .args(["-9", &pid1.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(first.wait_signal(), Some(9));

    let started = Instant::now();
    let second = spawn_path_in(&cg, &kubelet, &args);
    let pid2 = u64::from(second.pid());
    let start = agent.wait_for_event(WAIT, "second kubelet_start", |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(pid2)
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "restart followed after {:?}",
        started.elapsed()
    );
    assert_eq!(start["previous_pid"].as_u64(), Some(pid1), "{start}");
    assert_eq!(start["previous_end"], "signal", "{start}");
    assert_eq!(start["restarts"].as_u64(), Some(1));
    // The series continues under the new pid, from its first allocation (the binary was
    // already probed: the runtime's start-up mappings are in).
    agent.wait_for_event(WAIT, "kubelet_memory for the new pid", |v| {
        v["event"] == "kubelet_memory"
            && v["pid"].as_u64() == Some(pid2)
            && v["by_entry_point"]["runtime.sysAllocOS"]
                .as_u64()
                .unwrap_or(0)
                > 0
    });
    drop(second);
}

/// Copies `from` to `to` (a new file, its own inode), parents created.
fn copy_to(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
}

/// `oomprobe_kubelet_candidates_rejected_total{reason}` now.
fn rejected(agent: &Agent, reason: &str) -> f64 {
    let series = format!("oomprobe_kubelet_candidates_rejected_total{{reason=\"{reason}\"}}");
    oomprobe_tests::metric(&agent.scrape(), &series)
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

/// `oomprobe_map_entries{map="KUBELET_TGIDS"}` once it equals `n` (sampled every second).
fn wait_tgids(agent: &Agent, n: f64) {
    let series = "oomprobe_map_entries{map=\"KUBELET_TGIDS\"}";
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < WAIT {
        last = oomprobe_tests::metric(&agent.scrape(), series);
        if last == Some(n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{series} is {last:?}, not {n}");
}

/// Records the agent wrote about `pid` (kubelet_start, kubelet_memory...).
fn records_of(agent: &Agent, pid: u32) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

/// With `--kubelet-bin`, a process named `kubelet` running another file (the stand-in copied to
/// a second path, as a `kubelet --version` of another build on a node) is not followed: no
/// `kubelet_start` or `kubelet_memory` for it, out of the kernel's `KUBELET_TGIDS`, counted in
/// `oomprobe_kubelet_candidates_rejected_total{reason="binary"}` and logged once for its file.
/// The stand-in at the path is followed, and after an upgrade (another build renamed over the
/// path, then a restart) the new file's kubelet is followed and re-probed.
#[test]
fn kubelet_bin_follows_its_file_and_its_upgrade_not_another_kubelet() {
    let dir = oomprobe_tests::scratch_dir("kubelet-bin");
    let bin = dir.join("node/kubelet");
    let other = dir.join("other/kubelet");
    copy_to(&standin_kubelet("go"), &bin);
    copy_to(&standin_kubelet("go"), &other);
    let agent = Agent::builder()
        .metrics(19483)
        .args(&[
            "--kubelet-bin",
            bin.to_str().unwrap(),
            "--attribution-interval",
            "1",
            "--sample-interval",
            "1",
        ])
        .start();
    agent.wait_for_log(WAIT, "no kubelet running yet");
    assert_eq!(rejected(&agent, "binary"), 0.0);
    let cg = ScratchCgroup::create(&cgroup_name("kubeletbin"), Some(512 * MIB)).unwrap();
    let args = ["-chunk-kib", "64", "-interval-ms", "10"];

    let stranger = spawn_path_in(&cg, &other, &args);
    let kubelet = spawn_path_in(&cg, &bin, &args);
    let pid = kubelet.pid();
    // Execs are handled in order: once the kubelet's report is out, the stranger's exec was
    // decided long before.
    agent.wait_for_event(
        WAIT,
        "kubelet_memory for the kubelet at --kubelet-bin",
        |v| {
            v["event"] == "kubelet_memory"
                && v["pid"].as_u64() == Some(u64::from(pid))
                && v["mode"] == "uprobes"
        },
    );
    wait_tgids(&agent, 1.0);
    assert_eq!(records_of(&agent, stranger.pid()), Vec::<Value>::new());
    assert_eq!(rejected(&agent, "binary"), 1.0);
    assert_eq!(rejected(&agent, "pid"), 0.0);
    let logged = |agent: &Agent| -> Vec<String> {
        agent
            .stderr()
            .into_iter()
            .filter(|l| l.contains("not the kubelet"))
            .collect()
    };
    let lines = logged(&agent);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(other.to_str().unwrap()), "{lines:?}");
    assert!(
        lines[0].contains(&format!("pid={}", stranger.pid())),
        "{lines:?}"
    );

    // A second process of the other file: counted, not logged again.
    let stranger2 = spawn_path_in(&cg, &other, &args);
    let t = Instant::now();
    while rejected(&agent, "binary") < 2.0 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rejected(&agent, "binary"), 2.0);
    assert_eq!(logged(&agent).len(), 1, "{:?}", logged(&agent));

    // The upgrade: the stripped build renamed over the path (a new inode), the kubelet killed,
    // the supervisor's next one runs the new file.
    let new = dir.join("node/kubelet.new");
    copy_to(&standin_kubelet("go-stripped"), &new);
    std::fs::rename(&new, &bin).unwrap();
    let mut kubelet = kubelet;
    let status = Command::new("/bin/kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(kubelet.wait_signal(), Some(9));
    let upgraded = spawn_path_in(&cg, &bin, &args);
    let start = agent.wait_for_event(WAIT, "kubelet_start for the upgraded kubelet", |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(u64::from(upgraded.pid()))
    });
    assert_eq!(
        start["previous_pid"].as_u64(),
        Some(u64::from(pid)),
        "{start}"
    );
    assert_eq!(start["previous_end"], "signal", "{start}");
    assert_eq!(start["restarts"].as_u64(), Some(1), "{start}");
    assert_eq!(start["exe"], bin.to_str().unwrap(), "{start}");
    agent.wait_for_event(WAIT, "kubelet_memory for the upgraded kubelet", |v| {
        v["event"] == "kubelet_memory"
            && v["pid"].as_u64() == Some(u64::from(upgraded.pid()))
            && v["mode"] == "uprobes"
            && v["mapped_bytes"].as_u64().unwrap_or(0) > 0
    });
    wait_tgids(&agent, 1.0);
    for s in [&stranger, &stranger2] {
        assert_eq!(records_of(&agent, s.pid()), Vec::<Value>::new());
    }
    assert_eq!(rejected(&agent, "binary"), 2.0);
}

/// With `--kubelet-pid`, that process is the only kubelet while it runs: another process named
/// `kubelet` (the same stand-in) is not followed beside it (counted under `reason="pid"`); once
/// it is gone, the next one by name is followed as its restart.
#[test]
fn kubelet_pid_is_the_only_kubelet_until_it_is_gone() {
    let kubelet = standin_kubelet("go");
    let cg = ScratchCgroup::create(&cgroup_name("kubeletpid"), Some(512 * MIB)).unwrap();
    let args = ["-chunk-kib", "64", "-interval-ms", "10"];
    let mut pinned = spawn_path_in(&cg, &kubelet, &args);
    let pid = pinned.pid();
    let agent = Agent::builder()
        .metrics(19484)
        .args(&[
            "--kubelet-pid",
            &pid.to_string(),
            "--attribution-interval",
            "1",
            "--sample-interval",
            "1",
        ])
        .start();
    agent.wait_for_event(WAIT, "kubelet_start for the pinned pid", |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(u64::from(pid))
    });
    let other = spawn_path_in(&cg, &kubelet, &args);
    let t = Instant::now();
    while rejected(&agent, "pid") < 1.0 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rejected(&agent, "pid"), 1.0);
    wait_tgids(&agent, 1.0);
    // Reports (and scans, each second) go on: for the pinned one only.
    later_report(&agent, pid);
    assert_eq!(records_of(&agent, other.pid()), Vec::<Value>::new());

    let status = Command::new("/bin/kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(pinned.wait_signal(), Some(9));
    let next = spawn_path_in(&cg, &kubelet, &args);
    let start = agent.wait_for_event(WAIT, "kubelet_start for the next kubelet", |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(u64::from(next.pid()))
    });
    assert_eq!(
        start["previous_pid"].as_u64(),
        Some(u64::from(pid)),
        "{start}"
    );
    assert_eq!(start["previous_end"], "signal", "{start}");
    // The other process, named kubelet and still running, stays rejected: a scan after the
    // pinned one is gone does not take it by name.
    later_report(&agent, next.pid());
    later_report(&agent, next.pid());
    assert_eq!(records_of(&agent, other.pid()), Vec::<Value>::new());
    assert_eq!(rejected(&agent, "pid"), 1.0);
}

/// Waits for a `kubelet_memory` for `pid` written after now (reports and scans run each
/// `--attribution-interval`).
fn later_report(agent: &Agent, pid: u32) {
    let n = agent.records().len();
    let t = Instant::now();
    while !agent
        .records()
        .into_iter()
        .skip(n)
        .any(|v| v["event"] == "kubelet_memory" && v["pid"].as_u64() == Some(u64::from(pid)))
    {
        assert!(t.elapsed() < WAIT, "no later kubelet_memory for {pid}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
