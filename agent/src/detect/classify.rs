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

fn mean(series: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = series.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
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
    /// Mean churn per hour before the onset, the hours it covers and the upper bound of the
    /// kubelet baseline's slope over them (bytes/day), when the window has at least [`CHURN_BEFORE_MIN_S`] of it.
    before: Option<(f64, f64, f64)>,
}

/// `w` is the classifier's window: the change point's history, so that the baseline before
/// the onset is one the change point saw flat.
fn churn_around(w: &[Sample], onset: Option<i64>) -> Option<ChurnAround> {
    let split = onset.map_or(0, |o| w.partition_point(|s| s.t < o));
    let (before, since) = w.split_at(split);
    let since = if since.is_empty() { w } else { since };
    // Since the last kubelet restart before the onset: a restart drops what a leak had grown,
    // which reads as a flat baseline.
    let before = window(&before[super::restart_index(before)..], CHURN_BEFORE_S);
    let pts: Vec<(i64, f64)> = before
        .iter()
        .filter_map(|s| Some((s.t, s.pod_churn_per_hour?)))
        .collect();
    // Samples without a kubelet (RSS 0) are no level of its baseline.
    let rss = column_slope(
        before,
        CHURN_BEFORE_S,
        |s| (s.kubelet_rss_bytes > 0.0).then_some(s.kubelet_rss_bytes),
        BASELINE_Q,
    );
    let before = match (pts.first(), pts.last(), rss) {
        (Some(a), Some(b), Some(rss)) if b.0 - a.0 >= CHURN_BEFORE_MIN_S => Some((
            pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64,
            (b.0 - a.0) as f64 / HOUR as f64,
            rss.high,
        )),
        _ => None,
    };
    Some(ChurnAround {
        since: mean(since, |s| s.pod_churn_per_hour)?,
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
                    .filter(|&(b, _, slope)| slope < 0.5 * leak * b / ch.since.max(1.0));
                let rose = flat_before.is_none_or(|b| ch.since - b.0 > CHURN_HEAVY_PER_H);
                let since = match onset {
                    Some(_) => format!(
                        "{:.0} pod creations+deletions per hour since the leak's onset",
                        ch.since
                    ),
                    None => format!("{:.0} pod creations+deletions per hour", ch.since),
                };
                let before = match (onset, ch.before) {
                    (_, Some((b, h, slope))) => format!(
                        ", {b:.0}/h in the {h:.0} h before it (baseline at most {:+.0} MB/day there)",
                        slope / 1e6
                    ),
                    (Some(_), None) => ", less than 12 h of baseline before the onset in the 72 h window to compare with".into(),
                    (None, None) => String::new(),
                };
                cands.push(Candidate {
                    cause: Cause::PodChurn,
                    score: f64::from(u8::from(heavy && rose)) * 2.5,
                    supports: vec![format!("{since}{before}")],
                    contradicts: match flat_before {
                        _ if !heavy => vec!["pod churn is low".into()],
                        Some((b, _, slope)) if !rose => vec![format!(
                            "churn was already {b:.0}/h before the onset with a flat baseline (at most {:+.0} MB/day there, {:.0}/h since): churn that did not leak then does not explain the growth",
                            slope / 1e6,
                            ch.since
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
}
