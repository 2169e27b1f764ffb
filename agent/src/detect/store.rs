//! The persisted series: leak detection must survive agent restarts and upgrades.
//!
//! A self-describing, fixed-record file (format 2): `OOMPSERI`, format version (u32), record
//! length (u32), column count (u32), then each column's name (u16 length + UTF-8), then records
//! of `t` (i64, unix seconds) and one f64 per named column (NaN = missing), little-endian. A
//! reader maps columns by name: reordered, added or removed columns load into the right
//! fields, unknown ones are ignored, missing ones are absent. Format 1 (the fixed column list
//! [`V1_COLUMNS`], no names) still loads. Decoded values are validated (time within years
//! 1970-9999, byte counts and counts finite and not negative); an invalid record is dropped and
//! counted ([`Store::invalid_records`]). A torn last record is cut off; a corrupt or foreign
//! file is set aside (renamed `*.corrupt-<unix>`) with a warning, never silently overwritten.
//! Bounded: 14 days; every sample of the last 6 hours, one per minute back to 74 hours (the
//! change-point test's 72 h of hourly buckets, each with enough samples for its low quantile),
//! one per 30 minutes before that.
use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use super::{series::OPTIONAL_COLUMNS, Sample};

const MAGIC: &[u8; 8] = b"OOMPSERI";
pub const VERSION: u32 = 2;
/// Format 1's columns after `t`, in its record order (frozen: what agents before format 2
/// wrote).
pub const V1_COLUMNS: &[&str] = &[
    "kubelet_rss_bytes",
    "pods",
    "containers",
    "exited_containers",
    "kubelet_cgroup_bytes",
    "kubelet_limit_bytes",
    "node_mem_available_bytes",
    "node_mem_total_bytes",
    "goroutines",
    "pleg_relist_p99_seconds",
    "evictions_memory_total",
    "workload_working_set_bytes",
    "pod_churn_per_hour",
    "pending_csrs",
    "cgroup_version",
    "kernel",
    "gate_pod_certificate_request",
    "gate_evented_pleg",
    "kubelet_restarts",
    "memory_pressure",
];
const V1_HEADER: usize = 16;
const KEEP_S: i64 = 14 * 86_400;
/// Every sample this recent is kept.
const FULL_RES_S: i64 = 6 * 3600;
/// One sample per `MID_STEP_S` back to this age: the detector's 72 h history and 2 h of margin.
const MID_RES_S: i64 = 74 * 3600;
const MID_STEP_S: i64 = 60;
const COARSE_STEP_S: i64 = 1800;
/// The latest time a record may carry (9999-12-31T23:59:59Z).
const MAX_T: i64 = 253_402_300_799;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("series store {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Larger than any store this agent writes ([`MAX_STORE_BYTES`]).
    #[error(
        "series store {path} is {len} bytes, larger than any store the agent writes ({MAX_STORE_BYTES} at most): not read"
    )]
    TooLarge { path: String, len: u64 },
}

/// The largest store file read: 64 MiB. The live store holds at most 14 days (every sample of
/// 6 h, one a minute to 74 h, one per 30 min before): at a 1 s sample interval about 26,000
/// records of 200 bytes, 5 MiB; the bound leaves room for columns added later.
pub const MAX_STORE_BYTES: u64 = 64 << 20;

pub struct Store {
    path: PathBuf,
    series: Retained,
    file: File,
    invalid: u64,
}

/// Samples appended between two compactions ([`bound`]) of the held series.
pub const COMPACT_EVERY: usize = 360;

/// The series as the live agent holds it in memory: appended in time order and bounded
/// ([`bound`]) every [`COMPACT_EVERY`] appends, so between compactions it holds at most that
/// many samples beyond the retention. [`Store`] keeps its samples in one; `replay` feeds a
/// recorded series through one, so its detectors see what the agent's would (and its cost
/// stays bounded: at a 1 s interval about 26,000 samples, however long the recording).
#[derive(Debug, Clone, Default)]
pub struct Retained {
    samples: Vec<Sample>,
    appended: usize,
}

impl Retained {
    /// Starts from `samples` (in time order) as they are, e.g. a store just loaded.
    pub fn new(samples: Vec<Sample>) -> Retained {
        Retained {
            samples,
            appended: 0,
        }
    }

    /// Appends `s`; true when this append compacted the series.
    pub fn push(&mut self, s: Sample) -> bool {
        self.samples.push(s);
        self.appended += 1;
        if self.appended < COMPACT_EVERY {
            return false;
        }
        bound(&mut self.samples);
        self.appended = 0;
        true
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

/// The columns this agent writes, in record order.
fn columns() -> Vec<&'static str> {
    let mut c = vec!["kubelet_rss_bytes", "pods"];
    c.extend_from_slice(OPTIONAL_COLUMNS);
    c
}

fn value(s: &Sample, column: &str) -> Option<f64> {
    match column {
        "kubelet_rss_bytes" => Some(s.kubelet_rss_bytes),
        "pods" => Some(s.pods),
        c => s.optional(c),
    }
}

fn encode(s: &Sample) -> Vec<u8> {
    let cols = columns();
    let mut b = Vec::with_capacity(8 + 8 * cols.len());
    b.extend_from_slice(&s.t.to_le_bytes());
    for c in cols {
        b.extend_from_slice(&value(s, c).unwrap_or(f64::NAN).to_le_bytes());
    }
    b
}

/// Why a stored record was not loaded.
#[derive(Debug, PartialEq)]
pub enum Invalid {
    Time(i64),
    Value(String, f64),
    Missing(&'static str),
}

/// Decodes one record whose columns are `names` (in record order); `None` for a column this
/// agent does not know. Validates every value.
fn decode(b: &[u8], names: &[Option<String>]) -> Result<Sample, Invalid> {
    let word = |i: usize| -> [u8; 8] {
        b.get(8 * i..8 * i + 8)
            .and_then(|w| w.try_into().ok())
            .unwrap_or([0; 8])
    };
    let t = i64::from_le_bytes(word(0));
    if !(0..=MAX_T).contains(&t) {
        return Err(Invalid::Time(t));
    }
    let mut s = Sample {
        t,
        kubelet_rss_bytes: f64::NAN,
        pods: f64::NAN,
        ..Default::default()
    };
    for (i, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        let v = f64::from_le_bytes(word(1 + i));
        if v.is_nan() {
            continue;
        }
        if super::series::invalid_value(name, v).is_some() {
            return Err(Invalid::Value(name.clone(), v));
        }
        match name.as_str() {
            "kubelet_rss_bytes" => s.kubelet_rss_bytes = v,
            "pods" => s.pods = v,
            c => {
                if let Some(slot) = s.optional_mut(c) {
                    *slot = Some(v);
                }
            }
        }
    }
    if s.kubelet_rss_bytes.is_nan() {
        return Err(Invalid::Missing("kubelet_rss_bytes"));
    }
    if s.pods.is_nan() {
        return Err(Invalid::Missing("pods"));
    }
    Ok(s)
}

fn header() -> Vec<u8> {
    let cols = columns();
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&((8 + 8 * cols.len()) as u32).to_le_bytes());
    h.extend_from_slice(&(cols.len() as u32).to_le_bytes());
    for c in cols {
        h.extend_from_slice(&(c.len() as u16).to_le_bytes());
        h.extend_from_slice(c.as_bytes());
    }
    h
}

/// A parsed header: where the records start, their length, and their columns' names.
#[derive(Debug, PartialEq)]
struct Layout {
    body: usize,
    record: usize,
    names: Vec<String>,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Reads a format 1 or 2 header; `None` when the file is not one of ours or is inconsistent.
fn layout(d: &[u8]) -> Option<Layout> {
    if d.get(..8)? != MAGIC {
        return None;
    }
    let record = usize::try_from(u32_at(d, 12)?).ok()?;
    match u32_at(d, 8)? {
        1 => (record == 8 + 8 * V1_COLUMNS.len()).then(|| Layout {
            body: V1_HEADER,
            record,
            names: V1_COLUMNS.iter().map(|c| c.to_string()).collect(),
        }),
        2 => {
            let n = usize::try_from(u32_at(d, 16)?).ok()?;
            if n == 0 || n > 4096 || record != 8 + 8 * n {
                return None;
            }
            let mut at = 20;
            let mut names = Vec::with_capacity(n);
            for _ in 0..n {
                let len = usize::from(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?));
                let name = std::str::from_utf8(d.get(at + 2..at + 2 + len)?).ok()?;
                names.push(name.to_string());
                at += 2 + len;
            }
            Some(Layout {
                body: at,
                record,
                names,
            })
        }
        _ => None,
    }
}

/// True when `d` starts as a store file does (its magic): `replay` tells a store from a CSV by
/// content, not by name.
pub fn is_store(d: &[u8]) -> bool {
    d.starts_with(MAGIC)
}

/// What makes `d` not a store file [`parse`] can read (it returned `corrupt`), in a few
/// words for an error message; never quotes the bytes beyond the format's own fields.
pub fn corrupt_reason(d: &[u8]) -> String {
    if d.is_empty() {
        return "the file is empty".into();
    }
    if d.len() < 8 || &d[..8] != MAGIC {
        return format!(
            "it does not start with the series magic {:?} (not written by oomprobe run)",
            std::str::from_utf8(MAGIC).unwrap_or_default()
        );
    }
    match u32_at(d, 8) {
        None => "the header is cut short".into(),
        Some(1 | 2) if header_cut_short(d) => "the header is cut short".into(),
        Some(v @ (1 | 2)) => {
            format!("its format {v} header is invalid (record size or column names)")
        }
        Some(v) => format!("unknown format version {v} (this agent reads 1 and 2)"),
    }
}

/// Whether a format 1 or 2 header ends before its own fields say it does (a file truncated
/// inside its header), where [`layout`] would call it invalid: the header's fields as far as
/// they are there are read as [`layout`] reads them.
fn header_cut_short(d: &[u8]) -> bool {
    let Some(record) = u32_at(d, 12) else {
        return true;
    };
    match u32_at(d, 8) {
        Some(1) => d.len() < V1_HEADER,
        Some(2) => {
            let Some(n) = u32_at(d, 16) else {
                return true;
            };
            let Ok(n) = usize::try_from(n) else {
                return false;
            };
            if n == 0 || n > 4096 || usize::try_from(record).ok() != Some(8 + 8 * n) {
                return false;
            }
            let mut at: usize = 20;
            for _ in 0..n {
                let Some(len) = d.get(at..at + 2) else {
                    return true;
                };
                let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
                at += 2 + len;
                if at > d.len() {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Keeps 14 days: every sample of the last 6 h, one per minute back to 74 h, one per 30
/// minutes before that.
pub fn bound(samples: &mut Vec<Sample>) {
    let Some(last) = samples.last().map(|s| s.t) else {
        return;
    };
    let mut slot = (i64::MIN, i64::MIN);
    samples.retain(|s| {
        if s.t < last.saturating_sub(KEEP_S) {
            return false;
        }
        // Every sample of the last 6 h, at most one a second (the agent samples at most once a
        // second; a file with millions of samples at one time would otherwise be kept whole).
        let step = if s.t >= last.saturating_sub(FULL_RES_S) {
            1
        } else if s.t >= last.saturating_sub(MID_RES_S) {
            MID_STEP_S
        } else {
            COARSE_STEP_S
        };
        let this = (step, s.t.div_euclid(step));
        let keep = this != slot;
        slot = this;
        keep
    });
}

/// How far past this machine's clock a stored sample may be (clock skew between agent runs);
/// a later one is invalid. Without this bound a single far-future record (a clock that jumped)
/// would make [`bound`] drop every real sample as "older than 14 days".
const FUTURE_SLACK_S: i64 = 86_400;

/// What a store file held, read without changing it.
pub struct Loaded {
    /// Valid samples in time order, bounded as the live store keeps them.
    pub samples: Vec<Sample>,
    /// Records not loaded because a value was invalid (see [`Store::invalid_records`]).
    pub invalid: u64,
    /// The file is corrupt or of an unknown format: nothing could be read from it.
    pub corrupt: bool,
}

/// Reads a store file (format 1 or 2) without writing anything: for read-only verbs
/// (`diagnose`, `report`) and for [`Store::open`]. `now` is the unix time against which
/// future-dated records are refused. Errors: the file cannot be read.
pub fn load(path: &Path, now: i64) -> Result<Loaded, StoreError> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    // A device or FIFO is refused before it is opened (a FIFO's open waits for a writer).
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > MAX_STORE_BYTES {
        return Err(StoreError::TooLarge {
            path: path.display().to_string(),
            len: meta.len(),
        });
    }
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_STORE_BYTES + 1).read_to_end(&mut data))
        .map_err(io)?;
    let _file = tracing::warn_span!("series_store", path = %path.display()).entered();
    Ok(parse(&data, now))
}

/// Decodes a store file's bytes (format 1 or 2), as [`load`] does after reading the file:
/// never fails and never panics; bytes that are not a store come back as `corrupt`, invalid
/// records are counted in `invalid`.
pub fn parse(data: &[u8], now: i64) -> Loaded {
    let Some(l) = layout(data) else {
        return Loaded {
            samples: Vec::new(),
            invalid: 0,
            corrupt: true,
        };
    };
    let known: Vec<Option<String>> = l
        .names
        .iter()
        .map(|n| columns().contains(&n.as_str()).then(|| n.clone()))
        .collect();
    let unknown: Vec<&String> = l
        .names
        .iter()
        .filter(|n| !columns().contains(&n.as_str()))
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(columns = ?unknown, "series store columns this agent does not know are ignored");
    }
    let body = data.get(l.body..).unwrap_or_default();
    let whole = body.len() / l.record * l.record;
    if whole != body.len() {
        tracing::warn!(bytes = body.len() - whole, "cut a torn last record");
    }
    let latest = now.saturating_add(FUTURE_SLACK_S);
    let mut samples = Vec::new();
    let mut invalid = 0u64;
    for rec in body[..whole].chunks(l.record) {
        match decode(rec, &known) {
            // A record at the time of the one before it is a repeat ([`bound`] keeps one a
            // second): not held, so a store of millions of same-time records loads small.
            Ok(s) if s.t <= latest => {
                if samples.last().is_none_or(|p: &Sample| p.t != s.t) {
                    samples.push(s);
                }
            }
            Ok(s) => {
                invalid += 1;
                tracing::debug!(t = s.t, "series record dated in the future dropped");
            }
            Err(why) => {
                invalid += 1;
                tracing::debug!(?why, "invalid series record dropped");
            }
        }
    }
    if invalid > 0 {
        tracing::warn!(records = invalid, "invalid series records dropped");
    }
    samples.sort_by_key(|s| s.t);
    bound(&mut samples);
    Loaded {
        samples,
        invalid,
        corrupt: false,
    }
}

impl Store {
    /// Opens (or creates) the store, reloading what a previous agent recorded. A corrupt or
    /// foreign file is renamed `*.corrupt-<unix>`; a file with invalid records is copied to
    /// `*.invalid-<unix>` before it is rewritten without them: nothing is lost.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (samples, invalid) = if path.exists() {
            let loaded = match load(path, now) {
                Err(StoreError::TooLarge { len, .. }) => {
                    // Not a store this agent wrote: kept aside, never read or deleted.
                    let aside = path.with_extension(format!("too-large-{now}"));
                    tracing::warn!(path = %path.display(), bytes = len, set_aside = %aside.display(), "series store larger than any this agent writes; kept aside, starting a new one");
                    std::fs::rename(path, &aside).map_err(io)?;
                    Loaded {
                        samples: Vec::new(),
                        invalid: 0,
                        corrupt: false,
                    }
                }
                other => other?,
            };
            if loaded.corrupt {
                let aside = path.with_extension(format!("corrupt-{now}"));
                tracing::warn!(
                    path = %path.display(),
                    set_aside = %aside.display(),
                    "series store is corrupt or from an unknown format version; kept aside, starting a new one"
                );
                std::fs::rename(path, &aside).map_err(io)?;
            } else if loaded.invalid > 0 {
                let aside = path.with_extension(format!("invalid-{now}"));
                tracing::warn!(set_aside = %aside.display(), "the store as it was, with its invalid records, kept aside");
                std::fs::copy(path, &aside).map_err(io)?;
            }
            (loaded.samples, loaded.invalid)
        } else {
            (Vec::new(), 0)
        };
        let mut store = Store {
            path: path.to_path_buf(),
            series: Retained::new(samples),
            file: File::create(path.with_extension("tmp")).map_err(io)?,
            invalid,
        };
        store.rewrite()?;
        Ok(store)
    }

    /// Rewrites the file from memory (atomic rename), then appends to it.
    fn rewrite(&mut self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut data = header();
        for s in self.series.samples() {
            data.extend(encode(s));
        }
        std::fs::write(&tmp, &data).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        Ok(())
    }

    pub fn samples(&self) -> &[Sample] {
        self.series.samples()
    }

    /// Records dropped on load because a value was invalid (time outside 1970-9999, a byte
    /// count or count infinite or negative, the RSS or pod count missing).
    pub fn invalid_records(&self) -> u64 {
        self.invalid
    }

    pub fn append(&mut self, s: Sample) -> Result<(), StoreError> {
        self.file
            .write_all(&encode(&s))
            .map_err(|source| StoreError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        // Compact now and then: the in-memory series and the file stay bounded.
        if self.series.push(s) {
            self.rewrite()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oomprobe-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A store larger than any the agent writes is not read: `load` says so, and the agent's
    /// `Store::open` keeps it aside (renamed, its bytes intact) and starts a new one; a FIFO is
    /// refused without being opened.
    #[test]
    fn an_oversized_store_is_kept_aside_and_a_fifo_refused() {
        let d = tmpdir("big");
        let p = d.join("series.bin");
        let f = File::create(&p).unwrap();
        f.set_len(MAX_STORE_BYTES + 1).unwrap();
        drop(f);
        let Err(e) = load(&p, 2_000_000_000) else {
            panic!("an oversized store was read")
        };
        assert!(matches!(e, StoreError::TooLarge { len, .. } if len == MAX_STORE_BYTES + 1));
        let store = Store::open(&p).unwrap();
        assert!(store.samples().is_empty());
        let aside: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("too-large-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(aside[0].metadata().unwrap().len(), MAX_STORE_BYTES + 1);
        drop(store);
        let fifo = d.join("fifo.bin");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path in this test's directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let Err(e) = load(&fifo, 2_000_000_000) else {
            panic!("a FIFO was read")
        };
        assert_eq!(
            crate::error_chain(&e),
            format!("series store {}: not a regular file", fifo.display())
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    fn sample(t: i64) -> Sample {
        Sample {
            t,
            kubelet_rss_bytes: 1e8 + t as f64,
            pods: 10.0,
            goroutines: Some(200.0),
            ..Default::default()
        }
    }

    #[test]
    fn survives_reopen_and_torn_writes() {
        let d = tmpdir("reopen");
        let p = d.join("series.bin");
        {
            let mut s = Store::open(&p).unwrap();
            for t in 0..5 {
                s.append(sample(t * 10)).unwrap();
            }
        }
        // A crash mid-write leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        drop(f);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.samples().len(), 5);
        assert_eq!(s.samples()[4], sample(40));
        assert_eq!(s.samples()[4].containers, None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn foreign_file_is_set_aside_not_lost() {
        let d = tmpdir("foreign");
        let p = d.join("series.bin");
        std::fs::write(&p, b"somebody else's file").unwrap();
        let s = Store::open(&p).unwrap();
        assert!(s.samples().is_empty());
        let aside: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read(aside[0].path()).unwrap(),
            b"somebody else's file"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A store truncated anywhere inside its header says so, not "invalid"; a whole header
    /// with fields that disagree is invalid.
    #[test]
    fn a_header_cut_anywhere_is_cut_short() {
        let h = header();
        for cut in 9..h.len() {
            let d = &h[..cut];
            assert!(parse(d, 0).corrupt, "cut at {cut}");
            assert_eq!(corrupt_reason(d), "the header is cut short", "cut at {cut}");
        }
        assert!(!parse(&h, 0).corrupt);
        let mut bad = h.clone();
        bad[12] ^= 1;
        assert_eq!(
            corrupt_reason(&bad),
            "its format 2 header is invalid (record size or column names)"
        );
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            corrupt_reason(&v1),
            "its format 1 header is invalid (record size or column names)"
        );
        assert_eq!(corrupt_reason(&v1[..14]), "the header is cut short");
    }

    #[test]
    fn millions_of_samples_at_one_time_keep_one() {
        // The bad-input trial's store: records all at one second (replay hung on them).
        let mut v: Vec<Sample> = (0..100_000).map(|_| sample(1_790_000_000)).collect();
        v.push(sample(1_790_000_001));
        bound(&mut v);
        assert_eq!(v.len(), 2);
        let mut r = Retained::new(Vec::new());
        for _ in 0..100_000 {
            r.push(sample(1_790_000_000));
        }
        assert!(r.samples().len() <= COMPACT_EVERY, "{}", r.samples().len());
    }

    #[test]
    fn bounded_and_downsampled() {
        // 20 days at 10-minute samples, then 7 h at 10 s.
        let mut v: Vec<Sample> = (0..(20 * 144)).map(|i| sample(i * 600)).collect();
        let t0 = 20 * 144 * 600;
        v.extend((0..7 * 360).map(|i| sample(t0 + i * 10)));
        bound(&mut v);
        let last = v.last().unwrap().t;
        assert!(v.first().unwrap().t >= last - KEEP_S);
        let recent = v.iter().filter(|s| s.t >= last - FULL_RES_S).count();
        assert_eq!(recent, 6 * 360 + 1);
        // Every hour of the detector's 72 h keeps enough samples for its hourly quantile.
        for h in 0..72 {
            let n = v
                .iter()
                .filter(|s| s.t < last - h * 3600 && s.t >= last - (h + 1) * 3600)
                .count();
            assert!(n >= 6, "hour {h}: {n} samples");
        }
        let old = v.iter().filter(|s| s.t < last - MID_RES_S).count();
        assert!(old <= (14 * 24 - 74) as usize * 2 + 1, "{old}");
    }

    /// A file written by the format-1 agent (`testdata/store-v1.bin`, made by that code's
    /// `Store::append`: six samples at 10-minute steps from 1_790_000_000).
    #[test]
    fn format_1_file_from_the_previous_agent_loads() {
        let d = tmpdir("v1");
        let p = d.join("series.bin");
        std::fs::copy(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/detect/testdata/store-v1.bin"),
            &p,
        )
        .unwrap();
        let s = Store::open(&p).unwrap();
        assert_eq!(s.invalid_records(), 0);
        let want: Vec<Sample> = (0..6i64)
            .map(|i| Sample {
                t: 1_790_000_000 + i * 600,
                kubelet_rss_bytes: 400e6 + i as f64 * 1e6,
                pods: 30.0 + i as f64,
                containers: Some(45.0),
                exited_containers: if i % 2 == 0 { Some(3.0) } else { None },
                kubelet_limit_bytes: Some(1e9),
                goroutines: Some(250.0 + i as f64),
                kernel: Some(5.15),
                kubelet_restarts: Some(1.0),
                memory_pressure: Some(0.0),
                ..Default::default()
            })
            .collect();
        assert_eq!(s.samples(), &want[..]);
        drop(s);
        // Rewritten in format 2, it loads again the same.
        let data = std::fs::read(&p).unwrap();
        assert_eq!(u32_at(&data, 8), Some(2));
        assert_eq!(Store::open(&p).unwrap().samples(), &want[..]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A format-2 file with the given columns and rows (each row: t, then one value per column).
    fn v2_file(cols: &[&str], rows: &[(i64, Vec<f64>)]) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&2u32.to_le_bytes());
        d.extend_from_slice(&((8 + 8 * cols.len()) as u32).to_le_bytes());
        d.extend_from_slice(&(cols.len() as u32).to_le_bytes());
        for c in cols {
            d.extend_from_slice(&(c.len() as u16).to_le_bytes());
            d.extend_from_slice(c.as_bytes());
        }
        for (t, vals) in rows {
            d.extend_from_slice(&t.to_le_bytes());
            for v in vals {
                d.extend_from_slice(&v.to_le_bytes());
            }
        }
        d
    }

    #[test]
    fn columns_map_by_name_reordered_added_or_missing() {
        let d = tmpdir("reorder");
        let p = d.join("series.bin");
        // Goroutines before pods before RSS, a column from a future agent, no other columns.
        let file = v2_file(
            &["goroutines", "pods", "future_column", "kubelet_rss_bytes"],
            &[
                (100, vec![250.0, 31.0, 7.0, 4e8]),
                (110, vec![f64::NAN, 32.0, 7.0, 4.1e8]),
            ],
        );
        std::fs::write(&p, &file).unwrap();
        let s = Store::open(&p).unwrap();
        assert_eq!(
            s.samples(),
            &[
                Sample {
                    t: 100,
                    kubelet_rss_bytes: 4e8,
                    pods: 31.0,
                    goroutines: Some(250.0),
                    ..Default::default()
                },
                Sample {
                    t: 110,
                    kubelet_rss_bytes: 4.1e8,
                    pods: 32.0,
                    ..Default::default()
                }
            ]
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn invalid_records_are_dropped_and_counted_not_trusted() {
        let d = tmpdir("invalid");
        let p = d.join("series.bin");
        let file = v2_file(
            &["kubelet_rss_bytes", "pods", "goroutines"],
            &[
                (100, vec![4e8, 30.0, 200.0]),
                // A timestamp that would overflow `last - 14 days`.
                (i64::MIN, vec![4e8, 30.0, 200.0]),
                (i64::MAX, vec![4e8, 30.0, 200.0]),
                (120, vec![f64::INFINITY, 30.0, 200.0]),
                (130, vec![-5.0, 30.0, 200.0]),
                (140, vec![4e8, 30.0, f64::NEG_INFINITY]),
                (150, vec![f64::NAN, 30.0, 200.0]),
                (160, vec![4.2e8, 31.0, 210.0]),
            ],
        );
        std::fs::write(&p, &file).unwrap();
        let s = Store::open(&p).unwrap();
        assert_eq!(s.invalid_records(), 6);
        let ts: Vec<i64> = s.samples().iter().map(|x| x.t).collect();
        assert_eq!(ts, vec![100, 160]);
        assert_eq!(
            decode(
                &file[file.len() - 32..],
                &[Some("kubelet_rss_bytes".into()), Some("pods".into()), None]
            ),
            Ok(Sample {
                t: 160,
                kubelet_rss_bytes: 4.2e8,
                pods: 31.0,
                ..Default::default()
            })
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn inconsistent_headers_are_set_aside() {
        // Record length disagreeing with the column count; a version from the future.
        for bad in [
            {
                let mut f = v2_file(&["kubelet_rss_bytes", "pods"], &[]);
                f[12] = 40;
                f
            },
            {
                let mut f = v2_file(&["kubelet_rss_bytes", "pods"], &[]);
                f[8] = 9;
                f
            },
        ] {
            assert_eq!(layout(&bad), None);
        }
        assert_eq!(
            layout(&header()).map(|l| l.names.len()),
            Some(2 + OPTIONAL_COLUMNS.len())
        );
    }

    #[test]
    fn bound_survives_extreme_times() {
        let mut v = vec![sample(0), sample(i64::MAX)];
        bound(&mut v);
        assert_eq!(v.len(), 1);
        let mut v = vec![sample(i64::MIN), sample(i64::MIN + 1)];
        bound(&mut v);
        assert_eq!(v.len(), 2);
    }

    /// A far-future record (a clock that jumped) must not make the real history look 14 days
    /// old: it is refused as invalid, the real samples stay, and the file as it was is kept.
    #[test]
    fn a_future_dated_record_loses_nothing() {
        let d = tmpdir("future");
        let p = d.join("series.bin");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut data = header();
        for i in 0..60 {
            data.extend(encode(&sample(now - 3600 + i * 60)));
        }
        data.extend(encode(&sample(253_402_300_799)));
        std::fs::write(&p, &data).unwrap();
        let loaded = load(&p, now).unwrap();
        assert_eq!((loaded.samples.len(), loaded.invalid), (60, 1));
        // load() is read-only: the file is byte for byte what it was.
        assert_eq!(std::fs::read(&p).unwrap(), data);
        let st = Store::open(&p).unwrap();
        assert_eq!((st.samples().len(), st.invalid_records()), (60, 1));
        let kept: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("invalid-"))
            .collect();
        assert_eq!(kept.len(), 1, "the original file is kept aside");
        assert_eq!(std::fs::read(kept[0].path()).unwrap(), data);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
