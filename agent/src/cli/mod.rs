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
