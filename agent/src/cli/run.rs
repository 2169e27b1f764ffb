//! `oomprobe run`: the daemon. Streams kill records and serves metrics.
use std::{io::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::OutputFormat;
use crate::{
    clock::{monotonic_ns, Clock},
    events,
    forensics::{self, Correlator, KillRecord},
    metrics::{self, Metrics},
    node::LiveNode,
    probes::{Probes, HOOKS},
};

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
    let mut probes = Probes::load(crate::EBPF_OBJECT)?;
    // Loading parsed the kernel's BTF (megabytes, now freed): give those pages back.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let metrics = Arc::new(Metrics::new());
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
    let ring: RingBuf<MapData> = probes.take_events()?;
    // SAFETY: the ring buffer owns its fd and keeps it open until it is dropped with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| RunError::Ring(e.into()))?;
    let mut correlator = Correlator::new(LiveNode::detect(), Clock::new());
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
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(RunError::Ring)?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    match events::decode(&item) {
                        Ok(ev) => {
                            if let events::Event::Signal(s) = &ev {
                                metrics.sigkills.with_label_values(&[forensics::delivery_name(s.result)]).inc();
                            }
                            records.extend(correlator.on_event_at(ev, Some(monotonic_ns())));
                        }
                        Err(e) => {
                            metrics.dropped.with_label_values(&["decode_error", e.reason()]).inc();
                            tracing::debug!(error = %e, "malformed record");
                        }
                    }
                }
                guard.clear_ready();
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
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        for rec in records.drain(..) {
            metrics.kills.with_label_values(&[rec.kind.as_str()]).inc();
            emit(args.format, &rec);
            kills += 1;
        }
        if args.max_kills.is_some_and(|m| kills >= m) {
            break;
        }
    }
    tracing::info!(kills, "oomprobe stopping");
    Ok(())
}
