//! `oomprobe run`: the daemon. Streams kill records and serves metrics.
use std::{io::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use super::OutputFormat;
use crate::{
    clock::{monotonic_ns, Clock},
    events,
    forensics::{self, Correlator, KillRecord},
    kubelet::{Target, Tracker},
    metrics::{self, Metrics},
    node::LiveNode,
    probes::{Probes, HOOKS},
};

/// When the mmap/munmap syscall tracepoints run (see `RunArgs::syscall_tracepoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallTracepoints {
    Always,
    Fallback,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Output format for the event stream on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Address of the Prometheus endpoint (/metrics, /healthz). Loopback by default.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Do not serve metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Exit after this many kill records (scripts, demos).
    #[arg(long)]
    pub max_kills: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// How OOM kills are hooked: `kprobe` (oom_kill_process: the kernel's OOM domain and
    /// constraint), `tracepoint` (always works), or `auto` (kprobe where the kernel allows).
    #[arg(long, value_enum, default_value_t = crate::probes::HookTier::Auto)]
    pub hook_tier: crate::probes::HookTier,
    /// The kubelet's process name.
    #[arg(long, default_value = "kubelet")]
    pub kubelet_name: String,
    /// Follow this pid as the kubelet (in addition to processes named --kubelet-name).
    #[arg(long)]
    pub kubelet_pid: Option<u32>,
    /// Follow processes running this executable as the kubelet.
    #[arg(long)]
    pub kubelet_bin: Option<std::path::PathBuf>,
    /// Seconds between kubelet memory attribution reports.
    #[arg(long, default_value_t = 10)]
    pub attribution_interval: u64,
    /// Seconds between samples of the kubelet's and the node's memory.
    #[arg(long, default_value_t = 10)]
    pub sample_interval: u64,
    /// Ring-buffer reader threads, one pinned per CPU up to this many: a reader on a CPU
    /// other than the OOM-killing task's sees the kill without waiting for that task to leave
    /// the kernel.
    #[arg(long, default_value_t = 8)]
    pub ring_readers: usize,
    /// SCHED_FIFO priority of the ring-buffer readers (0: normal scheduling). They only drain
    /// the ring and block otherwise; at real-time priority a kill is read within a fraction of
    /// a millisecond even when every CPU is busy.
    #[arg(long, default_value_t = 1)]
    pub ring_reader_priority: u8,
    /// When the mmap/munmap syscall tracepoints are attached: `always` (a kubelet's allocations
    /// between its exec and its uprobes count; every mmap/munmap on the node pays ~140 ns for
    /// the in-kernel filter), or `fallback` (only for a kubelet whose allocator cannot be
    /// resolved).
    #[arg(long, value_enum, default_value_t = SyscallTracepoints::Always)]
    pub syscall_tracepoints: SyscallTracepoints,
    /// Seconds between leak detector evaluations.
    #[arg(long, default_value_t = 60)]
    pub detect_interval: u64,
    /// Where the sampled series persists across agent restarts and upgrades.
    #[arg(long, default_value = "/var/lib/oomprobe")]
    pub state_dir: std::path::PathBuf,
    /// Cgroup paths (in the memory hierarchy) under which pods live; repeatable.
    #[arg(long, default_values_t = crate::sampler::KUBEPODS_ROOTS.iter().map(|s| s.to_string()))]
    pub kubepods_root: Vec<String>,
    /// Also write each sample to the JSON stream (`"event":"sample"`).
    #[arg(long)]
    pub emit_samples: bool,
    /// A kubelet OOM kill within this many seconds of the previous one is flapping.
    #[arg(long, default_value_t = 600)]
    pub flap_window: u64,
    /// Seconds the restarted kubelet's RSS must stay flat for the storm to count as settled.
    #[arg(long, default_value_t = 120)]
    pub storm_settle: u64,
    /// Opt-in action on a flap: `cordon` (dry run unless --act-confirm).
    #[arg(long, value_parser = ["cordon"])]
    pub act: Option<String>,
    /// Really send the action (otherwise it is only logged).
    #[arg(long)]
    pub act_confirm: bool,
    #[command(flatten)]
    pub api: super::endpoints::KubeApiArgs,
    #[command(flatten)]
    pub kubelet_metrics: super::endpoints::KubeletMetricsArgs,
}

#[derive(serde::Serialize)]
struct VerdictEvent<'a> {
    event: &'static str,
    #[serde(flatten)]
    verdict: &'a crate::detect::Verdict,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Probes(#[from] crate::probes::ProbeError),
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch the event ring buffer")]
    Ring(#[source] std::io::Error),
}

/// What the cycle stage machine needs of the kubelet now.
fn kubelet_now(
    pid: u32,
    sample: Option<&crate::sampler::SampleEvent>,
    tracker: &Tracker,
    probes: &Probes,
) -> crate::cycle::KubeletNow {
    let mem = crate::sampler::kubelet_memory(pid);
    let cpu = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map(|s| (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64)
        .unwrap_or(0.0);
    crate::cycle::KubeletNow {
        pid,
        rss_bytes: mem.map_or(0, |m| m.rss_bytes),
        usage_bytes: sample.and_then(|s| s.kubelet_cgroup_bytes),
        limit_bytes: sample.and_then(|s| s.kubelet_limit_bytes),
        mapped_bytes: tracker.mapped_bytes(pid, probes),
        cpu_seconds: cpu,
    }
}

fn json_line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn emit_lines(lines: &mut Vec<String>) {
    if lines.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    for l in lines.drain(..) {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

fn emit(format: OutputFormat, rec: &KillRecord) {
    let line = match format {
        OutputFormat::Json => serde_json::to_string(rec).unwrap_or_default(),
        OutputFormat::Text => rec.text(),
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout (piped to a reader that left) must not kill the agent.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let mut probes = Probes::load(crate::EBPF_OBJECT, &args.kubelet_name, args.hook_tier)?;
    // Loading parsed the kernel's BTF (megabytes, now freed): give those pages back.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let metrics = Arc::new(Metrics::new());
    metrics
        .hook_tier
        .with_label_values(&[probes.tier.as_str()])
        .set(1);
    for hook in HOOKS {
        let on = probes.attached.contains(&hook.program);
        metrics
            .hooks
            .with_label_values(&[hook.program])
            .set(i64::from(on));
    }
    let _server = if args.no_metrics {
        None
    } else {
        let listener =
            metrics::bind(args.metrics_addr)
                .await
                .map_err(|source| RunError::Metrics {
                    addr: args.metrics_addr,
                    source,
                })?;
        tracing::info!(addr = %args.metrics_addr, "serving /metrics");
        Some(tokio::spawn(metrics::serve(listener, metrics.clone())))
    };
    if args.syscall_tracepoints == SyscallTracepoints::Always {
        probes.count_exec_gap();
    }
    let ring = probes.take_events()?;
    let (readers, mut ring) =
        crate::ring::spawn(ring, args.ring_readers, args.ring_reader_priority, 4096)
            .map_err(RunError::Ring)?;
    tracing::debug!(cpus = ?readers.cpus, "ring-buffer readers started");
    let mut correlator = Correlator::new(LiveNode::detect(), Clock::new());
    let mut tracker = Tracker::new(Target {
        name: args.kubelet_name.clone(),
        pid: args.kubelet_pid,
        binary: args.kubelet_bin.clone(),
    });
    let mut lines: Vec<String> = Vec::new();
    tracker.probe_target_binary(&mut probes);
    for start in tracker.scan(&mut probes) {
        lines.push(json_line(&start));
    }
    if tracker.pids().is_empty() {
        tracing::info!(name = %args.kubelet_name, "no kubelet running yet; it will be followed when it starts");
    }
    tracing::info!(
        hooks = probes.attached.len(),
        degraded = probes.degraded.len(),
        "oomprobe ready: watching SIGKILLs and OOM kills"
    );

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut kills = 0u64;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Ring)?;
    let mut records = Vec::new();
    let mut kubelet_execs = Vec::new();
    let hierarchy = crate::cgroup::Hierarchy::detect();
    let store_path = args.state_dir.join("series.bin");
    let mut store = match crate::detect::store::Store::open(&store_path) {
        Ok(s) => {
            tracing::info!(path = %store_path.display(), samples = s.samples().len(), "series store loaded");
            Some(s)
        }
        Err(e) => {
            tracing::warn!(error = %e, "series store unavailable: leak detection starts from scratch and will not persist");
            None
        }
    };
    let mut memory_series: Vec<crate::detect::Sample> = Vec::new();
    let engine = crate::detect::Engine::default();
    let mut last_verdict: Option<(crate::detect::Subject, crate::detect::classify::Cause)> = None;
    let mut cycle = crate::cycle::Cycle::new(crate::cycle::CycleConfig {
        flap_window_ns: args.flap_window.saturating_mul(1_000_000_000),
        settle_ns: args.storm_settle.saturating_mul(1_000_000_000),
        ..Default::default()
    });
    let mut cordon = match (args.act.as_ref(), args.api.api()) {
        (None, _) => None,
        (Some(_), None) => {
            tracing::error!("--act cordon needs the API server: not in a cluster and no --kube-api; action disabled");
            None
        }
        (Some(_), Some(api)) => {
            let node = args.api.node();
            tracing::info!(%api, %node, confirm = args.act_confirm, "cordon action armed for flaps");
            Some(crate::act::Cordon::new(crate::act::CordonConfig {
                api,
                node,
                token_file: Some(args.api.token_file()),
                tls: args.api.tls(),
                confirm: args.act_confirm,
            }))
        }
    };
    let mut stage_events: Vec<crate::cycle::StageEvent> = Vec::new();
    let mut memcg = hierarchy.clone().map(crate::memcg_events::Watcher::new);
    let mut memcg_events: Vec<crate::memcg_events::MemcgEvent> = Vec::new();
    let kubelet_metrics: std::sync::Arc<
        std::sync::Mutex<Option<crate::kubelet_metrics::KubeletMetrics>>,
    > = Default::default();
    if let Some(url) = args.kubelet_metrics.kubelet_metrics.clone() {
        let latest = kubelet_metrics.clone();
        let metrics = metrics.clone();
        let every = Duration::from_secs(args.sample_interval.max(1));
        let source = args.kubelet_metrics.clone();
        let tls = source.tls();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut failures = 0u64;
            loop {
                tick.tick().await;
                let token = source.token();
                let got = crate::kubelet_metrics::fetch(
                    &url,
                    token.as_deref(),
                    &tls,
                    Duration::from_secs(2),
                )
                .await;
                match got {
                    Ok(m) => {
                        if let Ok(mut l) = latest.lock() {
                            *l = Some(m);
                        }
                    }
                    Err(e) => {
                        metrics
                            .kubelet_metrics_errors
                            .with_label_values(&[e.reason()])
                            .inc();
                        if let Ok(mut l) = latest.lock() {
                            *l = None;
                        }
                        // Log the first failure and then every 60th, not every scrape.
                        if failures.is_multiple_of(60) {
                            tracing::warn!(error = %e, "kubelet metrics unavailable");
                        }
                        failures += 1;
                    }
                }
            }
        });
    }
    let mut sample_tick = tokio::time::interval(Duration::from_secs(args.sample_interval.max(1)));
    let mut detect_tick = tokio::time::interval(Duration::from_secs(args.detect_interval.max(1)));
    detect_tick.tick().await;
    let mut report_tick =
        tokio::time::interval(Duration::from_secs(args.attribution_interval.max(1)));
    report_tick.tick().await;
    loop {
        tokio::select! {
            Some((decoded, seen)) = ring.recv() => {
                for (decoded, seen) in std::iter::once((decoded, seen)).chain(std::iter::from_fn(|| ring.try_recv().ok())) {
                    match decoded {
                        Ok(events::Event::KubeletExec(e)) => {
                            kubelet_execs.push((e.tgid, e.ktime_ns));
                        }
                        Ok(ev) => {
                            if let events::Event::Signal(s) = &ev {
                                metrics.sigkills.with_label_values(&[forensics::delivery_name(s.result)]).inc();
                            }
                            records.extend(correlator.on_event_at(ev, Some(seen)));
                        }
                        Err(e) => {
                            metrics.dropped.with_label_values(&["decode_error", e.reason()]).inc();
                            tracing::debug!(error = %e, "malformed record");
                        }
                    }
                }
            }
            _ = report_tick.tick() => {
                for rep in tracker.report(&mut probes) {
                    metrics.observe_kubelet(&rep);
                    if args.format == OutputFormat::Json {
                        lines.push(json_line(&rep));
                    } else {
                        lines.push(rep.text());
                    }
                }
                for start in tracker.scan(&mut probes) {
                    lines.push(json_line(&start));
                }
                metrics.kubelet_restarts.set(tracker.restarts as i64);
            }
            _ = sample_tick.tick() => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let pid = tracker.pids().last().copied();
                let (mut s, mut ev) = crate::sampler::sample(hierarchy.as_ref(), &args.kubepods_root, pid, tracker.restarts, now);
                if let Some(m) = kubelet_metrics.lock().ok().and_then(|l| l.clone()) {
                    s.goroutines = m.goroutines;
                    s.pleg_relist_p99_seconds = m.pleg_relist_p99_seconds;
                    s.evictions_memory_total = m.evictions_memory_total;
                    s.cgroup_version = m.cgroup_version.or(s.cgroup_version);
                    s.exited_containers = m.exited_containers.or(s.exited_containers);
                    s.containers = m.running_containers.or(s.containers);
                    ev.exited_containers = s.exited_containers;
                    ev.containers = s.containers;
                    ev.kubelet_metrics = Some(m);
                }
                metrics.observe_sample(&ev);
                if let Some(w) = memcg.as_mut() {
                    let mut trees: Vec<(String, bool)> = args
                        .kubepods_root
                        .iter()
                        .filter(|r| hierarchy.as_ref().is_some_and(|h| h.dir(r).is_dir()))
                        .map(|r| (r.clone(), true))
                        .collect();
                    if let Some(cg) = &ev.kubelet_cgroup {
                        trees.push((cg.clone(), true));
                    }
                    for (tree, notify) in trees {
                        for id in w.watch_tree(&tree, notify) {
                            probes.watch_memcg(id);
                        }
                    }
                    memcg_events.extend(w.reclaim(&probes.reclaim_stats()));
                    memcg_events.extend(w.poll_v2());
                    memcg_events.extend(w.poll_psi());
                    for kind in w.take_registration_failures() {
                        metrics
                            .memcg_registration_failures
                            .with_label_values(&[kind])
                            .inc();
                    }
                }
                if let Some(pid) = pid {
                    let now = kubelet_now(pid, Some(&ev), &tracker, &probes);
                    stage_events.extend(cycle.on_sample(monotonic_ns(), now));
                }
                if args.emit_samples && args.format == OutputFormat::Json {
                    lines.push(json_line(&ev));
                }
                match store.as_mut() {
                    Some(st) => {
                        if let Err(e) = st.append(s) {
                            metrics.dropped.with_label_values(&["store_write", "sample"]).inc();
                            tracing::warn!(error = %e, "cannot persist a sample");
                        }
                    }
                    None => {
                        memory_series.push(s);
                        crate::detect::store::bound(&mut memory_series);
                    }
                }
            }
            _ = detect_tick.tick() => {
                let series = store.as_ref().map_or(&memory_series[..], |s| s.samples());
                let v = engine.evaluate(series);
                cycle.known_cause = matches!(v.subject, crate::detect::Subject::Kubelet | crate::detect::Subject::Workload)
                    .then(|| v.cause.as_str().to_string());
                metrics.observe_verdict(&v);
                let key = (v.subject, v.cause);
                if last_verdict != Some(key) {
                    last_verdict = Some(key);
                    if args.format == OutputFormat::Json {
                        lines.push(json_line(&VerdictEvent { event: "verdict", verdict: &v }));
                    } else {
                        lines.push(format!(
                            "{} LEAK subject={:?} cause={} slope={:.0}MB/day",
                            v.time,
                            v.subject,
                            v.cause.as_str(),
                            v.slope_bytes_per_day / 1e6
                        ));
                    }
                }
            }
            _ = tick.tick() => {
                records.extend(correlator.expire(monotonic_ns()));
                metrics.observe_kernel(&probes.counters());
                metrics.pending_kills.set(correlator.pending_len() as i64);
                let orphans = correlator.stats.orphans;
                let seen = metrics.dropped.with_label_values(&["orphan", "exit"]);
                if orphans > seen.get() {
                    seen.inc_by(orphans - seen.get());
                }
            }
            Some((cg, kind)) = async {
                match memcg.as_mut() {
                    Some(w) => w.rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(w) = memcg.as_mut() {
                    memcg_events.extend(w.describe(&cg, &kind));
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        for rec in records.drain(..) {
            metrics.observe_kill(&rec);
            tracker.on_kill(&rec);
            let is_kubelet = tracker.is_kubelet(rec.victim.pid);
            stage_events.extend(cycle.on_kill(&rec, is_kubelet));
            emit(args.format, &rec);
            kills += 1;
        }
        for (tgid, exec_ktime) in kubelet_execs.drain(..) {
            if let Some(start) = tracker.on_exec(tgid, &mut probes) {
                lines.push(json_line(&start));
                let now = kubelet_now(start.pid, None, &tracker, &probes);
                stage_events.extend(cycle.on_kubelet_start(exec_ktime, now));
            }
        }
        for ev in memcg_events.drain(..) {
            metrics
                .memcg_events
                .with_label_values(&[ev.kind.as_str()])
                .inc_by(ev.count.max(1));
            if args.format == OutputFormat::Json {
                lines.push(json_line(&ev));
            } else {
                tracing::info!(cgroup = %ev.cgroup, kind = %ev.kind, count = ev.count, "{}", ev.detail);
            }
        }
        for ev in stage_events.drain(..) {
            metrics.observe_stage(&ev);
            if let Some(c) = cordon.as_mut() {
                if let Some(action) = c.on_stage(&ev).await {
                    lines.push(json_line(&action));
                }
            }
            if args.format == OutputFormat::Json {
                lines.push(json_line(&ev));
            } else {
                lines.push(format!(
                    "STAGE {:?} cycles={} flapping={} {}",
                    ev.stage, ev.cycles, ev.flapping, ev.detail
                ));
            }
        }
        if args.format == OutputFormat::Json {
            emit_lines(&mut lines);
        } else {
            // The text stream shows kills and attribution lines; JSON-only events are logged.
            for l in lines.drain(..) {
                if l.starts_with('{') {
                    tracing::info!("{l}");
                } else {
                    emit_lines(&mut vec![l]);
                }
            }
        }
        if args.max_kills.is_some_and(|m| kills >= m) {
            break;
        }
    }
    tracing::info!(kills, "oomprobe stopping");
    Ok(())
}
