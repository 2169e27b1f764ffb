//! `oomprobe bench-detect`: the detectors scored on a generated corpus against the baselines
//! (development).

#[derive(Debug, clap::Args)]
pub struct BenchDetectArgs {
    /// Corpus size: `4 * scale` healthy weeks and `scale` traces per leak rate, 1 to 1000
    /// (40 takes minutes in a release build).
    #[arg(long, default_value_t = 40,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_SCALE))]
    pub scale: usize,
    /// The corpus seed, 0 to 2^32-1 (the scorer adds offsets to it for its other corpora).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(0..=u64::from(u32::MAX)))]
    pub seed: u64,
}

/// The largest `--scale`: 25 times the default, already hours of work.
const MAX_SCALE: u64 = 1000;

/// Errors: writing the table failed.
pub fn run(args: BenchDetectArgs) -> Result<(), super::StdoutError> {
    let r = crate::detect::offline::score::score(args.seed, args.scale);
    let mut out = super::Stdout::lock();
    out.line(&r.table)?;
    out.finish()
}
