//! One file per CLI verb.
pub mod bench_detect;
pub mod diagnose;
pub mod endpoints;
pub mod exec_credential;
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

/// A node name for `--node-name`: a Kubernetes node name, as the API server requires it (an
/// RFC 1123 subdomain: lowercase letters, digits, `-` and `.`, starting and ending with a letter
/// or digit, at most 253 bytes). Not empty: an empty name would silently stand for no node.
pub fn parse_node_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a node name cannot be empty (without --node-name: the hostname)".into());
    }
    let ok = s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        return Err(format!(
            "{:?}: not a Kubernetes node name (lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit; at most 253 bytes)",
            cut(s)
        ));
    }
    Ok(s.to_string())
}

/// An endpoint URL for `--kube-api` or `--kubelet-metrics`: an absolute `http` or `https` URL
/// with a host. The value is never echoed whole in the error (a token pasted into the wrong
/// flag must not reach a log): a URL is shown as [`crate::redact_url`] shows it, anything else
/// not at all.
pub fn parse_url(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a URL cannot be empty (leave the flag out instead)".into());
    }
    let hint = "an http or https URL, e.g. https://10.0.0.1:6443 (--kube-api) or https://10.0.0.1:10250/metrics (--kubelet-metrics)";
    let url = reqwest::Url::parse(s.trim())
        .map_err(|e| format!("not a URL ({e}; the value is not shown): {hint}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{}: the scheme must be http or https",
            crate::redact_url(s.trim())
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{}: no host: {hint}", crate::redact_url(s.trim())));
    }
    Ok(s.to_string())
}

/// [`parse_url`] as a clap parser whose error does not echo the value (clap's own error for a
/// `fn` parser quotes it whole): `invalid value for '--FLAG': WHY`.
#[derive(Clone, Copy, Debug)]
pub struct UrlParser;

impl clap::builder::TypedValueParser for UrlParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let flag = arg
            .and_then(clap::Arg::get_long)
            .map_or("the URL".to_string(), |l| format!("'--{l}'"));
        let why = match value.to_str() {
            Some(s) => match parse_url(s) {
                Ok(url) => return Ok(url),
                Err(why) => why,
            },
            None => "not UTF-8 (the value is not shown)".to_string(),
        };
        let mut cmd = cmd.clone();
        Err(cmd.error(
            clap::error::ErrorKind::ValueValidation,
            format!("invalid value for {flag}: {why}"),
        ))
    }
}

/// `s` cut to 64 characters for an error message (`...` after a cut).
fn cut(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A cgroup path for `--kubepods-root`: absolute in the memory hierarchy (`/kubepods`), below
/// its root (neither empty nor `/`: that would be the whole hierarchy), without `..` (it must
/// not climb out of the cgroup filesystem: `/../../etc`) or `.` components.
pub fn parse_cgroup_path(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a cgroup path cannot be empty".into());
    }
    if !s.starts_with('/') {
        return Err(format!(
            "{:?}: a cgroup path is absolute in the memory hierarchy, e.g. /kubepods or /kubepods.slice",
            cut(s)
        ));
    }
    if s.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "{:?}: a cgroup path cannot have '.' or '..' components",
            cut(s)
        ));
    }
    if s.split('/').all(str::is_empty) {
        return Err(format!(
            "{s:?}: the hierarchy's root, not where pods live (e.g. /kubepods or /kubepods.slice)"
        ));
    }
    Ok(s.to_string())
}

/// A byte count as a Kubernetes `resource.Quantity`: a decimal number (`1.5`, `100`), then
/// `Ki`/`Mi`/`Gi`/`Ti`/`Pi`/`Ei` (powers of 1024), `k`/`M`/`G`/`T`/`P`/`E` (powers of 1000),
/// an exponent (`e9`, `E6`) or nothing (bytes). A fraction of a byte rounds up, as the
/// quantity's integer value does. `100Mi` is 104857600, `1.5Gi` 1610612736.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("{s:?}: expected bytes, e.g. 104857600, 100Mi or 1.5Gi");
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    // The number as an integer mantissa and a power of ten that divides it.
    let mut mantissa: u128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d - b'0')))
            .ok_or_else(|| format!("{s:?}: too large"))?;
    }
    let mut divide = u32::try_from(frac.len()).map_err(|_| bad())?;
    let mult: u128 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 10u128.pow(3),
        "M" => 10u128.pow(6),
        "G" => 10u128.pow(9),
        "T" => 10u128.pow(12),
        "P" => 10u128.pow(15),
        "E" => 10u128.pow(18),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            if exp >= 0 {
                10u128
                    .checked_pow(exp.unsigned_abs())
                    .ok_or_else(|| format!("{s:?}: too large"))?
            } else {
                divide = divide
                    .checked_add(exp.unsigned_abs())
                    .ok_or_else(bad)?;
                1
            }
        }
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, or an exponent e<N>)"
            ))
        }
    };
    let scaled = mantissa
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))?;
    let bytes = match 10u128.checked_pow(divide) {
        Some(d) => scaled.div_ceil(d),
        // More than 38 decimals: less than one byte, or nothing.
        None => u128::from(scaled > 0),
    };
    u64::try_from(bytes).map_err(|_| format!("{s:?}: too large"))
}

/// The kubelet's hard eviction threshold on memory.available, as its `--eviction-hard`
/// writes it: a quantity of bytes, or a percentage of the node's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvictionHard {
    Bytes(u64),
    /// Percent of the node's memory (MemTotal), above 0 and below 100.
    Percent(f64),
    /// `0%` or `100%`: the kubelet sets no threshold (it ignores those two), so node memory
    /// runs out at the kernel's OOM point, MemAvailable 0.
    None,
}

impl EvictionHard {
    /// The threshold in bytes on a node of `mem_total` bytes; None for a percentage when the
    /// node's memory is not known.
    pub fn bytes(self, mem_total: Option<u64>) -> Option<u64> {
        match self {
            EvictionHard::Bytes(b) => Some(b),
            EvictionHard::None => Some(0),
            // Below 100% of a u64: the product fits.
            EvictionHard::Percent(p) => mem_total.map(|t| (t as f64 * p / 100.0) as u64),
        }
    }
}

impl std::fmt::Display for EvictionHard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvictionHard::Bytes(b) => write!(f, "{b}"),
            EvictionHard::Percent(p) => write!(f, "{p}%"),
            EvictionHard::None => f.write_str("0%"),
        }
    }
}

/// `--eviction-hard-memory` as the kubelet reads `memory.available<...`
/// (`parseThresholdStatement` in pkg/kubelet/eviction/api/types.go): a positive quantity
/// (zero is refused, as the kubelet refuses it), or a percentage from 0% to 100% (those two
/// mean no threshold).
pub fn parse_eviction_hard(s: &str) -> Result<EvictionHard, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && (0.0..=100.0).contains(v))
            .ok_or_else(|| format!("{s:?}: a percentage is from 0% to 100%"))?;
        return Ok(if v == 0.0 || v == 100.0 {
            EvictionHard::None
        } else {
            EvictionHard::Percent(v)
        });
    }
    match parse_bytes(t)? {
        0 => Err(format!(
            "{s:?}: must be positive, as the kubelet requires (a kubelet without a memory.available threshold: 0%)"
        )),
        b => Ok(EvictionHard::Bytes(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn cgroup_paths_are_absolute_without_dot_dot() {
        use super::parse_cgroup_path;
        for good in [
            "/kubepods",
            "/kubepods.slice",
            "/a/b..c/",
            "/kubepods//burstable",
        ] {
            assert_eq!(parse_cgroup_path(good).as_deref(), Ok(good));
        }
        assert_eq!(
            parse_cgroup_path("../../etc"),
            Err("\"../../etc\": a cgroup path is absolute in the memory hierarchy, e.g. /kubepods or /kubepods.slice".into())
        );
        assert_eq!(
            parse_cgroup_path("/kubepods/../../../etc"),
            Err(
                "\"/kubepods/../../../etc\": a cgroup path cannot have '.' or '..' components"
                    .into()
            )
        );
        for bad in ["", "kubepods", "/..", "/./kubepods", "/", "//", "/a/.."] {
            assert!(parse_cgroup_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names_and_urls_are_not_empty() {
        use super::{parse_node_name, parse_url};
        for good in ["node-1", "ip-10-0-0-1.ec2.internal", "a", "0"] {
            assert_eq!(parse_node_name(good).as_deref(), Ok(good));
        }
        assert_eq!(
            parse_node_name(""),
            Err("a node name cannot be empty (without --node-name: the hostname)".into())
        );
        for bad in [" ", "Node", "-a", "a-", "a..b", ".a", "a/b", "../x", "a b"] {
            assert!(parse_node_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_node_name(&"a".repeat(254)).is_err());
        assert!(parse_node_name(&"a".repeat(64)).is_err());
        let long = parse_node_name(&"A".repeat(300)).unwrap_err();
        assert!(
            long.starts_with(&format!("\"{}...\": not a", "A".repeat(64))),
            "{long}"
        );
        for bad in ["", " ", "\t"] {
            assert_eq!(
                parse_url(bad),
                Err("a URL cannot be empty (leave the flag out instead)".into())
            );
        }
        for good in [
            "https://10.0.0.1:10250/metrics",
            "http://127.0.0.1:6443",
            "https://[::1]:6443",
        ] {
            assert_eq!(parse_url(good).as_deref(), Ok(good));
        }
        assert_eq!(
            parse_url("not a url"),
            Err("not a URL (relative URL without a base; the value is not shown): an http or https URL, e.g. https://10.0.0.1:6443 (--kube-api) or https://10.0.0.1:10250/metrics (--kubelet-metrics)".into())
        );
        assert_eq!(
            parse_url("ftp://u:secret@host/x?token=abc"),
            Err("ftp://***@host/x?***: the scheme must be http or https".into())
        );
        for bad in ["http://", "10.0.0.1:10250", "file:///etc/passwd", "unix:/x"] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byte_quantities() {
        assert_eq!(parse_bytes("100Mi"), Ok(104_857_600));
        assert_eq!(parse_bytes("104857600"), Ok(104_857_600));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert!(parse_bytes("100MB").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("99999999999Ti").is_err());
        // Decimal quantities, as resource.Quantity reads them (a fraction of a byte rounds up).
        assert_eq!(parse_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("0.5Mi"), Ok(524_288));
        assert_eq!(parse_bytes(".5k"), Ok(500));
        assert_eq!(parse_bytes("1.5"), Ok(2));
        assert_eq!(parse_bytes("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("15E-1"), Ok(2));
        assert_eq!(parse_bytes("1Ei"), Ok(1 << 60));
        assert_eq!(parse_bytes("16Ei"), Err("\"16Ei\": too large".into()));
        assert_eq!(parse_bytes("1e400"), Err("\"1e400\": too large".into()));
        for bad in ["", ".", "1.2.3", "-1Gi", "1.5Gb", "1 Gi", "e9", "1e", "1m"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_bytes("1.5Gb"),
            Err("\"1.5Gb\": unknown unit \"Gb\" (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, or an exponent e<N>)".into())
        );
    }

    #[test]
    fn eviction_thresholds_as_the_kubelet_reads_them() {
        use super::{parse_eviction_hard, EvictionHard};
        assert_eq!(
            parse_eviction_hard("1.5Gi"),
            Ok(EvictionHard::Bytes(1_610_612_736))
        );
        assert_eq!(parse_eviction_hard("10%"), Ok(EvictionHard::Percent(10.0)));
        assert_eq!(parse_eviction_hard("7.5%"), Ok(EvictionHard::Percent(7.5)));
        assert_eq!(parse_eviction_hard("0%"), Ok(EvictionHard::None));
        assert_eq!(parse_eviction_hard("100%"), Ok(EvictionHard::None));
        assert_eq!(
            parse_eviction_hard("0"),
            Err("\"0\": must be positive, as the kubelet requires (a kubelet without a memory.available threshold: 0%)".into())
        );
        assert!(parse_eviction_hard("0Mi").is_err());
        for bad in ["101%", "-5%", "NaN%", "inf%", "%", "10 %x"] {
            assert!(parse_eviction_hard(bad).is_err(), "{bad:?}");
        }
        let total = Some(8 << 30);
        assert_eq!(EvictionHard::Percent(10.0).bytes(total), Some(858_993_459));
        assert_eq!(EvictionHard::Percent(10.0).bytes(None), None);
        assert_eq!(EvictionHard::None.bytes(None), Some(0));
        assert_eq!(EvictionHard::Bytes(5).bytes(None), Some(5));
    }
}
