//! `oomprobe diagnose`: one-shot and read-only, the field guide's quick checks done natively,
//! each with a verdict in the guide's good/bad terms, and the OOM cycle stage the node shows now.
use std::{path::PathBuf, time::Duration};

use serde::Serialize;

use super::OutputFormat;
use crate::{
    cgroup::Hierarchy,
    cycle::{node_memory_recommendations, Ending, Headroom, NodeRule, Observation},
    detect::{Engine, Sample, Subject},
    kubelet::metrics as kubelet_metrics,
    sampler::{kubelet_memory, pod_cgroups, working_set, KernelVersion},
};

mod oom_kills;

#[derive(Debug, clap::Args)]
pub struct DiagnoseArgs {
    /// Output format: one line per check, text or a JSON object.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// The kubelet's process name; as the kernel keeps process names, only its first 15
    /// bytes are compared.
    #[arg(long, default_value = "kubelet", value_parser = super::parse_process_name)]
    pub kubelet_name: String,
    #[command(flatten)]
    pub kubelet_metrics: super::endpoints::KubeletMetricsArgs,
    #[command(flatten)]
    pub api: super::endpoints::KubeApiArgs,
    /// The agent's state directory: the persisted series gives the leak verdict and the
    /// recent growth rates.
    #[arg(long, default_value = "/var/lib/oomprobe")]
    pub state_dir: PathBuf,
    /// Cgroup paths (in the memory hierarchy) under which pods live; repeatable (as `run`'s):
    /// the pods and containers counted, and whether a kubelet set this node up.
    #[arg(long, default_values_t = crate::sampler::KUBEPODS_ROOTS.iter().map(|s| s.to_string()), value_parser = super::parse_cgroup_path)]
    pub kubepods_root: Vec<String>,
    /// The kubelet's hard eviction threshold on memory.available (its `--eviction-hard`), as
    /// the kubelet writes it: bytes or a quantity (`100Mi`, `1.5Gi`, `2G`), or a percentage of
    /// the node's MemTotal (`10%`; `0%` is no threshold).
    #[arg(long, default_value = "100Mi", value_parser = super::parse_eviction_hard)]
    pub eviction_hard_memory: super::EvictionHard,
}

/// How far back the persisted series counts for the growth rates.
const RATE_WINDOW_SECONDS: i64 = 120;

/// The headroom check: which ending the node is heading to, how soon, and what to do. Rates
/// come from the persisted samples of the last [`RATE_WINDOW_SECONDS`] plus the live reading.
fn ending_check(
    live: Option<Observation>,
    recent: &[Sample],
    now_unix: i64,
    eviction_hard_bytes: u64,
    limit_near: bool,
) -> (Check, bool) {
    let Some(live) = live else {
        return (
            check(
                "ending",
                "-",
                Health::Unknown,
                "no kubelet process to assess",
            ),
            false,
        );
    };
    let ns = |t: i64| u64::try_from(t).unwrap_or(0).saturating_mul(1_000_000_000);
    let mut window: Vec<Observation> = recent
        .iter()
        .filter(|s| s.t >= now_unix - RATE_WINDOW_SECONDS && s.t < now_unix)
        .map(|s| Observation {
            ktime_ns: ns(s.t),
            kubelet_rss_bytes: s.kubelet_rss_bytes as u64,
            kubelet_usage_bytes: s.kubelet_cgroup_bytes.map(|b| b as u64),
            kubelet_limit_bytes: s.kubelet_limit_bytes.map(|b| b as u64),
            node_available_bytes: s.node_mem_available_bytes.map(|b| b as u64),
            node_total_bytes: s.node_mem_total_bytes.map(|b| b as u64),
        })
        .collect();
    window.push(Observation {
        ktime_ns: ns(now_unix),
        ..live
    });
    let Some(h) = Headroom::assess(&window, eviction_hard_bytes) else {
        return (
            check(
                "ending",
                "-",
                Health::Unknown,
                "no limit and no MemAvailable",
            ),
            false,
        );
    };
    let approaching = match h.ending {
        Ending::NodeMemory => h.node_pre_oom(&NodeRule {
            eviction_hard_bytes,
            ..Default::default()
        }),
        Ending::KubeletLimit => limit_near,
    };
    let mut detail = h.describe();
    if window.len() < 2 {
        detail.push_str(" (one reading: rates need the agent's persisted series)");
    }
    if h.ending == Ending::NodeMemory {
        for r in node_memory_recommendations(Some(&h), 0, eviction_hard_bytes) {
            detail.push_str("; ");
            detail.push_str(&r);
        }
    }
    let value = match h.seconds_left {
        Some(s) => format!("{} ({s:.0} s left)", h.ending.as_str()),
        None => h.ending.as_str().to_string(),
    };
    let verdict = if approaching {
        Health::Bad
    } else {
        Health::Good
    };
    let c = check("ending", value, verdict, detail)
        .typed(h.ending.as_str())
        .field("seconds_left", h.seconds_left);
    (c, approaching)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Good,
    Bad,
    Unknown,
}

/// One check. Printed as text (`value` as a person reads it, `198 of 256 MiB`) or as one JSON
/// object per line: `check`, `value` typed ([`Check::json`]: a byte count as an integer, a
/// count as an integer, seconds or a ratio as a float, a yes/no as a boolean, a name as a
/// string, `null` when not known), `unit` when `value` is a quantity (`bytes`, `count`,
/// `seconds`, `ratio`), `verdict`, `detail`, then the check's own figures ([`Check::fields`]),
/// each named with its unit (`limit_bytes`, `seconds_left`, `slower_10s_ratio`).
#[derive(Debug, Clone)]
pub struct Check {
    pub check: &'static str,
    /// The value as the text output prints it.
    pub value: String,
    pub verdict: Health,
    pub detail: String,
    /// The value as JSON gives it; by default the text, or `null` for `-`.
    pub json: serde_json::Value,
    /// The unit of a quantity in `json`.
    pub unit: Option<&'static str>,
    /// The check's own figures, printed in JSON after `detail`.
    pub fields: Vec<(&'static str, serde_json::Value)>,
}

impl Check {
    /// The JSON value: a quantity in `unit`.
    fn quantity(mut self, v: impl Into<serde_json::Value>, unit: &'static str) -> Check {
        self.json = v.into();
        self.unit = Some(unit);
        self
    }

    /// The JSON value: not a quantity (a boolean, a name, a list).
    fn typed(mut self, v: impl Into<serde_json::Value>) -> Check {
        self.json = v.into();
        self
    }

    /// One of the check's own figures (`name` says its unit).
    fn field(mut self, name: &'static str, v: impl Into<serde_json::Value>) -> Check {
        self.fields.push((name, v.into()));
        self
    }
}

impl Serialize for Check {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("check", self.check)?;
        m.serialize_entry("value", &self.json)?;
        if let Some(u) = self.unit {
            m.serialize_entry("unit", u)?;
        }
        m.serialize_entry("verdict", &self.verdict)?;
        m.serialize_entry("detail", &self.detail)?;
        for (k, v) in &self.fields {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn check(
    check: &'static str,
    value: impl Into<String>,
    verdict: Health,
    detail: impl Into<String>,
) -> Check {
    let value = value.into();
    Check {
        check,
        json: if value == "-" {
            serde_json::Value::Null
        } else {
            value.clone().into()
        },
        unit: None,
        fields: Vec::new(),
        value,
        verdict,
        detail: detail.into(),
    }
}

/// The first process whose comm is `name` cut as the kernel cuts it (15 bytes).
fn find_pid(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = crate::kubelet::tracker::comm_of(pid)?;
        crate::kubelet::tracker::comm_matches(&comm, name).then_some(pid)
    })
}

/// The cgroup's `oom_kill` counter and the file it is in.
fn oom_kills(h: &Hierarchy, cgroup: &str) -> Option<(u64, &'static str)> {
    let (file, key) = match h {
        Hierarchy::V1(_) => ("memory.oom_control", "oom_kill"),
        Hierarchy::V2(_) => ("memory.events", "oom_kill"),
    };
    std::fs::read_to_string(h.dir(cgroup).join(file))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .map(|n| (n, file))
}

fn uptime_of(pid: u32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    let boot = procfs::Uptime::current().ok()?.uptime;
    Some(boot - stat.starttime as f64 / procfs::ticks_per_second() as f64)
}

use procfs::Current as _;

/// The kernel's OOM kills since boot (`/proc/vmstat` `oom_kill`): informational, never BAD. A
/// count since boot says nothing of the node now (one container's OOM kill last week would
/// make every later run exit 2); the kubelet's own kills and the stage are the verdicts.
fn node_oom_kills_check(vmstat: &str) -> Check {
    let n: Option<u64> = vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok());
    match n {
        Some(0) => check(
            "node_oom_kills",
            "0",
            Health::Good,
            "kernel OOM kills since boot (/proc/vmstat oom_kill)",
        )
        .quantity(0, "count"),
        Some(n) => check(
            "node_oom_kills",
            n.to_string(),
            Health::Unknown,
            "kernel OOM kills since boot (/proc/vmstat oom_kill): informational, a count since boot is no verdict on the node now (kubelet_oom_kills and stage are; the agent records each kill)",
        )
        .quantity(n, "count"),
        None => check(
            "node_oom_kills",
            "-",
            Health::Unknown,
            "no oom_kill in /proc/vmstat (a kernel before 4.13)",
        )
        .quantity(serde_json::Value::Null, "count"),
    }
}

/// The node's MemoryPressure condition from the API server, if reachable.
async fn memory_pressure(args: &DiagnoseArgs) -> Check {
    let source = args.api.source();
    if !source.available() {
        return check(
            "memory_pressure",
            "-",
            Health::Unknown,
            "not checked: no API server (not in a cluster; pass --kubeconfig or --kube-api)",
        );
    }
    let node = args.api.node();
    let client = match source.client().await {
        Ok(c) => c,
        Err(e) => {
            return check(
                "memory_pressure",
                "-",
                Health::Unknown,
                crate::error_chain(&e),
            )
        }
    };
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        crate::kubeapi::node_condition(client, &node, "MemoryPressure"),
    )
    .await;
    let status = match got {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return check(
                "memory_pressure",
                "-",
                Health::Unknown,
                format!("{}: {}", source.describe(), crate::error_chain(&e)),
            )
        }
        Err(_) => {
            return check(
                "memory_pressure",
                "-",
                Health::Unknown,
                format!("{}: no answer within 5 s", source.describe()),
            )
        }
    };
    match status.as_deref() {
        Some("False") => check(
            "memory_pressure",
            "False",
            Health::Good,
            format!("node {node}"),
        )
        .typed(false),
        // `True`, or `Unknown` (the node stopped posting status): not known to be false.
        Some(s) => check(
            "memory_pressure",
            s,
            Health::Bad,
            format!("node {node}: MemoryPressure precedes OOM and kubelet instability"),
        )
        .typed((s == "True").then_some(true)),
        None => check(
            "memory_pressure",
            "-",
            Health::Unknown,
            format!("node {node}: no MemoryPressure condition"),
        ),
    }
}

/// The share of the kubelet's PLEG relists slower than 1, 5 and 10 s since it started (one
/// scrape: the cumulative buckets; the agent's series has them per sample interval).
fn pleg_slow_check(buckets: &[(f64, f64)]) -> Option<Check> {
    let total = buckets.last()?.1;
    let share = |le: f64| {
        let at = buckets.iter().find(|b| b.0 == le)?.1;
        (total > 0.0).then(|| (total - at).max(0.0) / total)
    };
    let (s1, s5, s10) = (share(1.0), share(5.0), share(10.0));
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
    let stressed = s10.is_some_and(|v| v > 0.01);
    Some(
        check(
            "pleg_relists_slow",
            format!("{} / {} / {}", pct(s1), pct(s5), pct(s10)),
            if total <= 0.0 {
                Health::Unknown
            } else if stressed {
                Health::Bad
            } else {
                Health::Good
            },
            format!(
                "of {total:.0} PLEG relists since the kubelet started, the share slower than 1 s / 5 s / 10 s (over 1% above 10 s: the runtime or kubelet is stressed)"
            ),
        )
        .quantity(s10, "ratio")
        .field("relists", whole(total))
        .field("slower_1s_ratio", s1)
        .field("slower_5s_ratio", s5)
        .field("slower_10s_ratio", s10),
    )
}

/// The feature gates the known leaks depend on, from the kubelet's kubernetes_feature_enabled.
fn feature_gates_check(m: &kubelet_metrics::KubeletMetrics) -> Check {
    let name = |v: Option<f64>| match v {
        Some(1.0) => "on",
        Some(_) => "off",
        None => "not served",
    };
    let on = m.gate_evented_pleg == Some(1.0) || m.gate_pod_certificate_request == Some(1.0);
    let known = m.gate_evented_pleg.is_some() && m.gate_pod_certificate_request.is_some();
    let gate = |v: Option<f64>| v.map(|v| v == 1.0);
    check(
        "feature_gates",
        format!(
            "EventedPLEG {}, PodCertificateRequest {}",
            name(m.gate_evented_pleg),
            name(m.gate_pod_certificate_request)
        ),
        if on {
            Health::Bad
        } else if known {
            Health::Good
        } else {
            Health::Unknown
        },
        "kubernetes_feature_enabled of the kubelet: EventedPLEG on goes with the goroutine leak (kubernetes#132266), PodCertificateRequest on with the pod certificate manager's (kubernetes#133501)",
    )
    // Whether a gate a known leak depends on is on (null: not both served, none on).
    .typed(if on { Some(true) } else { known.then_some(false) })
    .field("evented_pleg", gate(m.gate_evented_pleg))
    .field("pod_certificate_request", gate(m.gate_pod_certificate_request))
}

/// A count read as f64 (validated whole and finite by the metrics parser) as a JSON integer.
fn whole(v: f64) -> u64 {
    v as u64
}

/// Runs every check and prints them. Returns whether any check is BAD (`main` exits 2 then).
/// Errors: standard output cannot be written.
/// Why diagnose could not run (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    /// A --kubeconfig given that cannot be used (not a regular file, unreadable, not a
    /// kubeconfig, a file it names missing), or a bad --kube-token-file or --kube-ca-file:
    /// refused before any check, naming the file.
    #[error(transparent)]
    Kubeconfig(crate::kubeapi::ApiError),
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

pub async fn run(args: DiagnoseArgs) -> Result<bool, DiagnoseError> {
    // A kubeconfig given by name is input like any other: a bad one is refused (exit 1), not
    // reported as an unknown memory_pressure. Building the configuration reads files only.
    args.api
        .check_files()
        .await
        .map_err(DiagnoseError::Kubeconfig)?;
    let mut checks = Vec::new();
    let h = Hierarchy::detect();
    let pid = find_pid(&args.kubelet_name);
    let mut stage = "steady";
    let mut live: Option<Observation> = None;
    let mut limit_near = false;
    let (node_available_bytes, node_total_bytes) = match procfs::Meminfo::current() {
        Ok(m) => (m.mem_available, Some(m.mem_total)),
        Err(_) => (None, None),
    };
    match pid.and_then(|p| kubelet_memory(p).map(|m| (p, m))) {
        Some((p, m)) => {
            live = Some(Observation {
                kubelet_rss_bytes: m.rss_bytes,
                node_available_bytes,
                node_total_bytes,
                ..Default::default()
            });
            checks.push(
                check(
                    "kubelet_rss",
                    format!("{} MiB", m.rss_bytes >> 20),
                    Health::Good,
                    format!(
                        "pid {p}: anon {} MiB, file {} MiB, shmem {} MiB (a single reading; the trend decides, see leak_verdict)",
                        m.anon_bytes >> 20,
                        m.file_bytes >> 20,
                        m.shmem_bytes >> 20
                    ),
                )
                .quantity(m.rss_bytes, "bytes")
                .field("pid", p)
                .field("anon_bytes", m.anon_bytes)
                .field("file_bytes", m.file_bytes)
                .field("shmem_bytes", m.shmem_bytes),
            );
            if let (Some(h), Some(cg)) = (h.as_ref(), h.as_ref().and_then(|h| h.cgroup_of(p))) {
                let state = h.memcg(&cg);
                if let (Some(o), Some(st)) = (live.as_mut(), state.as_ref()) {
                    o.kubelet_usage_bytes = st.usage_bytes;
                    o.kubelet_limit_bytes = st.limit_bytes;
                }
                let ws = working_set(h, &cg);
                match state.as_ref().and_then(|s| s.limit_bytes.zip(s.usage_bytes)) {
                    Some((limit, usage)) => {
                        let near = usage as f64 >= 0.8 * limit as f64;
                        limit_near = near;
                        if near {
                            stage = "pre_oom";
                        }
                        checks.push(
                            check(
                                "kubelet_cgroup",
                                format!("{} of {} MiB", usage >> 20, limit >> 20),
                                if near { Health::Bad } else { Health::Good },
                                format!("{cg}: working set {} MiB", ws.unwrap_or(0) >> 20),
                            )
                            .quantity(usage, "bytes")
                            .field("limit_bytes", limit)
                            .field("usage_ratio", usage as f64 / limit.max(1) as f64)
                            .field("working_set_bytes", ws)
                            .field("cgroup", cg.clone()),
                        );
                    }
                    None => checks.push(
                        check(
                            "kubelet_cgroup",
                            cg.clone(),
                            Health::Unknown,
                            "no memory limit: the kubelet is bounded only by the node (size kube-reserved)",
                        )
                        .quantity(state.as_ref().and_then(|s| s.usage_bytes), "bytes")
                        .field("limit_bytes", serde_json::Value::Null)
                        .field("usage_ratio", serde_json::Value::Null)
                        .field("working_set_bytes", ws)
                        .field("cgroup", cg.clone()),
                    ),
                }
                if let Some((n, counter)) = oom_kills(h, &cg) {
                    // The counter counts since the cgroup was created: the kernel log dates
                    // the kills (read only when there is one to date).
                    let log = if n == 0 {
                        Ok(oom_kills::KernelLog::default())
                    } else {
                        oom_kills::read_kmsg()
                            .map(|t| oom_kills::parse_kmsg(&t))
                            .map_err(|e| e.to_string())
                    };
                    let now = oom_kills::now_since_boot().unwrap_or(0.0);
                    let (c, recent) = oom_kills::check_kills(
                        &cg,
                        counter,
                        n,
                        log.as_ref().map_err(Clone::clone),
                        now,
                    );
                    if recent.map_or(n > 0, |r| r > 0) && uptime_of(p).is_some_and(|u| u < 300.0) {
                        stage = "reconciliation_storm";
                    }
                    checks.push(c);
                }
            }
            if let Some(up) = uptime_of(p) {
                checks.push(
                    check(
                        "kubelet_uptime",
                        format!("{up:.0} s"),
                        if up < 300.0 {
                            Health::Bad
                        } else {
                            Health::Good
                        },
                        "a kubelet restarted in the last 5 minutes is still reconciling",
                    )
                    // Seconds, to one decimal (the clock ticks are 10 ms; more digits are noise).
                    .quantity((up * 10.0).round() / 10.0, "seconds"),
                );
            }
        }
        None => {
            // A kubepods tree means a kubelet set this node up: it is down (or being
            // OOM-killed) now. Without one nothing says a kubelet ever ran here.
            let kubepods = h
                .as_ref()
                .is_some_and(|h| args.kubepods_root.iter().any(|r| h.dir(r).is_dir()));
            stage = if kubepods {
                "active_oom_or_down"
            } else {
                "no_kubelet"
            };
            checks.push(
                check(
                    "kubelet_rss",
                    "-",
                    Health::Bad,
                    format!("no process named {} is running", args.kubelet_name),
                )
                .quantity(serde_json::Value::Null, "bytes"),
            );
        }
    }
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    checks.push(node_oom_kills_check(&vmstat));
    match &args.kubelet_metrics.kubelet_metrics {
        Some(url) => {
            let timeout = Duration::from_secs(5);
            // A token file that cannot be read is the check's error, by name: no request
            // goes out without the credentials asked for.
            let got = match (
                args.kubelet_metrics.token(),
                kubelet_metrics::client(&args.kubelet_metrics.tls(), timeout),
            ) {
                (Ok(token), Ok(c)) => {
                    kubelet_metrics::fetch(&c, url, token.as_deref(), timeout).await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            match got {
                Ok(m) => {
                    if !m.invalid.is_empty() {
                        checks.push(
                            check(
                                "kubelet_metrics_invalid",
                                m.invalid.join(", "),
                                Health::Unknown,
                                "values no kubelet gives (NaN, negative, a fractional count, a gate other than 0/1): set aside, those checks are not made",
                            )
                            .typed(m.invalid.clone()),
                        );
                    }
                    if let Some(g) = m.goroutines {
                        checks.push(
                            check(
                                "kubelet_goroutines",
                                format!("{g:.0}"),
                                if g > 500.0 { Health::Bad } else { Health::Good },
                                "above 500, or climbing over days, precedes memory exhaustion",
                            )
                            .quantity(whole(g), "count"),
                        );
                    }
                    if let Some(p) = m.pleg_relist_p99_seconds {
                        checks.push(
                            check(
                                "pleg_relist_p99",
                                format!("{p:.2} s"),
                                if p > 10.0 { Health::Bad } else { Health::Good },
                                match p {
                                    p if p > 180.0 => "above 180 s: the node goes NotReady",
                                    p if p > 10.0 => {
                                        "sustained above 10 s: the runtime or kubelet is stressed"
                                    }
                                    p if p > 2.0 => "above the normal 1-2 s",
                                    _ => "normal (under 1-2 s)",
                                },
                            )
                            .quantity(p, "seconds"),
                        );
                    }
                    if let Some(c) = pleg_slow_check(&m.pleg_relist_buckets) {
                        checks.push(c);
                    }
                    checks.push(feature_gates_check(&m));
                    if let Some(x) = m.exited_containers {
                        let running = m.running_containers.unwrap_or(0.0);
                        let piling = x > 100.0 || x > 2.0 * running.max(1.0);
                        checks.push(
                            check(
                                "exited_containers",
                                format!("{x:.0} exited, {running:.0} running"),
                                if piling { Health::Bad } else { Health::Good },
                                "exited containers piling up against running ones is the container GC leak's sign (kubernetes#131905): compare crictl ps -a with the running pods",
                            )
                            .quantity(whole(x), "count")
                            .field("running_containers", m.running_containers.map(whole)),
                        );
                    }
                    if let Some(e) = m.evictions_memory_total {
                        checks.push(
                            check(
                                "memory_evictions",
                                format!("{e:.0}"),
                                if e > 0.0 { Health::Bad } else { Health::Good },
                                "kubelet_evictions_total{eviction_signal=\"memory.available\"} should be zero under normal load",
                            )
                            .quantity(whole(e), "count"),
                        );
                    }
                }
                Err(e) => {
                    let why = crate::error_chain(&e);
                    checks.push(check(
                        "kubelet_metrics",
                        crate::redact_url(url),
                        Health::Unknown,
                        why,
                    ))
                }
            }
        }
        None => checks.push(check(
            "kubelet_metrics",
            "-",
            Health::Unknown,
            "not checked: pass --kubelet-metrics URL",
        )),
    }
    if let Some(h) = h.as_ref() {
        let pods = pod_cgroups(h, &args.kubepods_root);
        let containers: usize = pods
            .iter()
            .map(|(p, _)| {
                std::fs::read_dir(h.dir(p))
                    .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count())
                    .unwrap_or(0)
            })
            .sum();
        checks.push(
            check(
                "containers",
                format!("{} pods, {containers} running containers", pods.len()),
                Health::Unknown,
                "from the kubepods cgroup tree; exited containers come from the kubelet's metrics (exited_containers)",
            )
            .quantity(containers, "count")
            .field("pods", pods.len()),
        );
    }
    checks.push(memory_pressure(&args).await);
    let kernel = KernelVersion::running();
    let v = h.as_ref().map(Hierarchy::version);
    let risky = v == Some(1) && kernel.is_some_and(|k| k.is_line(5, 15));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    checks.push(
        check(
            "cgroup_and_kernel",
            format!(
                "cgroup v{} kernel {release}",
                v.map_or("?".into(), |v| v.to_string()),
            ),
            if risky { Health::Bad } else { Health::Good },
            if risky {
                "cgroup v1 on Linux 5.15: a known runc leak; plan the move to cgroup v2"
            } else {
                "not the cgroup v1 + 5.15 combination"
            },
        )
        // Whether this is the risky combination; the two parts as fields.
        .typed(risky)
        .field("cgroup_version", v)
        .field("kernel", (!release.is_empty()).then(|| release.to_string())),
    );
    let store_path = args.state_dir.join("series.bin");
    let now_unix = time::OffsetDateTime::now_utc().unix_timestamp();
    // Read only: diagnose never rewrites the running agent's store. Only a store that does
    // not exist (ENOENT) is "no history"; one that cannot be read (a symlink loop, a
    // permission, an I/O error) or is corrupt is said, with why.
    let (store, unusable) = match store_path.try_exists() {
        Ok(false) => (None, None),
        _ => match crate::detect::store::load(&store_path, now_unix) {
            // Records there, none valid: the store is unusable, not an empty history.
            Ok(l) if !l.corrupt && l.samples.is_empty() && l.invalid > 0 => {
                let why = format!(
                    "series store {} holds no valid sample: all {} records rejected as invalid (a time or a value out of range, or a required value missing)",
                    store_path.display(),
                    l.invalid
                );
                (None, Some(("invalid store", why)))
            }
            Ok(l) if !l.corrupt => (Some(l), None),
            Ok(_) => {
                let bytes = std::fs::read(&store_path).unwrap_or_default();
                let why = crate::detect::store::corrupt_reason(&bytes);
                let path = store_path.display();
                let why = format!("series store {path} is corrupt: {why}");
                (None, Some(("corrupt store", why)))
            }
            Err(e) => (None, Some(("unreadable store", crate::error_chain(&e)))),
        },
    };
    let recent = store.as_ref().map_or(&[][..], |st| &st.samples[..]);
    let (ending, approaching) = match args.eviction_hard_memory.bytes(node_total_bytes) {
        Some(eviction_hard_bytes) => {
            ending_check(live, recent, now_unix, eviction_hard_bytes, limit_near)
        }
        None => (
            check(
                "ending",
                "-",
                Health::Unknown,
                format!(
                    "--eviction-hard-memory {} needs the node's MemTotal: /proc/meminfo unreadable",
                    args.eviction_hard_memory
                ),
            ),
            false,
        ),
    };
    checks.push(ending);
    if approaching && stage == "steady" {
        stage = "pre_oom";
    }
    let store = store.filter(|st| !st.samples.is_empty());
    if let Some((what, why)) = unusable {
        checks.push(
            check(
                "leak_verdict",
                what,
                Health::Unknown,
                format!("{why}: no leak verdict"),
            )
            .typed(serde_json::Value::Null),
        );
    } else if store.is_none() {
        checks.push(
            check(
                "leak_verdict",
                "no history".to_string(),
                Health::Unknown,
                format!(
                    "no series in {}: the leak verdict needs the history the agent keeps (oomprobe run --state-dir); a single reading cannot tell a leak",
                    store_path.display()
                ),
            )
            .typed(serde_json::Value::Null),
        );
    }
    if let Some(st) = store {
        let verdict = Engine::default().evaluate(&st.samples);
        checks.push(
            check(
                "leak_verdict",
                format!("{} / {}", verdict.subject.as_str(), verdict.cause.as_str()),
                match verdict.subject {
                    Subject::None => Health::Good,
                    Subject::InsufficientHistory => Health::Unknown,
                    Subject::Kubelet | Subject::Workload => Health::Bad,
                },
                format!(
                    "{} over {} samples; {}{}",
                    verdict
                        .slope_bytes_per_day
                        .map_or("slope unknown".into(), |s| format!("{:.0} MB/day", s / 1e6)),
                    st.samples.len(),
                    verdict.supports.join("; "),
                    verdict
                        .cannot_tell
                        .iter()
                        .map(|c| format!("; {c}"))
                        .collect::<String>()
                ),
            )
            .typed(verdict.subject.as_str())
            .field("cause", verdict.cause.as_str())
            .field("slope_bytes_per_day", verdict.slope_bytes_per_day)
            .field("samples", st.samples.len())
            .field("cannot_tell", verdict.cannot_tell.clone()),
        );
    }
    checks.push(check(
        "stage",
        stage,
        match stage {
            "steady" => Health::Good,
            "no_kubelet" => Health::Unknown,
            _ => Health::Bad,
        },
        match stage {
            "no_kubelet" => {
                "no kubelet process and no kubepods cgroup tree: not a node, or pass --kubelet-name"
            }
            _ => "the OOM cycle stage the node shows now",
        },
    ));
    let mut out = super::Stdout::lock();
    for c in &checks {
        let line = match args.format {
            OutputFormat::Json => serde_json::to_string(c).unwrap_or_default(),
            OutputFormat::Text => format!(
                "{:<20} {:<8} {:<28}  {}",
                c.check,
                format!("{:?}", c.verdict).to_uppercase(),
                c.value,
                c.detail
            ),
        };
        // A reader that went away (`| head`) ends the program quietly (see `main`).
        out.line(line)?;
    }
    out.finish()?;
    Ok(checks.iter().any(|c| c.verdict == Health::Bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel OOM kills since boot are reported, never BAD: one kill since boot no longer
    /// makes every run exit 2.
    #[test]
    fn node_oom_kills_since_boot_are_informational() {
        let c = node_oom_kills_check("pgfault 10\noom_kill 3\nthp_fault_alloc 0\n");
        assert_eq!((c.value.as_str(), c.verdict), ("3", Health::Unknown));
        assert!(c.detail.contains("informational"), "{}", c.detail);
        let c = node_oom_kills_check("oom_kill 0\n");
        assert_eq!((c.value.as_str(), c.verdict), ("0", Health::Good));
        let c = node_oom_kills_check("pgfault 10\n");
        assert_eq!((c.value.as_str(), c.verdict), ("-", Health::Unknown));
    }
}
