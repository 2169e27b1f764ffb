//! Prometheus metrics and the loopback HTTP endpoint that serves them (hyper's HTTP/1 server,
//! bounded: see [`ServeLimits`]).
use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use probe_common::Counter;
use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{net::TcpListener, sync::Semaphore};

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
    /// Kernel enum values out of the range this build knows, by field and value.
    pub decode_errors: IntCounterVec,
    pub hooks: IntGaugeVec,
    pub hook_tier: IntGaugeVec,
    /// `oomprobe_feature_unsupported{feature,arch}`.
    pub feature_unsupported: IntGaugeVec,
    pub pending_kills: IntGauge,
    /// The (pid, entry point) series `oomprobe_kubelet_alloc_bytes` has now.
    kubelet_series: Mutex<std::collections::HashSet<(String, String)>>,
    /// `oomprobe_map_entries{map}`.
    pub map_entries: IntGaugeVec,
    pub kubelet_restarts: IntGauge,
    /// `oomprobe_kubelet_candidates_rejected_total{reason}`.
    pub kubelet_rejected: IntCounterVec,
    pub kubelet_metrics_errors: IntCounterVec,
    /// `oomprobe_kube_api_inputs_errors_total{input}`.
    pub kube_api_inputs_errors: IntCounterVec,
    pub memcg_events: IntCounterVec,
    /// `oomprobe_kube_reports_total{kind,result}`.
    pub kube_reports: IntCounterVec,
    /// `oomprobe_kills_classified_total{reason}`.
    pub kills_classified: IntCounterVec,
    /// `oomprobe_metrics_connections_total{result}`.
    pub connections: IntCounterVec,
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
    /// `oomprobe_heap_bytes{what}` (built with `heap-count` only).
    #[cfg(feature = "heap-count")]
    heap: IntGaugeVec,
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
        let feature_unsupported = gauge_vec(
            &registry,
            "oomprobe_feature_unsupported",
            "1 for each feature this agent does not run on its architecture (arch: the agent's, as Rust names it), e.g. kubelet_alloc_uprobes where no register map exists.",
            &["feature", "arch"],
        );
        let pending_kills = gauge(
            &registry,
            "oomprobe_pending_kills",
            "SIGKILLed processes whose death has not been seen yet.",
        );
        let map_entries = gauge_vec(
            &registry,
            "oomprobe_map_entries",
            "Entries in the state that follows processes and cgroups, as of the last sample: the kernel maps (KUBELET_TGIDS, KUBELET_UPROBED, WATCHED_MEMCGS, RECLAIM_STATS, ALLOC_STATS, STACKS, and GO_STACKS on arm64) and the agent's own collections (agent_*: memcg watcher, pending kills, uprobed pids, kubelet tracker, correlator caches, cycle, series samples, tokio tasks).",
            &["map"],
        );
        let kubelet_metrics_errors = counter_vec(
            &registry,
            "oomprobe_kubelet_metrics_errors_total",
            "Failed scrapes of the kubelet's /metrics, by reason (connect, timeout, status, garbage, scheme; invalid_value: a scrape with values no kubelet gives, set aside).",
            &["reason"],
        );
        let kube_api_inputs_errors = counter_vec(
            &registry,
            "oomprobe_kube_api_inputs_errors_total",
            "Failed reads of the leak classifier's API inputs, by input (memory_pressure, pending_csrs).",
            &["input"],
        );
        let memcg_events = counter_vec(
            &registry,
            "oomprobe_memcg_events_total",
            "Memory cgroup events for the kubelet's cgroup and the kubepods tree (oom, oom_kill, max, high, pressure_*, psi, reclaim).",
            &["kind"],
        );
        let kube_reports = counter_vec(
            &registry,
            "oomprobe_kube_reports_total",
            "Writes to the Kubernetes API by --report, and the pod lookups of the eviction classification, by kind (event, condition, pod_lookup, queue, classification) and result (sent, failed, rate_limited, not_found, dropped).",
            &["kind", "result"],
        );
        let kills_classified = counter_vec(
            &registry,
            "oomprobe_kills_classified_total",
            "Kill records the agent followed with a kill_classified record once the Kubernetes API confirmed what the kill was, by reason (evicted: a kubelet or runtime SIGKILL of a pod whose status then said Evicted).",
            &["reason"],
        );
        kills_classified.with_label_values(&["evicted"]);
        let connections = counter_vec(
            &registry,
            "oomprobe_metrics_connections_total",
            "Connections to the /metrics endpoint, by result (served, refused: at the connection limit, timeout: no complete request in time or over the connection deadline, error: malformed).",
            &["result"],
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
        let kubelet_rejected = counter_vec(
            &registry,
            "oomprobe_kubelet_candidates_rejected_total",
            "Processes that exec'd under the kubelet's name (--kubelet-name) and were not followed, by reason (binary: another executable than --kubelet-bin; pid: the --kubelet-pid process still runs). Each executable is also logged once.",
            &["reason"],
        );
        for r in crate::kubelet::tracker::Rejected::ALL {
            kubelet_rejected.with_label_values(&[r.as_str()]);
        }
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
                "The kubelet's pod-adjusted memory baseline slope (NaN while history is insufficient).",
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
        for kind in ["signal", "oom_victim", "exit", "victim_mm"] {
            dropped.with_label_values(&["ringbuf_full", kind]);
        }
        let sigkills = counter_vec(
            &registry,
            "oomprobe_sigkills_total",
            "SIGKILL records received from the kernel, by delivery result (delivered, ignored: the target was already dying, already_pending).",
            &["delivery"],
        );
        let decode_errors = counter_vec(
            &registry,
            "oomprobe_decode_errors_total",
            "Kernel enum values the decoder does not know (a newer kernel, or a bad record), by field (signal.result, signal.sender_reclaim_kind, oom_control.constraint) and value; the record is kept, the field reported as unknown.",
            &["field", "value"],
        );
        #[cfg(feature = "heap-count")]
        let heap = gauge_vec(
            &registry,
            "oomprobe_heap_bytes",
            "The Rust heap as the counting allocator sees it (soak builds only): what = live (bytes held), allocations (a count since start).",
            &["what"],
        );
        Metrics {
            registry,
            decode_errors,
            kills,
            pod_kills,
            pod_kill_uids: Mutex::default(),
            dropped,
            kernel_events,
            sigkills,
            hooks,
            hook_tier,
            feature_unsupported,
            pending_kills,
            kubelet_series: Default::default(),
            map_entries,
            kubelet_restarts,
            kubelet_rejected,
            kubelet_metrics_errors,
            kube_api_inputs_errors,
            memcg_events,
            kube_reports,
            kills_classified,
            connections,
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
            #[cfg(feature = "heap-count")]
            heap,
        }
    }

    /// Which hook tier runs and which hooks attached (`oomprobe_hook_tier`, `oomprobe_hook`).
    pub fn observe_hooks(&self, probes: &crate::kernel::probes::Probes) {
        self.hook_tier
            .with_label_values(&[probes.tier.as_str()])
            .set(1);
        for hook in crate::kernel::probes::HOOKS {
            let on = probes.attached.contains(&hook.program);
            self.hooks
                .with_label_values(&[hook.program])
                .set(i64::from(on));
        }
    }

    /// Publishes `oomprobe_feature_unsupported{feature,arch}` = 1 for each of `features`.
    pub fn observe_unsupported(&self, arch: &str, features: &[&str]) {
        for f in features {
            self.feature_unsupported
                .with_label_values(&[f, arch])
                .set(1);
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

    /// `oomprobe_heap_bytes`: the counting allocator's live bytes and allocation count.
    #[cfg(feature = "heap-count")]
    pub fn observe_heap(&self) {
        let v = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.heap
            .with_label_values(&["live"])
            .set(v(crate::heap_count::live_bytes()));
        self.heap
            .with_label_values(&["allocations"])
            .set(v(crate::heap_count::allocations()));
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
                Counter::RingbufFullVictimMm => (&self.dropped, ["ringbuf_full", "victim_mm"]),
                Counter::ReadFailed => (&self.dropped, ["read_failed", "any"]),
                Counter::PendingInsertFailed => {
                    (&self.dropped, ["pending_insert_failed", "signal"])
                }
                Counter::AllocStatsFull => (&self.dropped, ["alloc_stats_full", "alloc"]),
                Counter::KubeletTgidsFull => (&self.dropped, ["kubelet_tgids_full", "exec"]),
                Counter::StackCaptureFailed => (&self.dropped, ["stack_capture_failed", "alloc"]),
                Counter::ReclaimStatsFull => (&self.dropped, ["reclaim_stats_full", "reclaim"]),
                Counter::ImplausibleLength => (&self.dropped, ["implausible_length", "alloc"]),
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

    /// One attribution round: every followed kubelet's report. The pid-labelled series of
    /// processes no longer reported (dead) are removed.
    pub fn observe_kubelets(&self, reps: &[crate::kubelet::tracker::KubeletReport]) {
        let mut now = std::collections::HashSet::new();
        for rep in reps {
            let pid = rep.pid.to_string();
            for (point, bytes) in &rep.by_entry_point {
                self.kubelet_bytes
                    .with_label_values(&[pid.as_str(), point.as_str()])
                    .set(i64::try_from(*bytes).unwrap_or(i64::MAX));
                now.insert((pid.clone(), point.clone()));
            }
            self.kubelet_call_site_bytes.reset();
            for c in &rep.top_call_sites {
                self.kubelet_call_site_bytes
                    .with_label_values(&[c.function.as_str()])
                    .set(i64::try_from(c.bytes).unwrap_or(i64::MAX));
            }
        }
        let Ok(mut series) = self.kubelet_series.lock() else {
            return;
        };
        for (pid, point) in series.difference(&now) {
            let _ = self
                .kubelet_bytes
                .remove_label_values(&[pid.as_str(), point.as_str()]);
        }
        *series = now;
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
        self.slope.set(v.slope_bytes_per_day.unwrap_or(f64::NAN));
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

/// What one client may take of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; one more is closed at accept (counted `refused`).
    pub max_connections: usize,
    /// A connection that has not sent a complete request head by then is closed (counted
    /// `timeout`): idle and slow clients hold a slot this long at most.
    pub header_timeout: Duration,
    /// Whole-connection deadline (a client that does not read its response).
    pub connection_timeout: Duration,
    /// After the shutdown signal, connections in flight get this long to finish.
    pub shutdown_grace: Duration,
}

/// Request heads above this are answered 431 (hyper's smallest read buffer).
pub const MAX_HEAD_BYTES: usize = 8192;

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET | &Method::HEAD, _) => {
            (StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD\n".into(),
        ),
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

/// Serves `/metrics` and `/healthz` (GET or HEAD; one request per connection) within `limits`
/// until `shutdown` completes; then stops accepting and gives the connections in flight
/// `limits.shutdown_grace` to finish.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for connections to close.
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections.with_label_values(&["refused"]).inc();
            drop(sock);
            continue;
        };
        let m = metrics.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let r = respond(&m, &req);
            async move { Ok::<_, Infallible>(r) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(false)
            .serve_connection(
                TokioIo::new(Slotted {
                    slot: Some(slot),
                    sock,
                }),
                service,
            );
        let conn = graceful.watch(conn);
        let m = metrics.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Ok(())) => "served",
                Ok(Err(e)) if e.is_timeout() => "timeout",
                Ok(Err(_)) => "error",
                Err(_) => "timeout",
            };
            m.connections.with_label_values(&[result]).inc();
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("metrics endpoint: connections still open after the shutdown grace");
    }
}

/// A connection's socket with its slot. The slot is given back before the socket is shut
/// down or closed, so a client that has seen the connection end can count on its slot being
/// free again (the endpoint test floods right after 50 connections it saw closed).
struct Slotted {
    // Declared first: dropped before the socket.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    sock: tokio::net::TcpStream,
}

impl tokio::io::AsyncRead for Slotted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Slotted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().sock).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.slot = None;
        std::pin::Pin::new(&mut this.sock).poll_shutdown(cx)
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    /// Sends `request` and reads until the server closes (or `limit` passes): the answer and
    /// how long the connection lived.
    async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> (String, Duration) {
        let start = Instant::now();
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return (String::new(), start.elapsed());
        };
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
        (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
    }

    fn count(m: &Metrics, result: &str) -> u64 {
        m.connections.with_label_values(&[result]).get()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoint_bounds_idle_and_malformed_clients_and_still_answers() {
        let metrics = Arc::new(Metrics::new());
        metrics.kills.with_label_values(&["signal"]).inc();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ServeLimits {
            max_connections: 16,
            header_timeout: Duration::from_millis(500),
            connection_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(1),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), limits, async {
            let _ = stopped.await;
        }));
        let limit = Duration::from_secs(5);

        // Malformed and oversized requests: answered with an error status and closed.
        let (r, _) = exchange(addr, b"GARBAGE\r\n\r\n", limit).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(2 * MAX_HEAD_BYTES)
        );
        let (r, _) = exchange(addr, big.as_bytes(), limit).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r:?}");
        let (r, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", limit).await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r:?}");
        // Counted by each connection's task after its socket is gone (see below).
        let start = Instant::now();
        while count(&metrics, "error") < 2 && start.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(&metrics, "error"), 2);

        // 40 idle connections at once: 16 hold a slot until the header timeout, the other
        // 24 are closed at accept.
        let idle: Vec<_> = (0..40)
            .map(|_| tokio::spawn(exchange(addr, b"", limit)))
            .collect();
        let mut lived = Vec::new();
        for h in idle {
            let (answer, t) = h.await.unwrap();
            assert_eq!(answer, "", "an idle client gets no answer");
            lived.push(t);
        }
        lived.sort();
        let quick = lived
            .iter()
            .filter(|t| **t < Duration::from_millis(300))
            .count();
        assert_eq!(quick, 24, "{lived:?}");
        assert!(lived[39] < Duration::from_millis(1500), "{lived:?}");
        // A connection's task counts its end after its socket is gone (the client saw the
        // close first): the counts are read once the 40 are all counted, within a second.
        let start = Instant::now();
        while count(&metrics, "refused") + count(&metrics, "timeout") < 40
            && start.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(&metrics, "refused"), 24);
        assert_eq!(count(&metrics, "timeout"), 16);

        // A slow client that sends half a request head is cut at the header timeout too.
        let (r, t) = exchange(addr, b"GET /metr", limit).await;
        assert_eq!(r, "");
        assert!(t < Duration::from_millis(1500), "{t:?}");

        // While a second flood holds every slot, a scrape answers once a slot frees: within
        // the header timeout.
        let flood: Vec<_> = (0..16)
            .map(|_| tokio::spawn(exchange(addr, b"", limit)))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let scrape = loop {
            let (r, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", limit).await;
            if !r.is_empty() || start.elapsed() > limit {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape:?}");
        assert!(
            scrape.contains("oomprobe_kills_total{kind=\"signal\"} 1"),
            "{scrape}"
        );
        for h in flood {
            h.await.unwrap();
        }
        let (r, _) = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", limit).await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ok\n"),
            "{r:?}"
        );

        // Graceful shutdown: the server returns and the port stops accepting.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the server stops within its grace")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
