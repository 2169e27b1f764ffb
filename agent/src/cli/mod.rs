//! One file per CLI verb.
pub mod bench_detect;
pub mod diagnose;
pub mod endpoints;
pub mod gen_trace;
pub mod probe_points;
pub mod replay;
pub mod report;
pub mod run;

pub use crate::output::OutputFormat;

/// Writing a verb's output to standard output failed: a full disk (`>/dev/full`: "No space
/// left on device") or a reader that went away (`| head`: a broken pipe, which `main` turns
/// into a quiet exit with status 141, as a tool killed by SIGPIPE shows in a shell).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub struct StdoutError(#[source] pub std::io::Error);

/// Standard output for a verb's lines: each `line` written as it comes (the lock is line
/// buffered), `finish` flushes; every write error is returned, none ignored.
pub struct Stdout(std::io::StdoutLock<'static>);

impl Stdout {
    pub fn lock() -> Stdout {
        Stdout(std::io::stdout().lock())
    }

    /// Writes `text` and a newline. Errors: the write failed ([`StdoutError`]).
    pub fn line(&mut self, text: impl std::fmt::Display) -> Result<(), StdoutError> {
        use std::io::Write as _;
        writeln!(self.0, "{text}").map_err(StdoutError)
    }

    /// Writes `text` as is. Errors: the write failed ([`StdoutError`]).
    pub fn text(&mut self, text: &str) -> Result<(), StdoutError> {
        use std::io::Write as _;
        self.0.write_all(text.as_bytes()).map_err(StdoutError)
    }

    /// Flushes what is buffered. Errors: the write failed ([`StdoutError`]).
    pub fn finish(mut self) -> Result<(), StdoutError> {
        use std::io::Write as _;
        self.0.flush().map_err(StdoutError)
    }
}

/// Whether `e` or one of its causes is a broken pipe (the reader of standard output is gone).
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// A process name for `--kubelet-name`: not empty (no process has an empty comm).
pub fn parse_process_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a process name cannot be empty".into());
    }
    Ok(s.to_string())
}

/// A cgroup path for `--kubepods-root`: not empty (an empty one would be the whole
/// hierarchy).
pub fn parse_cgroup_path(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a cgroup path cannot be empty".into());
    }
    Ok(s.to_string())
}

/// A byte count as the kubelet writes quantities: plain bytes, or with a `Ki`/`Mi`/`Gi`/`Ti`
/// (powers of 1024) or `k`/`M`/`G`/`T` (powers of 1000) suffix. `100Mi` is 104857600.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected bytes, e.g. 104857600 or 100Mi"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (Ki, Mi, Gi, Ti, k, M, G, T)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_quantities() {
        assert_eq!(parse_bytes("100Mi"), Ok(104_857_600));
        assert_eq!(parse_bytes("104857600"), Ok(104_857_600));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert!(parse_bytes("100MB").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("99999999999Ti").is_err());
    }
}
