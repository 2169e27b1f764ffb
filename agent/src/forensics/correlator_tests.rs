//! The correlator fed recorded events: each kill shape, ordering and timeout.
use super::*;
use crate::forensics::kill_group::GROUP_SETTLE_NS;

/// A recorded node: what procfs and cgroupfs answered.
#[derive(Default)]
struct Recorded {
    procs: HashMap<u32, ProcSnapshot>,
    domain: Option<MemcgState>,
    /// Cgroups other than `domain` that exist, by path.
    cgroups: Vec<MemcgState>,
    version: Option<u8>,
    group_kills: Option<u64>,
    /// Cgroup paths by kernfs id (what `cgroup_by_id` finds).
    ids: HashMap<u64, String>,
}

impl Node for Recorded {
    fn snapshot(&self, pid: u32) -> Option<ProcSnapshot> {
        self.procs.get(&pid).cloned()
    }
    fn oom_domain(&self, _t: Option<&str>, _v: Option<&str>) -> Option<MemcgState> {
        self.domain.clone()
    }
    fn cgroup_by_id(&self, id: u64) -> Option<String> {
        self.ids.get(&id).cloned()
    }
    fn memcg_state(&self, path: &str) -> Option<MemcgState> {
        self.domain
            .iter()
            .chain(&self.cgroups)
            .find(|d| d.path == path)
            .cloned()
    }
    fn hierarchy_version(&self) -> Option<u8> {
        self.version
    }
    fn group_kills(&self, _path: &str) -> Option<u64> {
        self.group_kills
    }
}

fn state(path: &str, limit_mib: u64) -> MemcgState {
    MemcgState {
        path: path.into(),
        limit_bytes: Some(limit_mib << 20),
        usage_bytes: Some(limit_mib << 20),
        peak_bytes: Some(limit_mib << 20),
        failcnt: None,
        oom_events: None,
        oom_group: Some(false),
        source: "cgroup_files",
    }
}

fn mm(tid: u32, t: u64, memcg: &str, oom_group_levels: u32) -> VictimMmRecord {
    VictimMmRecord {
        ktime_ns: t,
        tid,
        tgid: tid,
        rss: Some(crate::kernel::events::RssPages {
            file: 500,
            anon: 8192,
            shmem: 0,
            swap: 0,
            percpu_summed: true,
            cpus: 2,
        }),
        total_vm_pages: Some(10_000),
        pgtables_bytes: Some(65536),
        memcg: Some(cg(memcg)),
        oom_group_levels,
    }
}

#[test]
fn signal_kill_memory_comes_from_the_kernels_rss_counters() {
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    // The raw tracepoint's record may come before or after the classic one.
    c.on_event(Event::VictimMm(mm(9, 100, "/x", 0)));
    c.on_event(Event::Signal(signal(
        9,
        SiCode::USER,
        77,
        ReclaimKind::None,
        100,
    )));
    let r = c.on_event(Event::Exit(exit(9, 100, 400, "/x"))).unwrap();
    assert_eq!(r.memory.source, Some("rss_stat"));
    assert_eq!(r.memory.anon_rss_kb, Some(8192 * pages_kb(1)));
    assert_eq!(r.memory.file_rss_kb, Some(500 * pages_kb(1)));
    assert_eq!(r.memory.total_vm_kb, Some(10_000 * pages_kb(1)));
    assert_eq!(r.memory.pgtables_kb, Some(64));
    c.on_event(Event::Signal(signal(
        10,
        SiCode::USER,
        77,
        ReclaimKind::None,
        500,
    )));
    c.on_event(Event::VictimMm(mm(10, 500, "/x", 0)));
    let r = c.on_event(Event::Exit(exit(10, 500, 900, "/x"))).unwrap();
    assert_eq!(r.memory.source, Some("rss_stat"));
}

#[test]
fn domain_decided_by_the_kernels_counters_not_usage() {
    // v1 one-container pod: both at their limits by usage, the pod's failcnt rose.
    let node = Recorded {
        domain: Some(state("/pod", 64)),
        cgroups: vec![state("/pod/ctr", 64)],
        version: Some(1),
        ..Default::default()
    };
    let mut c = Correlator::new(node, Clock::with_offset(0));
    let mut s = signal(7, SiCode::KERNEL, 7, ReclaimKind::Memcg, 10_000);
    s.sender_memcg = cg("/pod/ctr");
    s.domain_counters = Some(crate::kernel::events::DomainDeltas {
        failcnt: vec![0, 56],
        oom: vec![0, 1],
        counters: Vec::new(),
    });
    c.on_event(Event::Signal(s));
    c.on_event(Event::OomVictim(victim(7, 7, 20_000)));
    let r = c
        .on_event(Event::Exit(exit(7, 10_000, 30_000, "/pod/ctr")))
        .unwrap();
    let oom = r.oom.unwrap();
    assert_eq!(oom.domain.map(|d| d.path), Some("/pod".to_string()));
    assert_eq!(oom.evidence, "memory.failcnt");
    assert_eq!(oom.group, None);
}

#[test]
fn the_domains_limit_is_the_kernels_at_the_kill_not_the_files_after() {
    // The kubelet's cgroup: the limit fired at 38 MiB, then (within milliseconds, before the
    // agent read the files) it was raised to 1 GiB and the victim's memory uncharged.
    let raised = MemcgState {
        limit_bytes: Some(1 << 30),
        usage_bytes: Some(2 << 20),
        ..state("/kubelet", 1024)
    };
    let at_kill = |max_pages: u64| {
        let mut s = signal(7, SiCode::KERNEL, 7, ReclaimKind::Memcg, 10_000);
        s.sender_memcg = cg("/kubelet");
        s.domain_counters = Some(crate::kernel::events::DomainDeltas {
            failcnt: vec![99],
            oom: vec![1],
            counters: vec![crate::kernel::events::PageCounterReading {
                max_pages,
                usage_pages: (38 << 20) / page_bytes(),
                watermark_pages: None,
            }],
        });
        s
    };
    for (files, max_pages, limit, usage, source) in [
        // Read in the kernel: the limit that fired, the charge at it.
        (
            Some(raised.clone()),
            (38 << 20) / page_bytes(),
            Some(38 << 20),
            Some(38 << 20),
            "page_counter",
        ),
        // The cgroup already gone: the kernel's reading alone.
        (
            None,
            (38 << 20) / page_bytes(),
            Some(38 << 20),
            Some(38 << 20),
            "page_counter",
        ),
        // No limit (PAGE_COUNTER_MAX) reads as none, as the files say.
        (
            Some(raised.clone()),
            (i64::MAX as u64) / page_bytes(),
            None,
            Some(38 << 20),
            "page_counter",
        ),
        // A failed read (0 pages): the files.
        (
            Some(raised.clone()),
            0,
            Some(1 << 30),
            Some(2 << 20),
            "cgroup_files",
        ),
    ] {
        let node = Recorded {
            cgroups: files.into_iter().collect(),
            version: Some(1),
            ..Default::default()
        };
        let mut c = Correlator::new(node, Clock::with_offset(0));
        c.on_event(Event::Signal(at_kill(max_pages)));
        c.on_event(Event::OomVictim(victim(7, 7, 20_000)));
        let r = c
            .on_event(Event::Exit(exit(7, 10_000, 30_000, "/kubelet")))
            .unwrap();
        let oom = r.oom.unwrap();
        assert_eq!(oom.evidence, "memory.failcnt");
        let d = oom.domain.expect("domain");
        assert_eq!(d.path, "/kubelet");
        assert_eq!(
            (d.limit_bytes, d.usage_bytes, d.source),
            (limit, usage, source)
        );
    }
}

/// The kprobe tier's domain deeper than the probe keeps (`CGROUP_PATH_TRUNCATED`: only its
/// deepest components): its page counter is still the limit that fired, but the path is not a
/// path; it is found by the cgroup's id, and without that there is no domain to name (a
/// "/c/d/..." that looks absolute and is not, with the kernel's limit under it, is wrong).
#[test]
fn a_truncated_oom_control_domain_is_found_by_its_id_not_printed() {
    let full = "/a/b/c/d/e/f/g/h/i";
    let truncated = KernelCgroup {
        id: 4242,
        path: Some("/b/c/d/e/f/g/h/i".into()),
        truncated: true,
    };
    for (ids, want) in [
        (HashMap::new(), None),
        (HashMap::from([(4242, full.to_string())]), Some(full)),
    ] {
        let node = Recorded {
            ids,
            version: Some(2),
            ..Default::default()
        };
        let mut c = Correlator::new(node, Clock::with_offset(0));
        c.on_event(Event::OomControl(crate::kernel::events::OomControlRecord {
            ktime_ns: 9_000,
            chosen_pid: 7,
            chosen_tgid: 7,
            constraint: Ok(OomConstraint::Memcg),
            totalpages: 8192,
            chosen_points: 8000,
            domain: truncated.clone(),
            domain_counter: Some(crate::kernel::events::PageCounterReading {
                max_pages: (32 << 20) / page_bytes(),
                usage_pages: (32 << 20) / page_bytes(),
                watermark_pages: None,
            }),
        }));
        c.on_event(Event::Signal(signal(
            7,
            SiCode::KERNEL,
            7,
            ReclaimKind::Memcg,
            10_000,
        )));
        c.on_event(Event::OomVictim(victim(7, 7, 20_000)));
        let r = c
            .on_event(Event::Exit(exit(7, 10_000, 30_000, "/t")))
            .unwrap();
        let oom = r.oom.unwrap();
        assert_eq!(oom.evidence, "oom_control");
        let d = oom.domain.as_ref();
        assert_eq!(d.map(|d| d.path.as_str()), want);
        if let Some(d) = d {
            assert_eq!((d.limit_bytes, d.source), (Some(32 << 20), "page_counter"));
        }
    }
}

#[test]
fn group_kill_records_name_the_group_and_the_chosen_victim() {
    // v2: pod /pod (the domain), container /pod/ctr with memory.oom.group; the allocating
    // process 20 is chosen, the idle 21 is killed with it.
    let node = Recorded {
        domain: Some(state("/pod", 192)),
        version: Some(2),
        group_kills: Some(1),
        ..Default::default()
    };
    let mut c = Correlator::new(node, Clock::with_offset(0));
    let t = 1_000_000_000;
    for (pid, dt) in [(20u32, 0u64), (21, 30_000)] {
        let mut s = signal(pid, SiCode::KERNEL, 20, ReclaimKind::Memcg, t + dt);
        s.sender_memcg = cg("/pod/ctr");
        s.domain_counters = Some(crate::kernel::events::DomainDeltas {
            failcnt: vec![0, 40],
            oom: vec![0, 1],
            counters: Vec::new(),
        });
        c.on_event(Event::Signal(s));
        c.on_event(Event::VictimMm(mm(pid, t + dt, "/pod/ctr", 0b01)));
        c.on_event(Event::OomVictim(victim(pid, 20, t + dt + 10_000)));
    }
    // Deaths complete the kills, but the group is held until it is complete.
    assert!(c
        .on_event(Event::Exit(exit(21, t + 30_000, t + 200_000, "/pod/ctr")))
        .is_none());
    assert!(c
        .on_event(Event::Exit(exit(20, t, t + 300_000, "/pod/ctr")))
        .is_none());
    assert!(c.expire(t + 300_000 + GROUP_SETTLE_NS).is_empty());
    let out = c.expire(t + 300_001 + GROUP_SETTLE_NS);
    assert_eq!(out.len(), 2);
    assert_eq!(c.pending_len(), 0);
    for (r, role) in out.iter().zip(["chosen", "member"]) {
        let oom = r.oom.as_ref().unwrap();
        assert_eq!(oom.domain.as_ref().map(|d| d.path.as_str()), Some("/pod"));
        assert_eq!(oom.evidence, "memory.events.local");
        let g = oom.group.as_ref().expect("group kill");
        assert_eq!(g.path, "/pod/ctr");
        assert_eq!(g.killed, 2);
        assert_eq!(g.role, role);
        assert_eq!(g.chosen_pid, 20);
        assert_eq!(g.oom_group_kill, Some(1));
        assert_eq!(g.source, "kernel");
    }
    assert_eq!(out[0].victim.pid, 20);
    let text = out[0].text();
    assert!(
        text.contains(
            "GROUP_KILL group=/pod/ctr killed=2 chosen=20 domain=/pod oom_group_kill=1\n  "
        ),
        "{text}"
    );
    assert!(out[1].text().starts_with("  ") && out[1].text().ends_with("role=member"));
}

fn cg(path: &str) -> KernelCgroup {
    KernelCgroup {
        id: 1,
        path: Some(path.into()),
        truncated: false,
    }
}

fn signal(pid: u32, code: SiCode, sender: u32, reclaim: ReclaimKind, t: u64) -> SignalRecord {
    SignalRecord {
        ktime_ns: t,
        target_pid: pid,
        target_comm: "victim".into(),
        code,
        group: 1,
        result: Ok(SignalDelivery::Delivered),
        sender_tid: sender,
        sender_tgid: sender,
        sender_comm: "sender".into(),
        sender_reclaim: Ok(reclaim),
        sender_reclaim_ktime_ns: if reclaim == ReclaimKind::None {
            0
        } else {
            t - 1000
        },
        sender_memcg: cg("/t"),
        domain_counters: None,
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
            SiCode::KERNEL,
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
        SiCode::KERNEL,
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
        SiCode::KERNEL,
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
        source: "cgroup_files",
    };
    let node = Recorded {
        domain: Some(domain.clone()),
        ..Default::default()
    };
    let mut c = Correlator::new(node, Clock::with_offset(0));
    c.on_event(Event::Signal(signal(
        7,
        SiCode::KERNEL,
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
        SiCode::USER,
        77,
        ReclaimKind::None,
        100,
    )));
    c.on_event(Event::Signal(signal(
        9,
        SiCode::USER,
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
    c.on_event(Event::Signal(signal(
        5,
        SiCode::USER,
        1,
        ReclaimKind::None,
        10,
    )));
    assert!(c.expire(10 + EXIT_TIMEOUT_NS).is_empty());
    let out = c.expire(11 + EXIT_TIMEOUT_NS);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exit_after_ns, None);
    assert_eq!(c.stats.timeouts, 1);
}

#[test]
fn a_stalled_loop_does_not_expire_kills_whose_events_are_queued() {
    // The agent's loop stalled for 5 s after feeding a SIGKILL and its mark_victim; the exit
    // (40 ms after) waited in the channel meanwhile. The wall clock says 5 s passed; the
    // stream says 0.
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    let t = 7_000_000_000;
    c.on_event(Event::Signal(signal(
        8,
        SiCode::KERNEL,
        8,
        ReclaimKind::Memcg,
        t,
    )));
    c.on_event(Event::OomVictim(victim(8, 8, t + 50_000)));
    c.on_quiet(t + 60_000);
    assert_eq!(c.stream_ns(), t + 60_000);
    assert!(c.expire_at_wall(t + 5_000_000_000).is_empty());
    assert_eq!(c.pending_len(), 1);
    let r = c
        .on_event(Event::Exit(exit(8, t, t + 40_000_000, "/cg")))
        .expect("complete once the queued exit is fed");
    assert_eq!(r.kind, KillKind::OomMemcg);
    assert_eq!(r.exit_after_ns, Some(40_000_000));
    assert_eq!(c.stats.orphans + c.stats.timeouts, 0);
    // A quiet mark never moves the clock back.
    c.on_quiet(t);
    assert_eq!(c.stream_ns(), t + 40_000_000);
}

#[test]
fn a_silent_stream_still_expires_against_the_wall_clock_backstop() {
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    let t = 7_000_000_000;
    c.on_event(Event::Signal(signal(
        5,
        SiCode::USER,
        1,
        ReclaimKind::None,
        t,
    )));
    // Quiet marks up to 3 s (the exit timeout) expire nothing yet...
    c.on_quiet(t + EXIT_TIMEOUT_NS);
    assert!(c.expire_at_wall(t + EXIT_TIMEOUT_NS).is_empty());
    // ...the stream goes silent: the wall clock expires it STALL_BACKSTOP_NS late.
    let wall = t + EXIT_TIMEOUT_NS + STALL_BACKSTOP_NS;
    assert!(c.expire_at_wall(wall).is_empty());
    let out = c.expire_at_wall(wall + 1);
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
        SiCode::KERNEL,
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

/// Victim readings whose SIGKILL never comes (its record lost) are kept up to CACHE_MAX; past
/// it the cache is let go and every reading it held counted.
#[test]
fn early_victim_readings_are_bounded_and_the_overflow_counted() {
    let mut c = Correlator::new(Recorded::default(), Clock::with_offset(0));
    for tid in 1..=(CACHE_MAX as u32 + 2) {
        c.on_event(Event::VictimMm(mm(tid, u64::from(tid), "/x", 0)));
    }
    let early = |c: &Correlator<Recorded>| c.state_sizes()[3];
    // CACHE_MAX + 1 held when the next came: cleared, that one kept.
    assert_eq!(early(&c), ("agent_early_victim_mm", 1));
    assert_eq!(c.cache_cleared, CACHE_MAX as u64 + 1);
}
