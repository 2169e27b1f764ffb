//! Exactness where users found the peers wrong (issues 11 and 16), on this real kernel (cgroup
//! v1): the OOM domain of the kubelet's pod layouts decided by the kernel's own counters, and a
//! `kill -9` victim's memory read in the kernel at the signal.
use std::{process::Command, time::Duration};

use oomprobe_tests::{spawn_in, Agent, KillKind, Proc, ScratchCgroup, MIB};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn held(lines: &[String]) -> u64 {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("done ").or_else(|| l.strip_prefix("held ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("memhog printed nothing it held: {lines:?}"))
}

/// `Anonymous:` of /proc/PID/smaps_rollup in KiB (a page-table walk, exact).
fn smaps_anon_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    text.lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no Anonymous line: {text}"))
}

fn failcnt(cg: &ScratchCgroup) -> u64 {
    std::fs::read_to_string(cg.dir.join("memory.failcnt"))
        .unwrap_or_else(|e| panic!("{}/memory.failcnt: {e}", cg.dir.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A pod as the kubelet lays it out on cgroup v1: the pod cgroup with the pod's limit, the
/// pause container holding about 1 MiB in its own cgroup, and the application containers.
struct Pod {
    // Dropped in field order: containers before the pod.
    pause_proc: Proc,
    pause: ScratchCgroup,
    pod: ScratchCgroup,
}

impl Pod {
    fn new(name: &str, limit: u64) -> Pod {
        let pod = ScratchCgroup::create(&oomprobe_tests::cgroup_name(name), Some(limit))
            .expect("pod cgroup");
        let pause = pod.child("pause", None).expect("pause cgroup");
        let mut pause_proc = spawn_in(&pause, "memhog", &["1", "--hold"]);
        pause_proc.read_until("done");
        Pod {
            pause_proc,
            pause,
            pod,
        }
    }

    fn container(&self, name: &str, limit: u64) -> ScratchCgroup {
        self.pod.child(name, Some(limit)).expect("container cgroup")
    }
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// The kill record of `victim`, checked to be a memcg OOM kill whose domain the kernel's
/// `memory.failcnt` decided.
fn oom_record(agent: &Agent, victim: u64, trigger: u64, domain: &ScratchCgroup) -> Value {
    let kill = agent.expect_kill_within(victim, WAIT);
    kill.kind(KillKind::OomMemcg)
        .sender(trigger)
        .trigger(trigger)
        .domain_path(domain.path.as_str());
    let rec = kill.0;
    assert_eq!(rec["oom"]["evidence"], "memory.failcnt", "{rec}");
    // The domain's limit and charge as the kernel had them at the SIGKILL, before the victim's
    // memory was uncharged: the charge that failed left less than a charge batch
    // (MEMCG_CHARGE_BATCH, 64 pages) below the limit.
    let d = &rec["oom"]["domain"];
    assert_eq!(d["source"], "page_counter", "{rec}");
    let (limit, usage) = (
        d["limit_bytes"].as_u64().unwrap(),
        d["usage_bytes"].as_u64().unwrap(),
    );
    eprintln!(
        "domain {} at the kill: usage {usage} of {limit} B",
        domain.path
    );
    assert!(
        limit.saturating_sub(usage) <= 64 * page_bytes(),
        "usage {usage} of {limit}: {rec}"
    );
    rec
}

#[test]
fn one_container_pod_v1_the_pods_limit_is_the_domain() {
    let agent = Agent::start();
    let mut pod = Pod::new("pod1", 64 * MIB);
    // The kubelet gives a one-container pod's container the pod's own limit.
    let ctr = pod.container("ctr", 64 * MIB);
    let mut hog = spawn_in(&ctr, "memhog", &["128"]);
    let lines = hog.read_until("done");
    assert_eq!(hog.wait_signal(), Some(9), "{lines:?}");
    let pid = u64::from(hog.pid());
    let rec = oom_record(&agent, pid, pid, &pod.pod);
    assert_eq!(rec["victim"]["cgroup"], ctr.path.as_str());
    assert_eq!(rec["oom"]["domain"]["limit_bytes"].as_u64(), Some(64 * MIB));
    // What the kernel counted: the pod's limit failed the charges, the container's never did.
    assert!(failcnt(&pod.pod) > 0);
    assert_eq!(failcnt(&ctr), 0);
    assert_eq!(failcnt(&pod.pause), 0);
    assert!(
        pod.pause_proc.0.try_wait().unwrap().is_none(),
        "pause survives"
    );
}

#[test]
fn container_with_its_own_lower_limit_is_the_domain() {
    let agent = Agent::start();
    let pod = Pod::new("pod2", 64 * MIB);
    let ctr = pod.container("ctr", 32 * MIB);
    let mut hog = spawn_in(&ctr, "memhog", &["128"]);
    let lines = hog.read_until("done");
    assert_eq!(hog.wait_signal(), Some(9), "{lines:?}");
    let pid = u64::from(hog.pid());
    let rec = oom_record(&agent, pid, pid, &ctr);
    assert_eq!(rec["oom"]["domain"]["limit_bytes"].as_u64(), Some(32 * MIB));
    assert!(failcnt(&ctr) > 0);
    assert_eq!(failcnt(&pod.pod), 0);
}

/// The allocating process sits in a sibling container with its own, higher, unfilled limit; the
/// pod's limit fires and the kernel kills the other container's process. 20 times, each in
/// fresh cgroups: the pod is the domain every time.
#[test]
fn sibling_container_trigger_the_pods_limit_is_the_domain_every_time() {
    let agent = Agent::start();
    for run in 0..20 {
        let pod = Pod::new(&format!("sib{run}"), 64 * MIB);
        let a = pod.container("a", 64 * MIB);
        let b = pod.container("b", 48 * MIB);
        let mut victim = spawn_in(
            &a,
            "memhog",
            &["40", "--step-mib", "4", "--hold", "--oom-score-adj", "1000"],
        );
        victim.read_until("done");
        let mut trigger = spawn_in(&b, "memhog", &["40"]);
        let trigger_lines = trigger.read_until("done");
        assert_eq!(victim.wait_signal(), Some(9), "run {run}");
        assert_eq!(trigger.wait_signal(), None, "run {run}: {trigger_lines:?}");
        let rec = oom_record(
            &agent,
            u64::from(victim.pid()),
            u64::from(trigger.pid()),
            &pod.pod,
        );
        assert_eq!(rec["victim"]["cgroup"], a.path.as_str(), "run {run}");
        assert_eq!(rec["sender"]["cgroup"], b.path.as_str(), "run {run}");
        assert_eq!(failcnt(&b), 0, "run {run}: b's own limit never failed");
        assert!(failcnt(&pod.pod) > 0, "run {run}");
    }
}

/// `kill -9` of a process holding a known amount of anonymous memory, by `/bin/kill` (which
/// does nothing else): the victim is gone within microseconds, the record still has its memory
/// as the kernel counted it at the signal. 50 times, 50 with memory.
#[test]
fn kill_nine_victims_memory_is_read_in_the_kernel_every_time() {
    const RUNS: usize = 50;
    const HOLD_MIB: u64 = 32;
    let agent = Agent::start();
    let cg = ScratchCgroup::create(&oomprobe_tests::cgroup_name("rss"), Some(128 * MIB))
        .expect("cgroup");
    let mut with_memory = 0;
    for run in 0..RUNS {
        let mut target = spawn_in(&cg, "memhog", &[&HOLD_MIB.to_string(), "--hold"]);
        let held_kib = held(&target.read_until("done"));
        assert_eq!(held_kib, HOLD_MIB * 1024);
        // The exact count while it idles: smaps_rollup walks its page tables.
        let walked = smaps_anon_kib(target.pid());
        let status = Command::new("/bin/kill")
            .args(["-9", &target.pid().to_string()])
            .status()
            .expect("run /bin/kill");
        assert!(status.success());
        assert_eq!(target.wait_signal(), Some(9));
        let pid = u64::from(target.pid());
        let kill = agent.expect_kill_within(pid, WAIT);
        kill.kind(KillKind::Signal).sender_comm("kill").not_oom();
        let rec = kill.0;
        let mem = &rec["memory"];
        assert_eq!(mem["source"], "rss_stat", "run {run}: {rec}");
        let anon = mem["anon_rss_kb"].as_u64().expect("anon_rss_kb");
        // What it held plus its own small heap and stack; within 2%.
        let diff = anon.abs_diff(held_kib) as f64 / held_kib as f64;
        assert!(
            diff <= 0.02,
            "run {run}: anon_rss_kb {anon} vs held {held_kib} KiB ({:.2}%)",
            diff * 100.0
        );
        // Exactly what the page tables hold: the per-CPU deltas were summed, not just the
        // counters' shared part (the kernel's own approximation, off by up to 32 pages a CPU).
        assert_eq!(
            anon, walked,
            "run {run}: anon_rss_kb vs smaps_rollup Anonymous"
        );
        assert!(mem["file_rss_kb"].as_u64().is_some_and(|f| f > 0), "{rec}");
        assert_eq!(mem["shmem_rss_kb"].as_u64(), Some(0), "{rec}");
        with_memory += 1;
    }
    assert_eq!(with_memory, RUNS);
}
