//! Memory cgroup early warnings for the kubelet's cgroup: limit/pressure notifications, the OOM
//! notification, and memcg reclaim counted in the kernel, before and at the kill.
use std::time::Duration;

use oomprobe_tests::{
    cgroup_name, spawn_path_in, standin_kubelet, Agent, KillKind, ScratchCgroup, MIB,
};

#[test]
fn kubelet_cgroup_reclaim_pressure_and_oom_are_events() {
    let agent = Agent::builder().args(&["--sample-interval", "1"]).start();
    let cg = ScratchCgroup::create(&cgroup_name("memcg"), Some(48 * MIB)).unwrap();
    // Leaks slowly enough for the sampler to find its cgroup first (8 MiB/s).
    let mut k = spawn_path_in(
        &cg,
        &standin_kubelet("go"),
        &["-chunk-kib", "256", "-interval-ms", "30"],
    );
    assert_eq!(k.wait_signal(), Some(9));
    let wait = Duration::from_secs(20);
    let path = cg.path.clone();
    let oom = agent.wait_for_event(wait, "oom notification", |v| {
        v["event"] == "memcg" && v["cgroup"] == path.as_str() && v["kind"] == "oom"
    });
    // The v1 notification fires when the cgroup enters OOM, before or after the kill is
    // counted: the counter it reads is 0 or 1, never more for this single kill.
    let detail = oom["detail"].as_str().unwrap();
    assert!(
        detail.contains("oom_kill=0") || detail.contains("oom_kill=1"),
        "{oom}"
    );
    assert_eq!(cg.oom_kills(), 1);
    let reclaim = agent.wait_for_event(wait, "reclaim counted in the kernel", |v| {
        v["event"] == "memcg" && v["cgroup"] == path.as_str() && v["kind"] == "reclaim"
    });
    assert!(reclaim["count"].as_u64().unwrap() > 0);
    // The pressure notification (v1 memory.pressure_level) precedes the kill.
    // The kill itself, then the limit-pressure notification (v1 memory.pressure_level) that the
    // kernel raised while the cgroup was reclaiming on its way there.
    agent
        .expect_kill_within(u64::from(k.pid()), wait)
        .victim_cgroup(&path)
        .kind(KillKind::OomMemcg);
    agent.wait_for_event(wait, "a pressure notification", |v| {
        v["event"] == "memcg"
            && v["cgroup"] == path.as_str()
            && v["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("pressure_"))
    });
}
