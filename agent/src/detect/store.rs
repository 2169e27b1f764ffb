//! The persisted series: leak detection must survive agent restarts and upgrades.
//!
//! A versioned, fixed-record file: `OOMPSERI`, format version (u32), record length (u32), then
//! records of `t` (i64) and every sample field as f64 (NaN = missing), little-endian. A torn
//! last record is cut off; a corrupt or foreign file is set aside (renamed `*.corrupt-<unix>`)
//! with a warning, never silently overwritten. Bounded: 14 days, downsampled to one sample per
//! 30 minutes past 48 hours.
use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use super::{series::OPTIONAL_COLUMNS, Sample};

const MAGIC: &[u8; 8] = b"OOMPSERI";
pub const VERSION: u32 = 1;
const HEADER: usize = 16;
const FIELDS: usize = 2 + OPTIONAL_COLUMNS.len();
pub const RECORD: usize = 8 + 8 * FIELDS;
const KEEP_S: i64 = 14 * 86_400;
const FULL_RES_S: i64 = 48 * 3600;
const COARSE_STEP_S: i64 = 1800;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("series store {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Store {
    path: PathBuf,
    samples: Vec<Sample>,
    file: File,
    appended: usize,
}

fn encode(s: &Sample) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD);
    b.extend_from_slice(&s.t.to_le_bytes());
    b.extend_from_slice(&s.kubelet_rss_bytes.to_le_bytes());
    b.extend_from_slice(&s.pods.to_le_bytes());
    for c in OPTIONAL_COLUMNS {
        b.extend_from_slice(&s.optional(c).unwrap_or(f64::NAN).to_le_bytes());
    }
    b
}

fn decode(b: &[u8]) -> Sample {
    let f = |i: usize| f64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap_or([0; 8]));
    let mut s = Sample {
        t: i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
        kubelet_rss_bytes: f(0),
        pods: f(1),
        ..Default::default()
    };
    for (i, c) in OPTIONAL_COLUMNS.iter().enumerate() {
        let v = f(2 + i);
        if let Some(slot) = s.optional_mut(c) {
            *slot = (!v.is_nan()).then_some(v);
        }
    }
    s
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(RECORD as u32).to_le_bytes());
    h
}

/// Keeps 14 days; past 48 h, one sample per 30 minutes.
pub fn bound(samples: &mut Vec<Sample>) {
    let Some(last) = samples.last().map(|s| s.t) else {
        return;
    };
    let mut slot = i64::MIN;
    samples.retain(|s| {
        if s.t < last - KEEP_S {
            return false;
        }
        if s.t >= last - FULL_RES_S {
            return true;
        }
        let this = s.t.div_euclid(COARSE_STEP_S);
        let keep = this != slot;
        slot = this;
        keep
    });
}

impl Store {
    /// Opens (or creates) the store, reloading what a previous agent recorded.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut samples = Vec::new();
        if path.exists() {
            let mut data = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io)?;
            if data.len() < HEADER || data[..HEADER] != header()[..] {
                let aside = path.with_extension(format!(
                    "corrupt-{}",
                    time::OffsetDateTime::now_utc().unix_timestamp()
                ));
                tracing::warn!(
                    path = %path.display(),
                    set_aside = %aside.display(),
                    "series store is corrupt or from another format version; kept aside, starting a new one"
                );
                std::fs::rename(path, &aside).map_err(io)?;
            } else {
                let body = &data[HEADER..];
                let whole = body.len() / RECORD * RECORD;
                if whole != body.len() {
                    tracing::warn!(path = %path.display(), bytes = body.len() - whole, "cut a torn last record");
                }
                samples = body[..whole].chunks(RECORD).map(decode).collect();
                samples.sort_by_key(|s| s.t);
            }
        }
        bound(&mut samples);
        let mut store = Store {
            path: path.to_path_buf(),
            samples,
            file: File::create(path.with_extension("tmp")).map_err(io)?,
            appended: 0,
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
        for s in &self.samples {
            data.extend(encode(s));
        }
        std::fs::write(&tmp, &data).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.appended = 0;
        Ok(())
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn append(&mut self, s: Sample) -> Result<(), StoreError> {
        self.file
            .write_all(&encode(&s))
            .map_err(|source| StoreError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        self.samples.push(s);
        self.appended += 1;
        // Compact now and then: the in-memory series and the file stay bounded.
        if self.appended >= 360 {
            bound(&mut self.samples);
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

    #[test]
    fn bounded_and_downsampled() {
        let mut v: Vec<Sample> = (0..(20 * 144)).map(|i| sample(i * 600)).collect();
        bound(&mut v);
        let last = v.last().unwrap().t;
        assert!(v.first().unwrap().t >= last - KEEP_S);
        let recent = v.iter().filter(|s| s.t >= last - FULL_RES_S).count();
        assert_eq!(recent, 48 * 6 + 1);
        let old = v.len() - recent;
        assert!(old <= 12 * 48 + 1, "{old}");
    }
}
