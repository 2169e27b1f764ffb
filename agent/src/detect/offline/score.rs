//! Scoring the detectors on generated corpora, against the field guide's fixed 100 MB/day rule
//! and a `predict_linear`-style least-squares alert over 6 h, in the same run. The baselines
//! read the same hourly trough baseline the detector fits (a low quantile per hour), not the
//! raw sawtooth samples, and start it anew at a kubelet restart as the detector does. Three
//! corpora: the issue-14 generator, the same traces with the healthy shapes of issue 17
//! ([`super::tracegen`]), and the real-noise corpus ([`super::realnoise`]: a recorded real
//! kubelet's series tiled to days, known leaks added), reported side by side. The detector's
//! threshold is chosen on a calibration corpus (seeds from [`CALIBRATION_SEED`]) and reported on
//! another (`--seed`).
use super::{
    causes,
    realnoise::RealNoise,
    tracegen::{generate, generate_shaped, Label, Scenario, STEP_S},
};
use crate::detect::{
    changepoint::ChangePoint, classify::Cause, series::baseline, since_restart, Engine, Sample,
    BASELINE_Q,
};

const HOUR: i64 = 3600;
/// The calibration corpus's first seed: no report corpus (`--seed` well below it) shares a trace.
pub const CALIBRATION_SEED: u64 = 1 << 40;

/// Where a corpus's traces come from.
#[derive(Clone, Copy)]
pub enum Corpus<'a> {
    /// The issue-14 generator.
    Generator,
    /// The same traces with the healthy shapes of issue 17.
    Shapes,
    /// Recorded real kubelet series (one or more, pooled), tiled, with known leaks added (no
    /// growing-pod traces: its healthy traces are all the recordings').
    Real(&'a RealNoise),
}

impl Corpus<'_> {
    pub fn name(self) -> &'static str {
        match self {
            Corpus::Generator => "issue-14 generator",
            Corpus::Shapes => "issue-17 shapes",
            Corpus::Real(_) => "real-noise (recorded kubelet)",
        }
    }

    fn generate(self, sc: Scenario, days: f64, seed: u64) -> (Vec<Sample>, Label) {
        match self {
            Corpus::Generator => generate(sc, days, seed),
            Corpus::Shapes => generate_shaped(sc, days, seed),
            Corpus::Real(r) => match sc {
                Scenario::Leak(mb) => r.trace(Some(mb), days, seed),
                _ => r.trace(None, days, seed),
            },
        }
    }
}

/// An alerting rule evaluated on a series prefix: a score, alerting ("kubelet leak") above
/// the rule's threshold. Rules without a tunable threshold return 1 or 0 against 0.5.
pub trait Rule {
    fn name(&self) -> &'static str;
    fn score(&self, prefix: &[Sample]) -> f64;
    fn threshold(&self) -> f64;
}

/// The change-point test (the kubelet leak call of [`Engine`]): its gated score.
pub struct Oomprobe(pub &'static str, pub ChangePoint);

impl Rule for Oomprobe {
    fn name(&self) -> &'static str {
        self.0
    }
    fn score(&self, prefix: &[Sample]) -> f64 {
        self.1
            .fit(prefix)
            .map_or(f64::NEG_INFINITY, |f| self.1.gated_score(&f))
    }
    fn threshold(&self) -> f64 {
        self.1.t_threshold
    }
}

/// Hourly trough baseline (the detector's) of a prefix's last `hours` hours since the last
/// kubelet restart (the detector starts its baseline anew there too), with the hourly median
/// pod count.
fn troughs(p: &[Sample], hours: i64) -> Vec<(f64, f64, f64)> {
    let p = since_restart(p);
    let Some(last) = p.last() else {
        return Vec::new();
    };
    let w = &p[p.partition_point(|s| s.t < last.t.saturating_sub(hours * HOUR))..];
    let rss: Vec<(i64, f64)> = w.iter().map(|s| (s.t, s.kubelet_rss_bytes)).collect();
    let pods: Vec<(i64, f64)> = w.iter().map(|s| (s.t, s.pods)).collect();
    baseline(&rss, HOUR, BASELINE_Q)
        .into_iter()
        .zip(baseline(&pods, HOUR, 0.5))
        .map(|(r, p)| (r.0, r.1, p.1))
        .collect()
}

/// The field guide's rule on the trough baseline: it grew more than 100 MB over the last day
/// with a stable pod count.
pub struct FixedRule;

impl Rule for FixedRule {
    fn name(&self) -> &'static str {
        "fixed_100mb_day"
    }
    fn score(&self, p: &[Sample]) -> f64 {
        let b = troughs(p, 25);
        let (Some(then), Some(now)) = (b.first(), b.last()) else {
            return 0.0;
        };
        f64::from(u8::from(
            now.0 - then.0 >= 23.0 * HOUR as f64
                && now.1 - then.1 > 100e6
                && (now.2 - then.2).abs() <= 2.0,
        ))
    }
    fn threshold(&self) -> f64 {
        0.5
    }
}

/// `predict_linear(baseline[6h], 86400) - baseline > 100 MB`: least squares over the last 6
/// hourly troughs.
pub struct PredictLinear;

impl Rule for PredictLinear {
    fn name(&self) -> &'static str {
        "predict_linear_6h"
    }
    fn score(&self, p: &[Sample]) -> f64 {
        let b = troughs(p, 7);
        let w = &b[b.len().saturating_sub(6)..];
        if w.len() < 6 {
            return 0.0;
        }
        let n = w.len() as f64;
        let mx = w.iter().map(|s| s.0).sum::<f64>() / n;
        let my = w.iter().map(|s| s.1).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for s in w {
            sxy += (s.0 - mx) * (s.1 - my);
            sxx += (s.0 - mx).powi(2);
        }
        f64::from(u8::from(sxx > 0.0 && sxy / sxx * 86_400.0 > 100e6))
    }
    fn threshold(&self) -> f64 {
        0.5
    }
}

/// One trace's hourly scores under one rule.
struct Timeline {
    /// (time, score) at each hourly evaluation.
    points: Vec<(i64, f64)>,
    label: Label,
    days_clean: f64,
}

impl Timeline {
    /// Alert episodes before the leak's start (all of them on healthy traces) and the first
    /// alert at or after the start, at threshold `th`.
    fn at(&self, th: f64) -> (u64, Option<i64>) {
        let clean_until = self.label.leak_start.unwrap_or(i64::MAX);
        let (mut episodes, mut first, mut was) = (0, None, false);
        for &(t, s) in &self.points {
            let a = s > th;
            if a && !was && t < clean_until {
                episodes += 1;
            }
            if a && first.is_none() && self.label.leak_start.is_some_and(|l| t >= l) {
                first = Some(t);
            }
            was = a;
        }
        (episodes, first)
    }
}

/// Evaluates `rule` every hour from 6 h on.
fn timeline(rule: &dyn Rule, trace: &[Sample], label: &Label) -> Timeline {
    let per_hour = (HOUR / STEP_S) as usize;
    let mut points = Vec::new();
    let mut i = 6 * per_hour;
    while i <= trace.len() {
        points.push((trace[i - 1].t, rule.score(&trace[..i])));
        i += per_hour;
    }
    let end = label
        .leak_start
        .unwrap_or(trace.last().map_or(0, |s| s.t + STEP_S));
    Timeline {
        points,
        label: label.clone(),
        days_clean: (end - trace.first().map_or(end, |s| s.t)) as f64 / 86_400.0,
    }
}

/// The figures of one rule at one threshold.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub false_alerts: u64,
    pub healthy_days: f64,
    /// Leak traces with an alert before the leak starts, of all leak traces.
    pub early: (usize, usize),
    /// Detection delays (hours) per leak rate (MB/day); `None` = never detected.
    pub delays: Vec<(f64, Option<f64>)>,
}

impl Figures {
    pub fn fp_per_1000(&self) -> f64 {
        self.false_alerts as f64 / self.healthy_days.max(1e-9) * 1000.0
    }

    /// Delay quantile (hours) for one rate, undetected leaks counting as infinitely late.
    pub fn delay(&self, rate: f64, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = self
            .delays
            .iter()
            .filter(|(r, _)| *r == rate)
            .map(|(_, d)| d.unwrap_or(f64::INFINITY))
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    }

    fn found(&self, rate: f64) -> (usize, usize) {
        let d: Vec<_> = self.delays.iter().filter(|(r, _)| *r == rate).collect();
        (d.iter().filter(|(_, x)| x.is_some()).count(), d.len())
    }
}

fn figures(timelines: &[Timeline], th: f64) -> Figures {
    let mut f = Figures::default();
    for tl in timelines {
        let (eps, first) = tl.at(th);
        f.false_alerts += eps;
        f.healthy_days += tl.days_clean;
        if let Some(start) = tl.label.leak_start {
            f.early.1 += 1;
            f.early.0 += usize::from(eps > 0);
            f.delays.push((
                tl.label.leak_bytes_per_day / 1e6,
                first.map(|t| (t - start) as f64 / 3600.0),
            ));
        }
    }
    f
}

const RATES: [f64; 4] = [25.0, 50.0, 100.0, 500.0];

/// The corpus for delays and false alerts: `4 * scale` healthy weeks (half with pods growing)
/// and `scale` 6-day traces per leak rate, seeds from `seed + 1`.
fn corpus(c: Corpus, seed: u64, scale: usize) -> Vec<(Vec<Sample>, Label)> {
    let mut out = Vec::new();
    let mut s = seed;
    for k in 0..scale * 4 {
        s += 1;
        let sc = if k % 2 == 0 {
            Scenario::Healthy
        } else {
            Scenario::HealthyGrowingPods
        };
        out.push(c.generate(sc, 7.0, s));
    }
    for &rate in &RATES {
        for _ in 0..scale {
            s += 1;
            out.push(c.generate(Scenario::Leak(rate), 6.0, s));
        }
    }
    out
}

/// The rules compared: the detector, the issue-14 detector, both baselines.
fn rules() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(Oomprobe("oomprobe", ChangePoint::default())),
        Box::new(Oomprobe("oomprobe_issue14", ChangePoint::issue14())),
        Box::new(FixedRule),
        Box::new(PredictLinear),
    ]
}

/// Thresholds the delay-vs-false-alarm curve is drawn at.
pub const CURVE: [f64; 14] = [
    3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 14.0,
];

fn curve_table(timelines: &[Timeline], chosen: f64) -> String {
    let mut s = String::from(
        "  threshold  false/1000 node-days  leaks alarmed early  100 MB/d median h  p95 h  found\n",
    );
    for &th in &CURVE {
        let f = figures(timelines, th);
        let (found, n) = f.found(100.0);
        s.push_str(&format!(
            "  {th:>9.1}{} {:>20.1} {:>14}/{:<5} {:>17.1} {:>6.1} {:>4}/{}\n",
            if th == chosen { "*" } else { " " },
            f.fp_per_1000(),
            f.early.0,
            f.early.1,
            f.delay(100.0, 0.5).unwrap_or(f64::NAN),
            f.delay(100.0, 0.95).unwrap_or(f64::NAN),
            found,
            n
        ));
    }
    s
}

pub struct Report {
    pub table: String,
    /// The detector's figures on the shapes report corpus.
    pub median_100: Option<f64>,
    pub p95_100: Option<f64>,
    pub fp_per_1000: f64,
    pub subject_accuracy: f64,
    pub cause_accuracy: f64,
}

/// Scores the detector, the issue-14 detector and both baselines on the three corpora of
/// `scale` traces per leak rate (report seeds from `seed`; the real-noise corpus tiled from
/// `real`), side by side, then each corpus in detail with the threshold curve for the
/// calibration seeds and the report seeds.
pub fn score(seed: u64, scale: usize, real: &RealNoise) -> Report {
    let rules = rules();
    let mut table = String::new();
    let mut report = Report {
        table: String::new(),
        median_100: None,
        p95_100: None,
        fp_per_1000: 0.0,
        subject_accuracy: 0.0,
        cause_accuracy: 0.0,
    };
    let mut side = Vec::new();
    for c in [Corpus::Generator, Corpus::Shapes, Corpus::Real(real)] {
        let traces = corpus(c, seed, scale);
        let tls: Vec<Vec<Timeline>> = rules
            .iter()
            .map(|r| {
                traces
                    .iter()
                    .map(|(tr, l)| timeline(r.as_ref(), tr, l))
                    .collect()
            })
            .collect();
        table.push_str(&format!(
            "== corpus: {} (report seeds {}..{})\n",
            c.name(),
            seed + 1,
            seed + traces.len() as u64
        ));
        table.push_str("rule                 rate MB/d  detected  median h  p95 h\n");
        let figs: Vec<Figures> = rules
            .iter()
            .zip(&tls)
            .map(|(r, t)| figures(t, r.threshold()))
            .collect();
        for (r, f) in rules.iter().zip(&figs) {
            for &rate in &RATES {
                let (found, n) = f.found(rate);
                table.push_str(&format!(
                    "{:<20} {:>9.0} {:>5}/{:<3} {:>9.1} {:>6.1}\n",
                    r.name(),
                    rate,
                    found,
                    n,
                    f.delay(rate, 0.5).unwrap_or(f64::NAN),
                    f.delay(rate, 0.95).unwrap_or(f64::NAN)
                ));
            }
        }
        table.push_str("\n100 MB/day delay distribution (h; quartiles, p90, p95; inf = never):\n");
        for (r, f) in rules.iter().zip(&figs) {
            let q: Vec<String> = [0.25, 0.5, 0.75, 0.9, 0.95]
                .iter()
                .map(|&q| format!("{:.1}", f.delay(100.0, q).unwrap_or(f64::NAN)))
                .collect();
            table.push_str(&format!("  {:<20} {}\n", r.name(), q.join("  ")));
        }
        table.push_str(
            "\nfalse alerts per 1,000 healthy node-days; leak traces alarmed before onset:\n",
        );
        for (r, f) in rules.iter().zip(&figs) {
            table.push_str(&format!(
                "  {:<20} {:>8.1}  ({} alerts in {:.0} node-days)  early {}/{}\n",
                r.name(),
                f.fp_per_1000(),
                f.false_alerts,
                f.healthy_days,
                f.early.0,
                f.early.1
            ));
        }
        if matches!(c, Corpus::Shapes) {
            report.median_100 = figs[0].delay(100.0, 0.5);
            report.p95_100 = figs[0].delay(100.0, 0.95);
            report.fp_per_1000 = figs[0].fp_per_1000();
        }
        table.push_str(&format!(
            "\noomprobe threshold curve on these report seeds (* = the default {}):\n{}",
            ChangePoint::default().t_threshold,
            curve_table(&tls[0], ChangePoint::default().t_threshold)
        ));
        let cal = corpus(c, CALIBRATION_SEED, scale);
        let cal_tls: Vec<Timeline> = cal
            .iter()
            .map(|(tr, l)| timeline(rules[0].as_ref(), tr, l))
            .collect();
        table.push_str(&format!(
            "\noomprobe threshold curve on the calibration seeds {}..{} (the default was chosen on these{}):\n{}",
            CALIBRATION_SEED + 1,
            CALIBRATION_SEED + cal.len() as u64,
            if matches!(c, Corpus::Real(_)) {
                " for the generator; here tiled from the same recording(s) as the report traces, so not independent data"
            } else {
                ""
            },
            curve_table(&cal_tls, ChangePoint::default().t_threshold)
        ));
        let (subj, cause, confusion) = match c {
            Corpus::Real(r) => {
                let a = causes::accuracy(r, seed + 10_000_000, scale);
                (
                    a.subject(),
                    a.cause(),
                    format!(
                        "cause signatures at realistic sizes, onsets -2..+1 days from the leak, mixtures:\n{}",
                        a.table()
                    ),
                )
            }
            _ => accuracy(c, seed + 10_000_000, scale),
        };
        table.push_str(&format!(
            "\nkubelet-vs-workload accuracy (oomprobe): {}/{} = {:.1}%\ncause accuracy (oomprobe): {}/{} = {:.1}%\n{confusion}\n",
            subj.0,
            subj.1,
            subj.0 as f64 * 100.0 / subj.1.max(1) as f64,
            cause.0,
            cause.1,
            cause.0 as f64 * 100.0 / cause.1.max(1) as f64,
        ));
        side.push((c.name(), figs, subj, cause));
        if matches!(c, Corpus::Shapes) {
            report.subject_accuracy = subj.0 as f64 / subj.1.max(1) as f64;
            report.cause_accuracy = cause.0 as f64 / cause.1.max(1) as f64;
        }
    }
    report.table = side_by_side(&rules, &side, real) + "\n" + &table;
    report
}

/// One corpus in the side-by-side table: its name, each rule's figures, the detector's
/// (right, total) subject and cause calls.
type Column = (&'static str, Vec<Figures>, (usize, usize), (usize, usize));

/// The corpora's headline figures next to each other: per rule, the 100 MB/day leak's median
/// and p95 delay and how many were found, and false alerts per 1,000 healthy node-days; then
/// the detector's kubelet-vs-workload and cause accuracy.
fn side_by_side(rules: &[Box<dyn Rule>], side: &[Column], real: &RealNoise) -> String {
    let mut s = format!(
        "== side by side (100 MB/day: median h / p95 h / found; false alerts per 1,000 healthy node-days)\n   real-noise source: {} recording(s), {:.2} h recorded, {} samples, {} kubelet restart(s), {} blocks of {} min\n",
        real.recordings.len(),
        real.span_s as f64 / 3600.0,
        real.samples,
        real.restarts,
        real.blocks(),
        real.block_min,
    );
    // Which recordings were pooled, each with the blocks it gave.
    for r in &real.recordings {
        s.push_str(&format!(
            "   recording {}: {:.2} h, {} samples, {} kubelet restart(s), {} blocks\n",
            r.name,
            r.span_s as f64 / 3600.0,
            r.samples,
            r.restarts,
            r.blocks
        ));
    }
    s.push_str(&format!("{:<20}", "rule"));
    for (name, ..) in side {
        s.push_str(&format!(" | {name:<34}"));
    }
    s.push('\n');
    for (i, r) in rules.iter().enumerate() {
        s.push_str(&format!("{:<20}", r.name()));
        for (_, figs, ..) in side {
            let f = &figs[i];
            let (found, n) = f.found(100.0);
            let cell = format!(
                "{:.1} / {:.1} / {found}/{n}; {:.1}",
                f.delay(100.0, 0.5).unwrap_or(f64::NAN),
                f.delay(100.0, 0.95).unwrap_or(f64::NAN),
                f.fp_per_1000()
            );
            s.push_str(&format!(" | {cell:<34}"));
        }
        s.push('\n');
    }
    let pct = |(a, n): (usize, usize)| a as f64 * 100.0 / n.max(1) as f64;
    for (what, pick) in [("kubelet-vs-workload", 0), ("cause accuracy", 1)] {
        s.push_str(&format!("{what:<20}"));
        for (_, _, subj, cause) in side {
            let x = if pick == 0 { *subj } else { *cause };
            let cell = format!("{}/{} = {:.1}%", x.0, x.1, pct(x));
            s.push_str(&format!(" | {cell:<34}"));
        }
        s.push('\n');
    }
    s.push_str("(accuracy: generator corpora with the generator's signatures; real-noise with realistic-size signatures, see below)\n");
    s
}

/// Subject and cause accuracy: the verdict at the end of each labelled trace.
fn accuracy(c: Corpus, seed: u64, scale: usize) -> ((usize, usize), (usize, usize), String) {
    // The kubelet causes of the generator (the workload leak is its own scenario).
    let causes: Vec<Cause> = Cause::NAMED
        .into_iter()
        .filter(|c| *c != Cause::WorkloadLeak)
        .collect();
    let mut s = seed;
    let mut next = || {
        s += 1;
        s
    };
    let (mut subj_ok, mut subj_n, mut cause_ok, mut cause_n) = (0, 0, 0, 0);
    let mut confusion = String::new();
    for &cause in &causes {
        let mut ok = 0;
        for _ in 0..scale {
            let (tr, label) = c.generate(Scenario::Cause(cause), 4.0, next());
            let v = Engine::default().evaluate(&tr);
            subj_n += 1;
            subj_ok += usize::from(v.subject == label.subject);
            cause_n += 1;
            if v.cause == label.cause {
                cause_ok += 1;
                ok += 1;
            }
        }
        confusion.push_str(&format!("  {:<22} {ok}/{scale}\n", cause.as_str()));
    }
    for sc in [Scenario::WorkloadLeak, Scenario::Leak(150.0)] {
        for _ in 0..scale {
            let (tr, label) = c.generate(sc, 4.0, next());
            let v = Engine::default().evaluate(&tr);
            subj_n += 1;
            subj_ok += usize::from(v.subject == label.subject);
        }
    }
    ((subj_ok, subj_n), (cause_ok, cause_n), confusion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Subject;

    fn label(leak_start: Option<i64>) -> Label {
        Label {
            scenario: Scenario::Healthy,
            subject: Subject::None,
            cause: Cause::None,
            leak_start,
            leak_bytes_per_day: 100e6,
        }
    }

    #[test]
    fn timelines_count_episodes_early_alarms_and_delays_per_threshold() {
        let tl = Timeline {
            points: vec![(0, 1.0), (10, 6.0), (20, 2.0), (30, 7.0), (40, 9.0)],
            label: label(Some(30)),
            days_clean: 1.0,
        };
        // Above 5: one episode before onset (t=10), the first alert after onset at t=30.
        assert_eq!(tl.at(5.0), (1, Some(30)));
        // Above 8: nothing early, found at t=40.
        assert_eq!(tl.at(8.0), (0, Some(40)));
        let f = figures(&[tl], 5.0);
        assert_eq!(f.early, (1, 1));
        assert_eq!(f.false_alerts, 1);
        assert_eq!(f.delay(100.0, 0.5), Some(0.0));
    }

    /// The baselines' troughs start at the last kubelet restart, as the detector's baseline
    /// does: a rule never compares one kubelet's memory with its predecessor's.
    #[test]
    fn baselines_start_anew_at_a_kubelet_restart() {
        let s: Vec<Sample> = (0..30 * 60)
            .map(|i| Sample {
                t: i * 60,
                kubelet_rss_bytes: if i < 20 * 60 { 200e6 } else { 420e6 },
                pods: 30.0,
                kubelet_restarts: Some(f64::from(u8::from(i >= 20 * 60))),
                ..Default::default()
            })
            .collect();
        let b = troughs(&s, 25);
        assert_eq!(b.len(), 10);
        assert_eq!(b[0].0, (20 * 3600 + 1800) as f64);
        // Without the restart the step up would be 220 MB "grown" in a day.
        assert_eq!(FixedRule.score(&s), 0.0);
        let unaware: Vec<Sample> = s
            .iter()
            .map(|x| Sample {
                kubelet_restarts: None,
                ..x.clone()
            })
            .collect();
        assert_eq!(FixedRule.score(&unaware), 1.0);
    }

    #[test]
    fn baselines_read_the_trough_baseline_not_the_sawtooth() {
        // A flat trough at 400 MB under a sawtooth reaching 600 MB that starts late in the
        // day: raw samples "grew" 200 MB in a day, the troughs did not.
        let s: Vec<Sample> = (0..26 * 60)
            .map(|i| {
                let t = i * 60;
                let saw = if t > 20 * 3600 {
                    (i % 10) as f64 * 22e6
                } else {
                    0.0
                };
                Sample {
                    t,
                    kubelet_rss_bytes: 400e6 + saw,
                    pods: 30.0,
                    ..Default::default()
                }
            })
            .collect();
        assert_eq!(FixedRule.score(&s), 0.0);
        assert_eq!(PredictLinear.score(&s), 0.0);
        // A real 150 MB/day trough rise is seen by both.
        let g: Vec<Sample> = s
            .iter()
            .map(|x| Sample {
                kubelet_rss_bytes: 400e6 + 150e6 * x.t as f64 / 86_400.0,
                ..x.clone()
            })
            .collect();
        assert_eq!(FixedRule.score(&g), 1.0);
        assert_eq!(PredictLinear.score(&g), 1.0);
    }
}
