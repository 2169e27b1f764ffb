//! Which way the kubelet's memory growth ends, and how soon: its own cgroup limit, or the
//! node's memory (the kernel's global OOM killer, after the kubelet's hard eviction threshold).
//! Measured over the last samples (`Observation`s), so the same assessment serves the live
//! stage machine and `oomprobe diagnose` over the persisted series.
use serde::Serialize;

/// The two endings of kubelet memory growth (the field guide's): the kubelet's own memory
/// cgroup limit fires (kube-reserved enforced, or a systemd `MemoryMax`), or the node runs out
/// and the kernel's OOM killer takes the workloads first (the kubelet runs at
/// `oom_score_adj` -999), then the kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    KubeletLimit,
    NodeMemory,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::KubeletLimit => "kubelet_limit",
            Ending::NodeMemory => "node_memory",
        }
    }
}

/// One sample of what the ending depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// CLOCK_MONOTONIC nanoseconds (the live loop) or any other clock in ns (a replay).
    pub ktime_ns: u64,
    /// The kubelet's RSS (`/proc/<pid>/status` VmRSS), bytes.
    pub kubelet_rss_bytes: u64,
    /// Its memory cgroup's usage (`memory.current` / `memory.usage_in_bytes`) and limit
    /// (`memory.max` / `memory.limit_in_bytes`; None when unlimited), bytes.
    pub kubelet_usage_bytes: Option<u64>,
    pub kubelet_limit_bytes: Option<u64>,
    /// `/proc/meminfo` MemAvailable and MemTotal, bytes.
    pub node_available_bytes: Option<u64>,
    pub node_total_bytes: Option<u64>,
}

/// The assessment (`headroom` in a stage event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Headroom {
    /// The limit the kubelet's growth reaches first: its cgroup's (`kubelet_limit`) when what
    /// is left under it is no more than the node's MemAvailable, else `node_memory`.
    pub ending: Ending,
    /// MemAvailable and MemTotal at the last sample, bytes.
    pub node_available_bytes: Option<u64>,
    pub node_total_bytes: Option<u64>,
    /// The kubelet's hard eviction threshold on `memory.available` (`--eviction-hard-memory`;
    /// the kubelet's default is 100Mi), bytes. MemAvailable stands in for its signal.
    pub eviction_hard_bytes: u64,
    pub kubelet_rss_bytes: u64,
    pub kubelet_usage_bytes: Option<u64>,
    pub kubelet_limit_bytes: Option<u64>,
    /// Least-squares slope of the kubelet's RSS over the window, bytes per second.
    pub kubelet_growth_bytes_per_second: Option<f64>,
    /// Least-squares slope of MemAvailable over the window, negated (positive: falling).
    pub node_decline_bytes_per_second: Option<f64>,
    /// Seconds to the ending at the current rate: for `node_memory` MemAvailable to 0 (the
    /// kernel's OOM point) at the node's decline rate; for `kubelet_limit` the cgroup's usage to
    /// its limit at the kubelet's growth rate. None when not falling/growing.
    pub seconds_left: Option<f64>,
    /// Seconds until MemAvailable crosses the eviction threshold at the node's decline rate (0
    /// when already below). None when not falling.
    pub seconds_to_eviction: Option<f64>,
    /// Seconds the window spans and how many samples it holds.
    pub window_seconds: f64,
    pub samples: usize,
}

/// Thresholds of the node-memory Pre-OOM rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeRule {
    /// The kubelet's hard eviction threshold, bytes.
    pub eviction_hard_bytes: u64,
    /// Pre-OOM when MemAvailable reaches the eviction threshold within this long.
    pub horizon_seconds: f64,
    /// ... or when MemAvailable is within this fraction of MemTotal above the threshold.
    pub margin_fraction: f64,
    /// The kubelet counts as growing when its RSS rose by at least this much over the window.
    pub min_growth_bytes: u64,
    /// ... and, while MemAvailable falls, its growth is at least this share of the fall (a
    /// node that workloads exhaust is not the kubelet's ending, however its RSS wiggles).
    pub min_kubelet_share: f64,
}

impl Default for NodeRule {
    fn default() -> Self {
        NodeRule {
            eviction_hard_bytes: 100 << 20,
            horizon_seconds: 600.0,
            margin_fraction: 0.05,
            min_growth_bytes: 1 << 20,
            min_kubelet_share: 0.25,
        }
    }
}

/// Least-squares slope of `(seconds, value)` points; None for fewer than two distinct times.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}

impl Headroom {
    /// The assessment at the window's last observation (oldest first, one kubelet process);
    /// None for an empty window or when neither the kubelet's limit nor MemAvailable is known.
    pub fn assess(window: &[Observation], eviction_hard_bytes: u64) -> Option<Headroom> {
        let last = *window.last()?;
        let t0 = window.first()?.ktime_ns;
        let series = |f: &dyn Fn(&Observation) -> Option<u64>| -> Vec<(f64, f64)> {
            window
                .iter()
                .filter_map(|o| Some((secs(t0, o.ktime_ns), f(o)? as f64)))
                .collect()
        };
        let growth = slope(&series(&|o| Some(o.kubelet_rss_bytes)));
        let usage_growth = slope(&series(&|o| o.kubelet_usage_bytes)).or(growth);
        let decline = slope(&series(&|o| o.node_available_bytes)).map(|s| -s);
        let kubelet_room = last
            .kubelet_limit_bytes
            .zip(last.kubelet_usage_bytes)
            .map(|(l, u)| l.saturating_sub(u));
        let ending = match (kubelet_room, last.node_available_bytes) {
            (Some(k), Some(avail)) if k > avail => Ending::NodeMemory,
            (Some(_), _) => Ending::KubeletLimit,
            (None, Some(_)) => Ending::NodeMemory,
            (None, None) => return None,
        };
        let per_second =
            |room: u64, rate: Option<f64>| rate.filter(|r| *r > 0.0).map(|r| room as f64 / r);
        let seconds_left = match ending {
            Ending::KubeletLimit => per_second(kubelet_room.unwrap_or(0), usage_growth),
            Ending::NodeMemory => per_second(last.node_available_bytes.unwrap_or(0), decline),
        };
        let seconds_to_eviction = last
            .node_available_bytes
            .and_then(|a| per_second(a.saturating_sub(eviction_hard_bytes), decline));
        Some(Headroom {
            ending,
            node_available_bytes: last.node_available_bytes,
            node_total_bytes: last.node_total_bytes,
            eviction_hard_bytes,
            kubelet_rss_bytes: last.kubelet_rss_bytes,
            kubelet_usage_bytes: last.kubelet_usage_bytes,
            kubelet_limit_bytes: last.kubelet_limit_bytes,
            kubelet_growth_bytes_per_second: growth,
            node_decline_bytes_per_second: decline,
            seconds_left,
            seconds_to_eviction,
            window_seconds: secs(t0, last.ktime_ns),
            samples: window.len(),
        })
    }

    /// Bytes MemAvailable has above the eviction threshold (0 when below).
    pub fn above_eviction_bytes(&self) -> Option<u64> {
        self.node_available_bytes
            .map(|a| a.saturating_sub(self.eviction_hard_bytes))
    }

    /// Whether the kubelet's RSS rose by at least `min_bytes` over the window.
    pub fn kubelet_growing(&self, min_bytes: u64) -> bool {
        self.kubelet_growth_bytes_per_second
            .is_some_and(|g| g > 0.0 && g * self.window_seconds >= min_bytes as f64)
    }

    /// The kubelet grows and, while MemAvailable falls, accounts for at least
    /// `min_kubelet_share` of the fall: the node's memory goes to the kubelet.
    pub fn kubelet_driving(&self, rule: &NodeRule) -> bool {
        let growth = self.kubelet_growth_bytes_per_second.unwrap_or(0.0);
        let share_ok = match self.node_decline_bytes_per_second {
            Some(d) if d > 0.0 => growth >= rule.min_kubelet_share * d,
            _ => true,
        };
        self.kubelet_growing(rule.min_growth_bytes) && share_ok
    }

    /// The node-memory Pre-OOM rule: the ending is the node's memory, the kubelet drives it
    /// ([`Headroom::kubelet_driving`]), and MemAvailable reaches the eviction threshold within
    /// the horizon at the current rate or is already within the margin above it.
    pub fn node_pre_oom(&self, rule: &NodeRule) -> bool {
        if self.ending != Ending::NodeMemory || !self.kubelet_driving(rule) {
            return false;
        }
        let soon = self
            .seconds_to_eviction
            .is_some_and(|s| s <= rule.horizon_seconds);
        soon || self.within_margin(rule, 1.0)
    }

    /// The node-memory rule no longer holds with room to spare (hysteresis: twice the horizon
    /// and twice the margin), so a Pre-OOM on node memory is over.
    pub fn node_clear(&self, rule: &NodeRule) -> bool {
        let far = self
            .seconds_to_eviction
            .is_none_or(|s| s > 2.0 * rule.horizon_seconds);
        far && !self.within_margin(rule, 2.0)
    }

    fn within_margin(&self, rule: &NodeRule, times: f64) -> bool {
        match (self.above_eviction_bytes(), self.node_total_bytes) {
            (Some(above), Some(total)) => {
                (above as f64) <= times * rule.margin_fraction * total as f64
            }
            _ => false,
        }
    }

    /// One line for a stage event's detail.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b >> 20;
        let rate =
            |r: Option<f64>| r.map_or("?".into(), |r| format!("{:.1}", r / (1 << 20) as f64));
        let left = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.0} s"));
        match self.ending {
            Ending::NodeMemory => format!(
                "node MemAvailable {} MiB of {} MiB (eviction threshold {} MiB) falling {} MiB/s while the kubelet grows {} MiB/s (RSS {} MiB{}): {} to the eviction threshold, {} to the kernel's OOM point",
                mib(self.node_available_bytes.unwrap_or(0)),
                mib(self.node_total_bytes.unwrap_or(0)),
                mib(self.eviction_hard_bytes),
                rate(self.node_decline_bytes_per_second),
                rate(self.kubelet_growth_bytes_per_second),
                mib(self.kubelet_rss_bytes),
                self.kubelet_limit_bytes.map_or(", no memory limit of its own".into(), |l| format!(", its limit of {} MiB is beyond what the node has left", mib(l))),
                left(self.seconds_to_eviction),
                left(self.seconds_left),
            ),
            Ending::KubeletLimit => format!(
                "kubelet uses {} of its {} MiB limit, {}",
                mib(self.kubelet_usage_bytes.unwrap_or(0)),
                mib(self.kubelet_limit_bytes.unwrap_or(0)),
                match (self.kubelet_growth_bytes_per_second, self.seconds_left) {
                    (None, _) => "its growth rate unknown, so the time to its limit unknown".into(),
                    (g, None) => format!("growing {} MiB/s: the time to its limit unknown", rate(g)),
                    (g, s) => format!("growing {} MiB/s: {} to its limit", rate(g), left(s)),
                },
            ),
        }
    }
}
