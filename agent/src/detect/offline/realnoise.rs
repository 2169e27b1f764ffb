//! The real-noise corpus (issue 14 part 3): multi-day traces whose noise, sawtooth, steps and
//! restarts are a recorded real kubelet's, with known leak ramps added.
//!
//! From one or more separate recorded series (the agent's own store file or a CSV, read by
//! `oomprobe replay`'s reader; [`RealNoise::from_recordings`]) and a seed, deterministically:
//! 1. **One sample a minute.** Each recording is cut to the first sample of each wall-clock
//!    minute (what the store keeps from 6 h back to 74 h, the bulk of the detector's window);
//!    the per-interval PLEG relist counts of the minute's samples are summed.
//! 2. **Hour-long blocks** (10-minute ones when a recording of the pool has no 2 h without a
//!    gap, as the lab recordings have not). Every window of that many consecutive minutes of one
//!    recording without a gap (no two samples more than [`MAX_GAP_S`] apart) is a block: a
//!    moving-block bootstrap, so a gap-free recording of `m` minutes gives `m - block + 1`
//!    overlapping blocks; the pool's blocks are all its recordings' (no block spans two
//!    recordings), each equally likely. With 10-minute
//!    blocks an hour of output is six recorded windows chained: the within-hour noise,
//!    sawtooth and steps are real, the hour-to-hour wander is the chain's. A block keeps its
//!    absolute values (RSS, pods, goroutines...): the level of the output stays within the
//!    levels the kubelet really had, with no random walk.
//! 3. **Matched joins.** Blocks are drawn with replacement; after the first, [`CANDIDATES`]
//!    blocks are drawn uniformly and the one whose opening trough (10% quantile of its first 10
//!    minutes) is nearest the previous block's closing trough is taken (a matched-block
//!    bootstrap, Carlstein et al. 1998): the joins are about as continuous as the recording.
//!    Two recordings meet only at such a join.
//! 4. **Restarts preserved, at a realistic rate.** A block holding a kubelet restart (as the
//!    detector sees one, [`crate::detect::restart_indices`]) keeps it whole (the drop and what follows are
//!    the real kubelet's), but such blocks are drawn only at a per-trace restart rate drawn in
//!    0-0.15 a day (the generator's), not at the recording's: the lab recording restarts its
//!    kubelet on purpose several times an hour, which would reset every added leak. The counters
//!    (`kubelet_restarts`, `evictions_memory_total`) are rebuilt from each block's own steps,
//!    so they only step where the recording did.
//! 5. **Re-timed** onto a 60 s grid from a Monday 00:00 UTC, blocks aligned on clock hours.
//! 6. **Leaks added.** A leak of `r` MB/day starting uniformly 0.5-2 days in (as the
//!    generator's) adds `r * (t - start)` to the kubelet's RSS and cgroup bytes (and takes it
//!    from the node's available memory), restarting from zero after each restart the detector
//!    would see ([`crate::detect::restart_times`]): a leak's bytes go with the process.
//!
//! Pods stay as recorded: the corpus has no healthy growing-pod traces.
use super::tracegen::{Label, Rng, Scenario, STEP_S};
use crate::detect::{classify::Cause, restart_times, series::quantile, Sample, Subject};

/// The recorded real kubelet series bench-detect pools by default (paths relative to the agent
/// crate): every committed healthy v1.34.4 recording of the lab, in this order (the order is
/// part of the corpus: the blocks are numbered through it). A new recording is appended here.
pub const DEFAULT_SERIES: &[&str] = &[
    "src/detect/testdata/lab-series/kubelet-v1.34.4-lab.series.bin.gz",
    "src/detect/testdata/lab-series/kubelet-v1.34.4-lab-2.series.bin.gz",
    "src/detect/testdata/lab-series/kubelet-v1.34.4-lab-3.series.bin.gz",
];
/// Samples further apart than this end a block (the agent was down or the scrape failed).
pub const MAX_GAP_S: i64 = 180;
/// Minutes per block when every recording of the pool has twice that without a gap.
pub const BLOCK_MIN: usize = 60;
/// Minutes per block otherwise.
pub const SHORT_BLOCK_MIN: usize = 10;
/// Blocks drawn per join; the best-matched one is used.
pub const CANDIDATES: usize = 4;
/// The first output sample's time (a Monday 00:00 UTC, hour-aligned: one block per hour bucket).
const T0: i64 = 1_789_948_800;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RealNoiseError {
    #[error("the real-noise corpus needs at least one recorded series")]
    NoRecording,
    /// `name` is the recording's name as passed to [`RealNoise::from_recordings`].
    #[error(
        "{name} has {minutes} one-minute samples, the longest gap-free run {longest} min: the real-noise corpus needs {} min without a gap over {MAX_GAP_S} s",
        SHORT_BLOCK_MIN * 3 / 2
    )]
    TooShort {
        name: String,
        minutes: usize,
        longest: usize,
    },
}

/// One block (an hour or 10 minutes) of one recording.
#[derive(Debug, Clone)]
struct Block {
    /// Index of the block's first minute in [`RealNoise::minutes`] (its last minute is in the
    /// same recording's range, [`Recording::minutes`]).
    start: usize,
    open: f64,
    close: f64,
    /// The kubelet restarted inside the block.
    restart: bool,
}

/// One recording of the pool, as it was read and what it gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// As passed to [`RealNoise::from_recordings`] (bench-detect: the file's path).
    pub name: String,
    /// Its first to last sample (s), its samples, the kubelet restarts the detector sees in it
    /// ([`crate::detect::restart_times`]).
    pub span_s: i64,
    pub samples: usize,
    pub restarts: usize,
    /// Its minutes' range in the pool's minutes: `[from, to)`.
    minutes: (usize, usize),
    /// Distinct (overlapping) blocks it gives.
    pub blocks: usize,
}

/// One or more recordings prepared for tiling.
#[derive(Debug, Clone)]
pub struct RealNoise {
    /// Every recording's minutes, one recording after the other.
    minutes: Vec<Sample>,
    /// Every recording's blocks, in recording order.
    blocks: Vec<Block>,
    /// Minutes per block, one for the pool ([`RealNoise::from_recordings`]).
    pub block_min: usize,
    /// The recordings, in the order given.
    pub recordings: Vec<Recording>,
    /// Summed over the recordings: spans (s), samples, restarts seen by the detector.
    pub span_s: i64,
    pub samples: usize,
    pub restarts: usize,
}

/// First sample of each minute; the minute's PLEG relist counts summed.
fn per_minute(series: &[Sample]) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for s in series {
        match out.last_mut() {
            Some(m) if m.t.div_euclid(60) == s.t.div_euclid(60) => {
                for (acc, v) in [
                    (&mut m.pleg_relists, s.pleg_relists),
                    (&mut m.pleg_relists_slower_1s, s.pleg_relists_slower_1s),
                    (&mut m.pleg_relists_slower_5s, s.pleg_relists_slower_5s),
                    (&mut m.pleg_relists_slower_10s, s.pleg_relists_slower_10s),
                ] {
                    if let Some(v) = v {
                        *acc = Some(acc.unwrap_or(0.0) + v);
                    }
                }
            }
            _ => out.push(s.clone()),
        }
    }
    out
}

fn trough(s: &[Sample]) -> f64 {
    let v: Vec<f64> = s.iter().map(|x| x.kubelet_rss_bytes).collect();
    quantile(&v, crate::detect::BASELINE_Q)
}

impl RealNoise {
    /// Prepares one recorded series (time-ordered, as the store and CSV readers give it):
    /// [`RealNoise::from_recordings`] with that one recording, named "the recorded series".
    /// Errors: no gap-free run of 1.5 [`SHORT_BLOCK_MIN`] (at least 6 distinct blocks).
    pub fn new(series: &[Sample]) -> Result<RealNoise, RealNoiseError> {
        RealNoise::from_recordings(&[("the recorded series", series)])
    }

    /// Pools several separate recordings, each `(name, series)` with its series time-ordered
    /// (as the store and CSV readers give it); the name is only reported ([`Recording`]).
    ///
    /// Each recording is cut to minutes and into gap-free runs on its own: no block spans two
    /// recordings (nor a gap inside one), even when their times follow each other or overlap
    /// (the same file twice gives every block twice). Blocks of different recordings meet only
    /// at a join, chosen by the trough rule like any other (module docs, 3.). Every block of
    /// the pool is equally likely to be drawn, so a recording weighs by its gap-free minutes.
    ///
    /// The block length is decided over the pool: [`BLOCK_MIN`] when every recording has
    /// 2 h without a gap, else [`SHORT_BLOCK_MIN`] for all. One length, because the tiling
    /// chains equal blocks on an hour-aligned grid; the short one as soon as one recording
    /// needs it, because with hour blocks a recording under 1 h gives none and would be
    /// dropped from the pool without a word, and one of 1-2 h would give a few near-identical
    /// windows drawn as often as a long recording's distinct ones. Alone, a recording gets the
    /// length [`RealNoise::new`] always gave it: one recording gives the same corpus as before
    /// pooling, for the same seed.
    ///
    /// Deterministic: a function of the recordings (in this order) and, in
    /// [`RealNoise::tile`]/[`RealNoise::trace`], the seed.
    ///
    /// Errors: [`RealNoiseError::NoRecording`] for an empty slice; [`RealNoiseError::TooShort`]
    /// naming the first recording without a gap-free run of 1.5 [`SHORT_BLOCK_MIN`] (each
    /// recording gives at least 6 distinct blocks).
    pub fn from_recordings(recordings: &[(&str, &[Sample])]) -> Result<RealNoise, RealNoiseError> {
        if recordings.is_empty() {
            return Err(RealNoiseError::NoRecording);
        }
        // Per recording: its minutes and their gap-free runs (start, end), in its own indices.
        let mut cut = Vec::with_capacity(recordings.len());
        for &(name, series) in recordings {
            let minutes = per_minute(series);
            let mut runs = Vec::new();
            let mut run_start = 0;
            for i in 1..=minutes.len() {
                if i == minutes.len() || minutes[i].t - minutes[i - 1].t > MAX_GAP_S {
                    runs.push((run_start, i));
                    run_start = i;
                }
            }
            let longest = runs.iter().map(|(a, b)| b - a).max().unwrap_or(0);
            if longest < SHORT_BLOCK_MIN * 3 / 2 {
                return Err(RealNoiseError::TooShort {
                    name: name.to_string(),
                    minutes: minutes.len(),
                    longest,
                });
            }
            cut.push((minutes, runs, longest));
        }
        let block_min = if cut.iter().all(|(_, _, longest)| *longest >= 2 * BLOCK_MIN) {
            BLOCK_MIN
        } else {
            SHORT_BLOCK_MIN
        };
        // The opening and closing troughs: the first and last 10 minutes (a sixth of a short
        // block).
        let edge = (block_min / 6).max(1);
        let mut all_minutes = Vec::new();
        let mut blocks = Vec::new();
        let mut sources = Vec::with_capacity(recordings.len());
        for ((name, series), (minutes, runs, _)) in recordings.iter().zip(cut) {
            let offset = all_minutes.len();
            let before = blocks.len();
            for &(a, b) in runs.iter().filter(|(a, b)| b - a >= block_min) {
                for start in a..=b - block_min {
                    let w = &minutes[start..start + block_min];
                    blocks.push(Block {
                        start: offset + start,
                        open: trough(&w[..edge]),
                        close: trough(&w[block_min - edge..]),
                        restart: !restart_times(w).is_empty(),
                    });
                }
            }
            sources.push(Recording {
                name: name.to_string(),
                span_s: series.last().map_or(0, |l| l.t) - series.first().map_or(0, |f| f.t),
                samples: series.len(),
                restarts: restart_times(series).len(),
                minutes: (offset, offset + minutes.len()),
                blocks: blocks.len() - before,
            });
            all_minutes.extend(minutes);
        }
        Ok(RealNoise {
            block_min,
            span_s: sources.iter().map(|r| r.span_s).sum(),
            samples: sources.iter().map(|r| r.samples).sum(),
            restarts: sources.iter().map(|r| r.restarts).sum(),
            recordings: sources,
            minutes: all_minutes,
            blocks,
        })
    }

    /// Distinct (overlapping) blocks the recordings give, all of them.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// A healthy trace of `days` tiled from the recordings (module docs): `days * 1440 /
    /// block_min` blocks (rounded down) of one sample a minute.
    pub fn tile(&self, days: f64, rng: &mut Rng) -> Vec<Sample> {
        let bm = self.block_min;
        let drawn = self.draw(days, rng);
        let mut out: Vec<Sample> = Vec::with_capacity(drawn.len() * bm);
        let (mut restarts, mut evictions) = (0.0, 0.0);
        for (h, &i) in drawn.iter().enumerate() {
            let b = &self.blocks[i];
            let src = &self.minutes[b.start..b.start + bm];
            for (k, s) in src.iter().enumerate() {
                let mut x = s.clone();
                x.t = T0 + ((h * bm + k) as i64) * STEP_S;
                // Counters step only where the recording stepped.
                if k > 0 {
                    let step = |f: fn(&Sample) -> Option<f64>| match (f(&src[k - 1]), f(s)) {
                        (Some(a), Some(b)) if b > a => b - a,
                        _ => 0.0,
                    };
                    restarts += step(|s| s.kubelet_restarts);
                    evictions += step(|s| s.evictions_memory_total);
                }
                x.kubelet_restarts = s.kubelet_restarts.map(|_| restarts);
                x.evictions_memory_total = s.evictions_memory_total.map(|_| evictions);
                out.push(x);
            }
        }
        out
    }

    /// The blocks a tile of `days` chains (indices in [`RealNoise::blocks`], in output order):
    /// the first uniformly, each next the best-matched of [`CANDIDATES`] (module docs, 3.-4.).
    fn draw(&self, days: f64, rng: &mut Rng) -> Vec<usize> {
        let bm = self.block_min;
        let hours = (days * 1440.0).round() as usize / bm;
        let (with, without): (Vec<usize>, Vec<usize>) =
            (0..self.blocks.len()).partition(|&i| self.blocks[i].restart);
        let pool = |restart: bool| match (restart, with.is_empty(), without.is_empty()) {
            (true, false, _) | (false, _, true) => &with,
            _ => &without,
        };
        let per_block = rng.range(0.0, 0.15) * bm as f64 / 1440.0;
        let pick = |rng: &mut Rng, from: &Vec<usize>| (rng.next_u64() % from.len() as u64) as usize;
        let mut out = Vec::with_capacity(hours);
        let mut prev: Option<usize> = None;
        for _ in 0..hours {
            let from = pool(prev.is_some() && rng.chance(per_block));
            let b = match prev {
                None => from[pick(rng, from)],
                Some(p) => {
                    let close = self.blocks[p].close;
                    (0..CANDIDATES)
                        .map(|_| from[pick(rng, from)])
                        .min_by(|&a, &b| {
                            (self.blocks[a].open - close)
                                .abs()
                                .total_cmp(&(self.blocks[b].open - close).abs())
                        })
                        .unwrap_or(p)
                }
            };
            out.push(b);
            prev = Some(b);
        }
        out
    }

    /// One labelled trace: healthy, or with a leak of `leak_mb_per_day` added (module docs).
    pub fn trace(
        &self,
        leak_mb_per_day: Option<f64>,
        days: f64,
        seed: u64,
    ) -> (Vec<Sample>, Label) {
        let mut rng = Rng::new(seed ^ 0x5EA1_0014);
        let mut tr = self.tile(days, &mut rng);
        let Some(mb) = leak_mb_per_day else {
            let label = Label {
                scenario: Scenario::Healthy,
                subject: Subject::None,
                cause: Cause::None,
                leak_start: None,
                leak_bytes_per_day: 0.0,
            };
            return (tr, label);
        };
        let start = T0 + (rng.range(0.5, 2.0) * 86_400.0) as i64;
        add_leak(&mut tr, start, mb * 1e6);
        let label = Label {
            scenario: Scenario::Leak(mb),
            subject: Subject::Kubelet,
            cause: Cause::Unknown,
            leak_start: Some(start),
            leak_bytes_per_day: mb * 1e6,
        };
        (tr, label)
    }
}

/// Adds a kubelet leak of `per_day` bytes/day from `start`, from zero again after each restart
/// the detector sees; never to a sample without a kubelet (RSS 0: no process, no leak).
pub fn add_leak(tr: &mut [Sample], start: i64, per_day: f64) {
    let restarts = restart_times(tr);
    for s in tr
        .iter_mut()
        .filter(|s| s.t >= start && crate::detect::kubelet_seen(s))
    {
        let from = restarts
            .iter()
            .rev()
            .find(|&&r| r <= s.t)
            .map_or(start, |&r| r.max(start));
        let add = per_day * (s.t - from) as f64 / 86_400.0;
        s.kubelet_rss_bytes += add;
        if let Some(c) = &mut s.kubelet_cgroup_bytes {
            *c += add;
        }
        if let Some(a) = &mut s.node_mem_available_bytes {
            *a = (*a - add).max(0.0);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::detect::store::Store;

    /// Six hours at the agent's 10 s interval through the real store code: a 90 MB kubelet
    /// with a GC sawtooth (a 2-minute period, 8 MB), a kubelet restart at 3 h (RSS back to
    /// 40 MB, warming up over an hour), a 10-minute gap at 4 h 30.
    pub(crate) fn recorded() -> Vec<Sample> {
        static ONCE: std::sync::OnceLock<Vec<Sample>> = std::sync::OnceLock::new();
        ONCE.get_or_init(write_and_load).clone()
    }

    fn write_and_load() -> Vec<Sample> {
        let d = std::env::temp_dir().join(format!("oomprobe-realnoise-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let p = d.join("series.bin");
        let t0 = 1_790_000_000 - 1_790_000_000 % 60;
        {
            let mut st = Store::open(&p).unwrap();
            for i in 0..6 * 360i64 {
                let t = t0 + i * 10;
                if (270 * 6..280 * 6).contains(&i) {
                    continue;
                }
                let after = i >= 180 * 6;
                let warm = if after {
                    40e6 + 50e6 * (1.0 - (-((i - 1080) as f64) / 360.0).exp())
                } else {
                    90e6
                };
                st.append(Sample {
                    t,
                    kubelet_rss_bytes: warm + (i % 12) as f64 * 0.7e6,
                    pods: 3.0,
                    goroutines: Some(145.0 + (i % 5) as f64),
                    kubelet_restarts: Some(f64::from(u8::from(after))),
                    pleg_relists: Some(10.0),
                    pleg_relists_slower_1s: Some(0.0),
                    ..Default::default()
                })
                .unwrap();
            }
        }
        let loaded = crate::detect::store::load(&p, t0 + 86_400).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        loaded.samples
    }

    #[test]
    fn blocks_come_from_gap_free_hours_at_one_sample_a_minute() {
        let rec = recorded();
        assert_eq!(rec.len(), 6 * 360 - 60);
        let rn = RealNoise::new(&rec).unwrap();
        assert_eq!(rn.restarts, 1);
        // 270 minutes before the gap give 211 windows of 60; 80 after it give 21.
        assert_eq!(rn.minutes.len(), 350);
        assert_eq!(rn.blocks(), 211 + 21);
        // Six 10 s intervals' relists summed into each minute.
        assert_eq!(rn.minutes[5].pleg_relists, Some(60.0));
        assert_eq!(rn.block_min, 60);
        // Under 2 h without a gap: 10-minute blocks; under 15 minutes: an error.
        let short = RealNoise::new(&rec[..100 * 6]).unwrap();
        assert_eq!((short.block_min, short.blocks()), (10, 91));
        assert_eq!(short.tile(1.0, &mut Rng::new(1)).len(), 1440);
        assert_eq!(
            RealNoise::new(&rec[..14 * 6]).unwrap_err().to_string(),
            "the recorded series has 14 one-minute samples, the longest gap-free run 14 min: the real-noise corpus needs 15 min without a gap over 180 s"
        );
    }

    #[test]
    fn tiles_are_real_minutes_with_counters_rebuilt_and_deterministic() {
        let rn = RealNoise::new(&recorded()).unwrap();
        let (a, la) = rn.trace(None, 7.0, 3);
        let (b, _) = rn.trace(None, 7.0, 3);
        assert_eq!(a, b);
        assert_eq!(la.subject, Subject::None);
        assert_eq!(a.len(), 7 * 1440);
        assert!(a.windows(2).all(|w| w[1].t - w[0].t == 60));
        // Every output minute is a recorded minute (time and counters aside).
        for x in a.iter().step_by(97) {
            assert!(
                rn.minutes
                    .iter()
                    .any(|m| m.kubelet_rss_bytes == x.kubelet_rss_bytes
                        && m.goroutines == x.goroutines
                        && m.pods == x.pods),
                "{x:?}"
            );
        }
        // The restart counter steps once per block that held the recorded restart, never
        // at a join.
        let steps = a
            .windows(2)
            .filter(|w| w[1].kubelet_restarts > w[0].kubelet_restarts)
            .count();
        assert!(steps > 0);
        let at_joins = a
            .windows(2)
            .filter(|w| w[1].t % 3600 == T0 % 3600 && w[1].kubelet_restarts > w[0].kubelet_restarts)
            .count();
        assert_eq!(at_joins, 0);
        // Matched joins: the mean jump at a join is close to the mean jump within a block
        // (no more than three times it), as it would not be with blocks drawn blindly.
        let jump = |w: &[Sample]| (w[1].kubelet_rss_bytes - w[0].kubelet_rss_bytes).abs();
        let (mut join, mut inside) = (Vec::new(), Vec::new());
        for (i, w) in a.windows(2).enumerate() {
            if (i + 1) % BLOCK_MIN == 0 {
                join.push(jump(w))
            } else {
                inside.push(jump(w))
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(
            mean(&join) < 3.0 * mean(&inside),
            "{} {}",
            mean(&join),
            mean(&inside)
        );
    }

    #[test]
    fn leaks_are_added_from_their_start_and_restart_with_the_kubelet() {
        let rn = RealNoise::new(&recorded()).unwrap();
        let (h, _) = rn.trace(None, 6.0, 9);
        let (l, label) = rn.trace(Some(100.0), 6.0, 9);
        let start = label.leak_start.unwrap();
        assert!((T0 + 43_200..=T0 + 172_800).contains(&start));
        assert_eq!(label.leak_bytes_per_day, 100e6);
        let restarts = restart_times(&h);
        for (a, b) in h.iter().zip(&l) {
            let from = restarts
                .iter()
                .rev()
                .find(|&&r| r <= a.t)
                .map_or(start, |&r| r.max(start));
            let want = if a.t >= start {
                100e6 * (a.t - from) as f64 / 86_400.0
            } else {
                0.0
            };
            assert!(
                (b.kubelet_rss_bytes - a.kubelet_rss_bytes - want).abs() < 1e-3,
                "t={}",
                a.t
            );
        }
    }

    /// The recording's two gap-free runs as two separate recordings.
    fn split_at_the_gap() -> (Vec<Sample>, Vec<Sample>) {
        let rec = recorded();
        let cut = rec
            .windows(2)
            .position(|w| w[1].t - w[0].t > MAX_GAP_S)
            .unwrap()
            + 1;
        (rec[..cut].to_vec(), rec[cut..].to_vec())
    }

    /// The recording each drawn block is from, checking it lies inside that recording's
    /// minutes, and that the tile is those blocks' recorded minutes in order.
    fn recordings_drawn(rn: &RealNoise, days: f64, seed: u64) -> Vec<usize> {
        let drawn = rn.draw(days, &mut Rng::new(seed));
        assert_eq!(
            rn.tile(days, &mut Rng::new(seed)).len(),
            drawn.len() * rn.block_min
        );
        let tile = rn.tile(days, &mut Rng::new(seed));
        drawn
            .iter()
            .enumerate()
            .map(|(h, &i)| {
                let b = &rn.blocks[i];
                let r = rn
                    .recordings
                    .iter()
                    .position(|r| (r.minutes.0..r.minutes.1).contains(&b.start))
                    .unwrap();
                let end = b.start + rn.block_min;
                assert!(
                    end <= rn.recordings[r].minutes.1,
                    "block {i} spans two recordings"
                );
                let w = &rn.minutes[b.start..end];
                assert!(w.windows(2).all(|p| p[1].t - p[0].t <= MAX_GAP_S));
                for (k, m) in w.iter().enumerate() {
                    let x = &tile[h * rn.block_min + k];
                    assert_eq!(
                        (x.kubelet_rss_bytes, x.goroutines, x.pleg_relists),
                        (m.kubelet_rss_bytes, m.goroutines, m.pleg_relists)
                    );
                }
                r
            })
            .collect()
    }

    #[test]
    fn pooled_recordings_give_blocks_from_each_never_one_across_them() {
        let (a, b) = split_at_the_gap();
        assert_eq!((a.len(), b.len()), (270 * 6, 80 * 6));
        // Alone, the 270 gap-free minutes give hour blocks; pooled with 80 minutes (no 2 h
        // without a gap), the pool's blocks are 10 minutes: 261 + 71.
        assert_eq!(RealNoise::new(&a).unwrap().block_min, BLOCK_MIN);
        let rn = RealNoise::from_recordings(&[("a", &a), ("b", &b)]).unwrap();
        assert_eq!(rn.block_min, SHORT_BLOCK_MIN);
        let per: Vec<(&str, usize, usize, usize)> = rn
            .recordings
            .iter()
            .map(|r| (r.name.as_str(), r.samples, r.restarts, r.blocks))
            .collect();
        assert_eq!(per, [("a", 1620, 1, 261), ("b", 480, 0, 71)]);
        assert_eq!((rn.blocks(), rn.samples, rn.restarts), (332, 2100, 1));
        // The two pieces abut in time, yet no block runs from one into the other.
        assert_eq!(rn.recordings[0].minutes, (0, 270));
        assert_eq!(rn.recordings[1].minutes, (270, 350));
        let from = recordings_drawn(&rn, 7.0, 5);
        assert_eq!(from.len(), 7 * 144);
        let of = |r: usize| from.iter().filter(|&&x| x == r).count();
        let across = from.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!((of(0), of(1), across), (806, 202, 233));
        // Deterministic: the same recordings and seed give the same trace.
        let (x, lx) = rn.trace(Some(50.0), 7.0, 5);
        let (y, ly) = rn.trace(Some(50.0), 7.0, 5);
        assert_eq!((x, lx.leak_start), (y, ly.leak_start));
        // A recording too short is named; an empty pool is an error.
        assert_eq!(
            RealNoise::from_recordings(&[("a", &a), ("short", &b[..14 * 6])])
                .unwrap_err()
                .to_string(),
            "short has 14 one-minute samples, the longest gap-free run 14 min: the real-noise corpus needs 15 min without a gap over 180 s"
        );
        assert_eq!(
            RealNoise::from_recordings(&[]).unwrap_err(),
            RealNoiseError::NoRecording
        );
    }

    /// Joins between recordings follow the trough rule like any other: with the second
    /// recording 1 GB above the first, a block of one follows a block of the other only when
    /// no candidate of the same recording was drawn, far less often than blind draws would.
    #[test]
    fn recordings_meet_only_at_matched_joins() {
        let (a, mut b) = split_at_the_gap();
        for s in &mut b {
            s.kubelet_rss_bytes += 1e9;
        }
        let rn = RealNoise::from_recordings(&[("a", &a), ("b", &b)]).unwrap();
        let from = recordings_drawn(&rn, 7.0, 5);
        let of_b = from.iter().filter(|&&x| x == 1).count();
        let across = from.windows(2).filter(|w| w[0] != w[1]).count();
        // Blind draws would change recording at about 2 * 261/332 * 71/332 = 34% of the 1,007
        // joins (343); with the levels alike, matched joins change it at 233 (test above).
        assert_eq!((of_b, across), (7, 7));
    }

    /// The committed lab recording twice: two recordings with the same times, kept apart
    /// (their minutes not merged), every block twice, tiles drawing from both copies.
    #[test]
    fn the_committed_recording_pooled_twice() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_SERIES[0]);
        let (rec, _) = crate::cli::replay::read_input(&path, i64::MAX / 2).unwrap();
        let one = RealNoise::new(&rec).unwrap();
        let two = RealNoise::from_recordings(&[("first", &rec), ("second", &rec)]).unwrap();
        assert_eq!(two.block_min, one.block_min);
        assert_eq!(two.minutes.len(), 2 * one.minutes.len());
        assert_eq!(two.blocks(), 2 * one.blocks());
        assert_eq!(two.recordings[0].blocks, one.blocks());
        assert_eq!(two.recordings[1].blocks, one.blocks());
        assert_eq!(
            (rec.len(), one.block_min, one.minutes.len(), one.blocks()),
            (241, SHORT_BLOCK_MIN, 41, 32)
        );
        let from = recordings_drawn(&two, 7.0, 11);
        let of = |r: usize| from.iter().filter(|&&x| x == r).count();
        // (510, 498) while a kubelet down at sample time counted as two restarts, which put
        // more blocks in the restart pool.
        assert_eq!((of(0), of(1)), (502, 506));
        // The same file twice is the same corpus: each block is there twice and a draw picks
        // by index modulo the pool's size, so the two copies are picked alike.
        let (x, lx) = two.trace(Some(100.0), 6.0, 2);
        let (y, ly) = one.trace(Some(100.0), 6.0, 2);
        assert_eq!((x, lx.leak_start), (y, ly.leak_start));
        // One recording through the pool is the corpus it always was.
        let solo = RealNoise::from_recordings(&[("only", &rec)]).unwrap();
        let (x, lx) = solo.trace(Some(100.0), 6.0, 2);
        let (y, ly) = one.trace(Some(100.0), 6.0, 2);
        assert_eq!((x, lx.leak_start), (y, ly.leak_start));
    }
}
