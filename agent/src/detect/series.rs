//! The sampled node series the detectors read: one struct per sample, one clock (unix seconds),
//! and the robust statistics they share.
use serde::Serialize;

/// One sample of everything the detectors use. Optional fields are absent when the source was
/// not available (no kubelet /metrics, no runtime socket...).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: i64,
    pub kubelet_rss_bytes: f64,
    pub pods: f64,
    pub containers: Option<f64>,
    pub exited_containers: Option<f64>,
    pub kubelet_cgroup_bytes: Option<f64>,
    /// The kubelet's own memory limit (its cgroup's), when it has one.
    pub kubelet_limit_bytes: Option<f64>,
    pub node_mem_available_bytes: Option<f64>,
    pub node_mem_total_bytes: Option<f64>,
    /// `go_goroutines` of the kubelet's own registry.
    pub goroutines: Option<f64>,
    /// p99 of the PLEG relists completed since the previous sample (live: from the differences
    /// of `kubelet_pleg_relist_duration_seconds_bucket` between two scrapes; the real kubelet's
    /// top finite bucket is 10 s, so this never exceeds 10), seconds.
    pub pleg_relist_p99_seconds: Option<f64>,
    /// `kubelet_evictions_total{eviction_signal="memory.available"}` (a counter).
    pub evictions_memory_total: Option<f64>,
    /// Sum of the pod cgroups' working sets.
    pub workload_working_set_bytes: Option<f64>,
    /// Pods created + deleted per hour (live: pod cgroups that appeared or disappeared since the
    /// previous sample's walk of the kubepods tree, per hour of the interval).
    pub pod_churn_per_hour: Option<f64>,
    /// This node's kubelet CertificateSigningRequests (signers kubelet-serving and
    /// kube-apiserver-client-kubelet) with neither an Approved nor a Denied condition.
    pub pending_csrs: Option<f64>,
    pub cgroup_version: Option<f64>,
    /// Kernel major.minor as a decimal, e.g. 5.15 (`KernelVersion::series_value`): a label, compared for equality.
    pub kernel: Option<f64>,
    /// `kubernetes_feature_enabled{name="PodCertificateRequest"}` of the kubelet: 1 on, 0 off.
    pub gate_pod_certificate_request: Option<f64>,
    /// `kubernetes_feature_enabled{name="EventedPLEG"}` of the kubelet: 1 on, 0 off.
    pub gate_evented_pleg: Option<f64>,
    /// A counter of kubelet restarts (a step marks a restart).
    pub kubelet_restarts: Option<f64>,
    /// The node's MemoryPressure condition: 1 True, 0 False (from the API server).
    pub memory_pressure: Option<f64>,
    /// PLEG relists completed since the previous sample (a count, from the differences of
    /// `kubelet_pleg_relist_duration_seconds_count`'s buckets between two scrapes).
    pub pleg_relists: Option<f64>,
    /// Of those, the relists slower than 1 s, 5 s and 10 s (bucket `le="1"`, `"5"`, `"10"`
    /// against `+Inf`).
    pub pleg_relists_slower_1s: Option<f64>,
    pub pleg_relists_slower_5s: Option<f64>,
    pub pleg_relists_slower_10s: Option<f64>,
}

/// The optional CSV columns, in the order `Sample` declares them (README documents them).
pub const OPTIONAL_COLUMNS: &[&str] = &[
    "containers",
    "exited_containers",
    "kubelet_cgroup_bytes",
    "kubelet_limit_bytes",
    "node_mem_available_bytes",
    "node_mem_total_bytes",
    "goroutines",
    "pleg_relist_p99_seconds",
    "evictions_memory_total",
    "workload_working_set_bytes",
    "pod_churn_per_hour",
    "pending_csrs",
    "cgroup_version",
    "kernel",
    "gate_pod_certificate_request",
    "gate_evented_pleg",
    "kubelet_restarts",
    "memory_pressure",
    "pleg_relists",
    "pleg_relists_slower_1s",
    "pleg_relists_slower_5s",
    "pleg_relists_slower_10s",
];

/// Why a value cannot be a measurement of `column` (`None`: it can). Every column is finite and
/// not negative; byte counts fit a u64 (the kernel's counters); counts (`pods`, containers,
/// goroutines, CSRs, restarts, relists, evictions) are whole numbers up to 2^53 (exact in an
/// f64); `gate_*` and `memory_pressure` are 0 or 1; `cgroup_version` is 1 or 2. Shared by the
/// CSV reader (`oomprobe replay`) and the store decoder, so both refuse the same values.
pub fn invalid_value(column: &str, v: f64) -> Option<String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if !v.is_finite() {
        return Some("is not a finite number".into());
    }
    if v < 0.0 {
        return Some("is negative".into());
    }
    if column.ends_with("_bytes") && v > u64::MAX as f64 {
        return Some("is beyond a 64-bit byte count".into());
    }
    let count = matches!(
        column,
        "pods"
            | "containers"
            | "exited_containers"
            | "goroutines"
            | "evictions_memory_total"
            | "pending_csrs"
            | "kubelet_restarts"
            | "pleg_relists"
            | "pleg_relists_slower_1s"
            | "pleg_relists_slower_5s"
            | "pleg_relists_slower_10s"
    );
    if count && (v.fract() != 0.0 || v > EXACT) {
        return Some("is not a whole count".into());
    }
    if (column.starts_with("gate_") || column == "memory_pressure") && v != 0.0 && v != 1.0 {
        return Some("is neither 0 nor 1".into());
    }
    if column == "cgroup_version" && v != 1.0 && v != 2.0 {
        return Some("is neither 1 nor 2".into());
    }
    None
}

impl Sample {
    pub fn optional_mut(&mut self, column: &str) -> Option<&mut Option<f64>> {
        Some(match column {
            "containers" => &mut self.containers,
            "exited_containers" => &mut self.exited_containers,
            "kubelet_cgroup_bytes" => &mut self.kubelet_cgroup_bytes,
            "kubelet_limit_bytes" => &mut self.kubelet_limit_bytes,
            "node_mem_available_bytes" => &mut self.node_mem_available_bytes,
            "node_mem_total_bytes" => &mut self.node_mem_total_bytes,
            "goroutines" => &mut self.goroutines,
            "pleg_relist_p99_seconds" => &mut self.pleg_relist_p99_seconds,
            "evictions_memory_total" => &mut self.evictions_memory_total,
            "workload_working_set_bytes" => &mut self.workload_working_set_bytes,
            "pod_churn_per_hour" => &mut self.pod_churn_per_hour,
            "pending_csrs" => &mut self.pending_csrs,
            "cgroup_version" => &mut self.cgroup_version,
            "kernel" => &mut self.kernel,
            "gate_pod_certificate_request" => &mut self.gate_pod_certificate_request,
            "gate_evented_pleg" => &mut self.gate_evented_pleg,
            "kubelet_restarts" => &mut self.kubelet_restarts,
            "memory_pressure" => &mut self.memory_pressure,
            "pleg_relists" => &mut self.pleg_relists,
            "pleg_relists_slower_1s" => &mut self.pleg_relists_slower_1s,
            "pleg_relists_slower_5s" => &mut self.pleg_relists_slower_5s,
            "pleg_relists_slower_10s" => &mut self.pleg_relists_slower_10s,
            _ => return None,
        })
    }

    pub fn optional(&self, column: &str) -> Option<f64> {
        let mut copy = self.clone();
        copy.optional_mut(column).and_then(|v| *v)
    }
}

/// Theil-Sen slope with an approximate 90% interval from the pairwise slopes' quantiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slope {
    /// Units per second.
    pub mid: f64,
    pub low: f64,
    pub high: f64,
}

pub fn theil_sen(points: &[(f64, f64)]) -> Option<Slope> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let dx = points[j].0 - points[i].0;
            if dx.abs() > f64::EPSILON {
                slopes.push((points[j].1 - points[i].1) / dx);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(|a, b| a.total_cmp(b));
    let m = slopes.len();
    // Sen's interval: ranks around the median spread by z * sqrt(var(S)), var from Kendall's S.
    let nf = n as f64;
    let var_s = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    let c = 1.645 * var_s.sqrt();
    let lo = (((m as f64) - c) / 2.0).floor().max(0.0) as usize;
    let hi = ((((m as f64) + c) / 2.0).ceil() as usize).min(m - 1);
    Some(Slope {
        mid: slopes[m / 2],
        low: slopes[lo],
        high: slopes[hi],
    })
}

/// Quantile of a small slice (linear interpolation on the sorted copy).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    if i + 1 < v.len() {
        v[i] * (1.0 - frac) + v[i + 1] * frac
    } else {
        v[i]
    }
}

/// Lower-envelope baseline per bucket: a low quantile of each `bucket_s` window, which sits on
/// the troughs of the Go GC sawtooth and ignores short scavenger dips (they are below only a
/// few samples). Returns (bucket mid time, value) pairs for buckets with enough samples.
pub fn baseline(samples: &[(i64, f64)], bucket_s: i64, q: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let start = samples[i].0 - samples[i].0.rem_euclid(bucket_s);
        let mut vals = Vec::new();
        while i < samples.len() && samples[i].0 < start + bucket_s {
            vals.push(samples[i].1);
            i += 1;
        }
        if vals.len() >= 3 {
            out.push(((start + bucket_s / 2) as f64, quantile(&vals, q)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn theil_sen_ignores_outliers() {
        let mut pts: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 2.0 * i as f64 + 1.0)).collect();
        pts[5].1 = 1000.0;
        pts[12].1 = -500.0;
        let s = theil_sen(&pts).unwrap();
        assert!((s.mid - 2.0).abs() < 1e-9, "{s:?}");
        assert!(s.low <= 2.0 && s.high >= 2.0);
    }

    #[test]
    fn baseline_sits_on_sawtooth_troughs() {
        // 100 +- sawtooth of 40, with a slow rise of 1 per hour: baseline follows the troughs.
        let samples: Vec<(i64, f64)> = (0..600)
            .map(|i| {
                let t = i * 60;
                (t, 100.0 + (i % 10) as f64 * 4.0 + t as f64 / 3600.0)
            })
            .collect();
        let b = baseline(&samples, 3600, 0.1);
        assert_eq!(b.len(), 10);
        let s = theil_sen(&b).unwrap();
        assert!((s.mid * 3600.0 - 1.0).abs() < 0.05, "{}", s.mid * 3600.0);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
