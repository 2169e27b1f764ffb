//! The detectors' joint answer: every detector and the cause classifier run over the series,
//! with a time-to-OOM forecast, as one [`Verdict`].
use serde::Serialize;

use super::*;

/// Time until the kubelet reaches its limit (or the node runs out), with an interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Forecast {
    /// What the memory runs into: `kubelet_limit` or `node_memory`.
    pub against: &'static str,
    pub limit_bytes: f64,
    pub earliest_seconds: f64,
    pub expected_seconds: f64,
    /// Null when the slope's lower bound does not grow.
    pub latest_seconds: Option<f64>,
}

pub fn forecast(series: &[Sample], trend: &Trend) -> Option<Forecast> {
    let last = series.last()?;
    let (against, limit) = match last.kubelet_limit_bytes {
        Some(l) => ("kubelet_limit", l),
        None => (
            "node_memory",
            last.kubelet_rss_bytes + last.node_mem_available_bytes?,
        ),
    };
    let headroom = (limit - trend.baseline).max(0.0);
    let secs = |per_day: f64| (per_day > 0.0).then(|| headroom / per_day * DAY);
    Some(Forecast {
        against,
        limit_bytes: limit,
        earliest_seconds: secs(trend.slope.high)?,
        expected_seconds: secs(trend.slope.mid)?,
        latest_seconds: secs(trend.slope.low),
    })
}

/// Who is leaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Kubelet,
    Workload,
    None,
    /// Less kubelet history than the change-point test needs (`ChangePoint::min_history_s`,
    /// 24 h) and nothing else firing: no call either way yet.
    InsufficientHistory,
}

impl Subject {
    /// The serialized name (`kubelet`, `workload`, `none`, `insufficient_history`).
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Kubelet => "kubelet",
            Subject::Workload => "workload",
            Subject::None => "none",
            Subject::InsufficientHistory => "insufficient_history",
        }
    }
}

/// The detectors' joint answer at one time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub time: String,
    pub subject: Subject,
    pub cause: classify::Cause,
    /// Bytes/day, the kubelet's baseline slope; `None` (JSON null) when the subject is
    /// `insufficient_history`: too little history to tell a slope.
    pub slope_bytes_per_day: Option<f64>,
    pub slope_interval_bytes_per_day: Option<(f64, f64)>,
    pub forecast: Option<Forecast>,
    pub supports: Vec<String>,
    pub contradicts: Vec<String>,
    pub next_checks: Vec<String>,
    pub findings: Vec<Finding>,
    /// Per cause, the series columns it is computed from: `observed` in the last 72 h, or
    /// `missing: <why>` with the live source that would give it.
    pub inputs: classify::Inputs,
    /// Causes that cannot be told for want of an input: `<cause>: cannot tell, missing
    /// <column> (from <source>)`. Such a cause is never named.
    pub cannot_tell: Vec<String>,
}

/// Runs every detector and the classifier.
///
/// A kubelet leak, once called, is held (hysteresis) while the change point's gated score stays
/// above `release_score` and no later series contradicts it: a leak hovering near the threshold
/// no longer flips between `kubelet` and `none` hour by hour. A workload leak is held the same
/// way (`workload_release_score`): its gates (the late slope persisting) wander hour by hour
/// on a pod leak, and `gen-trace workload` replayed hourly flipped `workload`/`none` up to 14
/// times in 5 days. `evaluate` therefore takes the series in time order; a series that goes
/// back in time (or is a different one) starts afresh.
pub struct Engine {
    pub kubelet: KubeletLeak,
    pub workload: WorkloadLeak,
    /// The gated score under which a called kubelet leak starts to be released (the call
    /// needs `kubelet.change.t_threshold`).
    pub release_score: f64,
    /// The gated score under which a called workload leak starts to be released (the call
    /// needs `workload.change.t_threshold`).
    pub workload_release_score: f64,
    /// Seconds of series the score must stay at or under its release score before a leak is
    /// released.
    pub release_after_s: i64,
    latch: Option<Latch>,
}

/// What the last evaluation left for the next one.
#[derive(Debug, Clone, Copy)]
struct Latch {
    /// Time of the last evaluated sample (unix seconds).
    t: i64,
    /// A kubelet leak was called or held there.
    held: bool,
    /// Since when (unix seconds) the held leak's score has been at or under the release level.
    low_since: Option<i64>,
    /// A workload leak was called or held there.
    workload: bool,
    /// Since when the held workload leak's score has been at or under its release level.
    workload_low_since: Option<i64>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            kubelet: KubeletLeak::default(),
            workload: WorkloadLeak {
                // Pods' working sets: no warm-up or GC shapes, a leak called after 6 h of it, at the
                // threshold the workload tests and corpus were checked at.
                change: ChangePoint {
                    min_slope: 100e6,
                    min_after_h: 6,
                    late_min_h: 6,
                    t_threshold: 5.5,
                    ..ChangePoint::default()
                },
            },
            // The scores of a 100 MB/day leak in its first day after the call wander between
            // about 6 and 10 around the call's threshold (10); a leak is released after 3 h under 5.
            release_score: 5.0,
            // Half the workload call's threshold (5.5), as the kubelet's.
            workload_release_score: 2.75,
            release_after_s: 3 * HOUR,
            latch: None,
        }
    }
}

impl Engine {
    /// The verdict at the series' last sample (see the type's doc for the hysteresis).
    pub fn evaluate(&mut self, series: &[Sample]) -> Verdict {
        let time = series
            .last()
            .map(|s| {
                crate::clock::rfc3339(
                    time::OffsetDateTime::from_unix_timestamp(s.t)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                )
            })
            .unwrap_or_default();
        let detectors: [&dyn Detector; 5] = [
            &self.kubelet,
            &self.workload,
            &Goroutines,
            &PlegRelist,
            &Evictions,
        ];
        let mut findings: Vec<Finding> = detectors.iter().filter_map(|d| d.check(series)).collect();
        let last_t = series.last().map(|s| s.t);
        let latch = match (self.latch, last_t) {
            (Some(l), Some(t)) if t >= l.t => Some((l, t)),
            _ => None,
        };
        let mut trend = self.kubelet.trend(series);
        let mut low_since = None;
        if let Some((l, t)) = latch.filter(|(l, _)| l.held) {
            low_since = self.hold(series, t, l.low_since, &mut findings, &mut trend);
        }
        let mut workload_low_since = None;
        if let Some((l, t)) = latch.filter(|(l, _)| l.workload) {
            workload_low_since = self.hold_workload(series, t, l.workload_low_since, &mut findings);
        }
        let firing = |name: &str| findings.iter().any(|f| f.detector == name && f.firing);
        let history_s = match (series.first(), series.last()) {
            (Some(a), Some(b)) => b.t.saturating_sub(a.t),
            _ => 0,
        };
        let (subject, slope) = if firing("kubelet_trend") {
            (Subject::Kubelet, trend.map(|t| t.slope))
        } else if firing("workload_trend") || (firing("evictions") && !firing("kubelet_trend")) {
            (Subject::Workload, None)
        } else if history_s < self.kubelet.change.min_history_s {
            (Subject::InsufficientHistory, None)
        } else {
            (Subject::None, None)
        };
        self.latch = last_t.map(|t| Latch {
            t,
            held: subject == Subject::Kubelet,
            low_since,
            workload: firing("workload_trend"),
            workload_low_since,
        });
        // The called kubelet leak's onset: its change point, `span_s` before the last sample.
        let onset = match (subject, trend, last_t) {
            (Subject::Kubelet, Some(t), Some(last)) if t.t_stat.is_some() => Some(last - t.span_s),
            _ => None,
        };
        let c = classify::classify(subject, series, &findings, onset);
        let (inputs, cannot_tell) = classify::inputs(series);
        Verdict {
            time,
            subject,
            cause: c.cause,
            slope_bytes_per_day: (subject != Subject::InsufficientHistory)
                .then(|| slope.map_or_else(|| trend.map_or(0.0, |t| t.slope.mid), |s| s.mid)),
            slope_interval_bytes_per_day: slope.map(|s| (s.low, s.high)),
            forecast: match (subject, &trend) {
                (Subject::Kubelet, Some(t)) => forecast(series, t),
                _ => None,
            },
            supports: c.supports,
            contradicts: c.contradicts,
            next_checks: c.next_checks,
            findings,
            inputs,
            cannot_tell,
        }
    }

    /// A workload leak called before and not called now: held while the pod working sets'
    /// best change point's gated score stays above `workload_release_score`, or has been at or
    /// under it for less than `release_after_s`; the finding then fires with the hold in its
    /// evidence. Returns since when the score has been low (None when above).
    fn hold_workload(
        &self,
        series: &[Sample],
        now: i64,
        low_since: Option<i64>,
        findings: &mut [Finding],
    ) -> Option<i64> {
        let change = &self.workload.change;
        let fit = change.fit_column(series, &changepoint::Column::WORKLOAD);
        // No fit (too little history of the column, such as samples without it): nothing to
        // hold on.
        let fit = fit?;
        let f = findings
            .iter_mut()
            .find(|f| f.detector == "workload_trend" && !f.firing)?;
        let score = change.gated_score(&fit);
        let release = Release {
            calling: change.t_threshold,
            score: self.workload_release_score,
            after_s: self.release_after_s,
            unscored: "its gates not passed",
        };
        release.hold(f, score, low_since, now).ok().flatten()
    }

    /// A kubelet leak called before and not called now: held while the best change point's
    /// gated score (growing, persisting, not levelling off) stays above `release_score`, or
    /// has been at or under it for less than `release_after_s`. The finding then fires with
    /// the hold in its evidence. Returns since when the score has been low (None when above).
    fn hold(
        &self,
        series: &[Sample],
        now: i64,
        low_since: Option<i64>,
        findings: &mut Vec<Finding>,
        trend: &mut Option<Trend>,
    ) -> Option<i64> {
        // After a kubelet restart the windowed trend has no full window yet and gives no
        // finding: the restart reset the memory, not the cause, so the hold has one to fire.
        if !findings.iter().any(|f| f.detector == "kubelet_trend") {
            findings.insert(
                0,
                Finding {
                    detector: "kubelet_trend",
                    firing: false,
                    value: 0.0,
                    evidence: "no full window of the kubelet's baseline since its last restart"
                        .into(),
                },
            );
        }
        let f = findings
            .iter_mut()
            .find(|f| f.detector == "kubelet_trend" && !f.firing)?;
        let fit = self.kubelet.change.fit(series);
        let score = fit
            .as_ref()
            .map_or(f64::NEG_INFINITY, |x| self.kubelet.change.gated_score(x));
        let release = Release {
            calling: self.kubelet.change.t_threshold,
            score: self.release_score,
            after_s: self.release_after_s,
            unscored: "no growing fit",
        };
        let Ok(low) = release.hold(f, score, low_since, now) else {
            return None;
        };
        if let Some(fit) = fit.filter(|x| x.slope.mid > 0.0) {
            f.value = fit.slope.mid;
            *trend = Some(Trend {
                slope: fit.slope,
                per_pod: fit.per_pod,
                span_s: now.saturating_sub(fit.start),
                baseline: fit.baseline,
                raw_per_day: trend.map_or(fit.slope.mid, |t| t.raw_per_day),
                t_stat: Some(fit.t_stat),
                restarts: fit.restarts,
                late_per_day: Some(fit.late_slope),
            });
        }
        low
    }
}

/// When a held leak call is let go: its gated score at or under `score` for `after_s`.
struct Release {
    /// The score that calls a leak (for the evidence).
    calling: f64,
    score: f64,
    after_s: i64,
    /// What the evidence says when there is no score (no fit that passes the gates).
    unscored: &'static str,
}

impl Release {
    /// Holds the call in `f` (firing, the hold said in its evidence) unless the score has been
    /// low for `after_s`: `Ok(since when it has been low)` (None while above), `Err(())` when
    /// the call is released.
    fn hold(
        &self,
        f: &mut Finding,
        score: f64,
        low_since: Option<i64>,
        now: i64,
    ) -> Result<Option<i64>, ()> {
        let low = (score <= self.score).then(|| low_since.unwrap_or(now));
        let low_for = low.map_or(0, |l| now.saturating_sub(l));
        if low_for >= self.after_s {
            return Err(());
        }
        f.firing = true;
        if score.is_finite() {
            f.evidence.push_str(&format!(
                "; leak called earlier and held: score {score:.1} (calling needs {:.1}, released after {} h at or under {:.1})",
                self.calling,
                self.after_s / 3600,
                self.score
            ));
        } else {
            f.evidence.push_str(&format!(
                "; leak called earlier and held: {} for {:.1} h (released after {} h)",
                self.unscored,
                low_for as f64 / 3600.0,
                self.after_s / 3600
            ));
        }
        Ok(low)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::detect::{offline::csv, store::Store};

    /// One of issue 17's healthy series (`detect/testdata/detector-false-alarms/`, README
    /// there), gunzipped and parsed as replay reads it.
    fn example(name: &str) -> Vec<Sample> {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/detect/testdata/detector-false-alarms")
            .join(name);
        let gz = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        let (samples, unknown) = csv::parse(&text).unwrap();
        assert!(unknown.is_empty(), "{name}: {unknown:?}");
        samples
    }

    /// Feeds `samples` through the live agent's path (`Pipeline::on_sample` appends to the
    /// store, `on_detect` runs one long-lived engine over the store's bounded series), the
    /// engine evaluated every hour; returns the hours with a kubelet verdict and the highest
    /// gated change-point score.
    fn live_hourly(name: &str, samples: &[Sample], engine: &mut Engine) -> (Vec<usize>, f64) {
        let dir =
            std::env::temp_dir().join(format!("oomprobe-engine-i17-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir.join("series.store")).unwrap();
        let (mut hours, mut kubelet, mut top) = (0, Vec::new(), f64::NEG_INFINITY);
        for (i, s) in samples.iter().enumerate() {
            store.append(s.clone()).unwrap();
            if (i + 1) % 60 != 0 {
                continue;
            }
            hours += 1;
            let v = engine.evaluate(store.samples());
            if v.subject == Subject::Kubelet {
                kubelet.push(hours);
            }
            if hours < 24 {
                assert_eq!(
                    v.subject,
                    Subject::InsufficientHistory,
                    "{name} at {hours} h"
                );
            }
            let cp = &engine.kubelet.change;
            if let Some(f) = cp.fit(store.samples()) {
                top = top.max(cp.gated_score(&f));
            }
        }
        assert_eq!(hours, 96, "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
        (kubelet, top)
    }

    /// Issue 17's two healthy 4-day series through the live path, hour by hour: no kubelet
    /// verdict at any hour, the gated score never above a third of the call's threshold. The
    /// issue-14 detector, on the same path, calls both.
    #[test]
    fn issue_17_healthy_series_never_call_a_kubelet_leak_through_the_live_path() {
        // The hour of the issue-14 detector's first call: at 24 h of history on the first (the
        // evaluation after hour 24's), on day 2 on the second.
        for (name, first_call) in [
            ("warm-up-after-start.csv.gz", 25),
            ("slow-scavenger-return.csv.gz", 46),
        ] {
            let samples = example(name);
            assert_eq!(
                samples.len(),
                4 * 1440,
                "{name}: four days of 1-minute samples"
            );
            let mut engine = Engine::default();
            let (kubelet, top) = live_hourly(name, &samples, &mut engine);
            assert!(
                kubelet.is_empty(),
                "{name}: kubelet verdicts at hours {kubelet:?}"
            );
            let th = engine.kubelet.change.t_threshold;
            assert!(
                top < th / 3.0,
                "{name}: highest gated score {top} (call: {th})"
            );
            let mut old = Engine::default();
            old.kubelet.change = ChangePoint::issue14();
            let (called, _) = live_hourly(name, &samples, &mut old);
            assert_eq!(called.first(), Some(&first_call), "{name}: {called:?}");
        }
    }

    /// `gen-trace pod_churn` and `gen-trace container_gc` (seed 1, 5 days; labelled a kubelet
    /// leak from 9.6 h on, restarts at 20.1 h and 102.9 h, and at 45.2 h) replayed hourly as
    /// `oomprobe replay` does: once called, the leak is held to the end, across the restart
    /// and after the 72 h window has slid past the leak's start (the first process's leaked
    /// bytes carried into the window, which the restart drops, read as the growth slowing
    /// down, released `pod_churn` 13 h after its last restart and `container_gc` for 28 h).
    #[test]
    fn a_called_leak_is_held_across_a_restart_after_the_window_passes_its_start() {
        use crate::detect::offline::tracegen::{generate, Scenario};
        for cause in [classify::Cause::PodChurn, classify::Cause::ContainerGc] {
            let (samples, label) = generate(Scenario::Cause(cause), 5.0, 1);
            assert_eq!(label.subject, Subject::Kubelet);
            assert_eq!(label.leak_start, Some(1_790_034_658));
            let mut engine = Engine::default();
            let mut subjects = Vec::new();
            crate::cli::replay::evaluate_each(&mut engine, &samples, 3600, |v| {
                subjects.push(v.subject)
            });
            let first = subjects.iter().position(|&s| s == Subject::Kubelet);
            let first = first.unwrap_or_else(|| panic!("{cause:?}: never called"));
            let dropped: Vec<usize> = (first..subjects.len())
                .filter(|&i| subjects[i] != Subject::Kubelet)
                .collect();
            assert_eq!(
                dropped,
                Vec::<usize>::new(),
                "{cause:?}: called at evaluation {first}"
            );
        }
    }

    /// The classifier gets the called leak's onset from the change point: churn steady across
    /// it is not the cause (the cgroup v1 node's risk factor is), churn that starts with it is.
    #[test]
    fn pod_churn_is_told_from_the_change_points_onset() {
        use crate::detect::offline::tracegen::Rng;
        let trace = |before: f64, after: f64| -> Vec<Sample> {
            let mut r = Rng::new(7);
            let onset = 60 * HOUR;
            (0..576)
                .map(|i| {
                    let t = 1_790_000_000 + i * 600;
                    let since = (t - 1_790_000_000 - onset).max(0) as f64 / DAY;
                    Sample {
                        t,
                        kubelet_rss_bytes: 500e6 + 5e6 * r.normal() + 300e6 * since,
                        pods: 30.0,
                        pod_churn_per_hour: Some(if since > 0.0 { after } else { before }),
                        cgroup_version: Some(1.0),
                        kernel: Some(5.15),
                        ..Default::default()
                    }
                })
                .collect()
        };
        let v = Engine::default().evaluate(&trace(300.0, 300.0));
        assert_eq!(
            (v.subject, v.cause),
            (Subject::Kubelet, classify::Cause::CgroupV1Kernel515),
            "{v:#?}"
        );
        assert!(
            v.contradicts
                .iter()
                .any(|x| x.starts_with("pod_churn: churn was already 300/h")),
            "{:?}",
            v.contradicts
        );
        assert_eq!(v.inputs["pod_churn"]["pod_churn_per_hour"], "observed");
        let v = Engine::default().evaluate(&trace(5.0, 60.0));
        assert_eq!(
            (v.subject, v.cause),
            (Subject::Kubelet, classify::Cause::PodChurn),
            "{v:#?}"
        );
    }
}
