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
    Run(cli::run::RunArgs),
    /// Print the uprobe points a kubelet binary offers (symbol, file offset, source).
    ProbePoints(cli::probe_points::ProbePointsArgs),
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
            Command::Run(args) => cli::run::run(args).await.map_err(anyhow::Error::from),
            Command::ProbePoints(args) => cli::probe_points::run(args).map_err(anyhow::Error::from),
        }
    });
    if let Err(e) = result {
        fail(e.as_ref());
    }
}

/// One line naming the problem and its causes, then a non-zero exit.
fn fail(e: &(dyn std::error::Error + 'static)) -> ! {
    let mut line = format!("oomprobe: error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{}", line.replace('\n', " "));
    std::process::exit(1);
}
