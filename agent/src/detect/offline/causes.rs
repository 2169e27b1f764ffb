//! Cause signatures at realistic sizes on real-noise traces (issue 14 part 4), for cause and
//! kubelet-vs-workload accuracy.
//!
//! Each case is a healthy real-noise trace ([`super::realnoise`], 5 days) with, from a leak
//! start 1.25-2.5 days before its end (inside the detector's 72 h window, so that a verdict
//! taken once at the end, as a freshly started agent or `replay` gives it, can see the onset),
//! a kubelet leak of 100-300 MB/day (kubelet causes; found within that time on every corpus, so
//! the figures measure the naming, not the detection delay) or a pod working-set leak of
//! 200-700 MB/day (workload), and the cause's signature starting 2 days before, 1 day
//! before, with, or 1 day after the leak (signatures often lead memory, or show only later).
//! The node's own columns are the recording's where it has them; a column it lacks starts at the
//! recorded v1.34.4 kubelet's value (`agent/tests/data/kubelet-v1.34.4-metrics.txt`: 145
//! goroutines, 2 exited containers beside 1 running, relists about once a second, none slower
//! than 1 s, both gates off). Signature sizes are a few times the classifier's thresholds at most,
//! not the generator's many times (assumptions, the issues give no rates):
//! - `container_gc` (kubernetes#131905): exited containers +15-60/day (threshold: +10/day);
//! - `pod_certs_manager` (kubernetes#133501): the PodCertificateRequest gate on, pending CSRs
//!   +2-10/day (threshold +1/day);
//! - `evented_pleg` (kubernetes#132266): the EventedPLEG gate on, goroutines +30-150/day
//!   (threshold +20/day), 1.5-5% of relists slower than 5 s (threshold 1%);
//! - `pod_churn` (kubernetes#131906): a Job/CronJob deployment adding 25-60 pod creations and
//!   deletions per hour (threshold 20/h) on top of the recording's own churn (hundreds an hour,
//!   which does not leak: the recorded kubelet is flat through it), at onsets 0 and +1 day only
//!   (see the mixtures for -2 and -1 days);
//! - `cgroup_v1_kernel_5_15`: cgroup v1 on Linux 5.15 and nothing else (a risk factor; 15% of
//!   the other traces have it too, and 10% each gate on, so neither decides alone);
//! - `oversubscription`: no leak, memory evictions every 20-60 minutes and MemoryPressure true
//!   30-60% of the time.
//!
//! Mixtures: a workload leak while a pod-churn deployment runs (truth: workload); a kubelet leak
//! of no known cause after a pod-churn deployment that stopped before the classifier's 72 h
//! window (truth: unknown); a kubelet leak of no known cause beginning 2 or 1 days into a
//! pod-churn deployment that keeps running (truth: unknown). The last were `pod_churn -2d` and
//! `-1d`, signatures leading memory, but the mechanism (deleted pod objects retained:
//! a per-pod leak) grows memory with the churn from the churn's start; one or two days of that
//! churn over a flat baseline show that its pods do not leak, and a leak beginning later is not
//! theirs. Their traces are generated as before (same seeds, same signature); only the truth
//! and the name changed.
use super::{
    realnoise::{add_leak, RealNoise},
    tracegen::{Label, Rng, Scenario},
};
use crate::detect::{classify::Cause, Engine, Sample, Subject, MIB};

const DAY: i64 = 86_400;
/// Trace length, days.
pub const DAYS: f64 = 5.0;
/// Signature onsets relative to the leak's start, days.
pub const OFFSETS: [f64; 4] = [-2.0, -1.0, 0.0, 1.0];

/// One kind of labelled trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Case {
    /// A cause's signature, starting `offset` days from the leak's start.
    Cause(Cause, f64),
    /// A workload leak while a pod-churn deployment runs.
    WorkloadWithChurn,
    /// A kubelet leak of no known cause after a pod-churn deployment that stopped 4 days before
    /// the end.
    UnknownAfterChurn,
    /// A kubelet leak of no known cause beginning while a pod-churn deployment that started
    /// `offset` (negative) days before it keeps running.
    UnknownWithChurn(f64),
}

impl Case {
    pub fn name(self) -> String {
        match self {
            Case::Cause(c, o) => format!("{} {o:+.0}d", c.as_str()),
            Case::WorkloadWithChurn => "mix workload_leak + pod churn".into(),
            Case::UnknownAfterChurn => "mix unknown after churn".into(),
            Case::UnknownWithChurn(o) => format!("mix unknown, churn from {o:+.0}d"),
        }
    }

    fn truth(self) -> (Subject, Cause) {
        match self {
            Case::Cause(c @ (Cause::Oversubscription | Cause::WorkloadLeak), _) => {
                (Subject::Workload, c)
            }
            Case::Cause(c, _) => (Subject::Kubelet, c),
            Case::WorkloadWithChurn => (Subject::Workload, Cause::WorkloadLeak),
            Case::UnknownAfterChurn | Case::UnknownWithChurn(_) => {
                (Subject::Kubelet, Cause::Unknown)
            }
        }
    }
}

/// The causes with a signature: every cause the classifier names.
pub const CAUSES: [Cause; 7] = Cause::NAMED;

/// Every case: each cause at each onset offset (pod churn leading the leak is a mixture, in
/// its place), then the mixtures.
pub fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = CAUSES
        .iter()
        .flat_map(|&c| {
            OFFSETS.iter().map(move |&o| match c {
                Cause::PodChurn if o < 0.0 => Case::UnknownWithChurn(o),
                _ => Case::Cause(c, o),
            })
        })
        .collect();
    v.extend([Case::WorkloadWithChurn, Case::UnknownAfterChurn]);
    v
}

/// Fills what the recording lacks with the recorded kubelet's values, and draws the node's
/// configuration (gates, cgroup version, kernel).
fn node_defaults(tr: &mut [Sample], case: Case, r: &mut Rng) {
    let is = |c: Cause| matches!(case, Case::Cause(x, _) if x == c);
    let v1_515 = is(Cause::CgroupV1Kernel515) || r.chance(0.15);
    let gate_pcr = is(Cause::PodCertsManager) || r.chance(0.1);
    let gate_epleg = is(Cause::EventedPleg) || r.chance(0.1);
    let workload_per_pod = r.range(50.0, 400.0) * MIB;
    for s in tr.iter_mut() {
        s.goroutines.get_or_insert(145.0);
        s.exited_containers.get_or_insert(2.0);
        s.containers.get_or_insert(s.pods.max(1.0));
        s.pending_csrs.get_or_insert(0.0);
        s.pod_churn_per_hour.get_or_insert(0.0);
        s.memory_pressure.get_or_insert(0.0);
        s.evictions_memory_total.get_or_insert(0.0);
        s.workload_working_set_bytes
            .get_or_insert(s.pods * workload_per_pod);
        if s.pleg_relists.is_none() {
            s.pleg_relists = Some(60.0);
            s.pleg_relists_slower_1s = Some(0.0);
            s.pleg_relists_slower_5s = Some(0.0);
            s.pleg_relists_slower_10s = Some(0.0);
        }
        s.cgroup_version = Some(if v1_515 { 1.0 } else { 2.0 });
        s.kernel = Some(if v1_515 { 5.15 } else { 6.1 });
        s.gate_pod_certificate_request = Some(f64::from(u8::from(gate_pcr)));
        s.gate_evented_pleg = Some(f64::from(u8::from(gate_epleg)));
    }
}

/// Adds `cause`'s signature from `from` (module docs give the sizes).
fn signature(tr: &mut [Sample], cause: Cause, from: i64, until: i64, r: &mut Rng) {
    let days = |t: i64| (t - from) as f64 / DAY as f64;
    let rate = match cause {
        Cause::ContainerGc => r.range(15.0, 60.0),
        Cause::PodCertsManager => r.range(2.0, 10.0),
        Cause::EventedPleg => r.range(30.0, 150.0),
        Cause::PodChurn => r.range(25.0, 60.0),
        Cause::Oversubscription => r.range(1.0, 3.0), // evictions per hour
        Cause::WorkloadLeak => r.range(200e6, 700e6),
        _ => 0.0,
    };
    let slow5 = r.range(0.015, 0.05);
    let pressure_share = r.range(0.3, 0.6);
    let (mut evictions, mut pressure) = (0.0, 0.0);
    for s in tr.iter_mut() {
        let on = s.t >= from && s.t < until;
        match cause {
            Cause::ContainerGc if on => {
                s.exited_containers = s.exited_containers.map(|e| (e + rate * days(s.t)).round());
            }
            Cause::PodCertsManager if on => {
                s.pending_csrs = s.pending_csrs.map(|c| c + (rate * days(s.t)).floor());
            }
            Cause::EventedPleg if on => {
                s.goroutines = s.goroutines.map(|g| (g + rate * days(s.t)).round());
                let n = s.pleg_relists.unwrap_or(60.0);
                let k = (n * slow5 * r.range(0.5, 1.5)).round();
                s.pleg_relists_slower_1s = Some(k.max(s.pleg_relists_slower_1s.unwrap_or(0.0)));
                s.pleg_relists_slower_5s = Some(k);
                s.pleg_relists_slower_10s = Some((k * 0.3).floor());
            }
            Cause::PodChurn if on => {
                s.pod_churn_per_hour = s.pod_churn_per_hour.map(|c| c + rate * r.range(0.6, 1.4));
            }
            Cause::Oversubscription => {
                if on && r.chance(rate / 60.0) {
                    evictions += 1.0;
                }
                if on && r.chance(0.05) {
                    pressure = f64::from(u8::from(r.chance(pressure_share)));
                }
                s.evictions_memory_total = s.evictions_memory_total.map(|e| e + evictions);
                s.memory_pressure = Some(if on { pressure } else { 0.0 });
            }
            Cause::WorkloadLeak if on => {
                s.workload_working_set_bytes =
                    s.workload_working_set_bytes.map(|w| w + rate * days(s.t));
            }
            _ => {}
        }
    }
}

/// One labelled trace of `case` on real noise.
pub fn trace(real: &RealNoise, case: Case, seed: u64) -> (Vec<Sample>, Label) {
    let (mut tr, _) = real.trace(None, DAYS, seed);
    let mut r = Rng::new(seed ^ 0xCA05_0014);
    let t0 = tr.first().map_or(0, |s| s.t);
    let end = tr.last().map_or(0, |s| s.t) + 60;
    let leak_start = end - (r.range(1.25, 2.5) * DAY as f64) as i64;
    node_defaults(&mut tr, case, &mut r);
    let kubelet_leak = r.range(100e6, 300e6);
    let (subject, cause) = case.truth();
    match case {
        Case::Cause(c, offset) => {
            let from = leak_start + (offset * DAY as f64) as i64;
            signature(&mut tr, c, from, end, &mut r);
        }
        Case::UnknownWithChurn(offset) => {
            let from = leak_start + (offset * DAY as f64) as i64;
            signature(&mut tr, Cause::PodChurn, from, end, &mut r);
        }
        Case::WorkloadWithChurn => {
            signature(&mut tr, Cause::WorkloadLeak, leak_start, end, &mut r);
            let from = leak_start - (r.range(0.0, 1.0) * DAY as f64) as i64;
            signature(&mut tr, Cause::PodChurn, from, end, &mut r);
        }
        Case::UnknownAfterChurn => {
            signature(&mut tr, Cause::PodChurn, t0, end - 4 * DAY, &mut r);
        }
    }
    if subject == Subject::Kubelet {
        add_leak(&mut tr, leak_start, kubelet_leak);
    }
    let label = Label {
        scenario: match cause {
            Cause::WorkloadLeak => Scenario::WorkloadLeak,
            c => Scenario::Cause(c),
        },
        subject,
        cause,
        leak_start: Some(leak_start),
        leak_bytes_per_day: if subject == Subject::Kubelet {
            kubelet_leak
        } else {
            0.0
        },
    };
    (tr, label)
}

/// Verdicts against truth over `per_case` traces of each case (seeds from `seed + 1`).
pub struct Accuracy {
    /// Per case: (case, subject right, cause right, traces).
    pub rows: Vec<(Case, usize, usize, usize)>,
}

impl Accuracy {
    pub fn subject(&self) -> (usize, usize) {
        self.rows
            .iter()
            .fold((0, 0), |(a, n), r| (a + r.1, n + r.3))
    }

    pub fn cause(&self) -> (usize, usize) {
        self.rows
            .iter()
            .fold((0, 0), |(a, n), r| (a + r.2, n + r.3))
    }

    /// Cause accuracy of one cause over all its offsets.
    pub fn per_cause(&self, c: Cause) -> (usize, usize) {
        self.rows
            .iter()
            .filter(|r| matches!(r.0, Case::Cause(x, _) if x == c))
            .fold((0, 0), |(a, n), r| (a + r.2, n + r.3))
    }

    pub fn table(&self) -> String {
        let pct = |(a, n): (usize, usize)| a as f64 * 100.0 / n.max(1) as f64;
        let mut s =
            String::from("  case                                subject right  cause right\n");
        for (case, subj, cause, n) in &self.rows {
            s.push_str(&format!(
                "  {:<36} {:>6}/{:<6} {:>6}/{}\n",
                case.name(),
                subj,
                n,
                cause,
                n
            ));
        }
        s.push_str("  per cause (all onsets):");
        for c in CAUSES {
            let x = self.per_cause(c);
            s.push_str(&format!(" {} {:.0}%", c.as_str(), pct(x)));
        }
        let (a, n) = self.subject();
        let (b, m) = self.cause();
        s.push_str(&format!(
            "\n  kubelet-vs-workload: {a}/{n} = {:.1}%; cause: {b}/{m} = {:.1}%\n",
            pct((a, n)),
            pct((b, m))
        ));
        s
    }
}

pub fn accuracy(real: &RealNoise, seed: u64, per_case: usize) -> Accuracy {
    let mut rows = Vec::new();
    let mut s = seed;
    for case in cases() {
        let (mut subj, mut cause) = (0, 0);
        for _ in 0..per_case {
            s += 1;
            let (tr, label) = trace(real, case, s);
            let v = Engine::default().evaluate(&tr);
            subj += usize::from(v.subject == label.subject);
            cause += usize::from(v.subject == label.subject && v.cause == label.cause);
        }
        rows.push((case, subj, cause, per_case));
    }
    Accuracy { rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::offline::realnoise::tests::recorded;

    #[test]
    fn signatures_start_at_their_offset_at_their_sizes() {
        let rn = RealNoise::new(&recorded()).unwrap();
        let (tr, label) = trace(&rn, Case::Cause(Cause::ContainerGc, -2.0), 5);
        let start = label.leak_start.unwrap();
        let from = start - 2 * DAY;
        let at = |t: i64| tr.iter().find(|s| s.t >= t).unwrap();
        // The recording has no exited containers: the recorded kubelet's 2 before the onset.
        assert_eq!(at(from - 3600).exited_containers, Some(2.0));
        let per_day = at(from + DAY).exited_containers.unwrap() - 2.0;
        assert!((15.0..=60.0).contains(&per_day), "{per_day}");
        assert_eq!(label.subject, Subject::Kubelet);
        // The kubelet leak starts at the leak start, not at the signature.
        let (h, _) = rn.trace(None, DAYS, 5);
        let i = tr.iter().position(|s| s.t >= start).unwrap();
        assert_eq!(tr[i - 1].kubelet_rss_bytes, h[i - 1].kubelet_rss_bytes);
        assert!(tr[i + 600].kubelet_rss_bytes > h[i + 600].kubelet_rss_bytes);
        // A workload leak with churn: no kubelet leak at all.
        let (w, lw) = trace(&rn, Case::WorkloadWithChurn, 5);
        assert_eq!(
            (lw.subject, lw.cause),
            (Subject::Workload, Cause::WorkloadLeak)
        );
        assert!(w
            .iter()
            .zip(&h)
            .all(|(a, b)| a.kubelet_rss_bytes == b.kubelet_rss_bytes));
        let churn = w.last().unwrap().pod_churn_per_hour.unwrap();
        assert!((15.0..=84.0).contains(&churn), "{churn}");
    }

    /// The accuracy run end to end on one trace per case: the figures are counted per case.
    #[test]
    fn accuracy_counts_every_case() {
        let rn = RealNoise::new(&recorded()).unwrap();
        let a = accuracy(&rn, 1, 1);
        assert_eq!(a.rows.len(), CAUSES.len() * OFFSETS.len() + 2);
        assert_eq!(a.subject().1, a.rows.len());
        assert!(a.table().contains("kubelet-vs-workload"));
    }
}
