//! Per-kill forensic records: the SIGKILL, the OOM killer's victim data and the death of the
//! whole process, correlated into one record.
//!
//! Rule (seen on 6.18, mm/oom_kill.c): an OOM kill emits `signal_generate` (sig 9, SI_KERNEL) in
//! the context of the task that triggered the OOM, then `mark_victim` for the same pid ~50 us
//! later; the process's last thread then passes `sched_process_exit`.
use std::collections::HashMap;

use probe_common::{OomConstraint, ReclaimKind, SiCode, SignalDelivery};

use super::{
    kill_group::{group_from_levels, GroupBuffer, GroupKill},
    node::{Node, ProcSnapshot},
    record::{
        delivery_name, si_code_name, KillKind, KillRecord, Memory, OomDetails, Sender, Victim,
    },
};
use crate::{
    cgroup::{pod_identity, MemcgState},
    clock::Clock,
    kernel::events::{Event, ExitRecord, KernelCgroup, SignalRecord, VictimMmRecord, VictimRecord},
};

/// A kill with no process death seen after this long is reported without `exit_after_ns`.
pub const EXIT_TIMEOUT_NS: u64 = 3_000_000_000;
/// An idle OOM victim can die before `mark_victim` fires for it (seen: exit 41 us after the
/// SIGKILL, `mark_victim` ~45 us): a kernel-sent SIGKILL's record waits this long for it.
pub const VICTIM_GRACE_NS: u64 = 100_000_000;
/// The wall clock expires pending kills only this far behind it: a backstop for a stream whose
/// readers stopped sending quiet marks. Otherwise expiry follows the event stream's own clock
/// ([`Correlator::stream_ns`]), so a stall of the agent's loop never expires a kill whose
/// events are still queued.
pub const STALL_BACKSTOP_NS: u64 = 30_000_000_000;
/// How long one reading of an OOM domain's limit and usage serves kills in the same cgroup.
const DOMAIN_CACHE_NS: u64 = 200_000_000;
/// A reclaim mark older than this does not explain an OOM.
const RECLAIM_RECENT_NS: u64 = 10_000_000_000;

#[derive(Debug)]
struct Pending {
    signal: Option<SignalRecord>,
    victim: Option<VictimRecord>,
    exit: Option<ExitRecord>,
    snapshot: Option<ProcSnapshot>,
    domain: Option<MemcgState>,
    oc: Option<crate::kernel::events::OomControlRecord>,
    /// The target's RSS counters and memcg chain at the SIGKILL (raw tracepoint).
    mm: Option<VictimMmRecord>,
    /// The counter that decided `domain`, when the kernel's counters did.
    domain_evidence: Option<&'static str>,
    first_ktime_ns: u64,
    /// CLOCK_MONOTONIC when userspace first saw this kill.
    seen_mono_ns: Option<u64>,
    extra: u32,
}

/// Things the correlator noticed that are not records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CorrelatorStats {
    /// Exit or victim events whose SIGKILL was never seen (lost upstream).
    pub orphans: u64,
    pub timeouts: u64,
    /// SIGKILLs to processes already dying, not recorded as kills.
    pub ignored: u64,
}

/// Joins signal, victim and exit events into [`KillRecord`]s.
pub struct Correlator<N: Node> {
    node: N,
    clock: Clock,
    pending: HashMap<u32, Pending>,
    /// OOM domain readings by trigger cgroup: (ktime of the reading, result).
    domain_cache: HashMap<String, (u64, Option<MemcgState>)>,
    /// The kernel's OOM control by chosen pid (kprobe tier).
    oc_by_pid: HashMap<u32, crate::kernel::events::OomControlRecord>,
    now_mono_ns: Option<u64>,
    pub stats: CorrelatorStats,
    /// Entries let go when one of the side caches (early victim readings, OOM controls by pid
    /// and by trigger) passed [`CACHE_MAX`] and was cleared: readings that may then miss their
    /// kill (`oomprobe_events_dropped_total{reason="correlator_cache_full"}`).
    pub cache_cleared: u64,
    /// Victim readings that arrived before their SIGKILL record, by tid.
    early_mm: HashMap<u32, VictimMmRecord>,
    /// The kernel's OOM control of the latest kill by each trigger tid (kprobe tier), for the
    /// members of a group kill, which get no OOM control of their own.
    oc_by_trigger: HashMap<u32, crate::kernel::events::OomControlRecord>,
    /// Records of group kills, until the group is complete.
    groups: GroupBuffer<KillRecord>,
    /// Newest kernel timestamp seen on an event.
    last_event_ns: u64,
    /// Newest quiet mark of the ring readers (CLOCK_MONOTONIC ns): every event stamped
    /// earlier has been fed.
    quiet_ns: u64,
}

/// Entries each of the correlator's side caches holds at most.
pub const CACHE_MAX: usize = 4096;

/// Clears `m` when it holds more than [`CACHE_MAX`] entries; the number let go.
fn bound_cache<K, V>(m: &mut HashMap<K, V>) -> u64 {
    if m.len() <= CACHE_MAX {
        return 0;
    }
    let n = m.len() as u64;
    m.clear();
    n
}

/// An OOM control serves a later group member of the same trigger for this long.
const OC_MEMBER_NS: u64 = 1_000_000_000;

impl<N: Node> Correlator<N> {
    pub fn new(node: N, clock: Clock) -> Self {
        Correlator {
            node,
            clock,
            pending: HashMap::new(),
            domain_cache: HashMap::new(),
            oc_by_pid: HashMap::new(),
            now_mono_ns: None,
            stats: CorrelatorStats::default(),
            cache_cleared: 0,
            early_mm: HashMap::new(),
            oc_by_trigger: HashMap::new(),
            groups: GroupBuffer::default(),
            last_event_ns: 0,
            quiet_ns: 0,
        }
    }

    /// The ring readers found the ring empty at `ktime_ns` (CLOCK_MONOTONIC, the kernel's
    /// event clock): every event stamped earlier has been fed.
    pub fn on_quiet(&mut self, ktime_ns: u64) {
        self.quiet_ns = self.quiet_ns.max(ktime_ns);
    }

    /// The event stream's own clock (CLOCK_MONOTONIC ns): the newest kernel timestamp fed, on
    /// an event or a quiet mark. Time the agent's loop spends stalled does not pass here
    /// until the events stamped in it have been fed.
    pub fn stream_ns(&self) -> u64 {
        self.last_event_ns.max(self.quiet_ns)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.groups.len()
    }

    /// Entries in the correlator's caches, by `oomprobe_map_entries{map}` name.
    pub fn state_sizes(&self) -> [(&'static str, usize); 4] {
        [
            ("agent_domain_cache", self.domain_cache.len()),
            ("agent_oom_control_by_pid", self.oc_by_pid.len()),
            ("agent_oom_control_by_trigger", self.oc_by_trigger.len()),
            ("agent_early_victim_mm", self.early_mm.len()),
        ]
    }

    /// Feeds one event; returns a record when a kill is complete.
    pub fn on_event(&mut self, ev: Event) -> Option<KillRecord> {
        self.on_event_at(ev, None)
    }

    /// Like [`Self::on_event`], with the agent's CLOCK_MONOTONIC time of receipt, so records
    /// carry how long after the SIGKILL userspace first saw the kill.
    pub fn on_event_at(&mut self, ev: Event, now_mono_ns: Option<u64>) -> Option<KillRecord> {
        self.now_mono_ns = now_mono_ns;
        self.last_event_ns = self.last_event_ns.max(event_ktime(&ev));
        match ev {
            Event::Signal(s) => {
                self.on_signal(s);
                None
            }
            Event::OomVictim(v) => self.on_victim(v),
            Event::Exit(e) => self.on_exit(e),
            Event::KubeletExec(_) => None,
            Event::VictimMm(m) => {
                match self.pending.get_mut(&m.tid) {
                    Some(p) if p.mm.is_none() => p.mm = Some(m),
                    Some(_) => {}
                    None => {
                        // Both programs run in the same signal_generate call; this one's record
                        // may come first.
                        self.cache_cleared += bound_cache(&mut self.early_mm);
                        self.early_mm.insert(m.tid, m);
                    }
                }
                None
            }
            Event::OomControl(oc) => {
                // Arrives before the SIGKILL it explains; kept until mark_victim names the pid.
                self.cache_cleared += bound_cache(&mut self.oc_by_pid);
                self.oc_by_pid.insert(oc.chosen_pid, oc);
                None
            }
        }
    }

    fn on_signal(&mut self, s: SignalRecord) {
        if s.result == Ok(SignalDelivery::Ignored) && !self.pending.contains_key(&s.target_pid) {
            // The target was already dying (or a zombie): not a kill of its own. Counted by
            // the caller (oomprobe_sigkills_total{delivery="ignored"}).
            self.stats.ignored += 1;
            return;
        }
        let early_mm = self.early_mm.remove(&s.target_pid);
        if let Some(p) = self.pending.get_mut(&s.target_pid) {
            if p.mm.is_none() {
                p.mm = early_mm;
            }
            if p.signal.is_none() {
                p.signal = Some(s);
            } else {
                p.extra += 1;
            }
            return;
        }
        // A kernel-sent SIGKILL is followed by mark_victim (exact memory) and the exit (exact
        // cgroup): reading procfs for it would only slow a burst down. Neither is procfs needed
        // when the kernel gave the target's RSS counters at the signal.
        let kernel_rss = early_mm.as_ref().is_some_and(|m| m.rss.is_some());
        let snapshot = if s.code == SiCode::KERNEL || kernel_rss {
            None
        } else {
            self.node.snapshot(s.target_pid)
        };
        self.pending.insert(
            s.target_pid,
            Pending {
                first_ktime_ns: s.ktime_ns,
                seen_mono_ns: self.now_mono_ns,
                signal: Some(s),
                victim: None,
                exit: None,
                snapshot,
                domain: None,
                oc: None,
                mm: early_mm,
                domain_evidence: None,
                extra: 0,
            },
        );
    }

    fn on_victim(&mut self, v: VictimRecord) -> Option<KillRecord> {
        let pid = v.pid;
        let p = self.pending.entry(v.pid).or_insert_with(|| Pending {
            signal: None,
            victim: None,
            exit: None,
            snapshot: None,
            domain: None,
            oc: None,
            mm: None,
            domain_evidence: None,
            first_ktime_ns: v.ktime_ns,
            seen_mono_ns: self.now_mono_ns,
            extra: 0,
        });
        // Read the OOM domain now, while the cgroups are there and still near their limit. In a
        // burst, kills in one cgroup share the reading for DOMAIN_CACHE_NS.
        let trigger = p.signal.as_ref().and_then(|s| s.sender_memcg.path.clone());
        let victim_cg = match (&trigger, &p.snapshot) {
            (None, None) => self.node.snapshot(v.pid).and_then(|s| s.cgroup),
            (_, snap) => snap.as_ref().and_then(|s| s.cgroup.clone()),
        };
        let oc = match self.oc_by_pid.remove(&v.pid) {
            Some(oc) => {
                self.oc_by_trigger.insert(v.trigger_tid, oc.clone());
                Some(oc)
            }
            // A group member: killed in the same oom_kill_process call as the chosen victim.
            None => self
                .oc_by_trigger
                .get(&v.trigger_tid)
                .filter(|oc| v.ktime_ns.saturating_sub(oc.ktime_ns) < OC_MEMBER_NS)
                .cloned(),
        };
        self.cache_cleared += bound_cache(&mut self.oc_by_trigger);
        let key = trigger.clone().or(victim_cg.clone()).unwrap_or_default();
        // The kernel's counters (tracepoint tier): the level of the trigger's chain whose
        // failcnt / OOM count rose is the domain, and its page counter at the SIGKILL.
        let counted = match (&oc, p.signal.as_ref(), self.node.hierarchy_version()) {
            (None, Some(s), Some(version)) if !s.sender_memcg.truncated => {
                match (s.sender_memcg.path.as_deref(), s.domain_counters.as_ref()) {
                    (Some(path), Some(d)) => {
                        crate::domain::from_counters(path, d, version).map(|c| {
                            let at_kill = d.counters.get(c.level).copied();
                            (c, at_kill)
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        p.domain_evidence = None;
        p.domain = match &oc {
            // The kernel said which cgroup's limit fired: that one, its limit and charge as
            // `oom_kill_process` found them (the files for the rest). A path deeper than the
            // probe keeps is found by its id, or there is none to name.
            Some(oc) => (oc.constraint == Ok(OomConstraint::Memcg))
                .then(|| match oc.domain.truncated {
                    true => self.node.cgroup_by_id(oc.domain.id),
                    false => oc.domain.path.clone(),
                })
                .flatten()
                .and_then(|path| {
                    let path = path.as_str();
                    let files = self.node.memcg_state(path);
                    match oc.domain_counter {
                        Some(c) => Some(MemcgState::at_kill(
                            path,
                            files,
                            c.max_pages,
                            c.usage_pages,
                            c.watermark_pages,
                            page_bytes(),
                        )),
                        None => files,
                    }
                }),
            None if counted.is_some() => {
                let (c, at_kill) = counted.clone().unwrap_or_default();
                p.domain_evidence = Some(c.evidence);
                let files = self.node.memcg_state(&c.path);
                match at_kill {
                    // A failed read leaves 0 pages: no limit of 0 is taken from it.
                    Some(k) if k.max_pages > 0 => Some(MemcgState::at_kill(
                        &c.path,
                        files,
                        k.max_pages,
                        k.usage_pages,
                        None,
                        page_bytes(),
                    )),
                    _ => files,
                }
            }
            None => match self.domain_cache.get(&key) {
                Some((at, d)) if v.ktime_ns.saturating_sub(*at) < DOMAIN_CACHE_NS => d.clone(),
                _ => {
                    let d = self
                        .node
                        .oom_domain(trigger.as_deref(), victim_cg.as_deref());
                    self.domain_cache.insert(key, (v.ktime_ns, d.clone()));
                    d
                }
            },
        };
        p.oc = oc;
        p.victim = Some(v);
        if p.exit.is_some() {
            // The victim died before mark_victim fired; the record was waiting for it.
            let p = self.pending.remove(&pid)?;
            return self.complete(p);
        }
        None
    }

    fn on_exit(&mut self, e: ExitRecord) -> Option<KillRecord> {
        let key = e.signaled_pid;
        let Some(p) = self.pending.get_mut(&key) else {
            self.stats.orphans += 1;
            return None;
        };
        let kernel_sent = p.signal.as_ref().is_some_and(|s| s.code == SiCode::KERNEL);
        p.exit = Some(e);
        if kernel_sent && p.victim.is_none() {
            // Possibly an OOM kill whose mark_victim is still to come: wait a little.
            return None;
        }
        let p = self.pending.remove(&key)?;
        self.complete(p)
    }

    /// The record of a finished kill, or `None` while it waits for the rest of its group.
    fn complete(&mut self, p: Pending) -> Option<KillRecord> {
        let rec = self.finish(p);
        let held = rec.oom.as_ref().and_then(|o| {
            let g = o.group.as_ref()?;
            Some((o.trigger_tid, g.path.clone()))
        });
        match held {
            Some((trigger, path)) => {
                self.groups.hold(trigger, &path, rec, self.last_event_ns);
                None
            }
            None => Some(rec),
        }
    }

    /// Group kills whose group is complete, the chosen victim first.
    fn release_groups(&mut self, now_ktime_ns: u64) -> Vec<KillRecord> {
        // A trigger with a kill still open may have more members coming.
        let open: Vec<u32> = self
            .pending
            .values()
            .filter_map(|p| {
                p.victim.as_ref().map(|v| v.trigger_tid).or(p
                    .signal
                    .as_ref()
                    .filter(|s| s.code == SiCode::KERNEL)
                    .map(|s| s.sender_tid))
            })
            .collect();
        let mut out = Vec::new();
        for (path, mut recs) in self.groups.release(now_ktime_ns, |t| open.contains(&t)) {
            // The kernel signals its chosen victim first, then the group's members.
            recs.sort_by_key(|r| r.ktime_ns);
            let chosen = recs.first().map(|r| r.victim.pid).unwrap_or(0);
            let killed = u32::try_from(recs.len()).unwrap_or(u32::MAX);
            let kills = self.node.group_kills(&path);
            for (i, r) in recs.iter_mut().enumerate() {
                if let Some(g) = r.oom.as_mut().and_then(|o| o.group.as_mut()) {
                    g.killed = killed;
                    g.role = if i == 0 { "chosen" } else { "member" };
                    g.chosen_pid = chosen;
                    g.oom_group_kill = kills;
                }
            }
            out.extend(recs);
        }
        out
    }

    /// [`Self::expire`] at the event stream's clock ([`Self::stream_ns`]), or at the wall
    /// clock `wall_ns` (CLOCK_MONOTONIC) less [`STALL_BACKSTOP_NS`] when that is later (a stream
    /// whose readers went silent).
    pub fn expire_at_wall(&mut self, wall_ns: u64) -> Vec<KillRecord> {
        let at = self
            .stream_ns()
            .max(wall_ns.saturating_sub(STALL_BACKSTOP_NS));
        self.expire(at)
    }

    /// Reports kills whose process has not died within [`EXIT_TIMEOUT_NS`], and dead
    /// processes whose kernel SIGKILL turned out not to be an OOM kill.
    pub fn expire(&mut self, now_ktime_ns: u64) -> Vec<KillRecord> {
        let stale: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| match &p.exit {
                Some(e) => now_ktime_ns.saturating_sub(e.ktime_ns) > VICTIM_GRACE_NS,
                None => now_ktime_ns.saturating_sub(p.first_ktime_ns) > EXIT_TIMEOUT_NS,
            })
            .map(|(k, _)| *k)
            .collect();
        self.domain_cache
            .retain(|_, (at, _)| now_ktime_ns.saturating_sub(*at) < DOMAIN_CACHE_NS);
        let mut out = Vec::new();
        for k in stale {
            if let Some(p) = self.pending.remove(&k) {
                if p.exit.is_none() {
                    self.stats.timeouts += 1;
                }
                out.extend(self.complete(p));
            }
        }
        out.sort_by_key(|r| r.ktime_ns);
        out.extend(self.release_groups(now_ktime_ns));
        out
    }

    /// The group of a group OOM kill: from the victim's memcg chain as the kernel had it at the
    /// SIGKILL (`mem_cgroup.oom_group` per level), else from the cgroup files.
    fn group_of(
        &self,
        p: &Pending,
        kernel_cgroup: Option<&str>,
        victim_cgroup: Option<&str>,
        domain: Option<&str>,
    ) -> Option<GroupKill> {
        let (path, source) = match (kernel_cgroup, p.mm.as_ref()) {
            (Some(cg), Some(m)) if !m.memcg.as_ref().is_some_and(|c| c.truncated) => {
                (group_from_levels(cg, m.oom_group_levels, domain)?, "kernel")
            }
            _ => (
                self.node.oom_group_of(victim_cgroup?, domain)?,
                "cgroup_files",
            ),
        };
        Some(GroupKill {
            path,
            killed: 1,
            role: "chosen",
            chosen_pid: 0,
            oom_group_kill: None,
            source,
        })
    }

    fn cgroup_path(&self, cg: &KernelCgroup) -> Option<String> {
        if cg.truncated {
            if let Some(p) = self.node.cgroup_by_id(cg.id) {
                return Some(p);
            }
        }
        cg.path.clone()
    }

    fn finish(&self, p: Pending) -> KillRecord {
        let exit = p.exit.clone();
        let sig = p.signal.as_ref();
        let victim_rec = p.victim.as_ref();
        let snap = p.snapshot.clone().unwrap_or_default();
        let signaled_pid = sig
            .map(|s| s.target_pid)
            .or(victim_rec.map(|v| v.pid))
            .or(exit.as_ref().map(|e| e.signaled_pid))
            .unwrap_or(0);
        let ktime_ns = p.first_ktime_ns;

        let mm_cgroup =
            p.mm.as_ref()
                .and_then(|m| m.memcg.as_ref())
                .and_then(|cg| self.cgroup_path(cg));
        let victim_cgroup = exit
            .as_ref()
            .and_then(|e| self.cgroup_path(&e.memcg))
            .or(snap.cgroup.clone())
            .or(mm_cgroup.clone());
        let comm = victim_rec
            .and_then(|v| v.comm.clone())
            .or(sig.map(|s| s.target_comm.clone()))
            .or(exit.as_ref().map(|e| e.comm.clone()))
            .unwrap_or_default();
        let victim = Victim {
            pid: exit
                .as_ref()
                .map(|e| e.tgid)
                .or(snap.tgid)
                .unwrap_or(signaled_pid),
            tid: signaled_pid,
            comm,
            pod: victim_cgroup.as_deref().and_then(pod_identity),
            cgroup: victim_cgroup.clone(),
        };
        let sender = match sig {
            Some(s) => Sender {
                pid: s.sender_tgid,
                tid: s.sender_tid,
                comm: s.sender_comm.clone(),
                code: si_code_name(s.code),
                cgroup: self.cgroup_path(&s.sender_memcg),
            },
            None => Sender {
                pid: victim_rec.map(|v| v.trigger_tgid).unwrap_or(0),
                tid: victim_rec.map(|v| v.trigger_tid).unwrap_or(0),
                comm: String::new(),
                code: "UNKNOWN".into(),
                cgroup: None,
            },
        };

        let (kind, oom) = match victim_rec {
            Some(v) => {
                let reclaim = sig.and_then(|s| {
                    (s.sender_reclaim_ktime_ns != 0
                        && s.ktime_ns.saturating_sub(s.sender_reclaim_ktime_ns) < RECLAIM_RECENT_NS)
                        .then_some(s.sender_reclaim.ok())
                        .flatten()
                });
                // An out-of-range constraint was counted at decode; it reads as unconstrained.
                let (constraint, evidence) = match (&p.oc, reclaim) {
                    (Some(oc), _) => (oc.constraint.unwrap_or(OomConstraint::None), "oom_control"),
                    // The kernel's counters rose on a memcg: mem_cgroup_oom ran there.
                    (None, _) if p.domain.is_some() && p.domain_evidence.is_some() => (
                        OomConstraint::Memcg,
                        p.domain_evidence.unwrap_or("cgroup_limits"),
                    ),
                    (None, reclaim) => match reclaim {
                        Some(ReclaimKind::Memcg) => (OomConstraint::Memcg, "reclaim_path"),
                        Some(ReclaimKind::Direct) => (OomConstraint::None, "reclaim_path"),
                        _ if p.domain.is_some() => (OomConstraint::Memcg, "cgroup_limits"),
                        _ => (OomConstraint::None, "cgroup_limits"),
                    },
                };
                let memcg = constraint == OomConstraint::Memcg;
                let kind = if memcg {
                    KillKind::OomMemcg
                } else {
                    KillKind::OomGlobal
                };
                let domain = if memcg { p.domain.clone() } else { None };
                let group = self.group_of(
                    &p,
                    mm_cgroup.as_deref(),
                    victim_cgroup.as_deref(),
                    domain.as_ref().map(|d| d.path.as_str()),
                );
                (
                    kind,
                    Some(OomDetails {
                        constraint: constraint.as_str(),
                        domain,
                        trigger_pid: v.trigger_tgid,
                        trigger_tid: v.trigger_tid,
                        oom_score_adj: v.oom_score_adj,
                        uid: v.uid,
                        evidence,
                        group,
                    }),
                )
            }
            None => (KillKind::Signal, None),
        };

        let memory = match victim_rec {
            Some(v) => Memory {
                anon_rss_kb: v.anon_rss_kb,
                file_rss_kb: v.file_rss_kb,
                shmem_rss_kb: v.shmem_rss_kb,
                total_vm_kb: v.total_vm_kb,
                pgtables_kb: v.pgtables_kb,
                source: Some("mark_victim"),
            },
            None if p.mm.as_ref().is_some_and(|m| m.rss.is_some()) => {
                let m = p.mm.as_ref();
                let rss = m.and_then(|m| m.rss);
                let kb = |pages: Option<i64>| pages.map(pages_kb);
                Memory {
                    anon_rss_kb: kb(rss.map(|r| r.anon)),
                    file_rss_kb: kb(rss.map(|r| r.file)),
                    shmem_rss_kb: kb(rss.map(|r| r.shmem)),
                    total_vm_kb: m
                        .and_then(|m| m.total_vm_pages)
                        .map(|p| pages_kb(i64::try_from(p).unwrap_or(i64::MAX))),
                    pgtables_kb: m.and_then(|m| m.pgtables_bytes).map(|b| b / 1024),
                    // A per-CPU sum that missed CPUs is the kernel's approximation.
                    source: Some(match rss {
                        Some(r) if r.cpus > 0 && !r.percpu_summed => "rss_stat_approx",
                        _ => "rss_stat",
                    }),
                }
            }
            None => Memory {
                anon_rss_kb: snap.anon_rss_kb,
                file_rss_kb: snap.file_rss_kb,
                shmem_rss_kb: snap.shmem_rss_kb,
                total_vm_kb: None,
                pgtables_kb: None,
                source: snap.anon_rss_kb.map(|_| "procfs"),
            },
        };

        KillRecord {
            time: self.clock.rfc3339(ktime_ns),
            ktime_ns,
            kind,
            victim,
            sender,
            memory,
            oom,
            exit_after_ns: exit.as_ref().map(|e| e.ktime_ns.saturating_sub(ktime_ns)),
            exit_code: exit.as_ref().and_then(|e| e.exit_code),
            extra_sigkills: p.extra,
            delivery: sig.map_or("unknown", |s| delivery_name(s.result)),
            seen_after_ns: p.seen_mono_ns.map(|n| n.saturating_sub(ktime_ns)),
        }
    }
}

/// Kernel timestamp of an event.
fn event_ktime(ev: &Event) -> u64 {
    match ev {
        Event::Signal(s) => s.ktime_ns,
        Event::OomVictim(v) => v.ktime_ns,
        Event::Exit(e) => e.ktime_ns,
        Event::KubeletExec(k) => k.ktime_ns,
        Event::OomControl(o) => o.ktime_ns,
        Event::VictimMm(m) => m.ktime_ns,
    }
}

/// The kernel's page size in bytes (`sysconf(_SC_PAGESIZE)`; 4096 if it fails).
pub(crate) fn page_bytes() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|&b| b > 0).unwrap_or(4096)
    })
}

/// Pages (a kernel RSS counter, which a per-CPU sum can leave briefly negative) to KiB.
pub(crate) fn pages_kb(pages: i64) -> u64 {
    static PAGE_KB: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let page_kb = *PAGE_KB.get_or_init(|| (page_bytes() / 1024).max(1));
    u64::try_from(pages).unwrap_or(0).saturating_mul(page_kb)
}

#[cfg(test)]
#[path = "correlator_tests.rs"]
mod tests;
