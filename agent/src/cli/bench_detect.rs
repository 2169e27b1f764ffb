//! `oomprobe bench-detect`: the detectors scored on a generated corpus against the baselines
//! (development).

#[derive(Debug, clap::Args)]
pub struct BenchDetectArgs {
    #[arg(long, default_value_t = 40)]
    pub scale: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Errors: writing the table failed.
pub fn run(args: BenchDetectArgs) -> Result<(), super::StdoutError> {
    let r = crate::detect::offline::score::score(args.seed, args.scale);
    let mut out = super::Stdout::lock();
    out.line(&r.table)?;
    out.finish()
}
