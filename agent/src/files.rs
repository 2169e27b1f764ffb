//! Files an operator names on the command line (kubeconfig, bearer tokens, CA bundles): read
//! with a size bound, and only when they are regular files, so that `--kubeconfig /dev/zero` or a
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

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, max)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
