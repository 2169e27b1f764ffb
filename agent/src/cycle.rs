//! The OOM flap cycle, per node: Pre-OOM -> Active OOM -> Reconciliation storm -> Recovery or
//! Re-OOM, driven by the kill records, the kubelet restarts and the sampled series. Counts
//! cycles, measures each storm, groups collateral damage by pod, and says what breaks the cycle.
//!
//! Pre-OOM has two endings ([`Ending`]): the kubelet's own cgroup limit, or the node's memory
//! (MemAvailable falling to the kubelet's hard eviction threshold and the kernel's OOM point
//! while the kubelet drives it down). Kills the kernel made for the kubelet's allocations (an OOM
//! it triggered, a memcg OOM of a cgroup that contains it, a global OOM during a node-memory
//! Pre-OOM it drives) are counted as collateral the kubelet caused, apart from the kills while
//! it was down.
use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::{
    cgroup::PodIdentity,
    forensics::{KillKind, KillRecord},
};

mod headroom;
#[cfg(test)]
mod tests;

pub use headroom::{slope, Ending, Headroom, NodeRule, Observation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Steady,
    PreOom,
    ActiveOom,
    ReconciliationStorm,
    Recovery,
    ReOom,
}

impl Stage {
    /// The stage's name as in JSON (`steady`, `pre_oom`, `active_oom`,
    /// `reconciliation_storm`, `recovery`, `re_oom`), for the text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Steady => "steady",
            Stage::PreOom => "pre_oom",
            Stage::ActiveOom => "active_oom",
            Stage::ReconciliationStorm => "reconciliation_storm",
            Stage::Recovery => "recovery",
            Stage::ReOom => "re_oom",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CycleConfig {
    /// A kubelet OOM kill within this long of the previous one is flapping.
    pub flap_window_ns: u64,
    /// The storm has settled when the kubelet's RSS grew less than `settle_growth` (fraction)
    /// over this long.
    pub settle_ns: u64,
    pub settle_growth: f64,
    /// Pre-OOM: the kubelet's usage above this fraction of its limit.
    pub pre_oom_fraction: f64,
    /// Pre-OOM on node memory: the eviction threshold, horizon and margin.
    pub node: NodeRule,
    /// The recent samples growth and decline rates are measured over.
    pub rate_window_ns: u64,
}

impl Default for CycleConfig {
    fn default() -> Self {
        CycleConfig {
            flap_window_ns: 600 * 1_000_000_000,
            settle_ns: 120 * 1_000_000_000,
            settle_growth: 0.02,
            pre_oom_fraction: 0.8,
            node: NodeRule::default(),
            rate_window_ns: 60 * 1_000_000_000,
        }
    }
}

/// A reconciliation storm's figures: the new kubelet's first seconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Storm {
    pub pid: u32,
    pub started_ktime_ns: u64,
    pub start_rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Bytes its runtime mapped, per second, over the storm so far.
    pub mapping_bytes_per_second: f64,
    /// CPU seconds it used during the storm.
    pub cpu_seconds: f64,
    pub settled_after_ns: Option<u64>,
}

/// A process killed on the node while the kubelet was down or starting (`collateral`), or by an
/// OOM kill the kubelet's allocations caused (`collateral_caused`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Collateral {
    pub pid: u32,
    pub comm: String,
    pub kind: KillKind,
    /// `oom_killed` (a kernel cgroup kill) or `evicted` (a kubelet/runtime-initiated kill):
    /// both exit 137, different root causes.
    pub reason: &'static str,
    pub cgroup: Option<String>,
    pub pod: Option<PodIdentity>,
    /// The kill record's `sender`: for an OOM kill the task whose allocation invoked the OOM
    /// killer (the kubelet, or whichever task allocated last on a node the kubelet exhausted).
    pub sender_pid: u32,
    pub sender_comm: String,
}

/// A stage change (`Output::Stage` in the JSON stream).
#[derive(Debug, Clone, Serialize)]
pub struct StageEvent {
    pub ktime_ns: u64,
    pub stage: Stage,
    pub previous: Stage,
    /// Kubelet OOM kills so far (the cycle count).
    pub cycles: u32,
    /// Seconds between the last two kubelet OOM kills.
    pub period_seconds: Option<f64>,
    pub flapping: bool,
    pub detail: String,
    pub storm: Option<Storm>,
    /// Collateral kills since the kubelet went down, by pod UID (`-` for non-pod processes).
    pub collateral: BTreeMap<String, Vec<Collateral>>,
    /// Processes the kernel OOM-killed for the kubelet's allocations since the last recovery,
    /// by pod UID (`-` for non-pod processes); at most [`MAX_CAUSED`] kept. Counted: an OOM kill
    /// the kubelet triggered ([`caused_by_kubelet`]), and a global OOM kill while the node is in
    /// Pre-OOM heading to `node_memory` that the kubelet drives ([`Headroom::kubelet_driving`]:
    /// the node the kubelet is exhausting; the trigger is whichever task allocated last,
    /// `sender_pid`).
    pub collateral_caused: BTreeMap<String, Vec<Collateral>>,
    /// Such kills beyond [`MAX_CAUSED`], counted, not kept.
    pub collateral_caused_omitted: u64,
    /// Where the kubelet's growth ends: for `pre_oom` the assessment's; for `active_oom` and
    /// `re_oom` the limit that fired (`kubelet_limit` for a memcg OOM, `node_memory` for a
    /// global one); null otherwise.
    pub ending: Option<Ending>,
    /// For `pre_oom`: seconds to that ending at the current rate (null when not shrinking).
    pub seconds_left: Option<f64>,
    /// The last assessment of the kubelet's and the node's headroom (null before one).
    pub headroom: Option<Headroom>,
    pub recommendations: Vec<String>,
}

/// Collateral the kubelet caused, kept per cycle; more are counted in
/// `collateral_caused_omitted`.
pub const MAX_CAUSED: usize = 256;

/// Collateral kills kept per cycle (while the kubelet is down or starting); more are counted
/// in `oomprobe_events_dropped_total{reason="collateral_full"}` ([`Cycle::take_dropped`]).
pub const MAX_COLLATERAL: usize = 256;

/// Kubelet OOM kill times kept: the flap check and the period read the last two.
const KEPT_KILLS: usize = 2;

/// Whether the kernel made this kill for the kubelet's allocations: an OOM kill (not of the
/// kubelet) whose trigger (the record's `sender`) is a kubelet process (`sender_is_kubelet`) and
/// whose OOM domain, for a memcg OOM, contains the kubelet's memory cgroup; or a memcg OOM of a
/// cgroup that contains the kubelet's, whoever triggered it.
pub fn caused_by_kubelet(
    rec: &KillRecord,
    sender_is_kubelet: bool,
    kubelet_cgroup: Option<&str>,
) -> bool {
    let domain = rec
        .oom
        .as_ref()
        .and_then(|o| o.domain.as_ref())
        .map(|d| d.path.as_str());
    let contains = |d: &str, k: &str| {
        d == "/" || k == d || k.strip_prefix(d).is_some_and(|r| r.starts_with('/'))
    };
    match rec.kind {
        KillKind::OomGlobal => sender_is_kubelet,
        KillKind::OomMemcg => match (domain, kubelet_cgroup) {
            (Some(d), Some(k)) => contains(d, k),
            _ => sender_is_kubelet,
        },
        KillKind::Signal => false,
    }
}

/// What the sampler knows of the kubelet now.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeletNow {
    pub pid: u32,
    pub rss_bytes: u64,
    pub usage_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub mapped_bytes: u64,
    pub cpu_seconds: f64,
    /// `/proc/meminfo` MemAvailable and MemTotal, bytes.
    pub node_available_bytes: Option<u64>,
    pub node_total_bytes: Option<u64>,
}

impl KubeletNow {
    fn observation(&self, ktime_ns: u64) -> Observation {
        Observation {
            ktime_ns,
            kubelet_rss_bytes: self.rss_bytes,
            kubelet_usage_bytes: self.usage_bytes,
            kubelet_limit_bytes: self.limit_bytes,
            node_available_bytes: self.node_available_bytes,
            node_total_bytes: self.node_total_bytes,
        }
    }
}

pub struct Cycle {
    cfg: CycleConfig,
    stage: Stage,
    cycles: u32,
    kills: Vec<u64>,
    storm: Option<Storm>,
    storm_base: (u64, f64),
    rss_history: Vec<(u64, u64)>,
    collateral: BTreeMap<String, Vec<Collateral>>,
    collateral_caused: BTreeMap<String, Vec<Collateral>>,
    caused_omitted: u64,
    /// Collateral kills not kept since the last [`Cycle::take_dropped`] ([`MAX_COLLATERAL`]).
    collateral_dropped: u64,
    /// The last samples of the kubelet being followed (one pid), for the rates.
    window: VecDeque<Observation>,
    window_pid: u32,
    headroom: Option<Headroom>,
    /// The ending of the current Pre-OOM or OOM, as its event said.
    ending: Option<Ending>,
    /// Steady-state RSS before trouble, for kube-reserved sizing.
    steady_rss: u64,
    /// The verdict's known cause, to recommend its fix.
    pub known_cause: Option<String>,
}

/// A SIGKILL sent by the kubelet or the container runtime (an eviction or a container stop).
pub fn is_runtime_kill(rec: &KillRecord) -> bool {
    rec.kind == KillKind::Signal && RUNTIME_COMMS.iter().any(|c| rec.sender.comm.starts_with(c))
}

const RUNTIME_COMMS: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim",
    "runc",
    "crio",
    "conmon",
    "dockerd",
];

impl Cycle {
    pub fn new(cfg: CycleConfig) -> Cycle {
        Cycle {
            cfg,
            stage: Stage::Steady,
            cycles: 0,
            kills: Vec::new(),
            storm: None,
            storm_base: (0, 0.0),
            rss_history: Vec::new(),
            collateral: BTreeMap::new(),
            collateral_caused: BTreeMap::new(),
            caused_omitted: 0,
            collateral_dropped: 0,
            window: VecDeque::new(),
            window_pid: 0,
            headroom: None,
            ending: None,
            steady_rss: 0,
            known_cause: None,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn cycles(&self) -> u32 {
        self.cycles
    }

    /// Entries in the stage machine's collections, by `oomprobe_map_entries{map}` name.
    pub fn state_sizes(&self) -> [(&'static str, usize); 5] {
        let n = |m: &BTreeMap<String, Vec<Collateral>>| m.values().map(Vec::len).sum();
        [
            ("agent_cycle_kills", self.kills.len()),
            ("agent_cycle_collateral", n(&self.collateral)),
            ("agent_cycle_collateral_caused", n(&self.collateral_caused)),
            ("agent_cycle_rss_history", self.rss_history.len()),
            ("agent_cycle_window", self.window.len()),
        ]
    }

    // The last two kills' kernel times may arrive out of order (per-CPU rings): the time
    // between them, whichever came first.
    fn flapping(&self) -> bool {
        self.kills
            .windows(2)
            .last()
            .is_some_and(|w| w[1].abs_diff(w[0]) <= self.cfg.flap_window_ns)
    }

    fn period(&self) -> Option<f64> {
        self.kills
            .windows(2)
            .last()
            .map(|w| w[1].abs_diff(w[0]) as f64 / 1e9)
    }

    /// The last assessment of the headroom (None before a sample).
    pub fn headroom(&self) -> Option<&Headroom> {
        self.headroom.as_ref()
    }

    fn event(&mut self, ktime: u64, stage: Stage, detail: String) -> StageEvent {
        let previous = self.stage;
        self.stage = stage;
        if !matches!(stage, Stage::PreOom | Stage::ActiveOom | Stage::ReOom) {
            self.ending = None;
        }
        let seconds_left = if stage == Stage::PreOom {
            self.headroom
                .as_ref()
                .filter(|h| Some(h.ending) == self.ending)
                .and_then(|h| h.seconds_left)
        } else {
            None
        };
        StageEvent {
            ktime_ns: ktime,
            stage,
            previous,
            cycles: self.cycles,
            period_seconds: self.period(),
            flapping: self.flapping(),
            detail,
            storm: self.storm.clone(),
            collateral: self.collateral.clone(),
            collateral_caused: self.collateral_caused.clone(),
            collateral_caused_omitted: self.caused_omitted,
            ending: self.ending,
            seconds_left,
            headroom: self.headroom.clone(),
            recommendations: self.recommendations(),
        }
    }

    /// The field guide's steps for the evidence at hand.
    pub fn recommendations(&self) -> Vec<String> {
        let mut r = Vec::new();
        if self.cycles == 0 && self.stage != Stage::PreOom {
            return r;
        }
        if self.flapping() || self.cycles > 0 {
            r.push("cordon the node to stop new scheduling during recovery".into());
            r.push("drain it if the workloads tolerate migration: less to reconcile when the kubelet restarts".into());
        }
        if self.stage == Stage::Recovery || self.stage == Stage::PreOom {
            r.push("restart the kubelet in a low-traffic window to reclaim leaked memory; watch PLEG relist and pod worker durations settle within 2 minutes".into());
        }
        if self.ending == Some(Ending::NodeMemory) {
            let steady = self
                .steady_rss
                .max(self.storm.as_ref().map_or(0, |s| s.peak_rss_bytes));
            r.extend(node_memory_recommendations(
                self.headroom.as_ref(),
                steady,
                self.cfg.node.eviction_hard_bytes,
            ));
        }
        if let Some(c) = &self.known_cause {
            let fix = match c.as_str() {
                "pod_certs_manager" => "upgrade to Kubernetes v1.35.0+ or disable the PodCertificateRequest feature gate",
                "evented_pleg" => "set --feature-gates=EventedPLEG=false",
                "container_gc" | "pod_churn" => "schedule graceful kubelet restarts; tune --image-gc-high-threshold",
                "cgroup_v1_kernel_5_15" => "migrate the node pool to cgroup v2 or upgrade the kernel",
                "oversubscription" => "lower pod density or raise node memory; set kube-reserved and system-reserved",
                _ => "",
            };
            if !fix.is_empty() {
                r.push(format!("known cause {c}: {fix}"));
            }
        }
        if let Some(s) = &self.storm {
            let steady = if self.steady_rss > 0 {
                self.steady_rss
            } else {
                s.start_rss_bytes
            };
            let reserve = steady
                .max(s.peak_rss_bytes)
                .saturating_add(s.peak_rss_bytes.saturating_sub(s.start_rss_bytes));
            r.push(format!(
                "size kube-reserved memory to at least {} MiB (steady state {} MiB plus the measured storm peak of {} MiB over its start)",
                reserve / (1 << 20) + 1,
                steady / (1 << 20),
                s.peak_rss_bytes.saturating_sub(s.start_rss_bytes) / (1 << 20)
            ));
        }
        if self.cycles >= 3 {
            r.push("if the leak cannot be corrected, replace the node".into());
        }
        r
    }

    /// A kill record and who it concerns ([`Party::of`]).
    pub fn on_kill(&mut self, rec: &KillRecord, party: Party) -> Option<StageEvent> {
        if party == Party::Kubelet {
            if !matches!(rec.kind, KillKind::OomMemcg | KillKind::OomGlobal) {
                return None;
            }
            self.ending = Some(match rec.kind {
                KillKind::OomGlobal => Ending::NodeMemory,
                _ => Ending::KubeletLimit,
            });
            self.cycles += 1;
            self.kills.push(rec.ktime_ns);
            if self.kills.len() > KEPT_KILLS {
                let extra = self.kills.len() - KEPT_KILLS;
                self.kills.drain(..extra);
            }
            let reoom = matches!(
                self.stage,
                Stage::ReconciliationStorm | Stage::Recovery | Stage::ReOom
            ) && self.kills.len() >= 2;
            let held = rec
                .memory
                .anon_rss_kb
                .unwrap_or(0)
                .saturating_add(rec.memory.file_rss_kb.unwrap_or(0));
            let limit = rec
                .oom
                .as_ref()
                .and_then(|o| o.domain.as_ref())
                .map(|d| match d.limit_bytes {
                    Some(l) => format!("{} ({} MiB limit)", d.path, l >> 20),
                    None => format!("{} (its limit not read)", d.path),
                })
                .unwrap_or_else(|| "node memory".into());
            let stage = if reoom {
                Stage::ReOom
            } else {
                Stage::ActiveOom
            };
            let detail = format!(
                "kubelet pid {} OOM-killed by the kernel ({}), holding {} MiB; limit that fired: {limit}",
                rec.victim.pid,
                rec.kind.as_str(),
                held / 1024
            );
            return Some(self.event(rec.ktime_ns, stage, detail));
        }
        let caused = party == Party::CausedByKubelet
            || party == Party::Other
                && rec.kind == KillKind::OomGlobal
                && self.kubelet_exhausting_node();
        if caused {
            let total: usize = self.collateral_caused.values().map(Vec::len).sum();
            if total >= MAX_CAUSED {
                self.caused_omitted = self.caused_omitted.saturating_add(1);
            } else {
                self.collateral_caused
                    .entry(pod_key(rec))
                    .or_default()
                    .push(collateral(rec));
            }
        }
        // A kill the kubelet's allocations caused proves the ending under way, sampled or not.
        if caused && self.stage == Stage::Steady {
            let ending = match rec.kind {
                KillKind::OomGlobal => Ending::NodeMemory,
                _ => Ending::KubeletLimit,
            };
            self.ending = Some(ending);
            let detail = format!(
                "the kernel OOM-killed pid {}({}) for the kubelet's allocations ({}, trigger pid {}): heading to {}",
                rec.victim.pid,
                rec.victim.comm,
                rec.kind.as_str(),
                rec.sender.pid,
                ending.as_str()
            );
            return Some(self.event(rec.ktime_ns, Stage::PreOom, detail));
        }
        // Collateral: only while the kubelet is down or starting.
        if matches!(
            self.stage,
            Stage::ActiveOom | Stage::ReOom | Stage::ReconciliationStorm
        ) {
            let total: usize = self.collateral.values().map(Vec::len).sum();
            if total >= MAX_COLLATERAL {
                self.collateral_dropped = self.collateral_dropped.saturating_add(1);
            } else {
                self.collateral
                    .entry(pod_key(rec))
                    .or_default()
                    .push(collateral(rec));
            }
        }
        None
    }

    /// Collateral kills not kept (beyond [`MAX_COLLATERAL`]) since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.collateral_dropped)
    }

    /// A new kubelet process started.
    pub fn on_kubelet_start(&mut self, ktime: u64, now: KubeletNow) -> Option<StageEvent> {
        if !matches!(self.stage, Stage::ActiveOom | Stage::ReOom) {
            return None;
        }
        self.storm = Some(Storm {
            pid: now.pid,
            started_ktime_ns: ktime,
            start_rss_bytes: now.rss_bytes,
            peak_rss_bytes: now.rss_bytes,
            ..Default::default()
        });
        self.storm_base = (now.mapped_bytes, now.cpu_seconds);
        self.rss_history.clear();
        let detail = format!("kubelet restarted as pid {}: full reconciliation", now.pid);
        Some(self.event(ktime, Stage::ReconciliationStorm, detail))
    }

    /// Adds a sample to the rate window (one kubelet process, `rate_window_ns` long) and
    /// assesses the headroom.
    fn observe(&mut self, ktime: u64, now: KubeletNow) {
        if now.pid != self.window_pid {
            self.window.clear();
            self.window_pid = now.pid;
        }
        self.window.push_back(now.observation(ktime));
        let from = ktime.saturating_sub(self.cfg.rate_window_ns);
        while self.window.len() > 2 && self.window.front().is_some_and(|o| o.ktime_ns < from)
            || self.window.len() > MAX_WINDOW
        {
            self.window.pop_front();
        }
        self.headroom = Headroom::assess(
            self.window.make_contiguous(),
            self.cfg.node.eviction_hard_bytes,
        );
    }

    /// Pre-OOM on node memory with the kubelet still driving it over the rate window: the
    /// node's global OOM kills are the kubelet's doing, whoever allocated last.
    fn kubelet_exhausting_node(&self) -> bool {
        self.stage == Stage::PreOom
            && self.ending == Some(Ending::NodeMemory)
            && self
                .headroom
                .as_ref()
                .is_some_and(|h| h.kubelet_driving(&self.cfg.node))
    }

    /// The kubelet's usage at or above `fraction` of its limit.
    fn near_limit(&self, now: &KubeletNow, fraction: f64) -> bool {
        match (now.usage_bytes, now.limit_bytes) {
            (Some(u), Some(l)) if l > 0 => u as f64 >= fraction * l as f64,
            _ => false,
        }
    }

    /// A periodic sample of the kubelet and the node.
    pub fn on_sample(&mut self, ktime: u64, now: KubeletNow) -> Option<StageEvent> {
        self.observe(ktime, now);
        match self.stage {
            Stage::Steady | Stage::Recovery => {
                if self.stage == Stage::Steady && self.cycles == 0 {
                    self.steady_rss = self.steady_rss.max(now.rss_bytes);
                }
                if self.stage != Stage::Steady {
                    return None;
                }
                let h = self.headroom.clone();
                if self.near_limit(&now, self.cfg.pre_oom_fraction) {
                    self.ending = Some(h.as_ref().map_or(Ending::KubeletLimit, |h| h.ending));
                    let detail = match h.as_ref().filter(|h| h.ending == Ending::NodeMemory) {
                        Some(h) => h.describe(),
                        None => format!(
                            "kubelet uses {} of its {} MiB limit",
                            now.usage_bytes.unwrap_or(0) >> 20,
                            now.limit_bytes.unwrap_or(0) >> 20
                        ),
                    };
                    return Some(self.event(ktime, Stage::PreOom, detail));
                }
                if let Some(h) = h.filter(|h| h.node_pre_oom(&self.cfg.node)) {
                    self.ending = Some(Ending::NodeMemory);
                    return Some(self.event(ktime, Stage::PreOom, h.describe()));
                }
                None
            }
            Stage::PreOom => {
                let h = self.headroom.clone()?;
                let limit_clear =
                    !self.near_limit(&now, (self.cfg.pre_oom_fraction - 0.05).max(0.0));
                let node_clear = h.ending != Ending::NodeMemory || h.node_clear(&self.cfg.node);
                if limit_clear && node_clear {
                    let detail = format!("headroom back: {}", h.describe());
                    return Some(self.event(ktime, Stage::Steady, detail));
                }
                None
            }
            Stage::ReconciliationStorm => {
                let storm = self.storm.as_mut()?;
                if storm.pid != now.pid {
                    return None;
                }
                storm.peak_rss_bytes = storm.peak_rss_bytes.max(now.rss_bytes);
                let secs = (ktime.saturating_sub(storm.started_ktime_ns)) as f64 / 1e9;
                if secs > 0.0 {
                    storm.mapping_bytes_per_second =
                        now.mapped_bytes.saturating_sub(self.storm_base.0) as f64 / secs;
                }
                storm.cpu_seconds = (now.cpu_seconds - self.storm_base.1).max(0.0);
                self.rss_history.push((ktime, now.rss_bytes));
                let from = ktime.saturating_sub(self.cfg.settle_ns);
                let span_ok = self.rss_history.first().is_some_and(|(t, _)| *t <= from);
                self.rss_history.retain(|(t, _)| *t >= from);
                let first = self.rss_history.first().map_or(0, |x| x.1) as f64;
                let grew = (now.rss_bytes as f64 - first) / first.max(1.0);
                if span_ok && grew < self.cfg.settle_growth {
                    let storm = self.storm.as_mut()?;
                    storm.settled_after_ns = Some(ktime.saturating_sub(storm.started_ktime_ns));
                    let detail = format!(
                        "storm settled after {:.1} s: kubelet RSS flat at {} MiB",
                        secs,
                        now.rss_bytes >> 20
                    );
                    let ev = self.event(ktime, Stage::Recovery, detail);
                    self.collateral.clear();
                    self.collateral_caused.clear();
                    self.caused_omitted = 0;
                    return Some(ev);
                }
                None
            }
            _ => None,
        }
    }
}

/// Samples kept in the rate window at most (a short `--sample-interval` cannot grow it).
const MAX_WINDOW: usize = 600;

/// Who a kill record concerns, for the stage machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The victim is (or was) a followed kubelet.
    Kubelet,
    /// The kernel killed it for the kubelet's allocations ([`caused_by_kubelet`]).
    CausedByKubelet,
    Other,
}

impl Party {
    /// `is_kubelet(pid, comm)`: whether a process is or was a followed kubelet;
    /// `kubelet_cgroup`: its memory cgroup as last sampled.
    pub fn of(
        rec: &KillRecord,
        is_kubelet: impl Fn(u32, &str) -> bool,
        kubelet_cgroup: Option<&str>,
    ) -> Party {
        if is_kubelet(rec.victim.pid, &rec.victim.comm) {
            Party::Kubelet
        } else if caused_by_kubelet(
            rec,
            is_kubelet(rec.sender.pid, &rec.sender.comm),
            kubelet_cgroup,
        ) {
            Party::CausedByKubelet
        } else {
            Party::Other
        }
    }
}

fn pod_key(rec: &KillRecord) -> String {
    rec.victim
        .pod
        .as_ref()
        .map_or_else(|| "-".to_string(), |p| p.pod_uid.clone())
}

fn collateral(rec: &KillRecord) -> Collateral {
    let reason = if matches!(rec.kind, KillKind::OomMemcg | KillKind::OomGlobal) {
        "oom_killed"
    } else if RUNTIME_COMMS.iter().any(|c| rec.sender.comm.starts_with(c)) {
        "evicted"
    } else {
        "killed"
    };
    Collateral {
        pid: rec.victim.pid,
        comm: rec.victim.comm.clone(),
        kind: rec.kind,
        reason,
        cgroup: rec.victim.cgroup.clone(),
        pod: rec.victim.pod.clone(),
        sender_pid: rec.sender.pid,
        sender_comm: rec.sender.comm.clone(),
    }
}

/// What stops the node-memory ending: a limit of the kubelet's own (kube-reserved enforced), so
/// its growth ends in its cgroup rather than in workloads the kernel kills first (it runs at
/// `oom_score_adj` -999), and eviction thresholds that act before the kernel does.
pub fn node_memory_recommendations(
    headroom: Option<&Headroom>,
    steady_rss: u64,
    eviction_hard_bytes: u64,
) -> Vec<String> {
    let mut r = Vec::new();
    let steady = if steady_rss > 0 {
        steady_rss
    } else {
        headroom.map_or(0, |h| h.kubelet_rss_bytes)
    };
    match headroom.and_then(|h| h.kubelet_limit_bytes) {
        None => r.push(format!(
            "enforce kube-reserved for the kubelet (--kube-reserved=memory=..., --kube-reserved-cgroup=<the kubelet's cgroup>, --enforce-node-allocatable=pods,kube-reserved) sized above its steady state of {} MiB: its growth then ends at its own limit, not in the kernel OOM-killing the node's workloads first (the kubelet runs at oom_score_adj -999)",
            steady >> 20
        )),
        Some(l) => r.push(format!(
            "the kubelet's own limit ({} MiB) is beyond what the node has left: size kube-reserved within the node's allocatable memory so the kubelet's limit fires before the node runs out",
            l >> 20
        )),
    }
    r.push(format!(
        "raise the kubelet's hard eviction threshold (now memory.available<{}Mi) and add a soft one (--eviction-soft=memory.available<..., --eviction-soft-grace-period) so pods are evicted before the kernel OOM-kills them; eviction cannot reclaim the kubelet's own memory",
        eviction_hard_bytes >> 20
    ));
    r
}
