//! Sampling and persistence: the kubelet's memory and cgroup are sampled on one clock, and the
//! series survives an agent restart.
use std::time::{Duration, Instant};

use serde_json::Value;

use oomprobe_tests::{
    cgroup_name, scratch_dir, spawn_path_in, standin_kubelet, Agent, ScratchCgroup, MIB,
};

const WAIT: Duration = Duration::from_secs(20);

/// The samples naming the kubelet `pid`, in order.
fn samples_of(agent: &Agent, pid: u64) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|v| v["event"] == "sample" && v["kubelet"]["pid"].as_u64() == Some(pid))
        .collect()
}

/// Waits (until `deadline`) for the sample after the first `n` naming the kubelet `pid`.
fn next_sample(agent: &Agent, pid: u64, n: usize, deadline: Instant) -> Value {
    loop {
        if let Some(s) = samples_of(agent, pid).into_iter().nth(n) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no sample {} of pid {pid} in time",
            n + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn samples_name_the_kubelet_its_cgroup_and_limit_and_persist() {
    let kubelet = standin_kubelet("go");
    let state = scratch_dir("persist");
    let cg = ScratchCgroup::create(&cgroup_name("sample"), Some(256 * MIB)).unwrap();
    let mut k = spawn_path_in(&cg, &kubelet, &["-total-mib", "24", "-interval-ms", "1"]);
    let pid = u64::from(k.pid());
    k.read_until("{\"pid\"");
    let count = {
        let agent = Agent::builder()
            .args(&["--sample-interval", "1", "--emit-samples"])
            .state_dir(state.clone())
            .start();
        let s = agent.wait_for_event(WAIT, "a sample of the kubelet", |v| {
            v["event"] == "sample" && v["kubelet"]["pid"].as_u64() == Some(pid)
        });
        assert_eq!(s["kubelet_cgroup"], cg.path.as_str(), "{s}");
        assert_eq!(s["kubelet_limit_bytes"].as_u64(), Some(256 * MIB));
        let rss = s["kubelet"]["rss_bytes"].as_u64().unwrap();
        let parts = s["kubelet"]["anon_bytes"].as_u64().unwrap()
            + s["kubelet"]["file_bytes"].as_u64().unwrap()
            + s["kubelet"]["shmem_bytes"].as_u64().unwrap();
        assert_eq!(rss, parts, "RSS is anon + file + shmem");
        // Exactly what the kernel reports: the cgroup's usage file and the process's VmRSS,
        // read by the test just before and just after a sample; once the stand-in idles (24 MiB
        // leaked) both readings agree and the sample must equal them.
        let usage_file = cg.dir.join(if cg.version == 1 {
            "memory.usage_in_bytes"
        } else {
            "memory.current"
        });
        let kernel = || -> (u64, u64) {
            let usage = std::fs::read_to_string(&usage_file)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let vmrss_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS in /proc/PID/status");
            (usage, vmrss_kib * 1024)
        };
        let deadline = Instant::now() + WAIT;
        let mut brackets = Vec::new();
        let matched = loop {
            let n = samples_of(&agent, pid).len();
            let before = kernel();
            let s = next_sample(&agent, pid, n, deadline);
            let after = kernel();
            let got = (
                s["kubelet_cgroup_bytes"].as_u64().unwrap(),
                s["kubelet"]["rss_bytes"].as_u64().unwrap(),
            );
            if before == after {
                break (got, before);
            }
            brackets.push((before, got, after));
            assert!(
                Instant::now() < deadline,
                "the kernel's counters never held still around a sample: {brackets:?}"
            );
        };
        assert_eq!(
            matched.0, matched.1,
            "(kubelet_cgroup_bytes, rss_bytes) vs (memory usage, VmRSS) read around the sample"
        );
        // Three samples, one per --sample-interval (1 s): waited for, not slept on.
        let n = samples_of(&agent, pid).len();
        for i in n..3 {
            next_sample(&agent, pid, i, deadline);
        }
        agent
            .records()
            .iter()
            .filter(|v| v["event"] == "sample")
            .count()
    };
    assert!(count >= 3);
    // A new agent (an upgrade, a restart) reloads what the old one recorded.
    let agent = Agent::builder().state_dir(state.clone()).start();
    agent.wait_for_log(WAIT, "series store loaded");
    let line = agent
        .stderr()
        .into_iter()
        .find(|l| l.contains("series store loaded"))
        .expect("store log line");
    let n: usize = line
        .split("samples=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("sample count");
    assert!(n >= count, "reloaded {n} of {count} samples: {line}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}
