//! The field guide's known causes, each with the evidence for and against it and what to check
//! next, in the guide's terms.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{column_slope, pleg_slow_shares, window, Finding, Sample, Subject, BASELINE_Q, HOUR};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// No leak.
    None,
    /// kubernetes#131905: exited containers accumulate faster than they are collected.
    ContainerGc,
    /// kubernetes#133501: PodCertificateRequest gate, stale CSR entries.
    PodCertsManager,
    /// kubernetes#132266: goroutines climb with memory under node pressure.
    EventedPleg,
    /// kubernetes#131906: memory rises after heavy pod churn.
    PodChurn,
    /// runc on cgroup v1 with Linux 5.15.
    #[serde(rename = "cgroup_v1_kernel_5_15")]
    CgroupV1Kernel515,
    /// Evicted pods reschedule and pressure the node again.
    Oversubscription,
    /// A pod's working set grows: not the kubelet.
    WorkloadLeak,
    /// A kubelet leak none of the known causes explains.
    Unknown,
}

impl Cause {
    /// The causes the classifier can name (every one but `None` and `Unknown`), in the order
    /// the README lists them.
    pub const NAMED: [Cause; 7] = [
        Cause::ContainerGc,
        Cause::PodCertsManager,
        Cause::EventedPleg,
        Cause::PodChurn,
        Cause::CgroupV1Kernel515,
        Cause::Oversubscription,
        Cause::WorkloadLeak,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::None => "none",
            Cause::ContainerGc => "container_gc",
            Cause::PodCertsManager => "pod_certs_manager",
            Cause::EventedPleg => "evented_pleg",
            Cause::PodChurn => "pod_churn",
            Cause::CgroupV1Kernel515 => "cgroup_v1_kernel_5_15",
            Cause::Oversubscription => "oversubscription",
            Cause::WorkloadLeak => "workload_leak",
            Cause::Unknown => "unknown",
        }
    }
}

pub struct Classification {
    pub cause: Cause,
    pub supports: Vec<String>,
    pub contradicts: Vec<String>,
    pub next_checks: Vec<String>,
}

/// Per cause, each input it is computed from: `observed`, or `missing: <why>`.
pub type Inputs = BTreeMap<&'static str, BTreeMap<&'static str, String>>;

/// The series columns each cause is computed from, with the live source of each.
pub const CAUSE_INPUTS: &[(Cause, &[&str])] = &[
    (Cause::ContainerGc, &["exited_containers", "containers"]),
    (
        Cause::PodCertsManager,
        &["gate_pod_certificate_request", "pending_csrs"],
    ),
    (
        Cause::EventedPleg,
        &["goroutines", "pleg_relists", "gate_evented_pleg"],
    ),
    (Cause::PodChurn, &["pod_churn_per_hour"]),
    (Cause::CgroupV1Kernel515, &["cgroup_version", "kernel"]),
    (
        Cause::Oversubscription,
        &["evictions_memory_total", "memory_pressure"],
    ),
    (Cause::WorkloadLeak, &["workload_working_set_bytes"]),
];

/// Where the live agent gets a column (what to fix when it is missing).
pub fn source(column: &str) -> &'static str {
    match column {
        "exited_containers" | "containers" => {
            "kubelet_running_containers of the kubelet's /metrics (--kubelet-metrics)"
        }
        "gate_pod_certificate_request" | "gate_evented_pleg" => {
            "kubernetes_feature_enabled of the kubelet's /metrics (--kubelet-metrics)"
        }
        "goroutines" => "go_goroutines of the kubelet's /metrics (--kubelet-metrics)",
        "pleg_relists" => {
            "kubelet_pleg_relist_duration_seconds of the kubelet's /metrics, two scrapes apart (--kubelet-metrics)"
        }
        "evictions_memory_total" => "kubelet_evictions of the kubelet's /metrics (--kubelet-metrics)",
        "pending_csrs" => {
            "certificatesigningrequests from the API server (in a cluster, or --kubeconfig/--kube-api; RBAC list certificatesigningrequests)"
        }
        "memory_pressure" => {
            "the node's MemoryPressure condition from the API server (in a cluster, or --kubeconfig/--kube-api; RBAC get nodes)"
        }
        "pod_churn_per_hour" => "the kubepods cgroup tree, two samples apart",
        "cgroup_version" => "the memory cgroup hierarchy or kubelet_cgroup_version",
        "kernel" => "/proc/sys/kernel/osrelease",
        "workload_working_set_bytes" => "the kubepods cgroup tree",
        _ => "the agent's sampler",
    }
}

/// The inputs of every cause over the classifier's 72 h window, and the causes that cannot be
/// told for want of one (`<cause>: cannot tell, missing <column> (<source>)`).
pub fn inputs(series: &[Sample]) -> (Inputs, Vec<String>) {
    let w = window(series, 72 * HOUR);
    let seen = |c: &str| w.iter().any(|s| s.optional(c).is_some());
    let mut out = Inputs::new();
    let mut cannot = Vec::new();
    for (cause, cols) in CAUSE_INPUTS {
        let m = out.entry(cause.as_str()).or_default();
        for &c in *cols {
            let status = if seen(c) {
                "observed".to_string()
            } else {
                format!(
                    "missing: no sample of the last 72 h has it; from {}",
                    source(c)
                )
            };
            m.insert(c, status);
        }
        // What the cause cannot be told without (a gate that is off needs no CSR count).
        let gate_on = last(w, |s| s.gate_pod_certificate_request) == Some(1.0);
        let needed: Vec<&str> = match cause {
            Cause::PodCertsManager if gate_on => cols.to_vec(),
            Cause::PodCertsManager => vec!["gate_pod_certificate_request"],
            Cause::EventedPleg => vec!["goroutines"],
            Cause::ContainerGc => vec!["exited_containers"],
            _ => cols.to_vec(),
        };
        for c in needed.into_iter().filter(|c| !seen(c)) {
            cannot.push(format!(
                "{}: cannot tell, missing {c} (from {})",
                cause.as_str(),
                source(c)
            ));
        }
    }
    (out, cannot)
}

fn last(series: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    series.iter().rev().find_map(f)
}

/// The mean of `f` over the samples that have it. A running mean: values as large as the
/// readers accept (any finite number, up to f64::MAX) never sum to infinity.
fn mean(series: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    mean_of(series.iter().filter_map(f))
}

fn mean_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut mean, mut n) = (0.0, 0u64);
    for v in values {
        n += 1;
        mean += (v - mean) / n as f64;
    }
    (n > 0).then_some(mean)
}

/// The time-weighted mean of `f`, and the seconds of series it covers. A sample (churn is a
/// trailing hour's count) weighs the time since the previous sample that has it, at most an
/// hour (a gap of days weighs an hour; a duplicate time nothing); the first weighs as the
/// second. So the densely kept last hours do not outweigh the rest (the agent keeps every
/// sample of the last 6 h, one a minute before them: a plain mean of samples weighs the last
/// 6 h six times over at the default 10 s interval, 60 times at 1 s). Values as large as the
/// readers accept never sum to infinity: a running mean, its weights at most 1.
fn time_mean(series: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<(f64, i64)> {
    let pts: Vec<(i64, f64)> = series.iter().filter_map(|s| Some((s.t, f(s)?))).collect();
    let gap = |i: usize| pts[i].0.saturating_sub(pts[i - 1].0).clamp(0, HOUR);
    let (mut mean, mut covered) = (0.0, 0i64);
    for i in 0..pts.len() {
        let w = match i {
            0 if pts.len() > 1 => gap(1),
            0 => 0,
            _ => gap(i),
        };
        covered = covered.saturating_add(w);
        if w > 0 {
            mean += (pts[i].1 - mean) * (w as f64 / covered as f64);
        }
    }
    match covered {
        // One time only (one sample, or all at one time): their plain mean.
        0 => mean_of(pts.iter().map(|p| p.1)).map(|m| (m, 0)),
        _ => Some((mean, covered)),
    }
}

/// A rate per hour for a verdict's text: whole numbers, in exponent form past a billion (the
/// readers accept any finite rate; 1e300 is not printed as 301 digits).
fn per_hour(v: f64) -> String {
    if v < 1e9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2e}")
    }
}

struct Candidate {
    cause: Cause,
    score: f64,
    supports: Vec<String>,
    contradicts: Vec<String>,
    next: &'static str,
}

/// Pod creations+deletions per hour that count as heavy churn, and the least rise of churn at a
/// leak's onset that can explain it.
const CHURN_HEAVY_PER_H: f64 = 20.0;
/// The baseline before an onset (since the last kubelet restart) that the churn since is
/// compared with: at most its last day, and at least 12 h of it, or no comparison (the change
/// point needs 6 h before its start: an onset 6 h into the window may be the window's, not the
/// leak's).
const CHURN_BEFORE_S: i64 = 24 * HOUR;
const CHURN_BEFORE_MIN_S: i64 = 12 * HOUR;

/// Pod churn since a leak's onset and in the baseline before it.
struct ChurnAround {
    /// Mean churn per hour since the onset (over the whole window without one).
    since: f64,
    /// Mean churn per hour before the onset, the hours it covers and the upper bound of
    /// the kubelet baseline's slope over them (bytes/day), when the window has at least
    /// [`CHURN_BEFORE_MIN_S`] of it; else why not.
    before: Result<(f64, f64, f64), NoBaseline>,
}

/// Why the churn since an onset has no baseline before it to compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoBaseline {
    /// No onset: the whole window is compared with nothing.
    NoOnset,
    /// Less than [`CHURN_BEFORE_MIN_S`] of series before the onset (since the kubelet's last
    /// restart) in the window.
    Short,
    /// The series is there, but pod churn was seen over less than 12 h of it.
    ChurnUnseen,
    /// The series and the churn are there, but not the kubelet (RSS 0) to tell its slope.
    KubeletUnseen,
}

impl NoBaseline {
    /// The text after the churn since the onset.
    fn text(self) -> &'static str {
        match self {
            NoBaseline::NoOnset => "",
            NoBaseline::Short => {
                ", less than 12 h of baseline before the onset in the 72 h window to compare with"
            }
            NoBaseline::ChurnUnseen => {
                ", pod churn seen in less than 12 h of the baseline before the onset: nothing to compare with"
            }
            NoBaseline::KubeletUnseen => {
                ", the kubelet's RSS not seen over the baseline before the onset: its slope there unknown, nothing to compare with"
            }
        }
    }
}

/// `w` is the classifier's window: the change point's history, so that the baseline before
/// the onset is one the change point saw flat. Churn is averaged over time ([`time_mean`]),
/// so the densely kept last hours do not outweigh the rest.
fn churn_around(w: &[Sample], onset: Option<i64>) -> Option<ChurnAround> {
    let split = onset.map_or(0, |o| w.partition_point(|s| s.t < o));
    let (before, since) = w.split_at(split);
    let since = if since.is_empty() { w } else { since };
    // Since the last kubelet restart before the onset: a restart drops what a leak had grown,
    // which reads as a flat baseline.
    let before = window(&before[super::restart_index(before)..], CHURN_BEFORE_S);
    let churn = time_mean(before, |s| s.pod_churn_per_hour);
    // Samples without a kubelet (RSS 0) are no level of its baseline.
    let rss = column_slope(
        before,
        CHURN_BEFORE_S,
        |s| (s.kubelet_rss_bytes > 0.0).then_some(s.kubelet_rss_bytes),
        BASELINE_Q,
    );
    let span = match (before.first(), before.last()) {
        (Some(a), Some(b)) => b.t.saturating_sub(a.t),
        _ => 0,
    };
    let before = match (churn, rss) {
        _ if onset.is_none() => Err(NoBaseline::NoOnset),
        _ if span < CHURN_BEFORE_MIN_S => Err(NoBaseline::Short),
        (Some((b, seen)), Some(rss)) if seen >= CHURN_BEFORE_MIN_S => {
            Ok((b, seen as f64 / HOUR as f64, rss.high))
        }
        (Some((_, seen)), _) if seen >= CHURN_BEFORE_MIN_S => Err(NoBaseline::KubeletUnseen),
        _ => Err(NoBaseline::ChurnUnseen),
    };
    Some(ChurnAround {
        since: time_mean(since, |s| s.pod_churn_per_hour)?.0,
        before,
    })
}

/// Names the cause of `subject`'s leak. `onset`: when the kubelet's leak began (unix
/// seconds; the change point's start), when one is called.
pub fn classify(
    subject: Subject,
    series: &[Sample],
    findings: &[Finding],
    onset: Option<i64>,
) -> Classification {
    let firing = |n: &str| findings.iter().any(|f| f.detector == n && f.firing);
    let w = window(series, 72 * HOUR);
    match subject {
        Subject::None => {
            // Say "flat" only of a baseline that is: a rising one that is not (yet) a called leak
            // is said to be so, with the test's score.
            let kubelet = findings.iter().find(|f| f.detector == "kubelet_trend");
            let supports = match kubelet {
                Some(f) if f.value >= 10e6 => format!(
                    "kubelet RSS baseline rises {:.0} MB/day once pod count is accounted for, not (yet) a leak: the change-point test does not call it",
                    f.value / 1e6
                ),
                Some(_) => "kubelet RSS baseline is flat once pod count is accounted for".into(),
                None => match series.last().map(|l| l.t.saturating_sub(series[super::restart_index(series)].t)) {
                    Some(since) if super::restart_index(series) > 0 => format!(
                        "the kubelet restarted {:.1} h ago: no full window of its new baseline yet",
                        since as f64 / 3600.0
                    ),
                    _ => "no full window of the kubelet's baseline yet".into(),
                },
            };
            Classification {
                cause: Cause::None,
                supports: vec![supports],
                contradicts: vec![],
                next_checks: vec![],
            }
        }
        Subject::InsufficientHistory => {
            let hours = match (series.first(), series.last()) {
                (Some(a), Some(b)) => b.t.saturating_sub(a.t) as f64 / 3600.0,
                _ => 0.0,
            };
            Classification {
                cause: Cause::None,
                supports: vec![format!(
                    "{hours:.1} h of kubelet memory history; a kubelet leak can be called after 24 h"
                )],
                contradicts: vec![],
                next_checks: vec![],
            }
        }
        Subject::Workload => {
            let pressure_seen = mean(window(series, 6 * HOUR), |s| s.memory_pressure);
            let pressure = pressure_seen.unwrap_or(0.0);
            if firing("evictions") && (pressure > 0.1 || !firing("workload_trend")) {
                Classification {
                    cause: Cause::Oversubscription,
                    supports: vec![
                        "memory evictions keep happening (kubelet_evictions_total{eviction_signal=\"memory.available\"} rising)".into(),
                        match pressure_seen {
                            Some(p) => format!("MemoryPressure true {:.0}% of the last 6 h", p * 100.0),
                            None => "MemoryPressure not observed in the last 6 h (no API server)".into(),
                        },
                    ],
                    contradicts: vec!["kubelet RSS baseline is flat".into()],
                    next_checks: vec![
                        "compare node allocatable memory with the pods' actual working sets".into(),
                        "lower pod density or raise node memory; set kube-reserved and system-reserved".into(),
                    ],
                }
            } else {
                Classification {
                    cause: Cause::WorkloadLeak,
                    supports: vec![
                        "pod cgroups' working sets grow while the kubelet's baseline is flat"
                            .into(),
                    ],
                    contradicts: vec![],
                    next_checks: vec![
                        "find the pod with the growing container_memory_working_set_bytes".into(),
                    ],
                }
            }
        }
        Subject::Kubelet => {
            let mut cands = Vec::new();
            // Container GC: exited containers pile up against running ones.
            let exited = column_slope(series, 72 * HOUR, |s| s.exited_containers, 0.5);
            let exited_now = last(w, |s| s.exited_containers);
            let running = last(w, |s| s.containers).unwrap_or(0.0);
            if let (Some(sl), Some(now)) = (exited, exited_now) {
                let piling = sl.low > 0.0 && sl.mid > 10.0;
                let many = now > 100.0 || now > 2.0 * running.max(1.0);
                // "Many" counts only with the pile growing: the real kubelet's gauge keeps a
                // state's last value (v1.34, `updateRunningPodAndContainerMetrics`), so after a
                // scale-down exited outnumbers running without any leak (recorded on the lab:
                // 20 exited vs 10 running), and alone it named container_gc over every other
                // cause.
                cands.push(Candidate {
                    cause: Cause::ContainerGc,
                    score: f64::from(u8::from(piling)) * (2.0 + f64::from(u8::from(many))),
                    supports: vec![format!(
                        "{now:.0} exited containers vs {running:.0} running, {:+.0}/day",
                        sl.mid
                    )],
                    contradicts: if piling { vec![] } else { vec!["exited containers are not accumulating".into()] },
                    next: "crictl ps -a vs running pod count; compare across kubelet versions (kubernetes#131905)",
                });
            }
            // PodCertsManager: the gate is on and CSRs back up.
            if last(w, |s| s.gate_pod_certificate_request) == Some(1.0) {
                let csr = column_slope(series, 72 * HOUR, |s| s.pending_csrs, 0.5);
                let backing_up = csr.is_some_and(|s| s.low > 0.0 && s.mid > 1.0);
                cands.push(Candidate {
                    cause: Cause::PodCertsManager,
                    score: 0.9 + f64::from(u8::from(backing_up)) * 2.0,
                    supports: vec![
                        "PodCertificateRequest feature gate enabled".into(),
                        match csr {
                            Some(c) => format!("pending CSRs {:+.0}/day", c.mid),
                            None => "pending CSRs not observed (cannot tell whether they back up)".into(),
                        },
                    ],
                    contradicts: match (backing_up, csr) {
                        (false, Some(_)) => vec!["CSR queue is not backing up".into()],
                        _ => vec![],
                    },
                    next: "check pending CSRs; upgrade to v1.35.0+ or disable the PodCertificateRequest gate (kubernetes#133501)",
                });
            }
            // EventedPLEG: goroutines climb with memory under pressure.
            let g = column_slope(series, 72 * HOUR, |s| s.goroutines, 0.5);
            let g_climbing = g.is_some_and(|s| s.low > 0.0 && s.mid > 20.0);
            if g.is_some() {
                // PLEG stressed: over 1% of the last 6 h's relists slower than 5 s (p99 above
                // 5 s); without relist counts (recorded CSVs), the p99 column above 2 s.
                let (pleg_stressed, pleg) = match pleg_slow_shares(window(series, 6 * HOUR)) {
                    Some((n, [_, s5, s10])) => (
                        s5 > 0.01,
                        format!(
                            "{:.1}% of {n:.0} PLEG relists in 6 h slower than 5 s ({:.1}% than 10 s)",
                            s5 * 100.0,
                            s10 * 100.0
                        ),
                    ),
                    None => match last(w, |s| s.pleg_relist_p99_seconds) {
                        Some(p) => (p > 2.0, format!("PLEG relist p99 {p:.1} s")),
                        None => (false, "PLEG relists not observed".into()),
                    },
                };
                let gate_v = last(w, |s| s.gate_evented_pleg);
                let gate = gate_v == Some(1.0);
                cands.push(Candidate {
                    cause: Cause::EventedPleg,
                    score: f64::from(u8::from(g_climbing)) * 2.0
                        + f64::from(u8::from(pleg_stressed))
                        + f64::from(u8::from(gate)) * 0.9,
                    supports: vec![format!(
                        "goroutines {:+.0}/day, {pleg}, EventedPLEG gate {}",
                        g.map_or(0.0, |s| s.mid),
                        match gate_v {
                            Some(1.0) => "on",
                            Some(_) => "off",
                            None => "not observed",
                        }
                    )],
                    contradicts: if g_climbing { vec![] } else { vec!["goroutine count is flat".into()] },
                    next: "check the EventedPLEG gate and the goroutine trend; --feature-gates=EventedPLEG=false (kubernetes#132266)",
                });
            }
            // Pod churn (kubernetes#131906): deleted pod objects retained, a per-pod leak, so
            // memory grows with the churn of the pods that leak. Churn explains a leak's onset
            // only if churn of that size began with it: heavy churn since the onset AND at least
            // that much more than in the flat baseline before it (the churn added at the onset is
            // itself heavy). Churn that was already there while the baseline was flat did not
            // leak, and does not explain growth that began later.
            // The baseline before the onset must have been flat for the churn there to count
            // against: its slope's upper bound under half what a per-pod leak at the leak's
            // slope per churned pod predicts there; otherwise the onset is just where the change point put it
            // (a leak from a series' start is read as warm-up for its first hours).
            let churn = churn_around(w, onset);
            let leak = findings
                .iter()
                .find(|f| f.detector == "kubelet_trend")
                .map_or(0.0, |f| f.value);
            if let Some(ch) = churn {
                let heavy = ch.since > CHURN_HEAVY_PER_H;
                let flat_before = ch
                    .before
                    .ok()
                    .filter(|&(b, _, slope)| slope < 0.5 * leak * b / ch.since.max(1.0));
                let rose = flat_before.is_none_or(|b| ch.since - b.0 > CHURN_HEAVY_PER_H);
                let since = match onset {
                    Some(_) => format!(
                        "{} pod creations+deletions per hour since the leak's onset",
                        per_hour(ch.since)
                    ),
                    None => format!("{} pod creations+deletions per hour", per_hour(ch.since)),
                };
                let before = match ch.before {
                    Ok((b, h, slope)) => format!(
                        ", {}/h in the {h:.0} h before it (baseline at most {:+.0} MB/day there)",
                        per_hour(b),
                        slope / 1e6
                    ),
                    Err(why) => why.text().into(),
                };
                cands.push(Candidate {
                    cause: Cause::PodChurn,
                    score: f64::from(u8::from(heavy && rose)) * 2.5,
                    supports: vec![format!("{since}{before}")],
                    contradicts: match flat_before {
                        _ if !heavy => vec!["pod churn is low".into()],
                        Some((b, _, slope)) if !rose => vec![format!(
                            "churn was already {}/h before the onset with a flat baseline (at most {:+.0} MB/day there, {}/h since): churn that did not leak then does not explain the growth",
                            per_hour(b),
                            slope / 1e6,
                            per_hour(ch.since)
                        )],
                        _ => vec![],
                    },
                    next: "compare the pod creation/deletion rate with the memory slope (kubernetes#131906)",
                });
            }
            // cgroup v1 + 5.15: a risk factor, the answer only when nothing else explains it.
            let v1 = last(w, |s| s.cgroup_version) == Some(1.0);
            let k515 = last(w, |s| s.kernel).is_some_and(|k| (k - 5.15).abs() < 0.005);
            if v1 && k515 {
                cands.push(Candidate {
                    cause: Cause::CgroupV1Kernel515,
                    score: 1.0,
                    supports: vec!["cgroup v1 on Linux 5.15 (kubelet_cgroup_version 1)".into()],
                    contradicts: vec![],
                    next: "migrate the node pool to cgroup v2 or upgrade the kernel",
                });
            }
            cands.sort_by(|a, b| b.score.total_cmp(&a.score));
            // The best candidate is the answer only with real evidence (a risk factor or a
            // symptom, score >= 1); every other candidate's contradictions are listed.
            let chosen = usize::from(cands.first().is_some_and(|c| c.score >= 1.0));
            let contradicted: Vec<String> = cands
                .iter()
                .skip(chosen)
                .flat_map(|c| {
                    c.contradicts
                        .iter()
                        .map(move |x| format!("{}: {x}", c.cause.as_str()))
                })
                .collect();
            match cands.into_iter().next().filter(|_| chosen == 1) {
                Some(c) => Classification {
                    cause: c.cause,
                    supports: c.supports,
                    contradicts: c.contradicts.into_iter().chain(contradicted).collect(),
                    next_checks: vec![c.next.to_string()],
                },
                None => Classification {
                    cause: Cause::Unknown,
                    supports: vec!["kubelet RSS grows with a stable pod count".into()],
                    contradicts: contradicted,
                    next_checks: vec![
                        "take a heap profile (kubelet /debug/pprof/heap) or read oomprobe's top call sites".into(),
                        "schedule a graceful kubelet restart in a quiet window".into(),
                    ],
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause's JSON name is the name the text output, the README and `inputs` use.
    #[test]
    fn json_names_are_the_documented_names() {
        for c in [Cause::None, Cause::Unknown]
            .into_iter()
            .chain(Cause::NAMED)
        {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str(), "{c:?}");
        }
    }

    fn sample(t: i64) -> Sample {
        Sample {
            t,
            kubelet_rss_bytes: 500e6,
            pods: 30.0,
            containers: Some(45.0),
            exited_containers: Some(6.0),
            goroutines: Some(240.0),
            pleg_relist_p99_seconds: Some(0.8),
            pod_churn_per_hour: Some(3.0),
            pending_csrs: Some(1.0),
            ..Default::default()
        }
    }

    fn day(f: impl Fn(&mut Sample)) -> Vec<Sample> {
        (0..144)
            .map(|i| {
                let mut s = sample(i * 600);
                f(&mut s);
                s
            })
            .collect()
    }

    #[test]
    fn a_feature_gate_alone_is_not_the_cause() {
        // PodCertificateRequest on but no CSR backlog, on cgroup v1 with 5.15: the risk factor
        // that is present decides, not the gate.
        let s = day(|s| {
            s.gate_pod_certificate_request = Some(1.0);
            s.cgroup_version = Some(1.0);
            s.kernel = Some(5.15);
        });
        let c = classify(Subject::Kubelet, &s, &[], None);
        assert_eq!(c.cause, Cause::CgroupV1Kernel515, "{:?}", c.supports);
        // Nothing but the gate: unknown, with the gate's absence of symptoms in the evidence.
        let s = day(|s| s.gate_pod_certificate_request = Some(1.0));
        let c = classify(Subject::Kubelet, &s, &[], None);
        assert_eq!(c.cause, Cause::Unknown);
        assert!(
            c.contradicts.iter().any(|x| x.contains("CSR queue")),
            "{:?}",
            c.contradicts
        );
    }

    #[test]
    fn a_csr_backlog_with_the_gate_is_pod_certs_manager() {
        let s = day(|s| {
            s.gate_pod_certificate_request = Some(1.0);
            s.pending_csrs = Some((s.t / 600) as f64);
        });
        let c = classify(Subject::Kubelet, &s, &[], None);
        assert_eq!(c.cause, Cause::PodCertsManager, "{:?}", c.contradicts);
    }

    /// The kubelet detector's call: a leak of 200 MB/day.
    fn leak() -> Vec<Finding> {
        vec![Finding {
            detector: "kubelet_trend",
            firing: true,
            value: 200e6,
            evidence: String::new(),
        }]
    }

    /// Two days of 10-minute samples, the leak's onset at 24 h: `before` and `after` the pod
    /// churn per hour on either side, on a cgroup v1 node with Linux 5.15.
    fn churn_across_onset(before: f64, after: f64) -> (Vec<Sample>, i64) {
        let onset = 24 * HOUR;
        let s = (0..288)
            .map(|i| {
                let mut s = sample(i * 600);
                s.pod_churn_per_hour = Some(if s.t < onset { before } else { after });
                s.cgroup_version = Some(1.0);
                s.kernel = Some(5.15);
                s
            })
            .collect();
        (s, onset)
    }

    /// Heavy churn that was there a day before the onset, over a flat baseline, at the same rate
    /// since: a per-pod leak would have grown with it from the start, so it is not the cause;
    /// the node's risk factor is, and the churn's contradiction says why.
    #[test]
    fn steady_churn_before_the_onset_is_not_pod_churn() {
        let (s, onset) = churn_across_onset(300.0, 300.0);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::CgroupV1Kernel515, "{:?}", c.contradicts);
        assert!(
            c.contradicts.iter().any(|x| x.starts_with(
                "pod_churn: churn was already 300/h before the onset with a flat baseline (at most +0 MB/day there, 300/h since)"
            )),
            "{:?}",
            c.contradicts
        );
        // Churn up by less than the heavy rate at the onset does not explain it either.
        let (s, onset) = churn_across_onset(300.0, 315.0);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::CgroupV1Kernel515, "{:?}", c.contradicts);
    }

    /// Heavy churn that starts with the leak is the cause, over the risk factor.
    #[test]
    fn churn_starting_with_the_leak_is_pod_churn() {
        let (s, onset) = churn_across_onset(3.0, 60.0);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
        assert_eq!(
            c.supports,
            ["60 pod creations+deletions per hour since the leak's onset, 3/h in the 24 h before it (baseline at most +0 MB/day there)"]
        );
        // Heavy churn on top of heavy churn: what was added is heavy.
        let (s, onset) = churn_across_onset(300.0, 350.0);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
        // An onset with less than 12 h of baseline before it in the window: nothing to compare
        // with, heavy churn since the onset decides.
        let (s, _) = churn_across_onset(60.0, 60.0);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(3 * HOUR));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
        assert!(c.supports[0].ends_with(
            "less than 12 h of baseline before the onset in the 72 h window to compare with"
        ));
        // Steady churn with the baseline growing before the onset as it does since: the leak
        // tracks the churn, the onset is only where the change point put it.
        let (mut s, onset) = churn_across_onset(60.0, 60.0);
        for x in &mut s {
            x.kubelet_rss_bytes += 200e6 * x.t as f64 / 86_400.0;
        }
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
    }

    /// Churn rates as large as the readers accept (any finite number) are averaged without
    /// summing to infinity: no `inf/h` in the verdict, the contradiction's figures the input's.
    #[test]
    fn churn_near_f64_max_is_averaged_not_overflowed() {
        let (s, onset) = churn_across_onset(f64::MAX, f64::MAX);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        let text = format!("{:?} {:?}", c.supports, c.contradicts);
        assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
        assert_eq!(c.cause, Cause::CgroupV1Kernel515, "{text}");
        assert!(
            text.contains("churn was already 1.80e308/h before the onset")
                && text.contains("1.80e308/h since"),
            "{text}"
        );
        // A jump to 1e300 at the onset: heavy and new, said in exponent form, not 301 digits.
        let (s, onset) = churn_across_onset(0.0, 1e300);
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
        assert!(
            c.supports[0].starts_with("1.00e300 pod creations+deletions per hour since the leak's onset, 0/h in the 24 h before it"),
            "{:?}",
            c.supports
        );
    }

    /// The agent keeps every sample of the last 6 h (every 10 s by default) and one a minute
    /// before: churn is averaged over time, so the last 6 h do not outweigh the rest. Steady
    /// churn of 300/h that stopped 6 h ago: 223/h over the 24 h since the onset (each sample
    /// weighs the time since the one before it), not the 14/h a plain mean of samples made of
    /// it ("pod churn is low").
    #[test]
    fn densely_kept_last_hours_do_not_outweigh_the_churn_since_the_onset() {
        let onset = 24 * HOUR;
        let end = 48 * HOUR;
        let mut s = Vec::new();
        let mut t = 0;
        while t < end {
            let mut x = sample(t);
            x.pod_churn_per_hour = Some(if t >= end - 6 * HOUR { 0.0 } else { 300.0 });
            x.cgroup_version = Some(1.0);
            x.kernel = Some(5.15);
            s.push(x);
            t += if t >= end - 6 * HOUR { 10 } else { 600 };
        }
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::CgroupV1Kernel515, "{:?}", c.contradicts);
        assert!(
            c.contradicts.iter().any(|x| x.starts_with(
                "pod_churn: churn was already 300/h before the onset with a flat baseline (at most +0 MB/day there, 223/h since)"
            )),
            "{:?}",
            c.contradicts
        );
    }

    /// Without churn or a kubelet in the baseline before the onset there is nothing to compare
    /// with, and the verdict says which, not that the window is short of baseline; churn seen
    /// at two instants 13 h apart is no 13 h of it.
    #[test]
    fn a_baseline_without_churn_or_kubelet_is_said_so() {
        let (mut s, onset) = churn_across_onset(300.0, 60.0);
        for x in s.iter_mut().filter(|x| x.t < onset) {
            x.pod_churn_per_hour = None;
        }
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
        assert_eq!(
            c.supports,
            ["60 pod creations+deletions per hour since the leak's onset, pod churn seen in less than 12 h of the baseline before the onset: nothing to compare with"]
        );
        // Churn seen only 13 h and 10 min before the onset: no contradiction from two samples.
        let (mut s, onset) = churn_across_onset(300.0, 300.0);
        for x in s.iter_mut().filter(|x| x.t < onset) {
            if x.t != onset - 13 * HOUR && x.t != onset - 600 {
                x.pod_churn_per_hour = None;
            }
        }
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert_eq!(c.cause, Cause::PodChurn, "{:?}", c.contradicts);
        assert!(c.supports[0].ends_with("pod churn seen in less than 12 h of the baseline before the onset: nothing to compare with"));
        // The kubelet not running (RSS 0) before the onset: its slope there is unknown.
        let (mut s, onset) = churn_across_onset(300.0, 300.0);
        for x in s.iter_mut().filter(|x| x.t < onset) {
            x.kubelet_rss_bytes = 0.0;
        }
        let c = classify(Subject::Kubelet, &s, &leak(), Some(onset));
        assert!(
            c.supports[0].ends_with("the kubelet's RSS not seen over the baseline before the onset: its slope there unknown, nothing to compare with"),
            "{:?}",
            c.supports
        );
    }
}
