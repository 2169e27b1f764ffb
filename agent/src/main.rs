//! The `oomprobe` binary: logging, the runtime, and one verb dispatched to its file in `cli/`.
use clap::{Parser, Subcommand};
use oomprobe::cli;
use std::io::Write as _;

#[derive(Parser)]
#[command(
    name = "oomprobe",
    version,
    about = "eBPF agent for the kubelet's memory and every SIGKILL on a node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: stream kill records, serve metrics.
    Run(Box<cli::run::RunArgs>),
    /// Print the uprobe points a kubelet binary offers (symbol, file offset, source).
    ProbePoints(cli::probe_points::ProbePointsArgs),
    /// One-shot, read-only: the field guide's quick checks and the cycle stage the node shows.
    ///
    /// Exit status: 0 no check is BAD (all good or unknown), 1 could not run (usage error, a
    /// --kubeconfig that cannot be used, standard output unwritable), 2 at least one check is BAD. Stages: steady, pre_oom,
    /// reconciliation_storm, active_oom_or_down (no kubelet process, a kubepods cgroup tree),
    /// no_kubelet (no kubelet process, no kubepods tree).
    Diagnose(Box<cli::diagnose::DiagnoseArgs>),
    /// Run the leak detectors over a recorded series (the agent's series store, series.bin or
    /// series.bin.gz, or a CSV), printing verdict changes and always the final evaluation.
    ///
    /// A line each time the subject or cause changes, then always the evaluation at the last
    /// sample, marked final (JSON `"final":true` after `"event":"verdict"`; text `final` after
    /// the time). The slope is unknown (text `slope=-`, JSON null) while the subject is
    /// insufficient_history.
    Replay(cli::replay::ReplayArgs),
    /// Draw an episode (SVG, HTML): the kubelet's memory, baseline, leak slope, time-to-OOM
    /// band, kills, stages and the storm's peak, from the persisted series and the event log.
    Report(cli::report::ReportArgs),
    /// Write a generated, labelled kubelet series as CSV (scenarios: healthy, growing-pods,
    /// leak-<MB/day>, workload, or a cause: container_gc, pod_certs_manager, evented_pleg,
    /// pod_churn, cgroup_v1_kernel_5_15, oversubscription).
    GenTrace(cli::gen_trace::GenTraceArgs),
    /// Score the detectors on a generated corpus against the baselines (development).
    BenchDetect(cli::bench_detect::BenchDetectArgs),
    /// Run a kubeconfig's exec credential plugin with a time and an output bound (internal:
    /// what a --kubeconfig's exec users are pointed at).
    #[command(hide = true)]
    ExecCredential(cli::exec_credential::ExecCredentialArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(|| LogWriter(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube-rs logs its own ERROR line for each failed request; the agent reports
                // every API failure itself with its whole cause chain, so the default leaves
                // kube-rs's out (RUST_LOG=kube_client=debug brings them back).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .init();
    // A usage error exits 1 like every other refusal (clap's own default is 2, which
    // `diagnose` uses for "some check is BAD"); --help and --version still exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(1);
        }
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&e),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cli::run::run(*args)
                .await
                .map(|()| 0)
                .map_err(anyhow::Error::from),
            Command::ProbePoints(args) => cli::probe_points::run(args)
                .map(|()| 0)
                .map_err(anyhow::Error::from),
            Command::Replay(args) => cli::replay::run(args)
                .map(|()| 0)
                .map_err(anyhow::Error::from),
            Command::Report(args) => cli::report::run(args)
                .map(|()| 0)
                .map_err(anyhow::Error::from),
            Command::Diagnose(args) => match cli::diagnose::run(*args).await {
                Ok(true) => Ok(2),
                Ok(false) => Ok(0),
                Err(e) => Err(anyhow::Error::from(e)),
            },
            Command::GenTrace(args) => cli::gen_trace::run(args)
                .map(|()| 0)
                .map_err(anyhow::Error::from),
            Command::BenchDetect(args) => cli::bench_detect::run(args)
                .map(|()| 0)
                .map_err(anyhow::Error::from),
            Command::ExecCredential(args) => cli::exec_credential::run(args)
                .map(|()| 0)
                .map_err(anyhow::Error::from),
        }
    });
    match result {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => fail(e.as_ref()),
    }
}

/// One line naming the problem and its causes, then a non-zero exit: 1, or 141 without a
/// word when standard output's reader went away (`| head`), as for a tool killed by SIGPIPE.
fn fail(e: &(dyn std::error::Error + 'static)) -> ! {
    if cli::is_broken_pipe(e) {
        std::process::exit(141);
    }
    // A stderr that cannot be written (a full disk under its log) must not turn the error into
    // a panic: the exit status still says it.
    let _ = writeln!(
        std::io::stderr(),
        "oomprobe: error: {}",
        oomprobe::error_chain(e)
    );
    std::process::exit(1);
}

/// stderr for the log lines: a line that cannot be written (a full disk under the log file, a
/// closed descriptor) is dropped rather than panicking the program; the verb's own result and
/// exit status are unaffected.
struct LogWriter(std::io::Stderr);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}
