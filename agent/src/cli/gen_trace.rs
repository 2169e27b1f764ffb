//! `oomprobe gen-trace SCENARIO`: a generated, labelled kubelet series as CSV on stdout (the
//! label on stderr), for testing the detectors.
use std::io::Write as _;

use crate::detect::{
    classify::Cause,
    offline::{csv, tracegen},
};

#[derive(Debug, clap::Args)]
pub struct GenTraceArgs {
    /// healthy, growing-pods, leak-<MB/day> (above 0, at most 1000000), workload, or a cause:
    /// container_gc, pod_certs_manager, evented_pleg, pod_churn, cgroup_v1_kernel_5_15,
    /// oversubscription.
    pub scenario: String,
    /// Days of series, 0.01 to 366 (one sample a minute). A scenario with a leak needs the
    /// leak inside the trace: leak-<MB/day> starts 0.5-2 days in, workload and the causes
    /// 0.2-1 day in (by the seed); shorter is refused, naming the --days that covers it (3
    /// always does for leak-<MB/day>, 2 for the others).
    #[arg(long, default_value_t = 5.0)]
    pub days: f64,
    /// The generator's seed: the same scenario, days and seed give the same trace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Add the healthy shapes of issue 17 (warm-up after starts, bursts returned over hours
    /// and partly retained, hour-scale wander, per-pod costs of 4-25 MiB, weekly and working-day pod patterns).
    #[arg(long)]
    pub shapes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GenTraceError {
    #[error("unknown scenario {0}: healthy, growing-pods, leak-<MB/day>, workload, container_gc, pod_certs_manager, evented_pleg, pod_churn, cgroup_v1_kernel_5_15 or oversubscription")]
    UnknownScenario(String),
    #[error(
        "--days {days}: this trace's leak starts {hours:.1} h in, after its last sample; give --days {need} or more"
    )]
    TooShort { days: f64, hours: f64, need: f64 },
    #[error("--days {0}: a number of days from {MIN_DAYS} to {MAX_DAYS}")]
    Days(f64),
    #[error("leak-{0}: a leak rate is a number of MB/day above 0 and at most {MAX_LEAK_MB_PER_DAY} (no leak: healthy)")]
    LeakRate(String),
    #[error(transparent)]
    Write(super::StdoutError),
}

/// A trace needs a few hours to say anything; a year of one-minute samples is 525,600 rows.
const MIN_DAYS: f64 = 0.01;
const MAX_DAYS: f64 = 366.0;
/// A terabyte a day: far beyond any node's memory within the trace's first hours; larger
/// rates only overflow the series' byte counts.
const MAX_LEAK_MB_PER_DAY: f64 = 1_000_000.0;

pub fn run(args: GenTraceArgs) -> Result<(), GenTraceError> {
    use tracegen::Scenario;
    if !(MIN_DAYS..=MAX_DAYS).contains(&args.days) {
        return Err(GenTraceError::Days(args.days));
    }
    let sc = match args.scenario.as_str() {
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
            // 0 MB/day is no leak: the label would still say one (use `healthy`).
            Some(rate) if rate > 0.0 && rate <= MAX_LEAK_MB_PER_DAY => Scenario::Leak(rate),
            Some(_) => {
                let rate = other.trim_start_matches("leak-").chars().take(64).collect();
                return Err(GenTraceError::LeakRate(rate));
            }
            None => return Err(GenTraceError::UnknownScenario(other.into())),
        },
    };
    let (samples, label) = if args.shapes {
        tracegen::generate_shaped(sc, args.days, args.seed)
    } else {
        tracegen::generate(sc, args.days, args.seed)
    };
    // A leak that starts after the last sample is not in the trace: the label would claim one.
    if let (Some(start), Some(last)) = (label.leak_start, samples.last()) {
        if start > last.t {
            let first = samples.first().map_or(last.t, |s| s.t);
            let hours = (start - first) as f64 / 3600.0;
            return Err(GenTraceError::TooShort {
                days: args.days,
                hours,
                need: ((start - first) as f64 / 86_400.0 + 1.0).ceil(),
            });
        }
    }
    // The scenario as it was asked for (the generator's own enum names differ).
    let mut shown = serde_json::to_value(&label).unwrap_or_default();
    shown["scenario"] = serde_json::Value::String(args.scenario.clone());
    // Best effort: a stderr that cannot be written does not stop the trace.
    let _ = writeln!(std::io::stderr(), "label: {shown}");
    // A reader that went away (`| head`) ends the program quietly (see `main`).
    let mut out = super::Stdout::lock();
    out.text(&csv::write(&samples))
        .and_then(|()| out.finish())
        .map_err(GenTraceError::Write)
}
