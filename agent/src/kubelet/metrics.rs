//! The kubelet's own `/metrics`: goroutines, PLEG relist duration, memory evictions, cgroup
//! version, running and exited containers. Garbage, errors and timeouts are reported, never fatal.
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KubeletMetrics {
    pub goroutines: Option<f64>,
    /// p99 estimated from the histogram buckets.
    pub pleg_relist_p99_seconds: Option<f64>,
    pub evictions_memory_total: Option<f64>,
    pub cgroup_version: Option<f64>,
    /// `kubelet_running_containers{container_state="running"}`.
    pub running_containers: Option<f64>,
    /// `kubelet_running_containers{container_state="exited"}`: exited containers the kubelet
    /// still holds (the container GC leak's signature).
    pub exited_containers: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot reach {0}")]
    Http(String, #[source] crate::http::HttpError),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0} answered {1}")]
    Status(String, String),
    #[error("{0} served no kubelet metrics (garbage or another exporter)")]
    Garbage(String),
}

impl MetricsError {
    pub fn reason(&self) -> &'static str {
        match self {
            MetricsError::Http(..) => "connect",
            MetricsError::Timeout(..) => "timeout",
            MetricsError::Status(..) => "status",
            MetricsError::Garbage(_) => "garbage",
        }
    }
}

/// `name{labels} value` -> (name, labels, value).
fn sample_line(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (head, value) = match line.find('}') {
        Some(i) => (&line[..=i], line[i + 1..].split_whitespace().next()?),
        None => {
            let mut it = line.split_whitespace();
            (it.next()?, it.next()?)
        }
    };
    let (name, labels) = match head.find('{') {
        Some(i) => (&head[..i], &head[i..]),
        None => (head, ""),
    };
    Some((name, labels, value.parse().ok()?))
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let i = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[i..];
    Some(&rest[..rest.find('"')?])
}

/// Parses Prometheus text exposition of the kubelet.
pub fn parse(text: &str) -> Option<KubeletMetrics> {
    let mut m = KubeletMetrics::default();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut any = false;
    for line in text.lines() {
        let Some((name, labels, v)) = sample_line(line) else {
            continue;
        };
        match name {
            "kubelet_goroutines" => {
                any = true;
                *m.goroutines.get_or_insert(0.0) += v;
            }
            "go_goroutines" if m.goroutines.is_none() => m.goroutines = Some(v),
            "kubelet_pleg_relist_duration_seconds_bucket" => {
                any = true;
                let le = label(labels, "le").unwrap_or("+Inf");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                buckets.push((le, v));
            }
            "kubelet_evictions_total" | "kubelet_evictions" => {
                any = true;
                if label(labels, "eviction_signal") == Some("memory.available") {
                    *m.evictions_memory_total.get_or_insert(0.0) += v;
                } else {
                    m.evictions_memory_total.get_or_insert(0.0);
                }
            }
            "kubelet_cgroup_version" => {
                any = true;
                m.cgroup_version = Some(v);
            }
            "kubelet_running_containers" => {
                any = true;
                match label(labels, "container_state") {
                    Some("running") => *m.running_containers.get_or_insert(0.0) += v,
                    Some("exited") => *m.exited_containers.get_or_insert(0.0) += v,
                    _ => {}
                }
            }
            n if n.starts_with("kubelet_") => any = true,
            _ => {}
        }
    }
    if !buckets.is_empty() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m.pleg_relist_p99_seconds = histogram_quantile(&buckets, 0.99);
    }
    any.then_some(m)
}

/// Like PromQL's histogram_quantile on cumulative buckets.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// GETs the kubelet's metrics (http or https) with an optional bearer token.
pub async fn fetch(
    url: &str,
    token: Option<&str>,
    tls: &crate::http::TlsOptions,
    timeout: Duration,
) -> Result<KubeletMetrics, MetricsError> {
    let headers: Vec<(&str, String)> = token
        .map(|t| vec![("Authorization", format!("Bearer {}", t.trim()))])
        .unwrap_or_default();
    let r = crate::http::request("GET", url, &headers, b"", tls, timeout)
        .await
        .map_err(|e| match e {
            crate::http::HttpError::Timeout(u, t) => MetricsError::Timeout(u, t),
            other => MetricsError::Http(url.to_string(), other),
        })?;
    if !(200..300).contains(&r.status) {
        return Err(MetricsError::Status(url.to_string(), r.status_line));
    }
    parse(&String::from_utf8_lossy(&r.body)).ok_or_else(|| MetricsError::Garbage(url.to_string()))
}

/// The latest scrape: `None` until one succeeds and after one fails.
pub type Latest = std::sync::Arc<std::sync::Mutex<Option<KubeletMetrics>>>;

/// Scrapes `url` every `every` in a task of its own; each failure is counted in `errors`
/// (`oomprobe_kubelet_metrics_errors_total{reason}`) and logged (the first, then every 60th).
/// `token` is read before each scrape (it may be rotated on disk).
pub fn spawn_scraper(
    url: String,
    token: impl Fn() -> Option<String> + Send + 'static,
    tls: crate::http::TlsOptions,
    every: Duration,
    errors: prometheus::IntCounterVec,
) -> Latest {
    let latest = Latest::default();
    let out = latest.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut failures = 0u64;
        loop {
            tick.tick().await;
            let got = fetch(&url, token().as_deref(), &tls, Duration::from_secs(2)).await;
            let value = match got {
                Ok(m) => Some(m),
                Err(e) => {
                    errors.with_label_values(&[e.reason()]).inc();
                    if failures.is_multiple_of(60) {
                        tracing::warn!(error = %e, "kubelet metrics unavailable");
                    }
                    failures += 1;
                    None
                }
            };
            if let Ok(mut l) = out.lock() {
                *l = value;
            }
        }
    });
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const RECORDED: &str = r#"# HELP kubelet_goroutines [ALPHA] Number of running goroutines split by the work they do such as gc.
# TYPE kubelet_goroutines gauge
kubelet_goroutines{operation="pod_worker"} 410
kubelet_goroutines{operation="volume"} 200
# TYPE kubelet_pleg_relist_duration_seconds histogram
kubelet_pleg_relist_duration_seconds_bucket{le="0.005"} 0
kubelet_pleg_relist_duration_seconds_bucket{le="0.5"} 50
kubelet_pleg_relist_duration_seconds_bucket{le="10"} 90
kubelet_pleg_relist_duration_seconds_bucket{le="30"} 100
kubelet_pleg_relist_duration_seconds_bucket{le="+Inf"} 100
kubelet_pleg_relist_duration_seconds_sum 512
kubelet_pleg_relist_duration_seconds_count 100
kubelet_evictions_total{eviction_signal="memory.available"} 3
kubelet_evictions_total{eviction_signal="nodefs.available"} 1
kubelet_cgroup_version 1
kubelet_running_containers{container_state="created"} 1
kubelet_running_containers{container_state="exited"} 212
kubelet_running_containers{container_state="running"} 45
go_goroutines 900
"#;

    #[test]
    fn parses_recorded_kubelet_metrics() {
        let m = parse(RECORDED).unwrap();
        assert_eq!(m.goroutines, Some(610.0));
        assert_eq!(m.evictions_memory_total, Some(3.0));
        assert_eq!(m.cgroup_version, Some(1.0));
        assert_eq!(m.exited_containers, Some(212.0));
        assert_eq!(m.running_containers, Some(45.0));
        // rank 99 of 100 falls in (10, 30]: 10 + 20 * 9/10.
        assert!((m.pleg_relist_p99_seconds.unwrap() - 28.0).abs() < 1e-9);
    }

    #[test]
    fn garbage_is_not_metrics() {
        assert_eq!(parse("<html>hello</html>"), None);
        assert_eq!(parse("node_load1 0.5\n"), None);
        assert_eq!(parse(""), None);
    }
}
