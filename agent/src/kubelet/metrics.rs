//! The kubelet's own `/metrics`: goroutines, PLEG relist duration, memory evictions, cgroup
//! version, running and exited containers, the feature gates the leak causes depend on. Garbage, errors and timeouts are reported, never fatal.
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KubeletMetrics {
    pub goroutines: Option<f64>,
    /// p99 estimated from the histogram buckets, since the kubelet started (a lifetime figure:
    /// the live series uses the differences between scrapes, see `sampler::PlegWindow`).
    pub pleg_relist_p99_seconds: Option<f64>,
    /// `kubelet_pleg_relist_duration_seconds_bucket` as (le seconds, cumulative count), sorted
    /// by `le`, `+Inf` last; empty when the kubelet serves no such histogram.
    #[serde(skip)]
    pub pleg_relist_buckets: Vec<(f64, f64)>,
    pub evictions_memory_total: Option<f64>,
    pub cgroup_version: Option<f64>,
    /// `kubelet_running_containers{container_state="running"}`.
    pub running_containers: Option<f64>,
    /// `kubelet_running_containers{container_state="exited"}`: exited containers the kubelet
    /// still holds (the container GC leak's signature).
    ///
    /// The kubelet sets this gauge only for the states its last relist saw
    /// (`updateRunningPodAndContainerMetrics` in pkg/kubelet/pleg/generic.go, v1.34): a state
    /// with no container has no series until one appears, so where the gauge serves some
    /// state but not `running` or `exited`, that count is 0. (Once set, a state's series keeps
    /// its last non-zero value after its containers are gone: the kubelet never resets it.)
    pub exited_containers: Option<f64>,
    /// `kubernetes_feature_enabled{name="EventedPLEG"}`: 1 on, 0 off; None when not served.
    pub gate_evented_pleg: Option<f64>,
    /// `kubernetes_feature_enabled{name="PodCertificateRequest"}`: 1 on, 0 off.
    pub gate_pod_certificate_request: Option<f64>,
    /// Metrics whose value no kubelet gives (NaN, negative, a fractional count, a gate other
    /// than 0/1, a cgroup version other than 1/2, a histogram whose cumulative counts fall, are
    /// not whole or whose bucket bound is negative):
    /// set aside as not served, named here (`oomprobe_kubelet_metrics_errors_total{reason=
    /// "invalid_value"}`; `diagnose` names them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<&'static str>,
}

/// How the kubelet's serving certificate is checked.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA(s) that sign the kubelet's serving certificate; the only roots
    /// trusted (a kubelet's certificate is never signed by a public CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any certificate (what `curl -k` does in the field guide's quick checks).
    pub insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read bearer token file {0}")]
    Token(String, #[source] std::io::Error),
    #[error("cannot read CA file {0}")]
    Ca(String, #[source] std::io::Error),
    #[error("bad CA file {0}")]
    CaPem(String, #[source] reqwest::Error),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach {0}")]
    Http(String, #[source] reqwest::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0} answered {1}")]
    Status(String, String),
    #[error("{0} served no kubelet metrics (garbage or another exporter)")]
    Garbage(String),
    /// The body ran past [`MAX_BODY`] (counted as `garbage`: no kubelet serves that much).
    #[error("{0} served more than {MAX_BODY} bytes, far more than a kubelet's metrics: not read further")]
    TooLarge(String),
    #[error("{0} did not answer in HTTP (another protocol, or a broken answer)")]
    Protocol(String, #[source] reqwest::Error),
}

impl MetricsError {
    /// The `reason` label of `oomprobe_kubelet_metrics_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            MetricsError::Token(..) => "token",
            MetricsError::Ca(..)
            | MetricsError::CaPem(..)
            | MetricsError::Client(_)
            | MetricsError::Http(..) => "connect",
            MetricsError::Timeout(..) => "timeout",
            MetricsError::Status(..) => "status",
            MetricsError::Garbage(_) | MetricsError::TooLarge(_) | MetricsError::Protocol(..) => {
                "garbage"
            }
        }
    }
}

/// The HTTP client for the kubelet's endpoint: rustls, only the CA file's roots (or none and
/// no verification with `insecure`), `timeout` for the whole exchange, no redirects, no proxy.
pub fn client(tls: &TlsOptions, timeout: Duration) -> Result<reqwest::Client, MetricsError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_certs(tls.insecure);
    if let Some(ca) = &tls.ca_file {
        let name = ca.display().to_string();
        let pem = crate::files::read(ca, crate::files::MAX_BYTES)
            .map_err(|e| MetricsError::Ca(name.clone(), e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| MetricsError::CaPem(name.clone(), e))?;
        if certs.is_empty() {
            let none = std::io::Error::new(std::io::ErrorKind::InvalidData, "no PEM certificate");
            return Err(MetricsError::Ca(name, none));
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(MetricsError::Client)
}

// Own parser, not a crate: the one maintained-looking candidate, `prometheus-parse` 0.2.5,
// finds a sample's labels with the regex `\{[^}]+\}`, so a `}` inside a quoted label value
// (legal; kubelet label values carry paths and error strings) cuts the line, and it pulls regex,
// chrono and itertools (about 1 MiB of binary) for the ~60 lines below. The text exposition
// format (https://prometheus.io/docs/instrumenting/exposition_formats/) is read to the letter
// for what the kubelet serves: comments and `# HELP`/`# TYPE` skipped, label values quoted with
// `\\`, `\"` and `\n` escapes, an optional timestamp after the value, `+Inf`/`-Inf`/`NaN`.

/// One sample line: metric name, its labels (unescaped), value.
#[derive(Debug, PartialEq)]
struct SampleLine<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// The most labels a sample line may have (a kubelet's have at most a handful); a line with
/// more is malformed. Without a bound, a 15 MB body of one line of 3 million empty labels took
/// 158 MB to parse (the agent's own limit is 128 MiB).
const MAX_LABELS: usize = 64;

/// `name{label="value",...} value [timestamp]`; None for comments, blank and malformed lines
/// (and for a line of more than [`MAX_LABELS`] labels).
fn sample_line(line: &str) -> Option<SampleLine<'_>> {
    let line = line.trim_start();
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            if labels.len() == MAX_LABELS {
                return None;
            }
            let (key, r) = rest.split_once('=')?;
            let mut chars = r.strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim(), value));
            rest = &r[end + 2..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(SampleLine {
        name,
        labels,
        value,
    })
}

fn label<'a>(labels: &'a [(&str, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

/// Parses Prometheus text exposition of the kubelet.
pub fn parse(text: &str) -> Option<KubeletMetrics> {
    let mut m = KubeletMetrics::default();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut any = false;
    let mut container_states = false;
    for line in text.lines() {
        let Some(SampleLine {
            name,
            labels,
            value: v,
        }) = sample_line(line)
        else {
            continue;
        };
        let labels = labels.as_slice();
        match name {
            "kubelet_goroutines" => {
                any = true;
                *m.goroutines.get_or_insert(0.0) += v;
            }
            "go_goroutines" if m.goroutines.is_none() => m.goroutines = Some(v),
            "kubelet_pleg_relist_duration_seconds_bucket" => {
                any = true;
                let le = match label(labels, "le").unwrap_or("+Inf") {
                    "+Inf" | "Inf" => f64::INFINITY,
                    le => le.parse().unwrap_or(f64::INFINITY),
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
                container_states = true;
                match label(labels, "container_state") {
                    Some("running") => *m.running_containers.get_or_insert(0.0) += v,
                    Some("exited") => *m.exited_containers.get_or_insert(0.0) += v,
                    _ => {}
                }
            }
            "kubernetes_feature_enabled" => match label(labels, "name") {
                Some("EventedPLEG") => m.gate_evented_pleg = Some(v),
                Some("PodCertificateRequest") => m.gate_pod_certificate_request = Some(v),
                _ => {}
            },
            n if n.starts_with("kubelet_") => any = true,
            _ => {}
        }
    }
    if container_states {
        // A state without containers has no series (see `exited_containers`).
        m.running_containers.get_or_insert(0.0);
        m.exited_containers.get_or_insert(0.0);
    }
    // Values no kubelet gives are not served (the series' own domains, shared with the store
    // and replay: crate::detect::series::invalid_value).
    let invalid = &mut m.invalid;
    for (metric, column, slot) in [
        ("go_goroutines", "goroutines", &mut m.goroutines),
        (
            "kubelet_evictions_total",
            "evictions_memory_total",
            &mut m.evictions_memory_total,
        ),
        (
            "kubelet_cgroup_version",
            "cgroup_version",
            &mut m.cgroup_version,
        ),
        (
            "kubelet_running_containers{container_state=\"running\"}",
            "containers",
            &mut m.running_containers,
        ),
        (
            "kubelet_running_containers{container_state=\"exited\"}",
            "exited_containers",
            &mut m.exited_containers,
        ),
        (
            "kubernetes_feature_enabled{name=\"EventedPLEG\"}",
            "gate_evented_pleg",
            &mut m.gate_evented_pleg,
        ),
        (
            "kubernetes_feature_enabled{name=\"PodCertificateRequest\"}",
            "gate_pod_certificate_request",
            &mut m.gate_pod_certificate_request,
        ),
    ] {
        if slot.is_some_and(|v| crate::detect::series::invalid_value(column, v).is_some()) {
            *slot = None;
            invalid.push(metric);
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // A bucket's bound is a duration (never negative) and its count a whole number of
    // relists: the series the live agent derives from them (relists, slower shares, p99) are
    // persisted, and a fractional count or a negative p99 would make the store drop the whole
    // sample (its RSS with it) when the agent next loads it.
    let bad_histogram = buckets.iter().any(|(le, c)| {
        le.is_nan()
            || *le < 0.0
            || crate::detect::series::invalid_value("pleg_relists", *c).is_some()
    }) || buckets.windows(2).any(|w| w[1].1 < w[0].1);
    if bad_histogram {
        buckets.clear();
        m.invalid
            .push("kubelet_pleg_relist_duration_seconds_bucket");
    }
    if !buckets.is_empty() {
        m.pleg_relist_p99_seconds = histogram_quantile(&buckets, 0.99);
        m.pleg_relist_buckets = buckets;
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

/// Kubelet metrics bodies above this are refused as garbage (a kubelet serves 100-500 KiB).
const MAX_BODY: usize = 16 << 20;

/// GETs the kubelet's metrics (http or https) with an optional bearer token.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<KubeletMetrics, MetricsError> {
    // Errors name the URL without credentials or query (crate::redact_url); reqwest's own
    // errors are stripped of it.
    let shown = crate::redact_url(url);
    let classify = |e: reqwest::Error| {
        let e = e.without_url();
        if e.is_timeout() {
            MetricsError::Timeout(shown.clone(), timeout)
        } else if e.is_connect() || e.is_builder() {
            MetricsError::Http(shown.clone(), e)
        } else {
            // Connected, but what came back is not an HTTP answer (or broke off mid-body).
            MetricsError::Protocol(shown.clone(), e)
        }
    };
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t.trim());
    }
    let mut r = req.send().await.map_err(classify)?;
    let status = r.status();
    if !status.is_success() {
        return Err(MetricsError::Status(shown, status.to_string()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(MetricsError::TooLarge(shown));
        }
        body.extend_from_slice(&chunk);
    }
    parse(&String::from_utf8_lossy(&body)).ok_or(MetricsError::Garbage(shown))
}

/// One scrape of the scraper's loop: the token read first (a bad token file is the error,
/// nothing is sent), the client built once (a CA file that cannot be read is retried at the
/// next tick).
async fn scrape_once(
    http: &mut Option<reqwest::Client>,
    url: &str,
    token: Result<Option<String>, MetricsError>,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<KubeletMetrics, MetricsError> {
    let token = token?;
    let c = match http {
        Some(c) => c,
        None => http.insert(client(tls, timeout)?),
    };
    fetch(c, url, token.as_deref(), timeout).await
}

/// The latest scrape: `None` until one succeeds and after one fails.
pub type Latest = std::sync::Arc<std::sync::Mutex<Option<KubeletMetrics>>>;

/// Scrapes `url` every `every` in a task of its own; each failure is counted in `errors`
/// (`oomprobe_kubelet_metrics_errors_total{reason}`) and logged (the first, then every 60th).
/// `token` is read before each scrape (it may be rotated on disk); a token file that cannot
/// be read is such a failure (`reason="token"`), and no request goes out without it.
pub fn spawn_scraper(
    url: String,
    token: impl Fn() -> Result<Option<String>, MetricsError> + Send + 'static,
    tls: TlsOptions,
    every: Duration,
    errors: prometheus::IntCounterVec,
) -> Latest {
    let latest = Latest::default();
    let out = latest.clone();
    let timeout = Duration::from_secs(2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut failures = 0u64;
        let mut http = None;
        loop {
            tick.tick().await;
            let got = scrape_once(&mut http, &url, token(), &tls, timeout).await;
            let value = match got {
                Ok(m) => {
                    if !m.invalid.is_empty() {
                        errors.with_label_values(&["invalid_value"]).inc();
                        if failures.is_multiple_of(60) {
                            tracing::warn!(metrics = ?m.invalid, "kubelet metrics with values no kubelet gives: set aside");
                        }
                        failures += 1;
                    }
                    Some(m)
                }
                Err(e) => {
                    errors.with_label_values(&[e.reason()]).inc();
                    if failures.is_multiple_of(60) {
                        tracing::warn!(error = %crate::error_chain(&e), "kubelet metrics unavailable");
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

    /// Recorded from a real kubelet v1.34.4 (`cargo xtask lab up`); see the file's header.
    pub const RECORDED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/kubelet-v1.34.4-metrics.txt"
    ));

    #[test]
    fn parses_recorded_kubelet_metrics() {
        let m = parse(RECORDED).unwrap();
        // A real kubelet serves go_goroutines; there is no kubelet_goroutines.
        assert!(!RECORDED.contains("kubelet_goroutines"));
        assert_eq!(m.goroutines, Some(145.0));
        // kubelet_evictions has no series until the kubelet evicts something.
        assert_eq!(m.evictions_memory_total, None);
        assert_eq!(m.cgroup_version, Some(1.0));
        assert_eq!(m.exited_containers, Some(2.0));
        assert_eq!(m.running_containers, Some(1.0));
        // 4 relists: rank 3.96 falls in (0.05, 0.1], which holds the 4th: 0.05 + 0.05 * 0.96.
        assert!((m.pleg_relist_p99_seconds.unwrap() - 0.098).abs() < 1e-9);
    }

    #[test]
    fn the_real_pleg_histogram_tops_out_at_10_seconds() {
        // metrics.DefBuckets: no finite bucket above 10 s, so a p99 estimate never exceeds 10.
        let top = RECORDED
            .lines()
            .filter_map(|l| l.strip_prefix("kubelet_pleg_relist_duration_seconds_bucket{le=\""))
            .filter_map(|l| l.split('"').next()?.parse::<f64>().ok())
            .filter(|le| le.is_finite())
            .fold(0.0, f64::max);
        assert_eq!(top, 10.0);
    }

    /// A v1.34 kubelet whose relist saw no exited container serves only the running series
    /// (lab_kubelet_metrics_through_authn_authz met one after the kubelet's restart): exited
    /// is 0, not unknown. Without the gauge at all, both stay unknown.
    #[test]
    fn a_container_state_without_a_series_counts_zero() {
        let m = parse("kubelet_running_containers{container_state=\"running\"} 3\n").unwrap();
        assert_eq!(m.running_containers, Some(3.0));
        assert_eq!(m.exited_containers, Some(0.0));
        let m = parse("kubelet_running_containers{container_state=\"exited\"} 4\n").unwrap();
        assert_eq!(m.running_containers, Some(0.0));
        assert_eq!(m.exited_containers, Some(4.0));
        let m = parse("kubelet_cgroup_version 1\n").unwrap();
        assert_eq!((m.running_containers, m.exited_containers), (None, None));
    }

    #[test]
    fn label_values_with_escapes_braces_and_timestamps() {
        let l = sample_line(
            r#"kubelet_x{path="C:\\DIR\\{x}",error="no file:\n\"F\"", le="0.5"} 1.5e3 1395066363000"#,
        )
        .unwrap();
        assert_eq!(l.name, "kubelet_x");
        assert_eq!(label(&l.labels, "path"), Some(r"C:\DIR\{x}"));
        assert_eq!(label(&l.labels, "error"), Some("no file:\n\"F\""));
        assert_eq!(label(&l.labels, "le"), Some("0.5"));
        assert_eq!(l.value, 1500.0);
        assert_eq!(
            sample_line("go_goroutines +Inf").unwrap().value,
            f64::INFINITY
        );
        assert!(sample_line("kubelet_x NaN").unwrap().value.is_nan());
        assert_eq!(sample_line("# TYPE kubelet_x gauge"), None);
        assert_eq!(sample_line(r#"kubelet_x{a="unterminated} 1"#), None);
        assert_eq!(sample_line("kubelet_x{a=\"1\"} nope"), None);
        // A `}` in a label value does not end the labels.
        let m = parse("kubelet_running_containers{container_state=\"exited\",note=\"a}b\"} 7\n")
            .unwrap();
        assert_eq!(m.exited_containers, Some(7.0));
    }

    /// NaN goroutines, a negative eviction count, a gate of 7, cgroup version 3, half a
    /// container and a histogram whose cumulative counts fall are set aside and named; the
    /// good values of the same scrape are kept.
    #[test]
    fn values_no_kubelet_gives_are_set_aside() {
        let text = "go_goroutines NaN\n\
            kubelet_evictions_total{eviction_signal=\"memory.available\"} -3\n\
            kubelet_cgroup_version 3\n\
            kubelet_running_containers{container_state=\"running\"} 2.5\n\
            kubelet_running_containers{container_state=\"exited\"} 4\n\
            kubernetes_feature_enabled{name=\"EventedPLEG\",stage=\"ALPHA\"} 7\n\
            kubernetes_feature_enabled{name=\"PodCertificateRequest\",stage=\"ALPHA\"} 1\n\
            kubelet_pleg_relist_duration_seconds_bucket{le=\"1\"} 10\n\
            kubelet_pleg_relist_duration_seconds_bucket{le=\"+Inf\"} 5\n";
        let m = parse(text).unwrap();
        assert_eq!(
            m.invalid,
            [
                "go_goroutines",
                "kubelet_evictions_total",
                "kubelet_cgroup_version",
                "kubelet_running_containers{container_state=\"running\"}",
                "kubernetes_feature_enabled{name=\"EventedPLEG\"}",
                "kubelet_pleg_relist_duration_seconds_bucket",
            ]
        );
        assert_eq!(m.goroutines, None);
        assert_eq!(m.evictions_memory_total, None);
        assert_eq!(m.cgroup_version, None);
        assert_eq!(m.running_containers, None);
        assert_eq!(m.exited_containers, Some(4.0));
        assert_eq!(m.gate_evented_pleg, None);
        assert_eq!(m.gate_pod_certificate_request, Some(1.0));
        assert_eq!(m.pleg_relist_p99_seconds, None);
        assert!(m.pleg_relist_buckets.is_empty());
        // The recorded real kubelet has none.
        assert!(parse(RECORDED).unwrap().invalid.is_empty());
    }

    /// A PLEG histogram with a fractional count, a count past 2^53 or a negative bucket bound
    /// is set aside: the relists and p99 the agent derives from it are persisted, and the store
    /// drops a record with a fractional count or a negative duration when it is loaded (the
    /// sample's RSS with it).
    #[test]
    fn a_pleg_histogram_the_store_would_refuse_is_set_aside() {
        for text in [
            "kubelet_pleg_relist_duration_seconds_bucket{le=\"1\"} 2.5\n\
             kubelet_pleg_relist_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "kubelet_pleg_relist_duration_seconds_bucket{le=\"-1\"} 5\n\
             kubelet_pleg_relist_duration_seconds_bucket{le=\"+Inf\"} 5\n",
            "kubelet_pleg_relist_duration_seconds_bucket{le=\"+Inf\"} 1e300\n",
        ] {
            let m = parse(text).unwrap();
            assert_eq!(
                m.invalid,
                ["kubelet_pleg_relist_duration_seconds_bucket"],
                "{text}"
            );
            assert_eq!(m.pleg_relist_p99_seconds, None, "{text}");
            assert!(m.pleg_relist_buckets.is_empty(), "{text}");
        }
        // What the live agent would have derived, shown refused by the store's own check.
        assert!(crate::detect::series::invalid_value("pleg_relists", 2.5).is_some());
        assert!(crate::detect::series::invalid_value("pleg_relist_p99_seconds", -0.5).is_some());
    }

    /// A line of more labels than any kubelet serves is malformed: skipped before its labels
    /// pile up (3 million empty labels in a 15 MB line took 158 MB).
    #[test]
    fn a_line_of_too_many_labels_is_skipped() {
        let many = |n: usize| format!("kubelet_cgroup_version{{{}}} 2\n", "a=\"\",".repeat(n));
        assert_eq!(
            sample_line(&many(MAX_LABELS)).unwrap().labels.len(),
            MAX_LABELS
        );
        assert_eq!(sample_line(&many(MAX_LABELS + 1)), None);
        let m = parse(&format!("{}kubelet_goroutines 7\n", many(3_000_000))).unwrap();
        assert_eq!(m.cgroup_version, None);
        assert_eq!(m.goroutines, Some(7.0));
    }

    #[test]
    fn garbage_is_not_metrics() {
        assert_eq!(parse("<html>hello</html>"), None);
        assert_eq!(parse("node_load1 0.5\n"), None);
        assert_eq!(parse(""), None);
    }

    /// A loopback server with a fresh self-signed certificate for 127.0.0.1 (TLS when `tls`),
    /// answering every request with `response` (raw HTTP), or holding the connection
    /// unanswered when it is empty. Returns the URL and the CA file.
    async fn server(tls: bool, response: String) -> (String, std::path::PathBuf) {
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "oomprobe-kubelet-tls-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls { "https" } else { "http" };
        let url = format!(
            "{scheme}://127.0.0.1:{}/metrics",
            l.local_addr().unwrap().port()
        );
        async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
            mut s: S,
            response: &str,
        ) {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            if response.is_empty() {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            let _ = s.write_all(response.as_bytes()).await;
            let _ = s.shutdown().await;
        }
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    if tls {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            answer(s, &response).await;
                        }
                    } else {
                        answer(tcp, &response).await;
                    }
                });
            }
        });
        (url, ca)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn ok_chunked(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
    }

    #[tokio::test]
    async fn https_scrape_verifies_the_kubelet_certificate_against_the_ca_file() {
        let (url, ca) = server(true, ok_chunked(RECORDED)).await;
        let t = Duration::from_secs(5);
        let with_ca = TlsOptions {
            ca_file: Some(ca.clone()),
            insecure: false,
        };
        let c = client(&with_ca, t).unwrap();
        let m = fetch(&c, &url, Some("tok\n"), t).await.unwrap();
        assert_eq!(m.goroutines, Some(145.0));
        assert_eq!(m.exited_containers, Some(2.0));
        let insecure = TlsOptions {
            ca_file: None,
            insecure: true,
        };
        let c = client(&insecure, t).unwrap();
        assert_eq!(
            fetch(&c, &url, None, t).await.unwrap().goroutines,
            Some(145.0)
        );
        // No CA and not insecure: the self-signed certificate is refused.
        let c = client(&TlsOptions::default(), t).unwrap();
        let err = fetch(&c, &url, None, t).await.unwrap_err();
        assert_eq!(err.reason(), "connect", "{err}");
        assert!(
            crate::error_chain(&err).contains("certificate"),
            "{}",
            crate::error_chain(&err)
        );
        // A CA file that is not PEM is an error, not an empty trust store.
        let bad = ca.with_file_name("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let bad_opts = TlsOptions {
            ca_file: Some(bad),
            insecure: false,
        };
        let got = client(&bad_opts, t).map(|_| ()).map_err(|e| e.reason());
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
        assert_eq!(got, Err("connect"));
    }

    #[tokio::test]
    async fn each_failure_has_its_reason() {
        let t = Duration::from_millis(500);
        let c = client(&TlsOptions::default(), t).unwrap();
        let (url, ca) = server(
            false,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".into(),
        )
        .await;
        let e = fetch(&c, &url, None, t).await.unwrap_err();
        assert_eq!(
            (e.reason(), e.to_string()),
            (
                "status",
                format!("{url} answered 500 Internal Server Error")
            )
        );
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
        let (url, ca) = server(false, ok_chunked("<html>hi</html>")).await;
        assert_eq!(
            fetch(&c, &url, None, t).await.unwrap_err().reason(),
            "garbage"
        );
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
        // A body past the bound is named as such, not as "no kubelet metrics".
        let huge = "kubelet_cgroup_version 2\n".repeat(MAX_BODY / 24 + 1);
        let (url, ca) = server(false, ok_chunked(&huge)).await;
        let e = fetch(&c, &url, None, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(
            (e.reason(), e.to_string()),
            (
                "garbage",
                format!("{url} served more than {MAX_BODY} bytes, far more than a kubelet's metrics: not read further")
            )
        );
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
        // Another protocol's greeting on the port: not "cannot reach".
        let (url, ca) = server(false, "SSH-2.0-OpenSSH_9.2\r\n".into()).await;
        let e = fetch(&c, &url, None, t).await.unwrap_err();
        assert_eq!(
            (e.reason(), e.to_string()),
            (
                "garbage",
                format!("{url} did not answer in HTTP (another protocol, or a broken answer)")
            )
        );
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
        let (url, ca) = server(false, String::new()).await;
        let start = std::time::Instant::now();
        assert_eq!(
            fetch(&c, &url, None, t).await.unwrap_err().reason(),
            "timeout"
        );
        assert!(start.elapsed() < Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
        // Nothing listens on port 1.
        let e = fetch(&c, "http://127.0.0.1:1/metrics", None, t)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "connect");
        assert!(e.to_string().contains("cannot reach"));
    }

    /// A token file that cannot be read is counted under `reason="token"` at each scrape and
    /// no request goes out (it used to go out without an Authorization header).
    #[tokio::test]
    async fn a_bad_token_is_counted_and_nothing_is_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new("errors_total", "test"),
            &["reason"],
        )
        .unwrap();
        let token = || {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            Err(MetricsError::Token("/dev/zero".into(), e))
        };
        let latest = spawn_scraper(
            url,
            token,
            TlsOptions::default(),
            Duration::from_millis(10),
            errors.clone(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while errors.with_label_values(&["token"]).get() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "no token error counted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a request went out without the token"
        );
        assert!(latest.lock().unwrap().is_none());
        for other in ["connect", "timeout", "status", "garbage"] {
            assert_eq!(errors.with_label_values(&[other]).get(), 0, "{other}");
        }
    }
}
