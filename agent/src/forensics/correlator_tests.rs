//! The correlator fed recorded events: each kill shape, ordering and timeout.
use super::*;
use crate::forensics::record::SI_USER;

/// A recorded node: what procfs and cgroupfs answered.
#[derive(Default)]
struct Recorded {
    procs: HashMap<u32, ProcSnapshot>,
    domain: Option<MemcgState>,
}

impl Node for Recorded {
    fn snapshot(&self, pid: u32) -> Option<ProcSnapshot> {
        self.procs.get(&pid).cloned()
    }
    fn oom_domain(&self, _t: Option<&str>, _v: Option<&str>) -> Option<MemcgState> {
        self.domain.clone()
    }
    fn cgroup_by_id(&self, _id: u64) -> Option<String> {
        None
    }
    fn memcg_state(&self, path: &str) -> Option<MemcgState> {
        self.domain.clone().filter(|d| d.path == path)
    }
}

fn cg(path: &str) -> KernelCgroup {
    KernelCgroup {
        id: 1,
        path: Some(path.into()),
        truncated: false,
    }
}

fn signal(pid: u32, code: i32, sender: u32, reclaim: ReclaimKind, t: u64) -> SignalRecord {
    SignalRecord {
        ktime_ns: t,
        target_pid: pid,
        target_comm: "victim".into(),
        code,
        group: 1,
        result: 0,
        sender_tid: sender,
        sender_tgid: sender,
        sender_comm: "sender".into(),
        sender_reclaim: reclaim,
        sender_reclaim_ktime_ns: if reclaim == ReclaimKind::None {
            0
        } else {
            t - 1000
        },
        sender_memcg: cg("/t"),
    }
}

fn victim(pid: u32, trigger: u32, t: u64) -> VictimRecord {
    VictimRecord {
        ktime_ns: t,
        pid,
        comm: Some("victim".into()),
        total_vm_kb: Some(100_000),
        anon_rss_kb: Some(60_000),
        file_rss_kb: Some(1_000),
        shmem_rss_kb: Some(0),
        pgtables_kb: Some(200),
        uid: Some(0),
        oom_score_adj: Some(0),
        trigger_tid: trigger,
        trigger_tgid: trigger,
    }
}

fn exit(pid: u32, signal_t: u64, t: u64, memcg: &str) -> ExitRecord {
    ExitRecord {
        ktime_ns: t,
        tid: pid,
        tgid: pid,
        signaled_pid: pid,
        signal_ktime_ns: signal_t,
        exit_code: Some(9),
        comm: "victim".into(),
        memcg: cg(memcg),
    }
}

#[test]
fn global_oom_from_recorded_events() {
    // A global OOM: the trigger last entered direct reclaim; no memcg limit anywhere.
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    let t = 1_000_000_000;
    assert!(c
        .on_event(Event::Signal(signal(
            50,
            SI_KERNEL,
            60,
            ReclaimKind::Direct,
            t
        )))
        .is_none());
    assert!(c
        .on_event(Event::OomVictim(victim(50, 60, t + 45_000)))
        .is_none());
    let r = c
        .on_event(Event::Exit(exit(50, t, t + 2_000_000, "/system.slice")))
        .expect("record");
    assert_eq!(r.kind, KillKind::OomGlobal);
    assert_eq!(r.victim.pid, 50);
    assert_eq!(r.sender.pid, 60);
    assert_eq!(r.sender.code, "SI_KERNEL");
    assert_eq!(r.exit_after_ns, Some(2_000_000));
    assert_eq!(r.memory.anon_rss_kb, Some(60_000));
    let oom = r.oom.unwrap();
    assert_eq!(oom.constraint, "global");
    assert_eq!(oom.domain, None);
    assert_eq!(oom.evidence, "reclaim_path");
    assert_eq!(c.pending_len(), 0);
}

#[test]
fn victim_that_died_before_mark_victim_is_still_an_oom_kill() {
    // Seen on 6.18: an idle victim exits 41 us after the SIGKILL, mark_victim follows.
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    let t = 5_000_000_000;
    c.on_event(Event::Signal(signal(
        8,
        SI_KERNEL,
        9,
        ReclaimKind::Memcg,
        t,
    )));
    assert!(c
        .on_event(Event::Exit(exit(8, t, t + 41_000, "/cg")))
        .is_none());
    let r = c
        .on_event(Event::OomVictim(victim(8, 9, t + 45_000)))
        .expect("record once the victim data is in");
    assert_eq!(r.kind, KillKind::OomMemcg);
    assert_eq!(r.exit_after_ns, Some(41_000));
    assert_eq!(r.sender.pid, 9);
    assert_eq!(c.pending_len(), 0);
    // A kernel SIGKILL that is not an OOM kill is reported after the grace period.
    c.on_event(Event::Signal(signal(
        10,
        SI_KERNEL,
        10,
        ReclaimKind::None,
        t,
    )));
    assert!(c
        .on_event(Event::Exit(exit(10, t, t + 1_000, "/cg")))
        .is_none());
    assert!(c.expire(t + 1_000 + VICTIM_GRACE_NS).is_empty());
    let out = c.expire(t + 2_000 + VICTIM_GRACE_NS);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, KillKind::Signal);
    assert_eq!(out[0].exit_after_ns, Some(1_000));
}

#[test]
fn memcg_oom_without_reclaim_mark_uses_limits() {
    let domain = MemcgState {
        path: "/pods".into(),
        limit_bytes: Some(64 << 20),
        usage_bytes: Some(64 << 20),
        peak_bytes: Some(64 << 20),
        failcnt: Some(3),
        oom_events: None,
        oom_group: None,
    };
    let node = Recorded {
        domain: Some(domain.clone()),
        ..Default::default()
    };
    let mut c = Correlator::new(node, Clock::with_offset(0));
    c.on_event(Event::Signal(signal(
        7,
        SI_KERNEL,
        7,
        ReclaimKind::None,
        10,
    )));
    c.on_event(Event::OomVictim(victim(7, 7, 20)));
    let r = c.on_event(Event::Exit(exit(7, 10, 30, "/pods/a"))).unwrap();
    assert_eq!(r.kind, KillKind::OomMemcg);
    assert_eq!(r.oom.as_ref().unwrap().domain.as_ref(), Some(&domain));
    assert_eq!(r.oom.unwrap().evidence, "cgroup_limits");
    assert_eq!(r.victim.cgroup.as_deref(), Some("/pods/a"));
}

#[test]
fn plain_kill_uses_procfs_snapshot_and_counts_repeats() {
    let mut node = Recorded::default();
    node.procs.insert(
        9,
        ProcSnapshot {
            tgid: Some(9),
            cgroup: Some("/x".into()),
            anon_rss_kb: Some(1234),
            file_rss_kb: Some(10),
            shmem_rss_kb: Some(0),
        },
    );
    let mut c = Correlator::new(node, Clock::with_offset(0));
    c.on_event(Event::Signal(signal(
        9,
        SI_USER,
        77,
        ReclaimKind::None,
        100,
    )));
    c.on_event(Event::Signal(signal(
        9,
        SI_USER,
        78,
        ReclaimKind::None,
        150,
    )));
    let r = c.on_event(Event::Exit(exit(9, 100, 400, "/x"))).unwrap();
    assert_eq!(r.kind, KillKind::Signal);
    assert_eq!(r.sender.pid, 77);
    assert_eq!(r.extra_sigkills, 1);
    assert_eq!(r.memory.anon_rss_kb, Some(1234));
    assert_eq!(r.memory.source, Some("procfs"));
    assert_eq!(r.oom, None);
    assert_eq!(r.exit_after_ns, Some(300));
}

#[test]
fn unseen_death_expires_with_null_exit() {
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    c.on_event(Event::Signal(signal(5, SI_USER, 1, ReclaimKind::None, 10)));
    assert!(c.expire(10 + EXIT_TIMEOUT_NS).is_empty());
    let out = c.expire(11 + EXIT_TIMEOUT_NS);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exit_after_ns, None);
    assert_eq!(c.stats.timeouts, 1);
}

#[test]
fn exit_without_signal_is_an_orphan() {
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    assert!(c.on_event(Event::Exit(exit(3, 1, 2, "/"))).is_none());
    assert_eq!(c.stats.orphans, 1);
}

#[test]
fn text_line_names_everything() {
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    c.on_event(Event::Signal(signal(
        50,
        SI_KERNEL,
        60,
        ReclaimKind::Memcg,
        1_000_000,
    )));
    c.on_event(Event::OomVictim(victim(50, 60, 1_001_000)));
    let r = c
        .on_event(Event::Exit(exit(50, 1_000_000, 1_002_000, "/demo")))
        .unwrap();
    let line = r.text();
    assert!(
        line.contains("KILL oom_memcg victim=50(victim) cgroup=/demo"),
        "{line}"
    );
    assert!(
        line.contains("sender=60(sender) SI_KERNEL anon=58.6MiB"),
        "{line}"
    );
}
