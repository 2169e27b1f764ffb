//! Scoring the detectors on the generated corpus, against the field guide's fixed 100 MB/day
//! rule and a `predict_linear`-style least-squares alert over 6 h, in the same run.
use super::tracegen::{generate, Label, Scenario, STEP_S};
use crate::detect::{classify::Cause, Engine, Sample, Subject};

const HOUR: i64 = 3600;

/// An alerting rule evaluated on a series prefix: true = "kubelet leak".
pub trait Rule {
    fn name(&self) -> &'static str;
    fn alert(&self, prefix: &[Sample]) -> bool;
}

pub struct Oomprobe(pub Engine);

impl Rule for Oomprobe {
    fn name(&self) -> &'static str {
        "oomprobe"
    }
    fn alert(&self, prefix: &[Sample]) -> bool {
        self.0.evaluate(prefix).subject == Subject::Kubelet
    }
}

/// The field guide's rule: RSS grew more than 100 MB over the last day with a stable pod count.
pub struct FixedRule;

impl Rule for FixedRule {
    fn name(&self) -> &'static str {
        "fixed_100mb_day"
    }
    fn alert(&self, p: &[Sample]) -> bool {
        let Some(last) = p.last() else { return false };
        let i = p.partition_point(|s| s.t < last.t - 24 * HOUR);
        if last.t - p[0].t < 24 * HOUR {
            return false;
        }
        let then = &p[i];
        last.kubelet_rss_bytes - then.kubelet_rss_bytes > 100e6
            && (last.pods - then.pods).abs() <= 2.0
    }
}

/// `predict_linear(rss[6h], 86400) - rss > 100 MB`: least squares over 6 h.
pub struct PredictLinear;

impl Rule for PredictLinear {
    fn name(&self) -> &'static str {
        "predict_linear_6h"
    }
    fn alert(&self, p: &[Sample]) -> bool {
        let Some(last) = p.last() else { return false };
        let w = &p[p.partition_point(|s| s.t < last.t - 6 * HOUR)..];
        if w.len() < 6 {
            return false;
        }
        let n = w.len() as f64;
        let mx = w.iter().map(|s| s.t as f64).sum::<f64>() / n;
        let my = w.iter().map(|s| s.kubelet_rss_bytes).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for s in w {
            sxy += (s.t as f64 - mx) * (s.kubelet_rss_bytes - my);
            sxx += (s.t as f64 - mx).powi(2);
        }
        sxx > 0.0 && sxy / sxx * 86_400.0 > 100e6
    }
}

/// How one rule did on the corpus.
#[derive(Debug, Default, Clone)]
pub struct RuleScore {
    /// Detection delays (hours) per leak rate (MB/day); `None` = never detected.
    pub delays: Vec<(f64, Option<f64>)>,
    pub false_alerts: u64,
    pub healthy_days: f64,
}

/// Evaluates `rule` every hour on a trace; returns the first alert time at or after `from`, and
/// the number of alert episodes before `until` (false alarms on healthy stretches).
fn run_rule(rule: &dyn Rule, trace: &[Sample], label: &Label) -> (Option<i64>, u64) {
    let per_hour = (HOUR / STEP_S) as usize;
    let mut first = None;
    let mut episodes = 0;
    let mut was = false;
    let clean_until = label.leak_start.unwrap_or(i64::MAX);
    let mut i = 6 * per_hour;
    while i <= trace.len() {
        let prefix = &trace[..i];
        let t = prefix[prefix.len() - 1].t;
        let a = rule.alert(prefix);
        if a && !was && t < clean_until {
            episodes += 1;
        }
        if a && first.is_none() && label.leak_start.is_some_and(|s| t >= s) {
            first = Some(t);
        }
        was = a;
        i += per_hour;
    }
    (first, episodes)
}

pub struct Report {
    pub table: String,
    pub median_100: Option<f64>,
    pub p95_100: Option<f64>,
    pub fp_per_1000: f64,
    pub subject_accuracy: f64,
    pub cause_accuracy: f64,
}

fn pct(mut v: Vec<f64>, q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[((v.len() - 1) as f64 * q).round() as usize])
}

/// Scores oomprobe and both baselines on a corpus of `scale` traces per leak rate.
pub fn score(seed: u64, scale: usize) -> Report {
    let rules: Vec<Box<dyn Rule>> = vec![
        Box::new(Oomprobe(Engine::default())),
        Box::new(FixedRule),
        Box::new(PredictLinear),
    ];
    let mut scores: Vec<RuleScore> = vec![RuleScore::default(); rules.len()];
    let mut seed_n = seed;
    let mut next = || {
        seed_n += 1;
        seed_n
    };
    // Healthy nodes: a week each, half with pods growing over the week.
    for k in 0..scale * 4 {
        let sc = if k % 2 == 0 {
            Scenario::Healthy
        } else {
            Scenario::HealthyGrowingPods
        };
        let (tr, label) = generate(sc, 7.0, next());
        for (r, s) in rules.iter().zip(scores.iter_mut()) {
            let (_, eps) = run_rule(r.as_ref(), &tr, &label);
            s.false_alerts += eps;
            s.healthy_days += 7.0;
        }
    }
    let rates = [25.0, 50.0, 100.0, 500.0];
    for &rate in &rates {
        for _ in 0..scale {
            let (tr, label) = generate(Scenario::Leak(rate), 6.0, next());
            for (r, s) in rules.iter().zip(scores.iter_mut()) {
                let (first, eps) = run_rule(r.as_ref(), &tr, &label);
                let start = label.leak_start.unwrap_or(0);
                s.delays
                    .push((rate, first.map(|f| (f - start) as f64 / 3600.0)));
                s.false_alerts += eps;
                s.healthy_days += (start - tr[0].t) as f64 / 86_400.0;
            }
        }
    }
    // Subject and cause accuracy: the verdict at the end of each labelled trace.
    let engine = Engine::default();
    let causes = [
        Cause::ContainerGc,
        Cause::PodCertsManager,
        Cause::EventedPleg,
        Cause::PodChurn,
        Cause::CgroupV1Kernel515,
        Cause::Oversubscription,
    ];
    let (mut subj_ok, mut subj_n, mut cause_ok, mut cause_n) = (0, 0, 0, 0);
    let mut confusion = String::new();
    for &c in &causes {
        let mut ok = 0;
        for _ in 0..scale {
            let (tr, label) = generate(Scenario::Cause(c), 4.0, next());
            let v = engine.evaluate(&tr);
            subj_n += 1;
            subj_ok += usize::from(v.subject == label.subject);
            cause_n += 1;
            if v.cause == label.cause {
                cause_ok += 1;
                ok += 1;
            }
        }
        confusion.push_str(&format!("  {:<22} {ok}/{scale}\n", c.as_str()));
    }
    for _ in 0..scale {
        let (tr, label) = generate(Scenario::WorkloadLeak, 4.0, next());
        let v = engine.evaluate(&tr);
        subj_n += 1;
        subj_ok += usize::from(v.subject == label.subject);
    }
    for _ in 0..scale {
        let (tr, label) = generate(Scenario::Leak(150.0), 4.0, next());
        let v = engine.evaluate(&tr);
        subj_n += 1;
        subj_ok += usize::from(v.subject == label.subject);
    }

    let mut table = String::from("rule                 rate MB/d  detected  median h  p95 h\n");
    let mut median_100 = None;
    let mut p95_100 = None;
    for (r, s) in rules.iter().zip(&scores) {
        for &rate in &rates {
            let d: Vec<Option<f64>> = s
                .delays
                .iter()
                .filter(|(x, _)| *x == rate)
                .map(|(_, d)| *d)
                .collect();
            let found: Vec<f64> = d.iter().flatten().copied().collect();
            // Undetected leaks count as infinitely late in the percentiles.
            let mut all: Vec<f64> = found.clone();
            all.extend(std::iter::repeat_n(f64::INFINITY, d.len() - found.len()));
            let (m, p) = (pct(all.clone(), 0.5), pct(all, 0.95));
            if r.name() == "oomprobe" && rate == 100.0 {
                median_100 = m;
                p95_100 = p;
            }
            table.push_str(&format!(
                "{:<20} {:>9.0} {:>5}/{:<3} {:>9.1} {:>6.1}\n",
                r.name(),
                rate,
                found.len(),
                d.len(),
                m.unwrap_or(f64::NAN),
                p.unwrap_or(f64::NAN)
            ));
        }
    }
    table.push_str("\nfalse alerts per 1,000 healthy node-days:\n");
    let mut fp = 0.0;
    for (r, s) in rules.iter().zip(&scores) {
        let v = s.false_alerts as f64 / s.healthy_days * 1000.0;
        if r.name() == "oomprobe" {
            fp = v;
        }
        table.push_str(&format!(
            "  {:<20} {v:>8.1}  ({} alerts in {:.0} node-days)\n",
            r.name(),
            s.false_alerts,
            s.healthy_days
        ));
    }
    let subject_accuracy = subj_ok as f64 / subj_n as f64;
    let cause_accuracy = cause_ok as f64 / cause_n as f64;
    table.push_str(&format!(
        "\nkubelet-vs-workload accuracy (oomprobe): {subj_ok}/{subj_n} = {:.1}%\ncause accuracy (oomprobe): {cause_ok}/{cause_n} = {:.1}%\n{confusion}",
        subject_accuracy * 100.0,
        cause_accuracy * 100.0
    ));
    Report {
        table,
        median_100,
        p95_100,
        fp_per_1000: fp,
        subject_accuracy,
        cause_accuracy,
    }
}
