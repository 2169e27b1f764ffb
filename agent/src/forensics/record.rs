//! The per-kill record: one SIGKILL end to end (victim, sender, memory, OOM details, death),
//! its field names for the kernel's enums, and its one-line text rendering.
use serde::Serialize;

use crate::cgroup::{MemcgState, PodIdentity};

/// `enum oom_constraint` (mm/oom_kill.c).
pub(crate) const CONSTRAINT_MEMCG: u32 = 3;

pub(crate) fn constraint_name(c: u32) -> &'static str {
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
    /// `mark_victim` (kernel, exact at the kill) or `procfs` (read when the signal was seen).
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
    /// How the constraint was decided: `reclaim_path` (kernel) or `cgroup_limits` (userspace).
    pub evidence: &'static str,
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
    /// The readable one-line form.
    pub fn text(&self) -> String {
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
