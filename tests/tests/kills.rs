//! Every SIGKILL caught exactly, on this real kernel: real OOM kills in memory cgroups this test
//! creates, a real `kill -9`, a burst reconciled against the kernel's own counters.
use std::{collections::BTreeSet, process::Command, time::Duration};

use oomprobe_tests::{
    cgroup_name, metric, monotonic_ns, realtime_ns, spawn_in, vmstat_oom_kills, Agent, Kill,
    KillKind, ScratchCgroup, SiCode, MIB,
};

const WAIT: Duration = Duration::from_secs(20);

/// Last `held <KiB>` line a memhog printed before it died.
fn last_held(lines: &[String]) -> u64 {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("held ").or_else(|| l.strip_prefix("done ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("memhog printed nothing it held: {lines:?}"))
}

#[test]
fn memcg_oom_kill_is_recorded_exactly() {
    let agent = Agent::start();
    let cg = ScratchCgroup::create(&cgroup_name("oom"), Some(32 * MIB)).expect("cgroup");
    let (mono_before, wall_before) = (monotonic_ns(), realtime_ns());
    let mut hog = spawn_in(&cg, "memhog", &["64"]);
    let pid = u64::from(hog.pid());
    let lines = hog.read_until("done");
    let (signal, reaped) = hog.wait_signal_reaped();
    assert_eq!(signal, Some(9), "memhog was not SIGKILLed: {lines:?}");
    let held_kib = last_held(&lines);

    let rec = agent.expect_kill(pid);
    rec.kind(KillKind::OomMemcg)
        .victim_comm("memhog")
        .victim_cgroup(&cg.path)
        .code(SiCode::Kernel)
        // It triggered its own OOM: the allocating task is the victim.
        .sender(pid)
        .trigger(pid)
        .domain(&cg.path, 32 * MIB)
        .exit_code(9);
    let anon = rec.anon_rss_kb();
    // It held `held_kib` and was touching the next 1 MiB step when the charge failed.
    assert!(
        anon >= held_kib && anon <= held_kib + 2048,
        "anon_rss_kb {anon} vs held {held_kib} KiB"
    );
    let (mono_got, wall_got) = (monotonic_ns(), realtime_ns());
    assert_times(&rec, mono_before, reaped, mono_got);
    // The wall-clock `time` is the same instant: between the test's readings of CLOCK_REALTIME.
    let time = rec.time();
    assert!(
        time.ends_with('Z') && time.len() == "2026-11-28T07:33:39.501197331Z".len(),
        "{time}"
    );
    let wall = rec.time_unix_ns();
    assert!(
        wall_before <= wall && wall <= wall_got,
        "time {time} not between the test's clock readings {wall_before} and {wall_got}"
    );
}

/// The kill's kernel timestamps against the test's own CLOCK_MONOTONIC readings (the clock of
/// `bpf_ktime_get_ns`): the SIGKILL after `before` (the victim was started then) and before
/// `reaped`; the victim's exit (`ktime_ns + exit_after_ns`) after the signal and before its
/// parent reaped it; the agent's first sight of it (`ktime_ns + seen_after_ns`) before the test
/// read the record at `got`. A missing exit (null after 3 s), a value from another clock or
/// another event breaks one of them.
#[track_caller]
fn assert_times(rec: &Kill, before: u64, reaped: u64, got: u64) {
    let ktime = rec.ktime_ns();
    assert!(
        before < ktime && ktime < reaped,
        "ktime_ns {ktime} not between the victim's start {before} and its reaping {reaped}"
    );
    let exit_after = rec.exit_after_ns();
    assert!(
        exit_after > 0 && ktime + exit_after <= reaped,
        "exit {exit_after} ns after the SIGKILL at {ktime}, but reaped at {reaped} ({} ns after it)",
        reaped - ktime
    );
    let seen_after = rec.seen_after_ns();
    assert!(
        ktime + seen_after <= got,
        "seen {seen_after} ns after the SIGKILL at {ktime}, later than the record's arrival {got}"
    );
}

#[test]
fn oom_triggered_by_another_process_names_victim_and_trigger() {
    let agent = Agent::start();
    let cg = ScratchCgroup::create(&cgroup_name("trigger"), Some(64 * MIB)).expect("cgroup");
    // The victim is made the kernel's first choice (+1000; lowering a score needs
    // CAP_SYS_RESOURCE, which this machine does not grant), so the trigger is spared.
    let mut victim = spawn_in(
        &cg,
        "memhog",
        &["40", "--step-mib", "4", "--hold", "--oom-score-adj", "1000"],
    );
    let victim_lines = victim.read_until("done");
    let held_kib = last_held(&victim_lines);
    let mut trigger = spawn_in(&cg, "memhog", &["48"]);
    let trigger_lines = trigger.read_until("done");
    assert_eq!(victim.wait_signal(), Some(9));
    assert_eq!(
        trigger.wait_signal(),
        None,
        "trigger should survive: {trigger_lines:?}"
    );

    let vpid = u64::from(victim.pid());
    let tpid = u64::from(trigger.pid());
    let rec = agent.expect_kill(vpid);
    rec.kind(KillKind::OomMemcg)
        // The sender must be the trigger.
        .sender(tpid)
        .sender_comm("memhog")
        .code(SiCode::Kernel)
        .sender_cgroup(&cg.path)
        .trigger(tpid)
        .victim_cgroup(&cg.path);
    let anon = rec.anon_rss_kb();
    assert!(
        anon >= held_kib && anon <= held_kib + 1024,
        "victim anon {anon} KiB vs held {held_kib} KiB"
    );
    assert!(
        agent.kills(|k| k.victim_pid() == tpid).is_empty(),
        "the trigger was not killed"
    );
}

/// `kill -9` of a memhog in a scratch cgroup; checks the record names it exactly. Returns it.
fn kill_nine_is_recorded(agent: &Agent, name: &str) -> (Kill, ScratchCgroup) {
    let cg = ScratchCgroup::create(&cgroup_name(name), None).expect("cgroup");
    let mut target = spawn_in(&cg, "memhog", &["8", "--hold"]);
    target.read_until("done");
    let before = monotonic_ns();
    let killer = Command::new("/bin/kill")
        .args(["-9", &target.pid().to_string()])
        .spawn()
        .expect("spawn /bin/kill");
    let killer_pid = u64::from(killer.id());
    let status = killer.wait_with_output().expect("kill ran").status;
    assert!(status.success());
    let (signal, reaped) = target.wait_signal_reaped();
    assert_eq!(signal, Some(9));

    let pid = u64::from(target.pid());
    let rec = agent.expect_kill(pid);
    rec.kind(KillKind::Signal)
        .sender(killer_pid)
        .sender_comm("kill")
        .code(SiCode::User)
        .victim_comm("memhog")
        .victim_cgroup(&cg.path)
        .exit_code(9)
        .not_oom();
    assert_times(&rec, before, reaped, monotonic_ns());
    (rec, cg)
}

#[test]
fn kill_dash_nine_names_the_sender_and_is_not_an_oom() {
    let agent = Agent::builder().metrics(19611).start();
    let _ = kill_nine_is_recorded(&agent, "kill9");
    let body = agent.scrape();
    // Exactly the signal kills it recorded (ours, and any other kill -9 on the node meanwhile).
    let recorded = agent.kills(|k| k.kind_str() == "signal").len() as f64;
    assert!(recorded >= 1.0);
    assert_eq!(
        metric(&body, "oomprobe_kills_total{kind=\"signal\"}"),
        Some(recorded),
        "{body}"
    );
    assert_eq!(
        metric(&body, "oomprobe_kills_total{kind=\"oom_memcg\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&body, "oomprobe_kills_total{kind=\"oom_global\"}"),
        Some(0.0)
    );
}

#[test]
fn ring_readers_work_at_normal_priority_and_when_realtime_is_refused() {
    // One reader at normal scheduling.
    let agent = Agent::builder()
        .args(&["--ring-readers", "1", "--ring-reader-priority", "0"])
        .start();
    let _ = kill_nine_is_recorded(&agent, "reader1");
    assert!(agent.stderr().iter().all(|l| !l.contains("SCHED_FIFO")));
    drop(agent);
    // Without CAP_SYS_NICE (and RLIMIT_RTPRIO 0) SCHED_FIFO is refused: one warning, and the
    // readers still read every kill.
    let agent = Agent::builder()
        .wrapped(&[
            "setpriv",
            "--inh-caps=-sys_nice",
            "--bounding-set=-sys_nice",
            "--",
        ])
        .start();
    agent.wait_for_log(WAIT, "ring readers run at normal priority");
    let _ = kill_nine_is_recorded(&agent, "norealtime");
    let warnings = agent
        .stderr()
        .iter()
        .filter(|l| l.contains("SCHED_FIFO refused"))
        .count();
    assert_eq!(warnings, 1, "one warning for all readers");
}

#[test]
fn burst_of_oom_kills_across_cgroups_reconciles_with_kernel_counters() {
    const CGROUPS: usize = 4;
    const PER: usize = 15;
    let agent = Agent::start();
    let cgs: Vec<ScratchCgroup> = (0..CGROUPS)
        .map(|i| ScratchCgroup::create(&cgroup_name(&format!("burst{i}")), Some(16 * MIB)).unwrap())
        .collect();
    let vmstat_before = vmstat_oom_kills();
    let before = monotonic_ns();
    let mut procs = Vec::new();
    for cg in &cgs {
        for _ in 0..PER {
            procs.push(spawn_in(cg, "memhog", &["64"]));
        }
    }
    let pids: BTreeSet<u64> = procs.iter().map(|p| u64::from(p.pid())).collect();
    let mut reaped = std::collections::BTreeMap::new();
    for p in &mut procs {
        let (signal, at) = p.wait_signal_reaped();
        assert_eq!(signal, Some(9), "every memhog must be OOM-killed");
        reaped.insert(u64::from(p.pid()), at);
    }
    let vmstat_delta = vmstat_oom_kills() - vmstat_before;

    let ours = |k: &Kill| pids.contains(&k.victim_pid());
    let recs = agent.wait_for_kills(CGROUPS * PER, WAIT, ours);
    // Give a duplicate, if there were one, the time to show up.
    std::thread::sleep(Duration::from_millis(500));
    let recs_after = agent.kills(ours);
    assert_eq!(recs_after.len(), recs.len(), "late duplicate records");
    assert_eq!(recs.len(), CGROUPS * PER);
    let victims: BTreeSet<u64> = recs.iter().map(Kill::victim_pid).collect();
    assert_eq!(victims, pids, "each process recorded exactly once");
    let got = monotonic_ns();
    for r in &recs {
        r.kind(KillKind::OomMemcg);
        assert_times(r, before, reaped[&r.victim_pid()], got);
    }
    for cg in &cgs {
        let n = recs
            .iter()
            .filter(|k| k.victim_cgroup_str() == cg.path)
            .count() as u64;
        assert_eq!(
            n,
            cg.oom_kills(),
            "records vs {}'s oom_kill counter",
            cg.path
        );
        assert_eq!(n, PER as u64);
        let domains = recs
            .iter()
            .filter(|k| k.victim_cgroup_str() == cg.path)
            .filter(|k| k.domain_path_str() == cg.path)
            .count();
        assert_eq!(domains, PER, "OOM domain of each kill in {}", cg.path);
    }
    assert_eq!(
        vmstat_delta,
        (CGROUPS * PER) as u64,
        "/proc/vmstat oom_kill delta"
    );
}

#[test]
fn full_ring_buffer_is_counted_not_silent() {
    let agent = Agent::builder().metrics(19612).start();
    let cg = ScratchCgroup::create(&cgroup_name("ring"), None).expect("cgroup");
    let mut target = spawn_in(&cg, "memhog", &["1", "--hold"]);
    target.read_until("done");
    let pid = target.pid() as i32;
    // Freeze the agent's reader, then send far more SIGKILLs than the 1 MiB ring holds: the
    // first kills, the rest hit a zombie and are still traced (delivery "ignored").
    const SIGNALS: u64 = 3000;
    // SAFETY: plain syscalls on processes this test started.
    unsafe {
        libc::kill(agent_pid(&agent), libc::SIGSTOP);
        for _ in 0..SIGNALS {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::kill(agent_pid(&agent), libc::SIGCONT);
    }
    assert_eq!(target.wait_signal(), Some(9));
    agent.expect_kill(pid as u64).kind(KillKind::Signal);

    // Reconcile: every SIGKILL the kernel probe saw was either received or counted as lost.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let body = agent.scrape();
        let seen = metric(
            &body,
            "oomprobe_kernel_events_total{counter=\"sigkill_seen\"}",
        )
        .unwrap_or(0.0);
        let lost = metric(
            &body,
            "oomprobe_events_dropped_total{kind=\"signal\",reason=\"ringbuf_full\"}",
        )
        .unwrap_or(0.0);
        let received: f64 = [
            "delivered",
            "ignored",
            "already_pending",
            "overflow_fail",
            "lose_info",
        ]
        .iter()
        .filter_map(|d| {
            metric(
                &body,
                &format!("oomprobe_sigkills_total{{delivery=\"{d}\"}}"),
            )
        })
        .sum();
        if seen >= SIGNALS as f64 && received + lost == seen {
            assert!(lost > 0.0, "the ring should have overflowed: {body}");
            assert!(received > 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seen {seen} != received {received} + lost {lost}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ours = agent.kills(|k| k.victim_pid() == pid as u64);
    assert_eq!(ours.len(), 1, "one kill, however many signals: {ours:?}");
}

fn agent_pid(agent: &Agent) -> i32 {
    agent.pid() as i32
}
