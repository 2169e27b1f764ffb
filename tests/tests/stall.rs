//! Issue 11 part 3: kill records stay whole and single when the agent stalls.
//!
//! The agent is stopped (SIGSTOP, then SIGCONT 4.5 s later: what a CPU-throttled or frozen
//! DaemonSet pod goes through) while OOM kills keep coming and while kills it has already read
//! half of are completing: `kill -9`ed processes held in a frozen freezer cgroup, whose SIGKILL
//! the agent reads at once and whose death (the exit event) is released during the stall. The
//! wall clock passes the 3 s exit timeout during each stall; the event stream does not. Every
//! record must come out once, with its exit, its memory and the right kind, and nothing orphaned.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use oomprobe_tests::{cgroup_name, metric, spawn_in, Agent, Kill, KillKind, ScratchCgroup, MIB};

const WAIT: Duration = Duration::from_secs(30);
/// Longer than the correlator's 3 s exit timeout.
const STALL: Duration = Duration::from_millis(4500);
const ROUNDS: usize = 3;
/// Processes OOM-killed per round, started around each stall.
const OOMS_PER_ROUND: usize = 6;

/// A v1 freezer cgroup this test creates (thawed and removed on drop).
struct Freezer {
    dir: PathBuf,
}

impl Freezer {
    fn create(name: &str) -> Freezer {
        let dir = PathBuf::from("/sys/fs/cgroup/freezer").join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create freezer cgroup {}: {e}", dir.display()));
        Freezer { dir }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", self.dir.display()));
    }

    fn set(&self, state: &str) {
        let file = self.dir.join("freezer.state");
        std::fs::write(&file, state).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = std::fs::read_to_string(&file).unwrap_or_default();
            if now.trim() == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} stuck at {now:?}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a pid this test started.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits until the agent reports `n` or more pending kills (`oomprobe_pending_kills`).
fn wait_pending(agent: &Agent, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = agent.scrape();
        let pending = metric(&body, "oomprobe_pending_kills").unwrap_or(0.0);
        if pending >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never read the SIGKILL (pending {pending})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent resumed on drop, also when an assertion fails mid-stall.
struct Stalled(u32);

impl Stalled {
    fn stop(pid: u32) -> Stalled {
        signal(pid, libc::SIGSTOP);
        Stalled(pid)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        // SAFETY: plain syscall on the agent this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn records_stay_whole_and_single_when_the_agent_stalls_during_an_oom_burst() {
    let agent = Agent::builder().metrics(19481).start();
    let burst = ScratchCgroup::create(&cgroup_name("stall-oom"), Some(32 * MIB)).expect("cgroup");
    let held = ScratchCgroup::create(&cgroup_name("stall-held"), Some(64 * MIB)).expect("cgroup");
    let freezer = Freezer::create(&cgroup_name("stall-freezer"));

    let mut hogs = Vec::new();
    // (pid, ns from kill(2) returning to the thaw starting: the least its exit can lag).
    let mut frozen = Vec::new();
    for _ in 0..ROUNDS {
        // A process the agent will have half-read when it stalls: its SIGKILL read, its death
        // held back by the freezer until the stall is under way.
        let mut victim = spawn_in(&held, "memhog", &["8", "--hold"]);
        victim.read_until("done");
        freezer.add(victim.pid());
        freezer.set("FROZEN");
        signal(victim.pid(), libc::SIGKILL);
        let killed = Instant::now();
        wait_pending(&agent, 1.0);
        for _ in 0..OOMS_PER_ROUND / 2 {
            hogs.push(spawn_in(&burst, "memhog", &["64"]));
        }
        let stall = Stalled::stop(agent.pid());
        let thaw_at = killed.elapsed();
        freezer.set("THAWED");
        assert_eq!(victim.wait_signal(), Some(9), "the frozen victim died");
        for _ in 0..OOMS_PER_ROUND / 2 {
            hogs.push(spawn_in(&burst, "memhog", &["64"]));
        }
        std::thread::sleep(STALL);
        drop(stall);
        frozen.push((u64::from(victim.pid()), thaw_at.as_nanos() as u64));
    }
    let oom_pids: BTreeSet<u64> = hogs.iter().map(|p| u64::from(p.pid())).collect();
    for h in &mut hogs {
        assert_eq!(h.wait_signal(), Some(9), "every memhog is OOM-killed");
    }
    let frozen_pids: BTreeSet<u64> = frozen.iter().map(|(p, _)| *p).collect();
    let ours =
        |k: &Kill| oom_pids.contains(&k.victim_pid()) || frozen_pids.contains(&k.victim_pid());
    let want = oom_pids.len() + frozen_pids.len();
    let recs = agent.wait_for_kills(want, WAIT, ours);
    // Past every expiry the agent has (the 3 s exit timeout, twice): a split would show now.
    std::thread::sleep(Duration::from_secs(7));
    let recs_after = agent.kills(ours);
    assert_eq!(
        recs_after.len(),
        want,
        "one record per kill, no late duplicates: {:?}",
        recs_after.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    let victims: BTreeSet<u64> = recs.iter().map(Kill::victim_pid).collect();
    assert_eq!(victims.len(), want, "each process recorded exactly once");
    for r in &recs_after {
        let pid = r.victim_pid();
        assert!(!r.0["memory"].is_null(), "memory missing: {}", r.0);
        assert!(
            r.0["exit_after_ns"].is_u64(),
            "exit missing (expired during the stall?): {}",
            r.0
        );
        if oom_pids.contains(&pid) {
            r.kind(KillKind::OomMemcg).victim_cgroup(&burst.path);
        } else {
            r.kind(KillKind::Signal).victim_cgroup(&held.path);
            let (_, thaw_after) = frozen.iter().find(|(p, _)| *p == pid).expect("frozen");
            assert!(
                r.exit_after_ns() >= *thaw_after,
                "the frozen victim cannot die before its thaw ({thaw_after} ns after the kill): {}",
                r.0
            );
        }
    }
    let body = agent.scrape();
    let orphans = metric(
        &body,
        r#"oomprobe_events_dropped_total{kind="exit",reason="orphan"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(orphans, 0.0, "exit events without their kill");
}
