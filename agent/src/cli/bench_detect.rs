//! `oomprobe bench-detect`: the detectors scored on generated corpora and on a real-noise
//! corpus (a recorded real kubelet's series, tiled, with known leaks) against the baselines
//! (development).
use std::path::PathBuf;

use crate::detect::offline::realnoise::{RealNoise, RealNoiseError, DEFAULT_SERIES};

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
    /// The recorded real kubelet series the real-noise corpus is tiled from: the agent's series
    /// store (`series.bin`) or a replay CSV, plain or gzip-compressed. Default: the lab
    /// recording committed in the repository (agent/src/detect/testdata/lab-series/).
    #[arg(long)]
    pub real_series: Option<PathBuf>,
    /// Only the recording's samples at or after this unix time (seconds): keep the healthy part
    /// of a recording (e.g. before the lab replaced the kubelet by a leaking version).
    #[arg(long)]
    pub real_from: Option<i64>,
    /// Only the recording's samples before this unix time (seconds).
    #[arg(long)]
    pub real_to: Option<i64>,
}

/// The largest `--scale`: 25 times the default, already hours of work.
const MAX_SCALE: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum BenchDetectError {
    #[error(
        "the real-noise corpus needs a recorded kubelet series: {path} does not exist (pass --real-series PATH: an agent's series.bin or a replay CSV)"
    )]
    NoRealSeries { path: String },
    #[error("the real-noise corpus's series")]
    Read(#[source] super::replay::ReplayError),
    #[error("{path}")]
    RealNoise {
        path: String,
        #[source]
        source: RealNoiseError,
    },
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

/// The real-noise corpus's source: `--real-series` or the committed recording.
fn real_noise(
    arg: Option<PathBuf>,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<RealNoise, BenchDetectError> {
    let path =
        arg.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_SERIES));
    if !path.exists() {
        return Err(BenchDetectError::NoRealSeries {
            path: path.display().to_string(),
        });
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (mut samples, _) = super::replay::read_input(&path, now).map_err(BenchDetectError::Read)?;
    samples.retain(|s| from.is_none_or(|f| s.t >= f) && to.is_none_or(|t| s.t < t));
    RealNoise::new(&samples).map_err(|source| BenchDetectError::RealNoise {
        path: path.display().to_string(),
        source,
    })
}

/// Errors: the real series is missing, unreadable or too short; writing the table failed.
pub fn run(args: BenchDetectArgs) -> Result<(), BenchDetectError> {
    let real = real_noise(args.real_series, args.real_from, args.real_to)?;
    let r = crate::detect::offline::score::score(args.seed, args.scale, &real);
    let mut out = super::Stdout::lock();
    out.line(&r.table)?;
    Ok(out.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_real_series_is_a_clear_error_not_a_skip() {
        let e = real_noise(Some("/nonexistent/series.bin".into()), None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the real-noise corpus needs a recorded kubelet series: /nonexistent/series.bin does not exist (pass --real-series PATH: an agent's series.bin or a replay CSV)"
        );
    }
}
