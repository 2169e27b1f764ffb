//! Labelled, realistic kubelet series for testing and scoring the detectors: Go heap-goal
//! sawtooth, scavenger releases, pod churn (kubelet ~ 255 MiB + 11 MiB per pod), daily patterns,
//! kubelet restarts, workload growth, leaks starting at a random time, and one scenario per
//! known cause.
//!
//! Two corpora: [`generate`] is the issue-14 generator (independent per-sample noise, the
//! detector's own 11 MiB per-pod prior, bursts returned within the hour); [`generate_shaped`]
//! adds, on the same base trace, the healthy shapes that generator lacks (issue 17), at these
//! sizes:
//! - per-pod cost uniform in 4-25 MiB (issue 17's range; the EKS rule's 11 MiB is a fleet
//!   average);
//! - a warm-up after every start (half the traces start with the kubelet): caches fill by
//!   30-250 MB with a 1-6 h time constant (the example `warm-up-after-start` rises ~150 MB over
//!   its first 6 h);
//! - list/watch bursts 0.3-2 per day of 50-300 MB (the example `slow-scavenger-return` jumps
//!   ~290 MB in an hour), returned by the scavenger with a 1-8 h time constant, 10-40% of the
//!   largest burst so far staying resident until the next restart (the heap's high-water mark);
//! - hour-scale wander: an AR(1) of 10-40 MiB stationary deviation and 1-6 h correlation time;
//! - weekly and business-hours pod patterns: 0-35% fewer pods at weekends, 0-25% more in the
//!   working day, pods following their target within ~3 h.
//!
//! The ranges are assumptions drawn from the issue and the two example series, not measurements
//! of a real kubelet (issue 14 part 3 is the real-data corpus).
use serde::Serialize;

use crate::detect::{classify::Cause, Sample, Subject, MIB};

/// Deterministic SplitMix64: the corpus is the same for a given seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.f().max(1e-12);
        let v = self.f();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// No leak; pods churn a little, the kubelet follows them.
    Healthy,
    /// No leak, but the node takes on many more pods over the days (legitimate growth).
    HealthyGrowingPods,
    /// A kubelet leak of this many MB/day with no particular signature.
    Leak(f64),
    /// A kubelet leak with a known cause's signature.
    Cause(Cause),
    /// A pod leaks; the kubelet is fine.
    WorkloadLeak,
}

/// What a generated trace truly is.
#[derive(Debug, Clone, Serialize)]
pub struct Label {
    pub scenario: Scenario,
    pub subject: Subject,
    pub cause: Cause,
    /// When the leak begins (unix seconds), for leaks.
    pub leak_start: Option<i64>,
    pub leak_bytes_per_day: f64,
}

pub const STEP_S: i64 = 60;
const T0: i64 = 1_790_000_000;

/// A trace from the issue-14 generator.
pub fn generate(scenario: Scenario, days: f64, seed: u64) -> (Vec<Sample>, Label) {
    generate_with(scenario, days, seed, false)
}

/// A trace with the healthy shapes of issue 17 on top of the same base trace (module docs).
pub fn generate_shaped(scenario: Scenario, days: f64, seed: u64) -> (Vec<Sample>, Label) {
    generate_with(scenario, days, seed, true)
}

/// The healthy shapes' per-node parameters (module docs give the ranges).
struct Shapes {
    per_pod: f64,
    starts_with_kubelet: bool,
    warm_bytes: f64,
    warm_tau_s: f64,
    bursts_per_day: f64,
    burst_bytes: (f64, f64),
    return_tau_s: f64,
    retain: f64,
    wander_sd: f64,
    wander_phi: f64,
    weekend_drop: f64,
    workday_rise: f64,
}

impl Shapes {
    fn draw(r: &mut Rng) -> Shapes {
        Shapes {
            per_pod: r.range(4.0, 25.0) * MIB,
            starts_with_kubelet: r.chance(0.5),
            warm_bytes: r.range(30e6, 250e6),
            warm_tau_s: r.range(1.0, 6.0) * 3600.0,
            bursts_per_day: r.range(0.3, 2.0),
            burst_bytes: (50e6, r.range(100e6, 300e6)),
            return_tau_s: r.range(1.0, 8.0) * 3600.0,
            retain: r.range(0.1, 0.4),
            wander_sd: r.range(10.0, 40.0) * MIB,
            wander_phi: (-(STEP_S as f64) / (r.range(1.0, 6.0) * 3600.0)).exp(),
            weekend_drop: r.range(0.0, 0.35),
            workday_rise: r.range(0.0, 0.25),
        }
    }
}

fn generate_with(scenario: Scenario, days: f64, seed: u64, shaped: bool) -> (Vec<Sample>, Label) {
    let mut r = Rng::new(seed);
    // The shapes draw from their own stream: the base trace is the issue-14 one.
    let mut rs = Rng::new(seed ^ 0x5EED_0017);
    let shapes = shaped.then(|| Shapes::draw(&mut rs));
    let n = (days * 86_400.0 / STEP_S as f64) as i64;
    let per_pod = BYTES_PER_POD_VAR(&mut r);
    let per_pod = shapes.as_ref().map_or(per_pod, |sh| sh.per_pod);
    let base_pods = r.range(10.0, 90.0).round();
    let fixed = 255.0 * MIB * r.range(0.85, 1.15);
    let saw = r.range(0.08, 0.25);
    let restart_per_day = r.range(0.0, 0.15);
    let (subject, cause, rate) = match scenario {
        Scenario::Healthy | Scenario::HealthyGrowingPods => (Subject::None, Cause::None, 0.0),
        Scenario::Leak(mb) => (Subject::Kubelet, Cause::Unknown, mb * 1e6),
        Scenario::Cause(Cause::Oversubscription) => {
            (Subject::Workload, Cause::Oversubscription, 0.0)
        }
        Scenario::Cause(c) => (Subject::Kubelet, c, r.range(50.0, 300.0) * 1e6),
        Scenario::WorkloadLeak => (Subject::Workload, Cause::WorkloadLeak, 0.0),
    };
    let leak_start = match scenario {
        Scenario::Leak(_) => Some(T0 + (r.range(0.5, 2.0) * 86_400.0) as i64),
        Scenario::Cause(_) | Scenario::WorkloadLeak => {
            Some(T0 + (r.range(0.2, 1.0) * 86_400.0) as i64)
        }
        _ => None,
    };
    // Risk factors appear on healthy nodes too, so they alone must not decide.
    let v1_515 = matches!(scenario, Scenario::Cause(Cause::CgroupV1Kernel515)) || r.chance(0.15);
    let gate_pcr = matches!(scenario, Scenario::Cause(Cause::PodCertsManager)) || r.chance(0.1);
    let gate_epleg = matches!(scenario, Scenario::Cause(Cause::EventedPleg)) || r.chance(0.1);
    let churn_base = if matches!(scenario, Scenario::Cause(Cause::PodChurn)) {
        r.range(40.0, 90.0)
    } else {
        r.range(0.5, 6.0)
    };
    let growth_pods = if scenario == Scenario::HealthyGrowingPods {
        r.range(20.0, 60.0)
    } else {
        0.0
    };

    let mut out = Vec::with_capacity(n as usize);
    let mut pods = base_pods;
    let mut leaked = 0.0;
    let mut restarts = 0.0;
    let mut evictions = 0.0;
    let mut pressure = 0.0;
    let mut exited = base_pods * 0.2;
    let mut csrs = 0.0;
    let mut goroutines_leak = 0.0;
    let mut workload_extra = 0.0;
    // Shapes' state: when the running kubelet started, burst memory being returned, burst
    // memory retained until a restart, the wander.
    let mut born = if shapes.as_ref().is_some_and(|sh| sh.starts_with_kubelet) {
        T0
    } else {
        i64::MIN / 2
    };
    let mut warm_amp = shapes.as_ref().map_or(0.0, |sh| sh.warm_bytes);
    let (mut transient, mut retained, mut wander) = (0.0, 0.0f64, 0.0);
    // Per-step probabilities below are per 10 minutes, scaled to the step.
    let per10 = STEP_S as f64 / 600.0;
    for i in 0..n {
        let t = T0 + i * STEP_S;
        let day_frac = (t % 86_400) as f64 / 86_400.0;
        let leaking = leak_start.is_some_and(|s| t >= s);
        // Pods: slow drift, deployments, optional growth over the trace.
        if r.chance(0.02 * per10) {
            pods += (r.range(-4.0, 4.0)).round();
        }
        let mut target = base_pods + growth_pods * (i as f64 / n as f64);
        let mut relax = 0.01;
        if let Some(sh) = &shapes {
            if weekday(t) >= 5 {
                target *= 1.0 - sh.weekend_drop;
            }
            let workday = (2.0 * std::f64::consts::PI * (day_frac - 0.25))
                .sin()
                .max(0.0);
            target *= 1.0 + sh.workday_rise * workday;
            relax = 0.05;
        }
        pods += (target - pods) * relax * per10;
        pods = pods.clamp(3.0, 250.0);
        let pods_now = pods.round();
        // Restarts reset the kubelet's memory (and its leak) and bump the counter.
        if r.chance(restart_per_day * STEP_S as f64 / 86_400.0) {
            restarts += 1.0;
            leaked = 0.0;
            born = t;
            (transient, retained) = (0.0, 0.0);
            warm_amp = shapes
                .as_ref()
                .map_or(0.0, |sh| sh.warm_bytes * rs.range(0.7, 1.3));
        }
        let mut shaped_bytes = 0.0;
        if let Some(sh) = &shapes {
            let age = (t - born) as f64;
            let warm = -warm_amp * (-age / sh.warm_tau_s).exp();
            if rs.chance(sh.bursts_per_day * STEP_S as f64 / 86_400.0) {
                let size = rs.range(sh.burst_bytes.0, sh.burst_bytes.1);
                let kept = sh.retain * size;
                transient += size - (kept - retained).max(0.0);
                retained = retained.max(kept);
            }
            transient *= (-(STEP_S as f64) / sh.return_tau_s).exp();
            wander = sh.wander_phi * wander
                + sh.wander_sd * (1.0 - sh.wander_phi * sh.wander_phi).sqrt() * rs.normal();
            shaped_bytes = warm + transient + retained + wander;
        }
        if leaking && subject == Subject::Kubelet {
            leaked += rate * STEP_S as f64 / 86_400.0;
        }
        let steady = fixed + per_pod * pods_now;
        let daily = 1.0 + 0.03 * (2.0 * std::f64::consts::PI * day_frac).sin();
        let mut rss =
            (steady + leaked + shaped_bytes) * daily * (1.0 + saw * r.f()) + r.normal() * 3.0 * MIB;
        if r.chance(0.04) {
            rss *= r.range(0.85, 0.95); // scavenger returned pages
        }
        // Cause signatures.
        let cause_on = leaking && subject == Subject::Kubelet;
        if cause_on && cause == Cause::ContainerGc {
            exited += r.range(150.0, 300.0) * STEP_S as f64 / 86_400.0;
        } else {
            exited += (pods_now * 0.2 - exited) * 0.05 * per10 + r.normal() * per10.sqrt();
        }
        if cause_on && cause == Cause::PodCertsManager {
            csrs += r.range(30.0, 80.0) * STEP_S as f64 / 86_400.0;
        } else if r.chance(0.05 * per10) {
            csrs = r.range(0.0, 3.0).round();
        }
        if cause_on && cause == Cause::EventedPleg {
            goroutines_leak += r.range(150.0, 400.0) * STEP_S as f64 / 86_400.0;
        }
        let pleg = if cause_on && cause == Cause::EventedPleg {
            r.range(2.0, 8.0)
        } else {
            r.range(0.2, 1.2)
        };
        let churn = churn_base * r.range(0.5, 1.5);
        let oversub = leaking && cause == Cause::Oversubscription;
        if oversub {
            if r.chance(0.5 * per10) {
                evictions += r.range(1.0, 4.0).round();
            }
            pressure = if r.chance(0.4) {
                1.0 - pressure
            } else {
                pressure
            };
        }
        if leaking && cause == Cause::WorkloadLeak {
            workload_extra += r.range(300.0, 700.0) * 1e6 * STEP_S as f64 / 86_400.0;
        }
        let workload = pods_now * 120.0 * MIB * (1.0 + 0.05 * r.normal()) + workload_extra;
        let total = 32e9;
        out.push(Sample {
            t,
            kubelet_rss_bytes: rss.max(50.0 * MIB),
            pods: pods_now,
            containers: Some((pods_now * 1.5).round()),
            exited_containers: Some(exited.max(0.0).round()),
            kubelet_cgroup_bytes: Some(rss * 1.05),
            kubelet_limit_bytes: None,
            node_mem_available_bytes: Some((total - workload - rss - 2e9).max(1e8)),
            node_mem_total_bytes: Some(total),
            goroutines: Some(
                (150.0 + 3.0 * pods_now + goroutines_leak + 10.0 * r.normal()).round(),
            ),
            pleg_relist_p99_seconds: Some(pleg),
            evictions_memory_total: Some(evictions),
            workload_working_set_bytes: Some(workload),
            pod_churn_per_hour: Some(churn),
            pending_csrs: Some(csrs.round()),
            cgroup_version: Some(if v1_515 { 1.0 } else { 2.0 }),
            kernel: Some(if v1_515 { 5.15 } else { 6.1 }),
            gate_pod_certificate_request: Some(f64::from(u8::from(gate_pcr))),
            gate_evented_pleg: Some(f64::from(u8::from(gate_epleg))),
            kubelet_restarts: Some(restarts),
            memory_pressure: Some(pressure),
            // The generator models the PLEG as a p99 only (the classifier's fallback when no
            // relist counts were recorded).
            pleg_relists: None,
            pleg_relists_slower_1s: None,
            pleg_relists_slower_5s: None,
            pleg_relists_slower_10s: None,
        });
    }
    let label = Label {
        scenario,
        subject,
        cause,
        leak_start,
        leak_bytes_per_day: rate,
    };
    (out, label)
}

/// Day of the week of a unix time, Monday = 0 (1970-01-01 was a Thursday).
fn weekday(t: i64) -> i64 {
    (t.div_euclid(86_400) + 3).rem_euclid(7)
}

#[expect(
    non_snake_case,
    reason = "reads as the sizing rule's constant, varied per node"
)]
fn BYTES_PER_POD_VAR(r: &mut Rng) -> f64 {
    crate::detect::BYTES_PER_POD * r.range(0.7, 1.3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_labelled() {
        let (a, la) = generate(Scenario::Leak(100.0), 3.0, 7);
        let (b, _) = generate(Scenario::Leak(100.0), 3.0, 7);
        assert_eq!(a, b);
        assert_eq!(a.len() as i64, 3 * 86_400 / STEP_S);
        assert_eq!(la.subject, Subject::Kubelet);
        assert!(la.leak_start.is_some());
        let (h, lh) = generate(Scenario::Healthy, 2.0, 7);
        assert_eq!(lh.subject, Subject::None);
        // The sizing rule as drawn for this node: the generator's first draws from its seed are
        // the per-pod cost, the base pod count, the fixed part and the sawtooth amplitude.
        let mut r = Rng::new(7);
        let per_pod = BYTES_PER_POD_VAR(&mut r);
        let _base_pods = r.range(10.0, 90.0);
        let fixed = 255.0 * MIB * r.range(0.85, 1.15);
        let saw = r.range(0.08, 0.25);
        // Every sample: steady (fixed + per pod) x daily swing x (1 + saw x [0, 1)) + N(0, 3 MiB),
        // or that x [0.85, 0.95) when the scavenger returned pages (4% of samples).
        let noise = 5.0 * 3.0 * MIB; // 5 sigma
        let mut scavenged = 0;
        for s in &h {
            let day_frac = (s.t % 86_400) as f64 / 86_400.0;
            let daily = 1.0 + 0.03 * (2.0 * std::f64::consts::PI * day_frac).sin();
            let base = (fixed + per_pod * s.pods) * daily;
            let rss = s.kubelet_rss_bytes;
            assert!(
                rss >= 0.85 * base - noise && rss <= base * (1.0 + saw) + noise,
                "t={}: rss {rss} outside [{}, {}]",
                s.t,
                0.85 * base - noise,
                base * (1.0 + saw) + noise
            );
            if rss < base - noise {
                scavenged += 1;
            }
        }
        // 4% of the 2880 samples is 115 (binomial sd 10.5); seed 7 gives 109.
        assert_eq!(h.len(), 2880);
        assert!(
            (94..=136).contains(&scavenged),
            "{scavenged} scavenged samples"
        );
    }

    #[test]
    fn shaped_traces_keep_the_base_trace_and_add_the_shapes() {
        let (a, la) = generate(Scenario::Leak(100.0), 7.0, 11);
        let (b, lb) = generate_shaped(Scenario::Leak(100.0), 7.0, 11);
        assert_eq!(a.len(), b.len());
        assert_eq!(la.leak_start, lb.leak_start);
        assert_eq!(a[0].kubelet_restarts, b[0].kubelet_restarts);
        assert_ne!(a[100].kubelet_rss_bytes, b[100].kubelet_rss_bytes);
        // The shapes are per node: across nodes, per-pod costs span 4-25 MiB.
        let costs: Vec<f64> = (0..200)
            .map(|seed| Shapes::draw(&mut Rng::new(seed)).per_pod / MIB)
            .collect();
        let (lo, hi) = costs
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &c| (a.min(c), b.max(c)));
        assert!(
            (4.0..4.5).contains(&lo) && (24.5..25.0).contains(&hi),
            "{lo} {hi}"
        );
        // Weekends have fewer pods when the node's weekly pattern says so.
        let (h, _) = generate_shaped(Scenario::Healthy, 7.0, 5);
        let sh = Shapes::draw(&mut Rng::new(5 ^ 0x5EED_0017));
        // The trace starts on a Monday afternoon: it holds a whole Wednesday and Saturday.
        assert_eq!(weekday(T0), 0);
        let day_mean = |d: i64| {
            let v: Vec<f64> = h
                .iter()
                .filter(|s| weekday(s.t) == d && s.t > T0 + 86_400)
                .map(|s| s.pods)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let drop = 1.0 - day_mean(5) / day_mean(2);
        assert!(
            (drop - sh.weekend_drop).abs() < 0.15,
            "{drop} vs {}",
            sh.weekend_drop
        );
    }
}
