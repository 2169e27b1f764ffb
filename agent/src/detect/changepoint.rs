//! Change-point test for a leak that starts at some unknown time: on hourly baseline buckets of
//! the kubelet's RSS since its last restart, fit
//!
//! `baseline = a + per_pod * pods + c * sin(day) + d * cos(day) + slope * max(0, t - start)`
//!
//! for every candidate `start`, and keep the start whose leak slope is most significant (largest
//! t statistic). The daily pattern and pod count are fitted jointly with the leak, so neither a
//! busy afternoon nor a deployment looks like one, and a leak is seen from its first hours
//! instead of once it dominates a whole window. The per-pod cost is fitted too, pulled towards
//! the sizing rule's 11 MiB when the pod count barely moves.
use super::{
    restart_times,
    series::{baseline, Slope},
    Sample, BYTES_PER_POD, DAY, HOUR,
};

/// Working unit for the fit (keeps the normal equations well conditioned).
const MB: f64 = 1e6;
/// Regressors: intercept, pods, sin, cos, and the hinge (the last).
const K: usize = 5;
const P: usize = 1;
const H: usize = K - 1;
/// The sizing-rule prior on the per-pod cost, as a pseudo-observation weighing as much as this
/// many squared pods of spread: it decides only when the pod count barely moves.
const PRIOR_PODS2: f64 = 4.0;

/// What the best change point says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// When the growth starts (unix seconds, bucket middle).
    pub start: i64,
    /// bytes/day, with a ~90% interval.
    pub slope: Slope,
    /// Slope over its standard error.
    pub t_stat: f64,
    /// Fitted per-pod bytes.
    pub per_pod: f64,
    /// Fitted baseline at the last bucket (bytes).
    pub baseline: f64,
    /// Residual standard deviation of the hourly baseline (bytes).
    pub sigma: f64,
    /// Hours of data fitted.
    pub hours: usize,
    /// Kubelet restarts inside the fitted history (the leak restarts from zero with each).
    pub restarts: usize,
}

/// Which series a change point is looked for in.
pub struct Column {
    pub value: fn(&Sample) -> Option<f64>,
    /// Hourly quantile: low for a sawtooth's troughs, the median otherwise.
    pub quantile: f64,
    /// Per-pod bytes the fit is pulled towards when pods barely move (`None`: the window's
    /// mean bytes per pod).
    pub per_pod_prior: Option<f64>,
    /// Whether kubelet restarts start the growth anew.
    pub restarts: bool,
}

impl Column {
    pub const KUBELET: Column = Column {
        value: |s| Some(s.kubelet_rss_bytes),
        quantile: super::BASELINE_Q,
        per_pod_prior: Some(BYTES_PER_POD),
        restarts: true,
    };
    /// Pod cgroups' working sets together: pods come and go with their memory, so only growth
    /// the pod count does not explain is a workload leak.
    pub const WORKLOAD: Column = Column {
        value: |s| s.workload_working_set_bytes,
        quantile: 0.5,
        per_pod_prior: None,
        restarts: false,
    };
}

/// The change-point leak test's settings.
#[derive(Debug, Clone, Copy)]
pub struct ChangePoint {
    /// History fitted, at most.
    pub history_s: i64,
    /// History needed before any call: less than a day cannot tell a leak from the daily pattern.
    pub min_history_s: i64,
    /// Hours of growth needed after a candidate start.
    pub min_after_h: usize,
    /// Hours of data needed before a candidate start.
    pub min_before_h: usize,
    /// t statistic that calls a leak.
    pub t_threshold: f64,
    /// Slope (bytes/day) below which nothing is called, however significant.
    pub min_slope: f64,
    /// Floor on the residual deviation (bytes): a noiseless series is not infinitely sure.
    pub min_sigma: f64,
}

impl Default for ChangePoint {
    fn default() -> Self {
        ChangePoint {
            history_s: 72 * HOUR,
            min_history_s: 24 * HOUR,
            min_after_h: 6,
            min_before_h: 6,
            t_threshold: 8.5,
            min_slope: 20e6,
            min_sigma: 2e6,
        }
    }
}

impl ChangePoint {
    /// True when the best change point's slope calls a leak.
    pub fn calls(&self, fit: &Fit) -> bool {
        fit.t_stat > self.t_threshold && fit.slope.mid > self.min_slope
    }

    /// The most significant change point of the kubelet's RSS baseline.
    pub fn fit(&self, series: &[Sample]) -> Option<Fit> {
        self.fit_column(series, &Column::KUBELET)
    }

    /// The most significant change point of one column.
    pub fn fit_column(&self, series: &[Sample], col: &Column) -> Option<Fit> {
        let (first, last) = (series.first()?.t, series.last()?.t);
        if last - first < self.min_history_s {
            return None;
        }
        let from = series.partition_point(|s| s.t < last - self.history_s);
        let seg = &series[from..];
        // A leak's bytes go with the process: after a restart the kubelet starts from its
        // baseline and leaks anew, at the same rate while the cause remains.
        let restarts = if col.restarts {
            restart_times(seg)
        } else {
            Vec::new()
        };
        let have: Vec<&Sample> = seg.iter().filter(|s| (col.value)(s).is_some()).collect();
        let vals: Vec<(i64, f64)> = have
            .iter()
            .filter_map(|s| Some((s.t, (col.value)(s)?)))
            .collect();
        let pods: Vec<(i64, f64)> = have.iter().map(|s| (s.t, s.pods)).collect();
        let base = baseline(&vals, HOUR, col.quantile);
        // The same quantile as the value: within an hour where pods changed, both sit on the
        // same side of the change.
        let pods_b = baseline(&pods, HOUR, col.quantile);
        let n = base.len();
        if n != pods_b.len() || n < self.min_before_h + self.min_after_h + K {
            return None;
        }
        let t_end = base[n - 1].0;
        let pods_mean = pods_b.iter().map(|p| p.1).sum::<f64>() / n as f64;
        // The per-pod prior: fixed (the sizing rule for the kubelet), else this window's mean
        // bytes per pod.
        let prior_per_pod = col.per_pod_prior.unwrap_or_else(|| {
            base.iter().map(|b| b.1).sum::<f64>() / n as f64 / pods_mean.max(1.0)
        });
        // Rows: regressors without the hinge column, hours before the end, MB.
        let rows: Vec<Row> = base
            .iter()
            .zip(&pods_b)
            .map(|(b, p)| {
                let w = 2.0 * std::f64::consts::PI * b.0 / DAY;
                let h = (b.0 - t_end) / HOUR as f64;
                let born = restarts
                    .iter()
                    .rev()
                    .find(|&&r| r as f64 <= b.0)
                    .map_or(f64::NEG_INFINITY, |&r| (r as f64 - t_end) / HOUR as f64);
                Row {
                    x: [1.0, p.1 - pods_mean, w.sin(), w.cos(), 0.0],
                    h,
                    born,
                    y: b.1 / MB,
                }
            })
            .collect();

        let mut best: Option<Fit> = None;
        for k in self.min_before_h..=n - self.min_after_h {
            let start_h = rows[k].h;
            let mut xtx = [[0.0; K]; K];
            let mut xty = [0.0; K];
            for r in &rows {
                let (x, y) = (r.with_hinge(start_h), r.y);
                for i in 0..K {
                    xty[i] += x[i] * y;
                    for j in 0..K {
                        xtx[i][j] += x[i] * x[j];
                    }
                }
            }
            xtx[P][P] += PRIOR_PODS2;
            xty[P] += PRIOR_PODS2 * prior_per_pod / MB;
            let Some(beta) = solve(xtx, xty) else {
                continue;
            };
            let mut e = [0.0; K];
            e[H] = 1.0;
            let Some(inv) = solve(xtx, e) else {
                continue;
            };
            let rss: f64 = rows
                .iter()
                .map(|r| {
                    let fit: f64 = r
                        .with_hinge(start_h)
                        .iter()
                        .zip(&beta)
                        .map(|(a, b)| a * b)
                        .sum();
                    (r.y - fit).powi(2)
                })
                .sum();
            let sigma = (rss / (n - K) as f64).sqrt().max(self.min_sigma / MB);
            let se = sigma * inv[H].max(0.0).sqrt();
            if se <= 0.0 || !se.is_finite() {
                continue;
            }
            let t_stat = beta[H] / se;
            if best.is_some_and(|b| b.t_stat >= t_stat) {
                continue;
            }
            let per_day = |v: f64| v * MB * 24.0;
            let last_fit: f64 = rows[n - 1]
                .with_hinge(start_h)
                .iter()
                .zip(&beta)
                .map(|(a, b)| a * b)
                .sum();
            best = Some(Fit {
                start: base[k].0 as i64,
                slope: Slope {
                    mid: per_day(beta[H]),
                    low: per_day(beta[H] - 1.645 * se),
                    high: per_day(beta[H] + 1.645 * se),
                },
                t_stat,
                per_pod: beta[P] * MB,
                baseline: last_fit * MB,
                sigma: sigma * MB,
                hours: n,
                restarts: restarts.len(),
            });
        }
        best
    }
}

/// One hourly bucket: regressors (hinge column unset), hours before the end, when the
/// kubelet process that produced it started (hours before the end, -inf if before the data),
/// and the baseline in MB.
struct Row {
    x: [f64; K],
    h: f64,
    born: f64,
    y: f64,
}

impl Row {
    /// Regressors with the hinge for a leak starting at `start_h`: the hours this process has
    /// leaked, counted from the later of the leak's start and the process's.
    fn with_hinge(&self, start_h: f64) -> [f64; K] {
        let mut x = self.x;
        x[H] = (self.h - start_h.max(self.born)).max(0.0);
        x
    }
}

/// Solves `a x = b` for a small dense system by Gaussian elimination with partial pivoting;
/// `None` when it is singular.
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    let scale = (0..N).map(|i| a[i][i].abs()).fold(0.0, f64::max);
    for col in 0..N {
        let piv = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() <= scale * 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot_row = a[col];
        for r in col + 1..N {
            let f = a[r][col] / pivot_row[col];
            for (x, p) in a[r].iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * p;
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for r in (0..N).rev() {
        let s: f64 = (r + 1..N).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(hours: i64, rss: impl Fn(f64) -> f64, pods: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..hours * 6)
            .map(|i| {
                let t = i * 600;
                let h = t as f64 / 3600.0;
                Sample {
                    t,
                    kubelet_rss_bytes: rss(h),
                    pods: pods(h),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Deterministic noise in [-1, 1].
    fn wobble(h: f64) -> f64 {
        ((h * 7.31).sin() * 43758.5453).fract()
    }

    #[test]
    fn solves_small_systems() {
        let x = solve([[2.0, 1.0], [1.0, 3.0]], [3.0, 5.0]).unwrap();
        assert!(
            (x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12,
            "{x:?}"
        );
        assert!(solve([[1.0, 2.0], [2.0, 4.0]], [1.0, 2.0]).is_none());
    }

    #[test]
    fn finds_the_start_and_rate_of_a_leak_under_a_daily_pattern() {
        // 48 h flat with a +-25 MB daily wave and noise, then 100 MB/day for 12 h.
        let s = series(
            60,
            |h| {
                let wave = 25e6 * (2.0 * std::f64::consts::PI * h / 24.0).sin();
                let leak = 100e6 / 24.0 * (h - 48.0).max(0.0);
                600e6 + wave + leak + 4e6 * wobble(h)
            },
            |_| 40.0,
        );
        let cp = ChangePoint::default();
        let f = cp.fit(&s).expect("fit");
        assert!(cp.calls(&f), "{f:?}");
        assert!((f.slope.mid - 100e6).abs() < 20e6, "{f:?}");
        assert!((f.start - 48 * 3600).abs() <= 3 * 3600, "{f:?}");
        assert!(f.slope.low < f.slope.mid && f.slope.mid < f.slope.high);
    }

    #[test]
    fn daily_pattern_and_pod_steps_alone_are_not_a_leak() {
        // Three days of a strong daily wave, pods stepping 30 -> 50 -> 40 at 12 MiB each.
        let pods = |h: f64| {
            if h < 30.0 {
                30.0
            } else if h < 55.0 {
                50.0
            } else {
                40.0
            }
        };
        let s = series(
            72,
            |h| {
                let wave = 30e6 * (2.0 * std::f64::consts::PI * h / 24.0).cos();
                300e6 + 12.0 * 1_048_576.0 * pods(h) + wave + 4e6 * wobble(h)
            },
            pods,
        );
        let cp = ChangePoint::default();
        let f = cp.fit(&s).expect("fit");
        assert!(!cp.calls(&f), "{f:?}");
        assert!((f.per_pod / 1_048_576.0 - 12.0).abs() < 1.0, "{f:?}");
    }

    #[test]
    fn a_restart_starts_the_leak_anew_without_hiding_it() {
        // Flat for 30 h, then 150 MB/day; the kubelet restarts at 40 h (RSS back to its
        // baseline, counter bumped) and leaks again at the same rate.
        let leak = |h: f64| {
            let since = if h < 40.0 { h - 30.0 } else { h - 40.0 };
            150e6 / 24.0 * since.max(0.0)
        };
        let mut s = series(52, |h| 500e6 + leak(h) + 3e6 * wobble(h), |_| 30.0);
        for x in &mut s {
            x.kubelet_restarts = Some(if x.t >= 40 * 3600 { 1.0 } else { 0.0 });
        }
        let cp = ChangePoint::default();
        let f = cp.fit(&s).expect("fit");
        assert!(cp.calls(&f), "{f:?}");
        assert_eq!(f.restarts, 1);
        assert!((f.slope.mid - 150e6).abs() < 30e6, "{f:?}");
        assert!((f.start - 30 * 3600).abs() <= 3 * 3600, "{f:?}");
        // The baseline is the restarted process's, not the pre-restart peak.
        assert!(f.baseline < 500e6 + 100e6, "{f:?}");
    }

    #[test]
    fn needs_a_day_of_history() {
        let s = series(20, |h| 400e6 + 200e6 * h / 24.0, |_| 30.0);
        assert!(ChangePoint::default().fit(&s).is_none());
    }
}
