//! The per-kill record: one SIGKILL end to end (victim, sender, memory, OOM details, death),
//! its field names for the kernel's enums, and its one-line text rendering.
use probe_common::{SiCode, SignalDelivery};
use serde::Serialize;

use super::kill_group::GroupKill;
use crate::cgroup::{MemcgState, PodIdentity};

/// The record's name of an `si_code`: the kernel's (`SI_USER`, `SI_KERNEL`, ...) or `CODE_<n>`.
pub fn si_code_name(code: SiCode) -> String {
    match code.name() {
        Some(name) => name.into(),
        None => format!("CODE_{}", code.0),
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

/// The record's name of a signal's delivery result; `unknown` for a value out of range (counted
/// at decode as `oomprobe_decode_errors_total{field="signal.result"}`).
pub fn delivery_name(result: Result<SignalDelivery, i32>) -> &'static str {
    result.map_or("unknown", SignalDelivery::as_str)
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
