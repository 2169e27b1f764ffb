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
    /// A recorded real kubelet series the real-noise corpus is tiled from: the agent's series
    /// store (`series.bin`) or a replay CSV, plain or gzip-compressed. Repeat it to pool
    /// separate recordings (blocks from all, never joined across a gap between them except at
    /// a matched join; in the order given), at most 64; a file given again (by any path to it)
    /// is read and pooled once. Default: every healthy v1.34.4 lab recording
    /// committed in the repository (`DEFAULT_SERIES`, under
    /// agent/src/detect/testdata/lab-series/).
    #[arg(long)]
    pub real_series: Vec<PathBuf>,
    /// Only each recording's samples at or after this unix time (seconds): keep the healthy
    /// part of a recording (e.g. before the lab replaced the kubelet by a leaking version).
    /// Applies to every `--real-series` file alike (no per-file windows).
    #[arg(long)]
    pub real_from: Option<i64>,
    /// Only each recording's samples before this unix time (seconds); every file alike.
    #[arg(long)]
    pub real_to: Option<i64>,
}

/// The largest `--scale`: 25 times the default, already hours of work.
const MAX_SCALE: u64 = 1000;

/// The most distinct `--real-series` files pooled: each is read whole (up to
/// [`crate::files::MAX_SERIES_BYTES`]) and held until the corpus is cut.
pub const MAX_REAL_SERIES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BenchDetectError {
    #[error(
        "the real-noise corpus needs a recorded kubelet series: {path} does not exist (pass --real-series PATH: an agent's series.bin or a replay CSV)"
    )]
    NoRealSeries { path: String },
    #[error("the real-noise corpus's series {path}")]
    Read {
        path: String,
        #[source]
        source: super::replay::ReplayError,
    },
    /// Names the file (its path as given) when one is too short.
    #[error("{count} distinct --real-series files: at most {MAX_REAL_SERIES} are pooled (each is read whole); pool fewer, or join recordings into one CSV")]
    TooMany { count: usize },
    #[error(transparent)]
    RealNoise(#[from] RealNoiseError),
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

/// The real-noise corpus's sources, pooled in the order given: the `--real-series` files, or
/// when there are none every committed recording of [`DEFAULT_SERIES`]; each cut to
/// `[from, to)` (unix s). Each recording is named by its path (as given, or the committed
/// file's from the agent crate). A file given again (the same device and inode, by any path)
/// is read once and pooled once, with a warning; more than [`MAX_REAL_SERIES`] distinct files
/// are refused before any is read.
fn real_noise(
    paths: Vec<PathBuf>,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<RealNoise, BenchDetectError> {
    let paths = if paths.is_empty() {
        DEFAULT_SERIES
            .iter()
            .map(|p| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p))
            .collect()
    } else {
        paths
    };
    // Each file once, in the order first given: repeating a path must not read (and hold)
    // the file again. Per file: its identity, its name as first given, how often given again.
    let mut seen: Vec<((u64, u64), String, usize)> = Vec::new();
    let mut unique = Vec::with_capacity(paths.len().min(MAX_REAL_SERIES));
    for path in paths {
        use std::os::unix::fs::MetadataExt as _;
        let name = path.display().to_string();
        // Only a file that is not there (ENOENT, a dangling link) "does not exist"; one that
        // cannot be looked at (a symlink loop, a permission) is read below, naming its error.
        if matches!(path.try_exists(), Ok(false)) {
            return Err(BenchDetectError::NoRealSeries { path: name });
        }
        if let Ok(m) = std::fs::metadata(&path) {
            let id = (m.dev(), m.ino());
            if let Some((_, _, again)) = seen.iter_mut().find(|(i, _, _)| *i == id) {
                *again += 1;
                continue;
            }
            seen.push((id, name, 0));
        }
        unique.push(path);
    }
    for (_, first, again) in seen.iter().filter(|(_, _, again)| *again > 0) {
        tracing::warn!(
            series = %first,
            repeats = again,
            "--real-series file given again (by the same or another path): read and pooled once"
        );
    }
    if unique.len() > MAX_REAL_SERIES {
        return Err(BenchDetectError::TooMany {
            count: unique.len(),
        });
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut recordings = Vec::with_capacity(unique.len());
    for path in &unique {
        let name = path.display().to_string();
        let (mut samples, _) =
            super::replay::read_input(path, now).map_err(|source| BenchDetectError::Read {
                path: name.clone(),
                source,
            })?;
        samples.retain(|s| from.is_none_or(|f| s.t >= f) && to.is_none_or(|t| s.t < t));
        recordings.push((name, samples));
    }
    let named: Vec<(&str, &[crate::detect::Sample])> = recordings
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    Ok(RealNoise::from_recordings(&named)?)
}

/// Errors: a real series is missing, unreadable or too short; writing the table failed.
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
        let e = real_noise(vec!["/nonexistent/series.bin".into()], None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the real-noise corpus needs a recorded kubelet series: /nonexistent/series.bin does not exist (pass --real-series PATH: an agent's series.bin or a replay CSV)"
        );
    }

    /// A symlink loop is named with its error, not said not to exist.
    #[test]
    fn a_symlink_loop_is_its_io_error_not_missing() {
        let dir = std::env::temp_dir().join(format!("oomprobe-bench-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = real_noise(vec![a.clone()], None, None).unwrap_err();
        let eloop = std::io::Error::from_raw_os_error(libc::ELOOP);
        assert_eq!(
            crate::error_chain(&e),
            format!(
                "the real-noise corpus's series {0}: cannot read {0}: {eloop}",
                a.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Without `--real-series`, every committed recording of `DEFAULT_SERIES`, named by its
    /// path; two files pool; the same file given again (by the same or another path) is
    /// pooled once.
    #[test]
    fn the_default_is_every_committed_recording_and_files_pool() {
        let rn = real_noise(Vec::new(), None, None).unwrap();
        let names: Vec<String> = rn.recordings.iter().map(|r| r.name.clone()).collect();
        let want: Vec<String> = DEFAULT_SERIES
            .iter()
            .map(|p| format!("{}/{p}", env!("CARGO_MANIFEST_DIR")))
            .collect();
        assert_eq!(names, want);
        assert_eq!(rn.recordings[0].blocks, 32);
        let lab = PathBuf::from(&want[0]);
        let dir = std::env::temp_dir().join(format!("oomprobe-bench-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("copy.series.bin.gz");
        std::fs::copy(&lab, &copy).unwrap();
        let two = real_noise(vec![lab.clone(), copy], None, None).unwrap();
        let per: Vec<(usize, usize)> = two
            .recordings
            .iter()
            .map(|r| (r.samples, r.blocks))
            .collect();
        assert_eq!(per, [(241, 32), (241, 32)]);
        assert_eq!((two.blocks(), two.block_min), (64, 10));
        // The same file a thousand times, and by a symlink: one recording, named as first given.
        let link = dir.join("link.gz");
        std::os::unix::fs::symlink(&lab, &link).unwrap();
        let mut again = vec![lab.clone(); 1000];
        again.push(link);
        let once = real_noise(again, None, None).unwrap();
        let names: Vec<&str> = once.recordings.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [want[0].as_str()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// More distinct files than [`MAX_REAL_SERIES`] are refused before any is read.
    #[test]
    fn too_many_distinct_real_series_are_refused() {
        let dir = std::env::temp_dir().join(format!("oomprobe-bench-many-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths: Vec<PathBuf> = (0..=MAX_REAL_SERIES)
            .map(|i| {
                let p = dir.join(format!("{i}.csv"));
                std::fs::write(&p, format!("{i}")).unwrap();
                p
            })
            .collect();
        let e = real_noise(paths, None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "65 distinct --real-series files: at most 64 are pooled (each is read whole); pool fewer, or join recordings into one CSV"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
