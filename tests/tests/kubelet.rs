//! Kubelet attribution on this real kernel: symbol resolution on real Kubernetes binaries, real
//! uprobe hits in a real Go (and C) stand-in kubelet, restarts followed.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use oomprobe_tests::{bin, cgroup_name, spawn_path_in, standin_kubelet, Agent, ScratchCgroup, MIB};
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

/// Go's own pclntab reader (`go tool addr2line`, the machine's Go) on `binary`: the function
/// containing each address.
fn go_functions_at(binary: &std::path::Path, addrs: &[u64]) -> Vec<String> {
    use std::io::Write as _;
    let mut child = Command::new("go")
        .args(["tool", "addr2line"])
        .arg(binary)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run `go tool addr2line` (the machine's Go, checked by cargo xtask setup)");
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "go tool addr2line {}",
        binary.display()
    );
    // Two lines per address: the function, then file:line.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .step_by(2)
        .map(str::to_string)
        .collect()
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
        let at = go_functions_at(&path, &addrs);
        let prev = go_functions_at(&path, &before);
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
