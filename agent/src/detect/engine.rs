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
}

/// The detectors' joint answer at one time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub time: String,
    pub subject: Subject,
    pub cause: classify::Cause,
    pub slope_bytes_per_day: f64,
    pub slope_interval_bytes_per_day: Option<(f64, f64)>,
    pub forecast: Option<Forecast>,
    pub supports: Vec<String>,
    pub contradicts: Vec<String>,
    pub next_checks: Vec<String>,
    pub findings: Vec<Finding>,
}

/// Runs every detector and the classifier.
pub struct Engine {
    pub kubelet: KubeletLeak,
    pub workload: WorkloadLeak,
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
        }
    }
}

impl Engine {
    pub fn evaluate(&self, series: &[Sample]) -> Verdict {
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
        let findings: Vec<Finding> = detectors.iter().filter_map(|d| d.check(series)).collect();
        let firing = |name: &str| findings.iter().any(|f| f.detector == name && f.firing);
        let trend = self.kubelet.trend(series);
        let (subject, slope) = if firing("kubelet_trend") {
            (Subject::Kubelet, trend.map(|t| t.slope))
        } else if firing("workload_trend") || (firing("evictions") && !firing("kubelet_trend")) {
            (Subject::Workload, None)
        } else {
            (Subject::None, None)
        };
        let c = classify::classify(subject, series, &findings);
        Verdict {
            time,
            subject,
            cause: c.cause,
            slope_bytes_per_day: slope
                .map_or_else(|| trend.map_or(0.0, |t| t.slope.mid), |s| s.mid),
            slope_interval_bytes_per_day: slope.map(|s| (s.low, s.high)),
            forecast: match (subject, &trend) {
                (Subject::Kubelet, Some(t)) => forecast(series, t),
                _ => None,
            },
            supports: c.supports,
            contradicts: c.contradicts,
            next_checks: c.next_checks,
            findings,
        }
    }
}
