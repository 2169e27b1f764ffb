//! Writes the golden test's SYNTHESISED ring stream (`agent/tests/data/golden/ring-synth.hex`):
//! `cargo xtask golden --synth`. The records are probe-common's wire structs, filled with what the
//! probes write on this kernel for each case (values as seen in the privileged tests: SI_KERNEL 128
//! then mark_victim ~45 us later for an OOM kill, SI_USER for kill -9), written as raw bytes
//! exactly as they sit in the ring. It covers what a kernel cannot be made to produce on demand
//! (global, cpuset and kprobe-tier OOM kills, the kubelet OOM-killed and restarting, truncated
//! and unreadable cgroup paths, out-of-range enum values, malformed records); the real stream
//! (`ring-recorded.hex`) comes from `cargo xtask golden --record`.

mod wire {
    use probe_common::*;

    pub fn comm(s: &str) -> [u8; TASK_COMM_LEN] {
        let mut out = [0u8; TASK_COMM_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    /// Deepest component first, as the probe walks up from the task's cgroup.
    pub fn cg(id: u64, path: &str, flags: u32) -> CgroupPath {
        // SAFETY: CgroupPath is integers and byte arrays; all-zero is a valid value.
        let mut c: CgroupPath = unsafe { core::mem::zeroed() };
        c.id = id;
        c.flags = flags;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let keep = parts.len().min(CGROUP_MAX_DEPTH);
        for (i, name) in parts.iter().rev().take(keep).enumerate() {
            c.names[i][..name.len()].copy_from_slice(name.as_bytes());
        }
        c.depth = keep as u32;
        c
    }

    fn hdr<T>(kind: EventKind, t: u64) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            len: core::mem::size_of::<T>() as u32,
            ktime_ns: t,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per wire field a case varies"
    )]
    pub fn signal(
        t: u64,
        target: i32,
        target_comm: &str,
        code: i32,
        result: i32,
        sender: u32,
        sender_comm: &str,
        reclaim: u32,
        memcg: CgroupPath,
    ) -> SignalEvent {
        SignalEvent {
            hdr: hdr::<SignalEvent>(EventKind::Signal, t),
            target_pid: target,
            sig: 9,
            code,
            group: 1,
            result,
            sender_tid: sender,
            sender_tgid: sender,
            sender_reclaim_kind: reclaim,
            sender_reclaim_ktime_ns: if reclaim == 0 { 0 } else { t - 20_000 },
            target_comm: comm(target_comm),
            sender_comm: comm(sender_comm),
            sender_memcg: memcg,
            domain: DomainCounters::default(),
        }
    }

    pub fn victim(t: u64, pid: i32, name: &str, trigger: u32, fields: u32) -> OomVictimEvent {
        OomVictimEvent {
            hdr: hdr::<OomVictimEvent>(EventKind::OomVictim, t),
            pid,
            uid: 1000,
            total_vm_kb: 120_000,
            anon_rss_kb: 31_744,
            file_rss_kb: 1_536,
            shmem_rss_kb: 0,
            pgtables_kb: 112,
            oom_score_adj: 0,
            fields,
            trigger_tid: trigger,
            trigger_tgid: trigger,
            comm: comm(name),
        }
    }

    pub fn exit(
        t: u64,
        pid: u32,
        tgid: u32,
        signal_t: u64,
        code: i32,
        name: &str,
        memcg: CgroupPath,
    ) -> ExitEvent {
        ExitEvent {
            hdr: hdr::<ExitEvent>(EventKind::Exit, t),
            tid: pid,
            tgid,
            signaled_pid: pid,
            exit_code: code,
            signal_ktime_ns: signal_t,
            comm: comm(name),
            memcg,
        }
    }

    pub fn oom_control(t: u64, pid: u32, constraint: u32, domain: CgroupPath) -> OomControlEvent {
        OomControlEvent {
            hdr: hdr::<OomControlEvent>(EventKind::OomControl, t),
            chosen_pid: pid,
            chosen_tgid: pid,
            constraint,
            flags: 0,
            totalpages: 131_072,
            chosen_points: 130_000,
            domain_max_pages: 0,
            domain_usage_pages: 0,
            domain_watermark_pages: 0,
            domain,
        }
    }

    pub fn exec(t: u64, tgid: u32) -> KubeletExecEvent {
        KubeletExecEvent {
            hdr: hdr::<KubeletExecEvent>(EventKind::KubeletExec, t),
            tgid,
            _pad: 0,
            comm: comm("kubelet"),
        }
    }
}

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: golden_synth OUT (agent/tests/data/golden/ring-synth.hex)");
    use oomprobe::kernel::events;
    use probe_common::{
        victim_fields as f, CGROUP_PATH_TRUNCATED, CGROUP_PATH_UNAVAILABLE, OC_DOMAIN_COUNTERS,
        OC_DOMAIN_WATERMARK,
    };
    use wire::*;
    const ALL: u32 = 0xff;
    fn b<T: Copy>(v: &T) -> Vec<u8> {
        events::as_bytes(v)
    }
    let mut lines: Vec<String> = vec![
        "# SYNTHESISED from probe-common's wire structs, not recorded from a kernel (README.md)"
            .into(),
        "# seen_mono_ns raw-record-hex | expire now_ktime_ns".into(),
    ];
    let rec = |lines: &mut Vec<String>, seen: u64, bytes: Vec<u8>| {
        let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
        lines.push(format!("{seen} {hex}"));
    };
    let expire = |lines: &mut Vec<String>, now: u64| lines.push(format!("expire {now}"));
    let l = &mut lines;
    let t0: u64 = 1_000_000_000_000;
    let test_cg = cg(4242, "/oomprobe-test-1", 0);
    // 1. memcg OOM kill: trigger 4100 allocates, 4101 is chosen; SIGKILL, mark_victim, exit.
    rec(
        l,
        t0 + 90_000,
        b(&signal(t0, 4101, "hog", 128, 0, 4100, "alloc", 1, test_cg)),
    );
    rec(
        l,
        t0 + 90_000,
        b(&victim(t0 + 45_000, 4101, "hog", 4100, ALL)),
    );
    rec(
        l,
        t0 + 2_100_000,
        b(&exit(t0 + 2_000_000, 4101, 4101, t0, 9, "hog", test_cg)),
    );
    // 2. An idle victim that died before mark_victim fired.
    let t = t0 + 10_000_000;
    rec(
        l,
        t + 60_000,
        b(&signal(t, 4111, "idle", 128, 0, 4110, "alloc", 1, test_cg)),
    );
    rec(
        l,
        t + 60_000,
        b(&exit(t + 41_000, 4111, 4111, t, 9, "idle", test_cg)),
    );
    rec(
        l,
        t + 60_000,
        b(&victim(t + 45_000, 4111, "idle", 4110, ALL)),
    );
    // 3. kill -9 from a shell into a pod, twice (the second already pending), then the death.
    let t = t0 + 20_000_000;
    let pod_cg = cg(
        5001,
        "/kubepods/burstable/pod1f2e3d4c-0000-4000-8000-00000000a001/ctr1",
        0,
    );
    let bash_cg = cg(1, "/user.slice", 0);
    rec(
        l,
        t + 30_000,
        b(&signal(t, 4201, "server", 0, 0, 4200, "bash", 0, bash_cg)),
    );
    rec(
        l,
        t + 80_000,
        b(&signal(
            t + 50_000,
            4201,
            "server",
            0,
            2,
            4200,
            "bash",
            0,
            bash_cg,
        )),
    );
    rec(
        l,
        t + 400_000,
        b(&exit(t + 350_000, 4201, 4201, t, 9, "server", pod_cg)),
    );
    // 4. A thread signalled by tkill (SI_TKILL) dies with its whole process (tgid 4300).
    let t = t0 + 30_000_000;
    let app_cg = cg(6001, "/system.slice/app.service", 0);
    let init_cg = cg(1, "/init.scope", 0);
    rec(
        l,
        t + 20_000,
        b(&signal(t, 4302, "worker", -6, 0, 1, "systemd", 0, init_cg)),
    );
    rec(
        l,
        t + 900_000,
        b(&exit(t + 800_000, 4302, 4300, t, 9, "worker", app_cg)),
    );
    // 5. A global OOM: the trigger last entered direct reclaim; partial mark_victim (old kernel).
    let t = t0 + 40_000_000;
    let root_cg = cg(1, "/", 0);
    rec(
        l,
        t + 70_000,
        b(&signal(
            t, 4401, "batch", 128, 0, 4400, "loader", 2, root_cg,
        )),
    );
    rec(
        l,
        t + 70_000,
        b(&victim(
            t + 50_000,
            4401,
            "batch",
            4400,
            f::COMM | f::ANON_RSS,
        )),
    );
    rec(
        l,
        t + 900_000,
        b(&exit(t + 850_000, 4401, 4401, t, 9, "batch", root_cg)),
    );
    // 6. Bad records: short, unknown kind, wrong length.
    rec(l, t + 1_000_000, vec![1, 0, 0, 0, 16, 0, 0, 0]);
    let mut unknown = b(&exec(t, 1));
    unknown[0] = 99;
    rec(l, t + 1_000_000, unknown);
    let mut bad_len = b(&victim(t, 1, "x", 1, ALL));
    bad_len[4] = 8;
    rec(l, t + 1_000_000, bad_len);
    // 7. An exit nobody signalled (lost upstream), and a SIGKILL to a process already dying.
    rec(
        l,
        t + 2_000_000,
        b(&exit(t + 1_900_000, 4501, 4501, t, 9, "ghost", root_cg)),
    );
    rec(
        l,
        t + 2_000_000,
        b(&signal(
            t + 1_950_000,
            4502,
            "zombie",
            0,
            1,
            4200,
            "bash",
            0,
            bash_cg,
        )),
    );
    // 8. The kubelet, OOM-killed in its own cgroup (kprobe tier: oom_control first), restarts.
    let t = t0 + 1_000_000_000;
    let kubelet_cg = cg(7001, "/kubelet.slice", 0);
    // With the domain's page counter as oom_kill_process found it (the kubelet at its 512 MiB
    // limit, peak 512 MiB); the node's files read 511 MiB afterwards.
    let mut oc = oom_control(t - 5_000, 5000, 3, kubelet_cg);
    oc.flags = OC_DOMAIN_COUNTERS | OC_DOMAIN_WATERMARK;
    oc.domain_max_pages = 131_072;
    oc.domain_usage_pages = 131_072;
    oc.domain_watermark_pages = 131_072;
    rec(l, t + 10_000, b(&oc));
    rec(
        l,
        t + 50_000,
        b(&signal(
            t, 5000, "kubelet", 128, 0, 5000, "kubelet", 1, kubelet_cg,
        )),
    );
    rec(
        l,
        t + 100_000,
        b(&victim(t + 40_000, 5000, "kubelet", 5000, ALL)),
    );
    rec(
        l,
        t + 3_100_000,
        b(&exit(
            t + 3_000_000,
            5000,
            5000,
            t,
            9,
            "kubelet",
            kubelet_cg,
        )),
    );
    // Collateral while the kubelet is down: a pod's process killed by the runtime.
    rec(
        l,
        t + 5_000_000,
        b(&signal(
            t + 4_000_000,
            4601,
            "app",
            0,
            0,
            900,
            "containerd-shim",
            0,
            root_cg,
        )),
    );
    rec(
        l,
        t + 6_000_000,
        b(&exit(
            t + 5_500_000,
            4601,
            4601,
            t + 4_000_000,
            9,
            "app",
            pod_cg,
        )),
    );
    rec(l, t + 2_000_000_000, b(&exec(t + 2_000_000_000, 5050)));
    // 9. A kernel SIGKILL that is not an OOM kill (no mark_victim): reported after the grace.
    let t = t0 + 3_000_000_000;
    rec(
        l,
        t + 10_000,
        b(&signal(t, 4701, "stuck", 128, 0, 4701, "stuck", 0, root_cg)),
    );
    rec(
        l,
        t + 30_000,
        b(&exit(t + 20_000, 4701, 4701, t, 9, "stuck", root_cg)),
    );
    expire(l, t + 20_000 + 50_000_000);
    expire(l, t + 20_000 + 200_000_000);
    // 10. A kill in a cgroup deeper than the probe keeps (truncated: resolved by id), and
    //     one whose cgroup was unreadable; other si_codes and results.
    let t = t0 + 4_000_000_000;
    let deep = cg(777, "/a/b/c/d/e/f/g/h/deep", CGROUP_PATH_TRUNCATED);
    let gone = cg(778, "/", CGROUP_PATH_UNAVAILABLE);
    rec(
        l,
        t + 10_000,
        b(&signal(t, 4801, "deep", -1, 0, 4800, "sigqueue", 0, gone)),
    );
    rec(
        l,
        t + 90_000,
        b(&exit(t + 80_000, 4801, 4801, t, 9, "deep", deep)),
    );
    rec(
        l,
        t + 110_000,
        b(&signal(
            t + 100_000,
            4802,
            "odd",
            77,
            9,
            4800,
            "sender",
            0,
            root_cg,
        )),
    );
    rec(
        l,
        t + 190_000,
        b(&exit(
            t + 180_000,
            4802,
            4802,
            t + 100_000,
            -1,
            "odd",
            root_cg,
        )),
    );
    // 11. cpuset- and unknown-constrained OOM kills (kprobe tier), a cgroup-limit OOM kill
    //     without a reclaim mark, and a kill whose process never dies (timeout).
    let t = t0 + 5_000_000_000;
    rec(l, t + 5_000, b(&oom_control(t - 1_000, 4901, 1, root_cg)));
    rec(
        l,
        t + 10_000,
        b(&signal(t, 4901, "numa", 128, 0, 4900, "alloc", 2, root_cg)),
    );
    rec(
        l,
        t + 60_000,
        b(&victim(t + 45_000, 4901, "numa", 4900, ALL)),
    );
    rec(
        l,
        t + 90_000,
        b(&exit(t + 80_000, 4901, 4901, t, 9, "numa", root_cg)),
    );
    rec(
        l,
        t + 105_000,
        b(&oom_control(t + 99_000, 4902, 7, root_cg)),
    );
    rec(
        l,
        t + 110_000,
        b(&signal(
            t + 100_000,
            4902,
            "odd",
            128,
            0,
            4900,
            "alloc",
            0,
            root_cg,
        )),
    );
    rec(
        l,
        t + 160_000,
        b(&victim(t + 145_000, 4902, "odd", 4900, ALL)),
    );
    rec(
        l,
        t + 190_000,
        b(&exit(
            t + 180_000,
            4902,
            4902,
            t + 100_000,
            9,
            "odd",
            root_cg,
        )),
    );
    let pods = cg(5000, "/kubepods/burstable/podx/ctr", 0);
    rec(
        l,
        t + 210_000,
        b(&signal(
            t + 200_000,
            4903,
            "web",
            128,
            0,
            4903,
            "web",
            0,
            pods,
        )),
    );
    rec(
        l,
        t + 260_000,
        b(&victim(t + 245_000, 4903, "web", 4903, ALL)),
    );
    rec(
        l,
        t + 290_000,
        b(&exit(t + 280_000, 4903, 4903, t + 200_000, 9, "web", pods)),
    );
    rec(
        l,
        t + 310_000,
        b(&signal(
            t + 300_000,
            4904,
            "immortal",
            0,
            0,
            4200,
            "bash",
            0,
            bash_cg,
        )),
    );
    expire(l, t + 300_000 + 3_000_000_000);
    expire(l, t + 300_000 + 3_000_000_001);
    expire(l, t + 10_000_000_000);
    let mut out = lines.join("\n");
    out.push('\n');
    if let Err(e) = std::fs::write(&path, out) {
        eprintln!(
            "cannot write {}: {e}",
            std::path::Path::new(&path).display()
        );
        std::process::exit(1);
    }
}
