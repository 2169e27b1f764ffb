//! The OOM flap cycle, per node: Pre-OOM -> Active OOM -> Reconciliation storm -> Recovery or
//! Re-OOM, driven by the kill records, the kubelet restarts and the sampled series. Counts
//! cycles, measures each storm, groups collateral damage by pod, and says what breaks the cycle.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    cgroup::PodIdentity,
    forensics::{KillKind, KillRecord},
};

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
}

impl Default for CycleConfig {
    fn default() -> Self {
        CycleConfig {
            flap_window_ns: 600 * 1_000_000_000,
            settle_ns: 120 * 1_000_000_000,
            settle_growth: 0.02,
            pre_oom_fraction: 0.8,
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

/// A process killed on the node while the kubelet was down or starting.
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
    pub recommendations: Vec<String>,
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

    fn flapping(&self) -> bool {
        self.kills
            .windows(2)
            .last()
            .is_some_and(|w| w[1] - w[0] <= self.cfg.flap_window_ns)
    }

    fn period(&self) -> Option<f64> {
        self.kills
            .windows(2)
            .last()
            .map(|w| (w[1] - w[0]) as f64 / 1e9)
    }

    fn event(&mut self, ktime: u64, stage: Stage, detail: String) -> StageEvent {
        let previous = self.stage;
        self.stage = stage;
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
            let reserve =
                steady.max(s.peak_rss_bytes) + s.peak_rss_bytes.saturating_sub(s.start_rss_bytes);
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

    /// A kill record; `kubelet`: the victim was the followed kubelet.
    pub fn on_kill(&mut self, rec: &KillRecord, kubelet: bool) -> Option<StageEvent> {
        if kubelet {
            if !matches!(rec.kind, KillKind::OomMemcg | KillKind::OomGlobal) {
                return None;
            }
            self.cycles += 1;
            self.kills.push(rec.ktime_ns);
            let reoom = matches!(
                self.stage,
                Stage::ReconciliationStorm | Stage::Recovery | Stage::ReOom
            ) && self.kills.len() >= 2;
            let held = rec.memory.anon_rss_kb.unwrap_or(0) + rec.memory.file_rss_kb.unwrap_or(0);
            let limit = rec
                .oom
                .as_ref()
                .and_then(|o| o.domain.as_ref())
                .map(|d| {
                    format!(
                        "{} ({} MiB limit)",
                        d.path,
                        d.limit_bytes.unwrap_or(0) >> 20
                    )
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
        // Collateral: only while the kubelet is down or starting.
        if matches!(
            self.stage,
            Stage::ActiveOom | Stage::ReOom | Stage::ReconciliationStorm
        ) {
            let reason = if matches!(rec.kind, KillKind::OomMemcg | KillKind::OomGlobal) {
                "oom_killed"
            } else if is_runtime_kill(rec) {
                "evicted"
            } else {
                "killed"
            };
            let key = rec
                .victim
                .pod
                .as_ref()
                .map_or_else(|| "-".to_string(), |p| p.pod_uid.clone());
            self.collateral.entry(key).or_default().push(Collateral {
                pid: rec.victim.pid,
                comm: rec.victim.comm.clone(),
                kind: rec.kind,
                reason,
                cgroup: rec.victim.cgroup.clone(),
                pod: rec.victim.pod.clone(),
            });
        }
        None
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

    /// A periodic sample of the kubelet.
    pub fn on_sample(&mut self, ktime: u64, now: KubeletNow) -> Option<StageEvent> {
        match self.stage {
            Stage::Steady | Stage::Recovery => {
                if self.stage == Stage::Steady && self.cycles == 0 {
                    self.steady_rss = self.steady_rss.max(now.rss_bytes);
                }
                let near = match (now.usage_bytes, now.limit_bytes) {
                    (Some(u), Some(l)) if l > 0 => u as f64 >= self.cfg.pre_oom_fraction * l as f64,
                    _ => false,
                };
                if near && self.stage == Stage::Steady {
                    let detail = format!(
                        "kubelet uses {} of its {} MiB limit",
                        now.usage_bytes.unwrap_or(0) >> 20,
                        now.limit_bytes.unwrap_or(0) >> 20
                    );
                    return Some(self.event(ktime, Stage::PreOom, detail));
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
                    storm.settled_after_ns = Some(ktime - storm.started_ktime_ns);
                    let detail = format!(
                        "storm settled after {:.1} s: kubelet RSS flat at {} MiB",
                        secs,
                        now.rss_bytes >> 20
                    );
                    let ev = self.event(ktime, Stage::Recovery, detail);
                    self.collateral.clear();
                    return Some(ev);
                }
                None
            }
            _ => None,
        }
    }
}
