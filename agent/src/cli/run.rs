//! `oomprobe run`: the daemon. Streams kill records and serves metrics.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::OutputFormat;
use crate::{
    cycle::{CycleConfig, NodeRule},
    kernel::probes::Probes,
    kubeapi::report::{ReportSet, Reporter},
    kubelet::tracker::Target,
    metrics::{self, Metrics, ServeLimits},
    pipeline::{Pipeline, PipelineConfig},
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
    /// Exit after this many kill records (scripts, demos), at least 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_kills: Option<u64>,
    /// Exit after this many seconds (1 to 31622400, a year).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
    pub duration: Option<u64>,
    /// How OOM kills are hooked: `kprobe` (oom_kill_process: the kernel's OOM domain and
    /// constraint), `tracepoint` (always works), or `auto` (kprobe where the kernel allows).
    #[arg(long, value_enum, default_value_t = crate::kernel::probes::HookTier::Auto)]
    pub hook_tier: crate::kernel::probes::HookTier,
    /// The kubelet's process name (comm): the kernel reports each exec under this name, and
    /// without --kubelet-pid and --kubelet-bin every process of this name is a kubelet. As the
    /// kernel keeps process names, only its first 15 bytes are compared.
    #[arg(long, default_value = "kubelet", value_parser = super::parse_process_name)]
    pub kubelet_name: String,
    /// Follow this process as the kubelet, whatever its name or executable; while it runs it
    /// is the only kubelet (a process exec'ing under --kubelet-name is not followed, counted in
    /// oomprobe_kubelet_candidates_rejected_total{reason="pid"}). Once it is gone, the next
    /// kubelet is found by --kubelet-bin, else by --kubelet-name (its restart, previous_pid
    /// this pid), and the pid is not matched again; processes rejected while it ran stay so.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub kubelet_pid: Option<u32>,
    /// Only processes running this executable are kubelets: the same file (device and inode,
    /// the path stat'ed again at each exec, so a new binary renamed over it by an upgrade is
    /// followed), or the file that was there before (a kubelet still running the replaced
    /// binary). A process under --kubelet-name running another file is not followed: counted
    /// in oomprobe_kubelet_candidates_rejected_total{reason="binary"}, logged once per file.
    /// The binary is probed before any kubelet runs it. A kubelet at this path exec'd under
    /// another name than --kubelet-name is found by the scan every --attribution-interval.
    #[arg(long)]
    pub kubelet_bin: Option<std::path::PathBuf>,
    /// Seconds between kubelet memory attribution reports (1 to 86400).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub attribution_interval: u64,
    /// Seconds between samples of the kubelet's and the node's memory (1 to 86400).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sample_interval: u64,
    /// Ring-buffer reader threads, one pinned per CPU up to this many: a reader on a CPU
    /// other than the OOM-killing task's sees the kill without waiting for that task to leave
    /// the kernel.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub ring_readers: u16,
    /// SCHED_FIFO priority of the ring-buffer readers (0: normal scheduling). They only drain
    /// the ring and block otherwise; at real-time priority a kill is read within a fraction of
    /// a millisecond even when every CPU is busy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub ring_reader_priority: u8,
    /// When the mmap/munmap syscall tracepoints are attached: `always` (a kubelet's allocations
    /// between its exec and its uprobes count; every mmap/munmap on the node pays ~140 ns for
    /// the in-kernel filter), or `fallback` (only for a kubelet whose allocator cannot be
    /// resolved).
    #[arg(long, value_enum, default_value_t = SyscallTracepoints::Always)]
    pub syscall_tracepoints: SyscallTracepoints,
    /// Seconds between leak detector evaluations (1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub detect_interval: u64,
    /// Also write every raw ring record, as read, to this file (the golden test's framing).
    #[arg(long)]
    pub record_ring: Option<std::path::PathBuf>,
    /// Where the sampled series persists across agent restarts and upgrades.
    #[arg(long, default_value = "/var/lib/oomprobe")]
    pub state_dir: std::path::PathBuf,
    /// Cgroup paths (in the memory hierarchy) under which pods live; repeatable.
    #[arg(long, default_values_t = crate::sampler::KUBEPODS_ROOTS.iter().map(|s| s.to_string()), value_parser = super::parse_cgroup_path)]
    pub kubepods_root: Vec<String>,
    /// Also write each sample to the JSON stream (a `sample` event).
    #[arg(long)]
    pub emit_samples: bool,
    /// A kubelet OOM kill within this many seconds of the previous one is flapping (1 to
    /// 86400).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub flap_window: u64,
    /// Seconds the restarted kubelet's RSS must stay flat for the storm to count as settled
    /// (1 to 86400).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub storm_settle: u64,
    /// The kubelet's hard eviction threshold on memory.available (its `--eviction-hard`), as
    /// the kubelet writes it: bytes or a quantity (`100Mi`, `1.5Gi`, `2G`), or a percentage of
    /// the node's MemTotal (`10%`; `0%` is no threshold): Pre-OOM on node memory measures
    /// MemAvailable against it.
    #[arg(long, default_value = "100Mi", value_parser = super::parse_eviction_hard)]
    pub eviction_hard_memory: super::EvictionHard,
    /// Pre-OOM on node memory when, while the kubelet grows, MemAvailable reaches the eviction
    /// threshold within this many seconds at the current rate (1 to 86400).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub pre_oom_horizon: u64,
    /// Leave the agent's own oom_score_adj alone (by default it sets -1000 at start, so a
    /// node-wide OOM never picks the agent that records it).
    #[arg(long)]
    pub no_oom_score_adj: bool,
    /// Opt-in action on a flap: `cordon` (dry run unless --act-confirm).
    #[arg(long, value_parser = ["cordon"])]
    pub act: Option<String>,
    /// Really send the action (otherwise it is only logged).
    #[arg(long)]
    pub act_confirm: bool,
    /// Opt-in reports to the Kubernetes API, comma-separated: `node-conditions`
    /// (KubeletMemoryLeak, KubeletOOMFlapping on the node's status) and `events` (on the node
    /// and on pods). RBAC: deploy/overlays/report/.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub report: Vec<crate::kubeapi::report::ReportKind>,
    /// With `--report node-conditions`: every condition is re-written this often (seconds,
    /// at least 1), also when nothing changed, as node-problem-detector's heartbeat does (a
    /// condition removed by someone comes back).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub condition_refresh: u64,
    #[command(flatten)]
    pub api: super::endpoints::KubeApiArgs,
    #[command(flatten)]
    pub kubelet_metrics: super::endpoints::KubeletMetricsArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Probes(#[from] crate::kernel::probes::ProbeError),
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the ring recording {path}")]
    RecordRing {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch the event ring buffer")]
    Ring(#[source] std::io::Error),
    #[error(transparent)]
    KubeletMetricsToken(#[from] crate::kubelet::metrics::MetricsError),
    /// A --kubeconfig, --kube-token-file or --kube-ca-file given that cannot be used.
    #[error(transparent)]
    Kubeconfig(crate::kubeapi::ApiError),
    #[error("--eviction-hard-memory {0} needs the node's MemTotal: /proc/meminfo unreadable")]
    MemTotal(super::EvictionHard, #[source] procfs::ProcError),
}

/// The pipeline's configuration from the arguments (the API client, when the cordon or the
/// reports need it).
async fn pipeline_config(
    args: &RunArgs,
    eviction_hard_bytes: u64,
    metrics: &Metrics,
    cordon_done: tokio::sync::mpsc::Sender<Result<(), crate::kubeapi::ApiError>>,
    classified: tokio::sync::mpsc::Sender<crate::kubeapi::report::KillClassified>,
) -> PipelineConfig {
    let cordon = match &args.act {
        Some(_) => args.api.client("--act cordon").await.map(|client| {
            let node = args.api.node();
            tracing::info!(api = %args.api.source().describe(), %node, confirm = args.act_confirm, "cordon action armed for flaps");
            crate::act::CordonConfig {
                client,
                node,
                confirm: args.act_confirm,
            }
        }),
        None => None,
    };
    let set = ReportSet::from_kinds(&args.report);
    // The report worker also classifies kills (a runtime SIGKILL of a pod the kubelet
    // evicted): it runs whenever an API server is configured or the agent runs in a cluster,
    // with or without --report.
    let what = match set.any() {
        true => "--report",
        false => "the eviction classification of kills",
    };
    let report = match set.any() || args.api.source().available() {
        true => args.api.client(what).await.map(|client| {
            Reporter::spawn(
                client,
                args.api.node(),
                set,
                metrics.kube_reports.clone(),
                std::time::Duration::from_secs(args.condition_refresh),
                Some(classified),
            )
        }),
        false => None,
    };
    // The classifier's API inputs (MemoryPressure, pending CSRs), read-only, whenever an API
    // server is configured or the agent runs in a cluster.
    let api_inputs = match args.api.source().available() {
        true => args
            .api
            .client("the leak classifier's API inputs")
            .await
            .map(|client| {
                crate::kubeapi::inputs::spawn_poller(
                    client,
                    args.api.node(),
                    std::time::Duration::from_secs(API_INPUTS_EVERY_S),
                    metrics.kube_api_inputs_errors.clone(),
                )
            }),
        false => {
            tracing::info!("no API server: MemoryPressure and pending CSRs are not observed (the leak verdict says so)");
            None
        }
    };
    PipelineConfig {
        format: args.format,
        target: Target {
            name: args.kubelet_name.clone(),
            pid: args.kubelet_pid,
            binary: args.kubelet_bin.clone(),
        },
        kubepods_roots: args.kubepods_root.clone(),
        emit_samples: args.emit_samples,
        state_dir: args.state_dir.clone(),
        cycle: CycleConfig {
            flap_window_ns: args.flap_window.saturating_mul(1_000_000_000),
            settle_ns: args.storm_settle.saturating_mul(1_000_000_000),
            node: NodeRule {
                eviction_hard_bytes,
                horizon_seconds: args.pre_oom_horizon as f64,
                ..Default::default()
            },
            ..Default::default()
        },
        cordon,
        report,
        cordon_done,
        api_inputs,
    }
}

/// Classified kills waiting for the run loop (the worker classifies one at a time; a full
/// queue drops and counts `oomprobe_kube_reports_total{kind="classification",result="dropped"}`).
const CLASSIFIED_QUEUE: usize = 64;

/// Seconds between polls of the classifier's API inputs (a node GET and a CSR list).
const API_INPUTS_EVERY_S: u64 = 60;

/// Loads and attaches the probes, publishes which hooks are on.
fn load(args: &RunArgs, metrics: &Metrics) -> Result<Probes, RunError> {
    let mut probes = Probes::load(crate::EBPF_OBJECT, &args.kubelet_name, args.hook_tier)?;
    // Loading parsed the kernel's BTF (megabytes, now freed): give those pages back.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    metrics.observe_hooks(&probes);
    let arch = std::env::consts::ARCH;
    let unsupported = crate::kubelet::symbols::unsupported_features(arch);
    for feature in unsupported {
        tracing::warn!(
            feature,
            arch,
            "feature unsupported on this architecture: not used (oomprobe_feature_unsupported)"
        );
    }
    metrics.observe_unsupported(arch, unsupported);
    if args.syscall_tracepoints == SyscallTracepoints::Always {
        probes.count_exec_gap();
    }
    Ok(probes)
}

/// A tick every `seconds` (at least 1: the flags' ranges).
fn every(seconds: u64) -> tokio::time::Interval {
    tokio::time::interval(Duration::from_secs(seconds))
}

/// The score the agent gives itself: the kernel's OOM killer never picks a task at -1000, so a
/// node-wide OOM cannot take the agent that records it (the kubelet runs at -999).
pub const AGENT_OOM_SCORE_ADJ: i32 = -1000;

/// Writes [`AGENT_OOM_SCORE_ADJ`] to `/proc/self/oom_score_adj` (lowering it needs
/// CAP_SYS_RESOURCE); refused, the agent runs on with a warning.
fn protect_from_oom_killer() {
    let path = "/proc/self/oom_score_adj";
    match std::fs::write(path, AGENT_OOM_SCORE_ADJ.to_string()) {
        Ok(()) => tracing::info!(
            oom_score_adj = AGENT_OOM_SCORE_ADJ,
            "out of the OOM killer's way"
        ),
        Err(e) => {
            let now = std::fs::read_to_string(path).unwrap_or_default();
            tracing::warn!(error = %e, oom_score_adj = now.trim(), "cannot set oom_score_adj -1000 (needs CAP_SYS_RESOURCE): a node-wide OOM may kill the agent");
        }
    }
}

/// What the refusals made before anything is loaded leave ready.
struct Preflight {
    recorder: Option<crate::kernel::ring::Recorder>,
    eviction_hard_bytes: u64,
}

/// The refusals made before anything is loaded (and before any privilege is needed), as usage
/// errors: a --kubeconfig, --kube-token-file or --kube-ca-file that cannot be used (as
/// `diagnose` refuses them: a mistyped kubeconfig would otherwise only disable the cordon and
/// the reports, logged), a bearer token or CA file for --kubelet-metrics that cannot be read now (later, each scrape re-reads it and counts a
/// failure), an eviction percentage without the node's MemTotal, and a ring recording that
/// cannot be created (returned, ready to write).
async fn preflight(args: &RunArgs) -> Result<Preflight, RunError> {
    args.api.check_files().await.map_err(RunError::Kubeconfig)?;
    args.kubelet_metrics.token()?;
    if args.kubelet_metrics.kubelet_metrics.is_some() {
        // Reads the CA file now, as each scrape would.
        crate::kubelet::metrics::client(&args.kubelet_metrics.tls(), Duration::from_secs(1))?;
    }
    let threshold = args.eviction_hard_memory;
    let eviction_hard_bytes = match threshold.bytes(None) {
        Some(b) => b,
        None => {
            use procfs::Current as _;
            let total = procfs::Meminfo::current()
                .map_err(|e| RunError::MemTotal(threshold, e))?
                .mem_total;
            let b = threshold.bytes(Some(total)).unwrap_or(0);
            tracing::info!(threshold = %threshold, mem_total = total, bytes = b, "eviction threshold from the node's memory");
            b
        }
    };
    let recorder = match &args.record_ring {
        Some(path) => Some(
            crate::kernel::ring::Recorder::create(path).map_err(|source| RunError::RecordRing {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    Ok(Preflight {
        recorder,
        eviction_hard_bytes,
    })
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let Preflight {
        recorder,
        eviction_hard_bytes,
    } = preflight(&args).await?;
    if !args.no_oom_score_adj {
        protect_from_oom_killer();
    }
    let metrics = Arc::new(Metrics::new());
    let mut probes = load(&args, &metrics)?;
    let (stop_server, server_stopped) = tokio::sync::watch::channel(false);
    let server = if args.no_metrics {
        None
    } else {
        let addr = args.metrics_addr;
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| RunError::Metrics { addr, source })?;
        tracing::info!(%addr, "serving /metrics");
        let mut stopped = server_stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        Some(tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            ServeLimits::default(),
            shutdown,
        )))
    };
    let ring = probes.take_events()?;
    let (readers, mut ring) = crate::kernel::ring::spawn(
        ring,
        usize::from(args.ring_readers),
        args.ring_reader_priority,
        4096,
        recorder,
    )
    .map_err(RunError::Ring)?;
    tracing::debug!(cpus = ?readers.cpus, "ring-buffer readers started");
    let scrape_every = Duration::from_secs(args.sample_interval);
    let errors = metrics.kubelet_metrics_errors.clone();
    let kubelet_metrics = args.kubelet_metrics.spawn_scraper(scrape_every, errors);
    // The cordon's PATCH runs in a task; its result comes back here.
    let (cordon_done, mut cordon_result) = tokio::sync::mpsc::channel(4);
    // So does each kill the report worker classifies.
    let (classified, mut classified_rx) = tokio::sync::mpsc::channel(CLASSIFIED_QUEUE);
    let cfg = pipeline_config(
        &args,
        eviction_hard_bytes,
        &metrics,
        cordon_done,
        classified,
    )
    .await;
    let mut p = Pipeline::new(cfg, probes, metrics, kubelet_metrics);
    tracing::info!(
        hooks = p.probes().attached.len(),
        degraded = p.probes().degraded.len(),
        "oomprobe ready: watching SIGKILLs and OOM kills"
    );
    let mut samples = p.take_samples();
    let mut expire_tick = tokio::time::interval(Duration::from_millis(250));
    let mut sample_tick = every(args.sample_interval);
    let (mut detect_tick, mut report_tick) = (
        every(args.detect_interval),
        every(args.attribution_interval),
    );
    detect_tick.tick().await;
    report_tick.tick().await;
    let stop_at = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Ring)?;
    loop {
        tokio::select! {
            Some(first) = ring.recv() => p.on_ring_batch(std::iter::once(first).chain(std::iter::from_fn(|| ring.try_recv().ok()))).await,
            _ = report_tick.tick() => p.on_report().await,
            _ = sample_tick.tick() => p.on_sample(),
            Some(done) = async { match samples.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => p.on_sampled(done).await,
            _ = detect_tick.tick() => p.on_detect().await,
            _ = expire_tick.tick() => p.on_expire().await,
            Some((cgroup, kind)) = p.memcg_notification() => p.on_memcg_notification(cgroup, kind).await,
            Some(result) = cordon_result.recv() => p.on_cordon_result(result),
            Some(c) = classified_rx.recv() => p.on_kill_classified(c),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match stop_at { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        if args.max_kills.is_some_and(|m| p.kills() >= m) {
            break;
        }
    }
    tracing::info!(kills = p.kills(), "oomprobe stopping");
    let _ = stop_server.send(true);
    if let Some(s) = server {
        let _ = s.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    pub(super) fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|c| c.run)
    }

    /// A token file that is bad at start is refused before anything is loaded.
    #[tokio::test]
    async fn a_bad_token_file_is_refused_at_start() {
        let args = parse(&[
            "--kubelet-metrics",
            "http://127.0.0.1:1/metrics",
            "--kubelet-metrics-token-file",
            "/dev/zero",
        ])
        .unwrap();
        let e = preflight(&args).await.map(|_| ()).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "cannot read bearer token file /dev/zero: not a regular file"
        );
        let ok = preflight(&parse(&[]).unwrap()).await.unwrap();
        assert!(ok.recorder.is_none());
        assert_eq!(ok.eviction_hard_bytes, 100 << 20);
    }

    /// Files for the API server and the kubelet's endpoint given by name are checked before
    /// anything is loaded, as `diagnose` checks them: a bad one is refused naming it.
    #[tokio::test]
    async fn bad_api_and_ca_files_are_refused_at_start() {
        let dir = std::env::temp_dir().join(format!("oomprobe-preflight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let d = dir.display().to_string();
        let m = missing.display().to_string();
        for (args, want) in [
            (
                vec!["--kubeconfig", "/dev/zero"],
                "cannot use kubeconfig file /dev/zero: not a regular file".to_string(),
            ),
            (
                vec!["--kubeconfig", &d],
                format!("cannot use kubeconfig file {d}: not a regular file"),
            ),
            (
                vec!["--kubeconfig", &m],
                format!("cannot use kubeconfig file {m}: No such file or directory (os error 2)"),
            ),
            (
                vec![
                    "--kube-api",
                    "https://127.0.0.1:1",
                    "--kube-token-file",
                    "/dev/zero",
                ],
                "cannot use token file /dev/zero: not a regular file".to_string(),
            ),
            (
                vec!["--kube-ca-file", &m],
                format!("CA file {m} does not exist"),
            ),
            (
                vec![
                    "--kubelet-metrics",
                    "https://127.0.0.1:1/metrics",
                    "--kubelet-metrics-ca-file",
                    &d,
                ],
                format!("cannot read CA file {d}: not a regular file"),
            ),
        ] {
            let e = preflight(&parse(&args).unwrap())
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(crate::error_chain(&e), want, "{args:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `--eviction-hard-memory` as the kubelet takes it: a decimal quantity, or a percentage
    /// of this node's MemTotal (both used to be refused).
    #[test]
    fn eviction_thresholds_resolve_to_bytes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = |v: &str| {
            rt.block_on(preflight(&parse(&["--eviction-hard-memory", v]).unwrap()))
                .unwrap()
                .eviction_hard_bytes
        };
        assert_eq!(bytes("1.5Gi"), 1_610_612_736);
        assert_eq!(bytes("0%"), 0);
        use procfs::Current as _;
        let total = procfs::Meminfo::current().unwrap().mem_total;
        assert_eq!(bytes("10%"), (total as f64 * 0.1) as u64);
        assert!(bytes("10%") > 0);
    }

    /// Values that mean nothing are refused at parsing, naming the flag and the range (0 used
    /// to be taken as 1 second, or as "stop at once").
    #[test]
    fn meaningless_values_are_refused() {
        for (flag, value, want) in [
            ("--sample-interval", "0", "0 is not in 1..=86400"),
            ("--attribution-interval", "0", "0 is not in 1..=86400"),
            ("--detect-interval", "0", "0 is not in 1..=86400"),
            ("--detect-interval", "86401", "86401 is not in 1..=86400"),
            ("--duration", "0", "0 is not in 1..=31622400"),
            (
                "--duration",
                "18446744073709551615",
                "18446744073709551615 is not in 1..=31622400",
            ),
            ("--max-kills", "0", "0 is not in 1..18446744073709551615"),
            ("--flap-window", "0", "0 is not in 1..=86400"),
            ("--flap-window", "86401", "86401 is not in 1..=86400"),
            ("--storm-settle", "0", "0 is not in 1..=86400"),
            ("--pre-oom-horizon", "0", "0 is not in 1..=86400"),
            ("--ring-readers", "0", "0 is not in 1..=4096"),
            ("--ring-reader-priority", "100", "100 is not in 0..=99"),
            ("--kubelet-pid", "0", "0 is not in 1.."),
            ("--kubelet-name", "", "a process name cannot be empty"),
            ("--kubepods-root", "", "a cgroup path cannot be empty"),
        ] {
            let e = parse(&[flag, value]).map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{flag}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("error: invalid value '{value}' for '{flag} "))
                    && text.contains(want),
                "{flag} {value}: {text}"
            );
        }
        let e = parse(&["--eviction-hard-memory", "0"])
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("must be positive"), "{e}");
        let a = parse(&["--sample-interval", "1", "--duration", "31622400"]).unwrap();
        assert_eq!((a.sample_interval, a.duration), (1, Some(31_622_400)));
        let a = parse(&[
            "--max-kills",
            "1",
            "--flap-window",
            "86400",
            "--storm-settle",
            "1",
        ])
        .unwrap();
        assert_eq!(
            (a.max_kills, a.flap_window, a.storm_settle),
            (Some(1), 86_400, 1)
        );
        let a = parse(&["--pre-oom-horizon", "86400"]).unwrap();
        assert_eq!(a.pre_oom_horizon, 86_400);
    }
}
