//! Per-kill forensic records: the SIGKILL, the OOM killer's victim data and the death of the
//! whole process, correlated into one record.
//!
//! Rule (seen on 6.18, mm/oom_kill.c): an OOM kill emits `signal_generate` (sig 9, SI_KERNEL) in
//! the context of the task that triggered the OOM, then `mark_victim` for the same pid ~50 us
//! later; the process's last thread then passes `sched_process_exit`.
use std::collections::HashMap;

use probe_common::ReclaimKind;
use serde::Serialize;

use crate::{
    cgroup::{pod_identity, MemcgState, PodIdentity},
    clock::Clock,
    events::{Event, ExitRecord, KernelCgroup, SignalRecord, VictimMmRecord, VictimRecord},
    kill_group::{group_from_levels, GroupBuffer, GroupKill},
};

/// A kill with no process death seen after this long is reported without `exit_after_ns`.
pub const EXIT_TIMEOUT_NS: u64 = 3_000_000_000;
/// An idle OOM victim can die before `mark_victim` fires for it (seen: exit 41 us after the
/// SIGKILL, `mark_victim` ~45 us): a kernel-sent SIGKILL's record waits this long for it.
pub const VICTIM_GRACE_NS: u64 = 100_000_000;
/// How long one reading of an OOM domain's limit and usage serves kills in the same cgroup.
const DOMAIN_CACHE_NS: u64 = 200_000_000;
/// A reclaim mark older than this does not explain an OOM.
const RECLAIM_RECENT_NS: u64 = 10_000_000_000;

/// `enum oom_constraint` (mm/oom_kill.c).
const CONSTRAINT_MEMCG: u32 = 3;

fn constraint_name(c: u32) -> &'static str {
    match c {
        1 => "cpuset",
        2 => "memory_policy",
        CONSTRAINT_MEMCG => "memcg",
        _ => "global",
    }
}

pub const SI_USER: i32 = 0;
pub const SI_KERNEL: i32 = 0x80;

pub fn si_code_name(code: i32) -> String {
    match code {
        SI_USER => "SI_USER".into(),
        SI_KERNEL => "SI_KERNEL".into(),
        -1 => "SI_QUEUE".into(),
        -2 => "SI_TIMER".into(),
        -3 => "SI_MESGQ".into(),
        -4 => "SI_ASYNCIO".into(),
        -5 => "SI_SIGIO".into(),
        -6 => "SI_TKILL".into(),
        -7 => "SI_DETHREAD".into(),
        -60 => "SI_ASYNCNL".into(),
        other => format!("CODE_{other}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillKind {
    OomMemcg,
    OomGlobal,
    Signal,
}

impl KillKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KillKind::OomMemcg => "oom_memcg",
            KillKind::OomGlobal => "oom_global",
            KillKind::Signal => "signal",
        }
    }
}

/// What the node tells about a process, read when the SIGKILL is seen (it may be gone later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcSnapshot {
    pub tgid: Option<u32>,
    pub cgroup: Option<String>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
}

/// The node's live state the correlator consults (real: procfs and cgroupfs; tests: recorded).
pub trait Node {
    fn snapshot(&self, pid: u32) -> Option<ProcSnapshot>;
    fn oom_domain(&self, trigger: Option<&str>, victim: Option<&str>) -> Option<MemcgState>;
    /// Limit and usage of one memory cgroup now.
    fn memcg_state(&self, path: &str) -> Option<MemcgState>;
    fn cgroup_by_id(&self, id: u64) -> Option<String>;
    /// The memory cgroup hierarchy's version (1 or 2), when known.
    fn hierarchy_version(&self) -> Option<u8> {
        None
    }
    /// The group cgroup of a group OOM kill from the cgroup files: the highest cgroup with
    /// `memory.oom.group` 1 from `victim` up to `domain` (v2).
    fn oom_group_of(&self, _victim: &str, _domain: Option<&str>) -> Option<String> {
        None
    }
    /// `memory.events.local` `oom_group_kill` of a cgroup (v2).
    fn group_kills(&self, _path: &str) -> Option<u64> {
        None
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Victim {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub pod: Option<PodIdentity>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sender {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub code: String,
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Memory {
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub total_vm_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    /// `mark_victim` (kernel, exact at the kill), `rss_stat` (the kernel's `mm->rss_stat`
    /// counters read at `signal_generate`, summed over CPUs) or `procfs` (read when the signal
    /// was seen, only where the kernel's layout is unknown).
    pub source: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OomDetails {
    /// `memcg` or `global`: what the OOM killer was constrained to.
    pub constraint: &'static str,
    /// The memory cgroup whose limit fired (null for a global OOM).
    pub domain: Option<MemcgState>,
    /// The task whose allocation invoked the OOM killer.
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    pub oom_score_adj: Option<i32>,
    pub uid: Option<u32>,
    /// How the constraint and domain were decided: `oom_control` (kprobe tier: the kernel's
    /// OOM control), `memory.failcnt` (v1) or `memory.events.local` (v2) (the counter that rose
    /// on the domain, read in the kernel), `memcg_oom_events` (v1, the kernel's per-memcg OOM
    /// count alone), `reclaim_path` (the trigger's last reclaim), `cgroup_limits` (usage near
    /// a limit, read after: the fallback).
    pub evidence: &'static str,
    /// Set for a group OOM kill (`memory.oom.group`): the group, how many processes it lost,
    /// and whether this record is the kernel's chosen victim or a member.
    pub group: Option<GroupKill>,
}

/// One SIGKILL, end to end.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KillRecord {
    pub event: &'static str,
    pub time: String,
    pub ktime_ns: u64,
    pub kind: KillKind,
    pub victim: Victim,
    pub sender: Sender,
    pub memory: Memory,
    pub oom: Option<OomDetails>,
    pub exit_after_ns: Option<u64>,
    pub exit_code: Option<i32>,
    /// Further SIGKILLs to the same process before it died.
    pub extra_sigkills: u32,
    /// `delivered`, `ignored`, `already_pending`, ... (`enum trace_signal_result`).
    pub delivery: &'static str,
    /// SIGKILL to the moment the agent's userspace first had the kill (ring buffer latency).
    pub seen_after_ns: Option<u64>,
}

pub fn delivery_name(result: i32) -> &'static str {
    match result {
        0 => "delivered",
        1 => "ignored",
        2 => "already_pending",
        3 => "overflow_fail",
        4 => "lose_info",
        _ => "unknown",
    }
}

#[derive(Debug)]
struct Pending {
    signal: Option<SignalRecord>,
    victim: Option<VictimRecord>,
    exit: Option<ExitRecord>,
    snapshot: Option<ProcSnapshot>,
    domain: Option<MemcgState>,
    oc: Option<crate::events::OomControlRecord>,
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

/// `enum trace_signal_result` (include/trace/events/signal.h).
const TRACE_SIGNAL_IGNORED: i32 = 1;

/// Joins signal, victim and exit events into [`KillRecord`]s.
pub struct Correlator<N: Node> {
    node: N,
    clock: Clock,
    pending: HashMap<u32, Pending>,
    /// OOM domain readings by trigger cgroup: (ktime of the reading, result).
    domain_cache: HashMap<String, (u64, Option<MemcgState>)>,
    /// The kernel's OOM control by chosen pid (kprobe tier).
    oc_by_pid: HashMap<u32, crate::events::OomControlRecord>,
    now_mono_ns: Option<u64>,
    pub stats: CorrelatorStats,
    /// Victim readings that arrived before their SIGKILL record, by tid.
    early_mm: HashMap<u32, VictimMmRecord>,
    /// The kernel's OOM control of the latest kill by each trigger tid (kprobe tier), for the
    /// members of a group kill, which get no OOM control of their own.
    oc_by_trigger: HashMap<u32, crate::events::OomControlRecord>,
    /// Records of group kills, until the group is complete.
    groups: GroupBuffer<KillRecord>,
    /// Newest kernel timestamp seen on an event.
    last_event_ns: u64,
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
            early_mm: HashMap::new(),
            oc_by_trigger: HashMap::new(),
            groups: GroupBuffer::default(),
            last_event_ns: 0,
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.groups.len()
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
                        if self.early_mm.len() > 4096 {
                            self.early_mm.clear();
                        }
                        self.early_mm.insert(m.tid, m);
                    }
                }
                None
            }
            Event::OomControl(oc) => {
                // Arrives before the SIGKILL it explains; kept until mark_victim names the pid.
                if self.oc_by_pid.len() > 4096 {
                    self.oc_by_pid.clear();
                }
                self.oc_by_pid.insert(oc.chosen_pid, oc);
                None
            }
        }
    }

    fn on_signal(&mut self, s: SignalRecord) {
        if s.result == TRACE_SIGNAL_IGNORED && !self.pending.contains_key(&s.target_pid) {
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
        let snapshot = if s.code == SI_KERNEL || kernel_rss {
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
        if self.oc_by_trigger.len() > 4096 {
            self.oc_by_trigger.clear();
        }
        let key = trigger.clone().or(victim_cg.clone()).unwrap_or_default();
        // The kernel's counters (tracepoint tier): the level of the trigger's chain whose
        // failcnt / OOM count rose is the domain.
        let counted = match (&oc, p.signal.as_ref(), self.node.hierarchy_version()) {
            (None, Some(s), Some(version)) if !s.sender_memcg.truncated => {
                match (s.sender_memcg.path.as_deref(), s.domain_counters.as_ref()) {
                    (Some(path), Some(d)) => crate::domain::from_counters(path, d, version),
                    _ => None,
                }
            }
            _ => None,
        };
        p.domain_evidence = None;
        p.domain = match &oc {
            // The kernel said which cgroup's limit fired: read that one.
            Some(oc) => oc
                .domain
                .path
                .as_deref()
                .filter(|_| oc.constraint == CONSTRAINT_MEMCG)
                .and_then(|path| self.node.memcg_state(path)),
            None if counted.is_some() => {
                let (path, evidence) = counted.clone().unwrap_or_default();
                p.domain_evidence = Some(evidence);
                self.node.memcg_state(&path)
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
        let kernel_sent = p.signal.as_ref().is_some_and(|s| s.code == SI_KERNEL);
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
                    .filter(|s| s.code == SI_KERNEL)
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
                        .then_some(s.sender_reclaim)
                });
                let (constraint, evidence) = match (&p.oc, reclaim) {
                    (Some(oc), _) => (constraint_name(oc.constraint), "oom_control"),
                    // The kernel's counters rose on a memcg: mem_cgroup_oom ran there.
                    (None, _) if p.domain.is_some() && p.domain_evidence.is_some() => {
                        ("memcg", p.domain_evidence.unwrap_or("cgroup_limits"))
                    }
                    (None, reclaim) => match reclaim {
                        Some(ReclaimKind::Memcg) => ("memcg", "reclaim_path"),
                        Some(ReclaimKind::Direct) => ("global", "reclaim_path"),
                        _ if p.domain.is_some() => ("memcg", "cgroup_limits"),
                        _ => ("global", "cgroup_limits"),
                    },
                };
                let kind = if constraint == "memcg" {
                    KillKind::OomMemcg
                } else {
                    KillKind::OomGlobal
                };
                let domain = if constraint == "memcg" {
                    p.domain.clone()
                } else {
                    None
                };
                let group = self.group_of(
                    &p,
                    mm_cgroup.as_deref(),
                    victim_cgroup.as_deref(),
                    domain.as_ref().map(|d| d.path.as_str()),
                );
                (
                    kind,
                    Some(OomDetails {
                        constraint,
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
            event: "kill",
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
            delivery: sig.map(|s| delivery_name(s.result)).unwrap_or("unknown"),
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

/// Pages (a kernel RSS counter, which a per-CPU sum can leave briefly negative) to KiB.
fn pages_kb(pages: i64) -> u64 {
    static PAGE_KB: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let page_kb = *PAGE_KB.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).map_or(4, |b| (b / 1024).max(1))
    });
    u64::try_from(pages).unwrap_or(0).saturating_mul(page_kb)
}

fn kib(kb: Option<u64>) -> String {
    match kb {
        Some(kb) if kb >= 10 * 1024 => format!("{:.1}MiB", kb as f64 / 1024.0),
        Some(kb) => format!("{kb}KiB"),
        None => "?".into(),
    }
}

fn bytes(b: Option<u64>) -> String {
    kib(b.map(|b| b / 1024))
}

impl KillRecord {
    /// The readable form: one line per kill; a group OOM kill's chosen victim comes with a
    /// line for the group before it, and its members' lines are indented under it.
    pub fn text(&self) -> String {
        let Some((g, domain)) = self
            .oom
            .as_ref()
            .and_then(|o| Some((o.group.as_ref()?, o.domain.as_ref())))
        else {
            return self.line();
        };
        if g.role == "chosen" {
            format!(
                "{} GROUP_KILL group={} killed={} chosen={} domain={} oom_group_kill={}\n  {} role=chosen",
                self.time,
                g.path,
                g.killed,
                g.chosen_pid,
                domain.map_or("?", |d| d.path.as_str()),
                g.oom_group_kill.map_or("?".to_string(), |n| n.to_string()),
                self.line()
            )
        } else {
            format!("  {} role=member", self.line())
        }
    }

    fn line(&self) -> String {
        let mut s = format!(
            "{} KILL {} victim={}({}) cgroup={} sender={}({}) {}",
            self.time,
            self.kind.as_str(),
            self.victim.pid,
            self.victim.comm,
            self.victim.cgroup.as_deref().unwrap_or("?"),
            self.sender.pid,
            self.sender.comm,
            self.sender.code,
        );
        s.push_str(&format!(
            " anon={} file={} shmem={}",
            kib(self.memory.anon_rss_kb),
            kib(self.memory.file_rss_kb),
            kib(self.memory.shmem_rss_kb)
        ));
        if let Some(d) = self.oom.as_ref().and_then(|o| o.domain.as_ref()) {
            s.push_str(&format!(
                " domain={} limit={} usage={}",
                d.path,
                bytes(d.limit_bytes),
                bytes(d.usage_bytes)
            ));
        }
        if let Some(pod) = &self.victim.pod {
            s.push_str(&format!(" pod={}", pod.pod_uid));
        }
        match self.exit_after_ns {
            Some(ns) => s.push_str(&format!(" died_after={:.3}ms", ns as f64 / 1e6)),
            None => s.push_str(" died_after=unseen"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kill_group::GROUP_SETTLE_NS;

    /// A recorded node: what procfs and cgroupfs answered.
    #[derive(Default)]
    struct Recorded {
        procs: HashMap<u32, ProcSnapshot>,
        domain: Option<MemcgState>,
        /// Cgroups other than `domain` that exist, by path.
        cgroups: Vec<MemcgState>,
        version: Option<u8>,
        group_kills: Option<u64>,
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
        }
    }

    fn mm(tid: u32, t: u64, memcg: &str, oom_group_levels: u32) -> VictimMmRecord {
        VictimMmRecord {
            ktime_ns: t,
            tid,
            tgid: tid,
            rss: Some(crate::events::RssPages {
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
            SI_USER,
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
            SI_USER,
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
        let mut s = signal(7, SI_KERNEL, 7, ReclaimKind::Memcg, 10_000);
        s.sender_memcg = cg("/pod/ctr");
        s.domain_counters = Some(crate::events::DomainDeltas {
            failcnt: vec![0, 56],
            oom: vec![0, 1],
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
            let mut s = signal(pid, SI_KERNEL, 20, ReclaimKind::Memcg, t + dt);
            s.sender_memcg = cg("/pod/ctr");
            s.domain_counters = Some(crate::events::DomainDeltas {
                failcnt: vec![0, 40],
                oom: vec![0, 1],
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
}
