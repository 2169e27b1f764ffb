//! Files an operator names on the command line (kubeconfig, bearer tokens, CA bundles, series
//! and event logs): read with a size bound, and only when they are regular files, so that `--kubeconfig /dev/zero` or a
//! FIFO is a clear error instead of an allocation that grows until the kernel's OOM killer ends
//! it (or an open that never returns).
use std::{io::Read as _, path::Path};

/// The largest credential or configuration file read: 4 MiB (a kubeconfig with embedded
/// certificates is tens of KiB; a CA bundle of every public root about 200 KiB).
pub const MAX_BYTES: u64 = 4 << 20;

/// Refuses what is not a regular file of at most `max` bytes (symlinks followed), without
/// opening it. Errors: the `stat` error, or `InvalidInput` naming what is wrong.
pub fn check(path: &Path, max: u64) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes, more than the {max} read", meta.len()),
        ));
    }
    Ok(())
}

/// The file's bytes, after [`check`]; a file that grew past `max` since is refused too.
pub fn read(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    check(path, max)?;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("more than the {max} bytes read"),
        ));
    }
    Ok(buf)
}

/// The largest series or event log read by the offline verbs (`replay`, `report`): 512 MiB,
/// plain or once decompressed (14 days of 1-second samples as CSV are about 400 MiB).
pub const MAX_SERIES_BYTES: u64 = 512 << 20;

/// [`read`], then gunzipped when the bytes start with the gzip magic, the decompressed size
/// bounded by `max` too (a gzip bomb is refused, not inflated until memory runs out).
pub fn read_maybe_gzip(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let raw = read(path, max)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(max.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("decompresses to more than the {max} bytes read"),
        ));
    }
    Ok(out)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, max)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip file that inflates past the bound is refused after reading at most the bound.
    #[test]
    fn a_gzip_bomb_is_refused() {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(format!("oomprobe-files-gz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bomb.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 4 << 20]).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let e = read_maybe_gzip(&p, 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "decompresses to more than the 1048576 bytes read"
        );
        assert_eq!(read_maybe_gzip(&p, 4 << 20).unwrap().len(), 4 << 20);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_directories_and_large_files_are_refused() {
        for p in ["/dev/zero", "/dev/null", "/"] {
            let e = read(Path::new(p), MAX_BYTES).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{p}");
            assert_eq!(e.to_string(), "not a regular file", "{p}");
        }
        let d = std::env::temp_dir().join(format!("oomprobe-files-{}", std::process::id()));
        std::fs::write(&d, vec![b'x'; 11]).unwrap();
        assert_eq!(
            read(&d, 10).unwrap_err().to_string(),
            "11 bytes, more than the 10 read"
        );
        assert_eq!(read_to_string(&d, 11).unwrap(), "x".repeat(11));
        std::fs::remove_file(&d).unwrap();
        assert_eq!(
            read(&d, 10).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
