//! `oomprobe bench-detect`: the detectors scored on a generated corpus against the baselines
//! (development).
use std::io::Write as _;

#[derive(Debug, clap::Args)]
pub struct BenchDetectArgs {
    #[arg(long, default_value_t = 40)]
    pub scale: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: BenchDetectArgs) {
    let r = crate::detect::offline::score::score(args.seed, args.scale);
    let _ = writeln!(std::io::stdout(), "{}", r.table);
}
