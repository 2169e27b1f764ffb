//! The `oomprobe` binary: wiring only.
use clap::{Parser, Subcommand};
use oomprobe::cli;

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
    Diagnose(cli::diagnose::DiagnoseArgs),
    /// Run the leak detectors over a recorded series (CSV), printing verdict changes.
    Replay(cli::replay::ReplayArgs),
    /// Draw an episode (SVG, HTML): the kubelet's memory, baseline, leak slope, time-to-OOM
    /// band, kills, stages and the storm's peak, from the persisted series and the event log.
    Report(cli::report::ReportArgs),
    /// Write a generated, labelled kubelet series as CSV (scenarios: healthy, growing-pods,
    /// leak-<MB/day>, workload, or a cause: container_gc, pod_certs_manager, evented_pleg,
    /// pod_churn, cgroup_v1_kernel_5_15, oversubscription).
    GenTrace {
        scenario: String,
        #[arg(long, default_value_t = 5.0)]
        days: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Score the detectors on a generated corpus against the baselines (development).
    BenchDetect {
        #[arg(long, default_value_t = 40)]
        scale: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
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
            Command::Run(args) => cli::run::run(*args).await.map_err(anyhow::Error::from),
            Command::ProbePoints(args) => cli::probe_points::run(args).map_err(anyhow::Error::from),
            Command::Replay(args) => cli::replay::run(args).map_err(anyhow::Error::from),
            Command::Report(args) => cli::report::run(args).map_err(anyhow::Error::from),
            Command::Diagnose(args) => cli::diagnose::run(args).await.map_err(anyhow::Error::from),
            Command::GenTrace {
                scenario,
                days,
                seed,
            } => gen_trace(&scenario, days, seed),
            Command::BenchDetect { scale, seed } => {
                let r = oomprobe::detect::score::score(seed, scale);
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "{}", r.table);
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        fail(e.as_ref());
    }
}

fn gen_trace(scenario: &str, days: f64, seed: u64) -> anyhow::Result<()> {
    use oomprobe::detect::{classify::Cause, tracegen::Scenario};
    let sc = match scenario {
        "healthy" => Scenario::Healthy,
        "growing-pods" => Scenario::HealthyGrowingPods,
        "workload" => Scenario::WorkloadLeak,
        "container_gc" => Scenario::Cause(Cause::ContainerGc),
        "pod_certs_manager" => Scenario::Cause(Cause::PodCertsManager),
        "evented_pleg" => Scenario::Cause(Cause::EventedPleg),
        "pod_churn" => Scenario::Cause(Cause::PodChurn),
        "cgroup_v1_kernel_5_15" => Scenario::Cause(Cause::CgroupV1Kernel515),
        "oversubscription" => Scenario::Cause(Cause::Oversubscription),
        other => match other.strip_prefix("leak-").and_then(|r| r.parse().ok()) {
            Some(rate) => Scenario::Leak(rate),
            None => anyhow::bail!("unknown scenario {other}"),
        },
    };
    let (samples, label) = oomprobe::detect::tracegen::generate(sc, days, seed);
    eprintln!("label: {}", serde_json::to_string(&label)?);
    use std::io::Write as _;
    let _ = write!(
        std::io::stdout(),
        "{}",
        oomprobe::detect::csv::write(&samples)
    );
    Ok(())
}

/// One line naming the problem and its causes, then a non-zero exit.
fn fail(e: &(dyn std::error::Error + 'static)) -> ! {
    eprintln!("oomprobe: error: {}", oomprobe::error_chain(e));
    std::process::exit(1);
}
