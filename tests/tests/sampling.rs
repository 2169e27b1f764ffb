//! Sampling and persistence: the kubelet's memory and cgroup are sampled on one clock, and the
//! series survives an agent restart.
use std::time::Duration;

use oomprobe_tests::{
    cgroup_name, scratch_dir, spawn_path_in, standin_kubelet, Agent, ScratchCgroup, MIB,
};

const WAIT: Duration = Duration::from_secs(20);

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
        assert!(s["kubelet_cgroup_bytes"].as_u64().unwrap() >= rss / 2);
        agent.wait_for_event(WAIT, "three samples", |v| {
            v["event"] == "sample" && v["time"].is_string()
        });
        std::thread::sleep(Duration::from_secs(3));
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
