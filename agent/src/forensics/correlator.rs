//! Per-kill forensic records: the SIGKILL, the OOM killer's victim data and the death of the
//! whole process, correlated into one record.
//!
//! Rule (seen on 6.18, mm/oom_kill.c): an OOM kill emits `signal_generate` (sig 9, SI_KERNEL) in
//! the context of the task that triggered the OOM, then `mark_victim` for the same pid ~50 us
//! later; the process's last thread then passes `sched_process_exit`.
use std::collections::HashMap;

use probe_common::ReclaimKind;

use super::{
    node::{Node, ProcSnapshot},
    record::{
        constraint_name, delivery_name, si_code_name, KillKind, KillRecord, Memory, OomDetails,
        Sender, Victim, CONSTRAINT_MEMCG, SI_KERNEL,
    },
};
use crate::{
    cgroup::{pod_identity, MemcgState},
    clock::Clock,
    kernel::events::{Event, ExitRecord, KernelCgroup, SignalRecord, VictimRecord},
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

#[derive(Debug)]
struct Pending {
    signal: Option<SignalRecord>,
    victim: Option<VictimRecord>,
    exit: Option<ExitRecord>,
    snapshot: Option<ProcSnapshot>,
    domain: Option<MemcgState>,
    oc: Option<crate::kernel::events::OomControlRecord>,
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
    oc_by_pid: HashMap<u32, crate::kernel::events::OomControlRecord>,
    now_mono_ns: Option<u64>,
    pub stats: CorrelatorStats,
}

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
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one event; returns a record when a kill is complete.
    pub fn on_event(&mut self, ev: Event) -> Option<KillRecord> {
        self.on_event_at(ev, None)
    }

    /// Like [`Self::on_event`], with the agent's CLOCK_MONOTONIC time of receipt, so records
    /// carry how long after the SIGKILL userspace first saw the kill.
    pub fn on_event_at(&mut self, ev: Event, now_mono_ns: Option<u64>) -> Option<KillRecord> {
        self.now_mono_ns = now_mono_ns;
        match ev {
            Event::Signal(s) => {
                self.on_signal(s);
                None
            }
            Event::OomVictim(v) => self.on_victim(v),
            Event::Exit(e) => self.on_exit(e),
            Event::KubeletExec(_) => None,
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
        if let Some(p) = self.pending.get_mut(&s.target_pid) {
            if p.signal.is_none() {
                p.signal = Some(s);
            } else {
                p.extra += 1;
            }
            return;
        }
        // A kernel-sent SIGKILL is followed by mark_victim (exact memory) and the exit (exact
        // cgroup): reading procfs for it would only slow a burst down.
        let snapshot = if s.code == SI_KERNEL {
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
        let oc = self.oc_by_pid.remove(&v.pid);
        let key = trigger.clone().or(victim_cg.clone()).unwrap_or_default();
        p.domain = match &oc {
            // The kernel said which cgroup's limit fired: read that one.
            Some(oc) => oc
                .domain
                .path
                .as_deref()
                .filter(|_| oc.constraint == CONSTRAINT_MEMCG)
                .and_then(|path| self.node.memcg_state(path)),
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
            return Some(self.finish(p));
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
        Some(self.finish(p))
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
                out.push(self.finish(p));
            }
        }
        out.sort_by_key(|r| r.ktime_ns);
        out
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

        let victim_cgroup = exit
            .as_ref()
            .and_then(|e| self.cgroup_path(&e.memcg))
            .or(snap.cgroup.clone());
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
            cgroup: victim_cgroup,
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
            delivery: sig.map(|s| delivery_name(s.result)).unwrap_or("unknown"),
            seen_after_ns: p.seen_mono_ns.map(|n| n.saturating_sub(ktime_ns)),
        }
    }
}

#[cfg(test)]
#[path = "correlator_tests.rs"]
mod tests;
