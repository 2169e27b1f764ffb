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

/// The kubelet thrashing at its cgroup's limit: the pressure stand-in reads a 64 MiB file through a
/// mapping, one page at a time, over and over, under a 16 MiB limit. The kernel reclaims the
/// pages it charged and the next pass reads them back (major faults); nothing is OOM-killed.
/// The agent names it (`thrashing`) from the kubelet's own major-fault count and its cgroup at
/// the limit, without a kill record; the count is the kernel's (`/proc/<pid>/stat` majflt).
#[test]
fn kubelet_thrashing_at_its_limit_is_named_without_a_kill() {
    let agent = Agent::builder().args(&["--sample-interval", "1"]).start();
    let cg = ScratchCgroup::create(&cgroup_name("thrash"), Some(16 * MIB)).unwrap();
    // On disk (not /tmp, which may be tmpfs: shmem pages cannot be reclaimed without swap).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("thrash-{}.bin", std::process::id()));
    oomprobe_tests::remove_at_exit(file.clone());
    std::fs::write(&file, vec![0xa5u8; 64 * MIB as usize]).unwrap();
    let mut k = spawn_path_in(
        &cg,
        &standin_kubelet("pressure"),
        &["-thrash-file", file.to_str().unwrap()],
    );
    let first = k.read_until("{");
    assert!(
        first.iter().any(|l| l.contains("thrash_bytes")),
        "{first:?}"
    );
    let pid = k.pid();
    let path = cg.path.clone();
    let ev = agent.wait_for_event(Duration::from_secs(30), "thrashing", |v| {
        v["event"] == "memcg" && v["cgroup"] == path.as_str() && v["kind"] == "thrashing"
    });
    let majflt: u64 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(9)?.parse().ok())
        .expect("majflt");
    let count = ev["count"].as_u64().unwrap();
    eprintln!("{ev}; the kernel's majflt now {majflt}");
    // At least the threshold's rate over the 1 s between samples, at most what the kernel
    // counted for the process by now.
    assert!(
        count >= 50 && count <= majflt,
        "count {count}, majflt {majflt}: {ev}"
    );
    assert!(
        ev["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("kubelet pid {pid}: ")),
        "{ev}"
    );
    // No kill: the kernel's own count, the process alive, no kill record.
    assert_eq!(cg.oom_kills(), 0);
    assert!(k.0.try_wait().unwrap().is_none(), "the stand-in runs on");
    let kills = agent.kills(|k| k.0["victim"]["pid"].as_u64() == Some(u64::from(pid)));
    assert!(kills.is_empty(), "a kill record of the stand-in");
}
