//! Prometheus metrics and the loopback HTTP endpoint that serves them.
use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use probe_common::Counter;
use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::forensics::KillKind;

pub struct Metrics {
    registry: Registry,
    pub kills: IntCounterVec,
    pod_kills: IntCounterVec,
    /// Pod UIDs with a `oomprobe_pod_kills_total` series, oldest first (bounded).
    pod_kill_uids: Mutex<std::collections::VecDeque<String>>,
    pub dropped: IntCounterVec,
    pub kernel_events: IntCounterVec,
    pub sigkills: IntCounterVec,
    pub hooks: IntGaugeVec,
    pub hook_tier: IntGaugeVec,
    pub pending_kills: IntGauge,
    pub kubelet_restarts: IntGauge,
    pub kubelet_metrics_errors: IntCounterVec,
    pub memcg_events: IntCounterVec,
    pub memcg_registration_failures: IntCounterVec,
    kubelet_bytes: IntGaugeVec,
    kubelet_call_site_bytes: IntGaugeVec,
    node: IntGaugeVec,
    pods: IntGauge,
    leak: IntGaugeVec,
    slope: prometheus::Gauge,
    time_to_oom: prometheus::GaugeVec,
    stage: IntGaugeVec,
    cycles: IntGauge,
    flapping: IntGauge,
    last_kernel: Mutex<HashMap<u32, u64>>,
}

/// Pods with their own `oomprobe_pod_kills_total` series at most.
const POD_KILL_SERIES_MAX: usize = 512;

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).expect("valid metric definition"),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let kills = counter_vec(
            &registry,
            "oomprobe_kills_total",
            "SIGKILLs recorded, by kind (oom_memcg, oom_global, signal).",
            &["kind"],
        );
        let pod_kills = counter_vec(
            &registry,
            "oomprobe_pod_kills_total",
            "SIGKILLs of processes in pod cgroups, by kind and pod UID (the 512 most recent pods; join kube_pod_info's uid for names).",
            &["kind", "pod_uid"],
        );
        let dropped = counter_vec(
            &registry,
            "oomprobe_events_dropped_total",
            "Events lost, by reason (ringbuf_full, read_failed, decode_error, orphan_exit...) and record kind.",
            &["reason", "kind"],
        );
        let kernel_events = counter_vec(
            &registry,
            "oomprobe_kernel_events_total",
            "Probe hits counted in the kernel, by counter.",
            &["counter"],
        );
        let hooks = gauge_vec(
            &registry,
            "oomprobe_hook_attached",
            "1 when a kernel hook is attached, 0 when it is missing (degraded).",
            &["program"],
        );
        let hook_tier = gauge_vec(
            &registry,
            "oomprobe_hook_tier",
            "1 for the hook tier in use: kprobe (oom_kill_process) or tracepoint.",
            &["tier"],
        );
        let pending_kills = gauge(
            &registry,
            "oomprobe_pending_kills",
            "SIGKILLed processes whose death has not been seen yet.",
        );
        let kubelet_metrics_errors = counter_vec(
            &registry,
            "oomprobe_kubelet_metrics_errors_total",
            "Failed scrapes of the kubelet's /metrics, by reason (connect, timeout, status, garbage, scheme).",
            &["reason"],
        );
        let memcg_events = counter_vec(
            &registry,
            "oomprobe_memcg_events_total",
            "Memory cgroup events for the kubelet's cgroup and the kubepods tree (oom, oom_kill, max, high, pressure_*, psi, reclaim).",
            &["kind"],
        );
        let memcg_registration_failures = counter_vec(
            &registry,
            "oomprobe_memcg_registration_failures_total",
            "Memory cgroup notifications the kernel refused (read-only cgroupfs, no permission), by kind (oom_control, pressure_level, psi).",
            &["kind"],
        );
        let kubelet_restarts = gauge(
            &registry,
            "oomprobe_kubelet_restarts",
            "Kubelet restarts seen since the agent started (a new kubelet process after one died).",
        );
        let kubelet_bytes = gauge_vec(
            &registry,
            "oomprobe_kubelet_allocator_bytes",
            "Bytes through each kubelet allocator entry point since it was followed.",
            &["pid", "entry_point"],
        );
        let kubelet_call_site_bytes = gauge_vec(
            &registry,
            "oomprobe_kubelet_call_site_bytes",
            "Bytes the kubelet's runtime mapped, by call site (top 10 per report).",
            &["function"],
        );
        let node = gauge_vec(
            &registry,
            "oomprobe_memory_bytes",
            "Sampled memory: kubelet_rss/anon/file/shmem, kubelet_cgroup_usage, kubelet_working_set, kubelet_limit, node_mem_available, workload_working_set.",
            &["series"],
        );
        let pods = gauge(
            &registry,
            "oomprobe_pods",
            "Pod cgroups under the kubepods tree.",
        );
        let leak = gauge_vec(
            &registry,
            "oomprobe_leak_verdict",
            "1 for the current verdict: subject (kubelet, workload, none) and cause.",
            &["subject", "cause"],
        );
        let slope = register(
            &registry,
            prometheus::Gauge::new(
                "oomprobe_kubelet_leak_slope_bytes_per_day",
                "The kubelet's pod-adjusted memory baseline slope.",
            )
            .expect("valid metric definition"),
        );
        let time_to_oom = register(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "oomprobe_time_to_oom_seconds",
                    "Forecast time until the kubelet reaches its limit or the node's memory (earliest, expected, latest).",
                ),
                &["bound"],
            )
            .expect("valid metric definition"),
        );
        let stage = gauge_vec(
            &registry,
            "oomprobe_cycle_stage",
            "1 for the node's current OOM cycle stage (steady, pre_oom, active_oom, reconciliation_storm, recovery, re_oom).",
            &["stage"],
        );
        stage.with_label_values(&["steady"]).set(1);
        let cycles = gauge(
            &registry,
            "oomprobe_kubelet_oom_cycles",
            "Kubelet OOM kills since the agent started.",
        );
        let flapping = gauge(
            &registry,
            "oomprobe_kubelet_flapping",
            "1 when the kubelet was OOM-killed again within the flap window.",
        );
        for kind in [KillKind::OomMemcg, KillKind::OomGlobal, KillKind::Signal] {
            kills.with_label_values(&[kind.as_str()]);
        }
        for kind in ["signal", "oom_victim", "exit"] {
            dropped.with_label_values(&["ringbuf_full", kind]);
        }
        let sigkills = counter_vec(
            &registry,
            "oomprobe_sigkills_total",
            "SIGKILL records received from the kernel, by delivery result (delivered, ignored: the target was already dying, already_pending).",
            &["delivery"],
        );
        Metrics {
            registry,
            kills,
            pod_kills,
            pod_kill_uids: Mutex::default(),
            dropped,
            kernel_events,
            sigkills,
            hooks,
            hook_tier,
            pending_kills,
            kubelet_restarts,
            kubelet_metrics_errors,
            memcg_events,
            memcg_registration_failures,
            kubelet_bytes,
            kubelet_call_site_bytes,
            node,
            pods,
            leak,
            slope,
            time_to_oom,
            stage,
            cycles,
            flapping,
            last_kernel: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one kill record: by kind, and by pod when the victim was in a pod's cgroup.
    pub fn observe_kill(&self, rec: &crate::forensics::KillRecord) {
        let kind = rec.kind.as_str();
        self.kills.with_label_values(&[kind]).inc();
        let Some(pod) = &rec.victim.pod else {
            return;
        };
        self.pod_kills
            .with_label_values(&[kind, pod.pod_uid.as_str()])
            .inc();
        let Ok(mut uids) = self.pod_kill_uids.lock() else {
            return;
        };
        if !uids.contains(&pod.pod_uid) {
            uids.push_back(pod.pod_uid.clone());
        }
        // Bounded cardinality: the oldest pod's series go once 512 pods have been seen.
        while uids.len() > POD_KILL_SERIES_MAX {
            if let Some(old) = uids.pop_front() {
                for k in [KillKind::OomMemcg, KillKind::OomGlobal, KillKind::Signal] {
                    let _ = self
                        .pod_kills
                        .remove_label_values(&[k.as_str(), old.as_str()]);
                }
            }
        }
    }

    /// Folds the kernel's cumulative per-CPU counters in as deltas.
    pub fn observe_kernel(&self, counters: &[(Counter, u64)]) {
        let Ok(mut last) = self.last_kernel.lock() else {
            return;
        };
        for &(c, value) in counters {
            let prev = last.insert(c as u32, value).unwrap_or(0);
            let delta = value.saturating_sub(prev);
            if delta == 0 {
                continue;
            }
            let (family, labels): (&IntCounterVec, [&str; 2]) = match c {
                Counter::RingbufFullSignal => (&self.dropped, ["ringbuf_full", "signal"]),
                Counter::RingbufFullVictim => (&self.dropped, ["ringbuf_full", "oom_victim"]),
                Counter::RingbufFullExit => (&self.dropped, ["ringbuf_full", "exit"]),
                Counter::ReadFailed => (&self.dropped, ["read_failed", "any"]),
                Counter::PendingInsertFailed => {
                    (&self.dropped, ["pending_insert_failed", "signal"])
                }
                Counter::AllocStatsFull => (&self.dropped, ["alloc_stats_full", "alloc"]),
                Counter::SigkillSeen => {
                    self.kernel_events
                        .with_label_values(&["sigkill_seen"])
                        .inc_by(delta);
                    continue;
                }
                Counter::OomVictimSeen => {
                    self.kernel_events
                        .with_label_values(&["oom_victim_seen"])
                        .inc_by(delta);
                    continue;
                }
            };
            family.with_label_values(&labels).inc_by(delta);
        }
    }

    pub fn observe_kubelet(&self, rep: &crate::kubelet::KubeletReport) {
        let pid = rep.pid.to_string();
        for (point, bytes) in &rep.by_entry_point {
            self.kubelet_bytes
                .with_label_values(&[pid.as_str(), point.as_str()])
                .set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        }
        self.kubelet_call_site_bytes.reset();
        for c in &rep.top_call_sites {
            self.kubelet_call_site_bytes
                .with_label_values(&[c.function.as_str()])
                .set(i64::try_from(c.bytes).unwrap_or(i64::MAX));
        }
    }

    pub fn observe_sample(&self, ev: &crate::sampler::SampleEvent) {
        let set = |name: &str, v: Option<u64>| {
            if let Some(v) = v {
                self.node
                    .with_label_values(&[name])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        };
        if let Some(k) = &ev.kubelet {
            set("kubelet_rss", Some(k.rss_bytes));
            set("kubelet_anon", Some(k.anon_bytes));
            set("kubelet_file", Some(k.file_bytes));
            set("kubelet_shmem", Some(k.shmem_bytes));
        }
        set("kubelet_cgroup_usage", ev.kubelet_cgroup_bytes);
        set("kubelet_working_set", ev.kubelet_working_set_bytes);
        set("kubelet_limit", ev.kubelet_limit_bytes);
        set("node_mem_available", ev.node_mem_available_bytes);
        set("workload_working_set", Some(ev.workload_working_set_bytes));
        self.pods.set(i64::try_from(ev.pods).unwrap_or(i64::MAX));
    }

    pub fn observe_verdict(&self, v: &crate::detect::Verdict) {
        self.leak.reset();
        let subject = serde_json::to_value(v.subject)
            .ok()
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_default();
        self.leak
            .with_label_values(&[subject.as_str(), v.cause.as_str()])
            .set(1);
        self.slope.set(v.slope_bytes_per_day);
        self.time_to_oom.reset();
        if let Some(f) = &v.forecast {
            self.time_to_oom
                .with_label_values(&["earliest"])
                .set(f.earliest_seconds);
            self.time_to_oom
                .with_label_values(&["expected"])
                .set(f.expected_seconds);
            if let Some(l) = f.latest_seconds {
                self.time_to_oom.with_label_values(&["latest"]).set(l);
            }
        }
    }

    pub fn observe_stage(&self, ev: &crate::cycle::StageEvent) {
        self.stage.reset();
        let name = serde_json::to_value(ev.stage)
            .ok()
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_default();
        self.stage.with_label_values(&[name.as_str()]).set(1);
        self.cycles.set(i64::from(ev.cycles));
        self.flapping.set(i64::from(ev.flapping));
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
