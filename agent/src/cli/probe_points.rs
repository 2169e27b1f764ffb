//! `oomprobe probe-points BINARY`: what would be attached in a kubelet build, so an operator can
//! check a binary before rollout. Read-only; needs no privileges. One line per point: `symbol`,
//! `offset` (into the file), `address`, `source`, `role`, and `file` (its path) when the offsets
//! are into another file than BINARY (a dynamically linked binary's libc).
use std::path::{Path, PathBuf};

use super::OutputFormat;
use crate::kubelet::symbols::{Binary, ProbePoint, SymbolError};

#[derive(Debug, clap::Args)]
pub struct ProbePointsArgs {
    /// The kubelet (or any) binary to inspect.
    pub binary: PathBuf,
    /// Output format: one line per probe point (text) or one JSON object per line.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbePointsError {
    #[error(transparent)]
    Symbol(#[from] SymbolError),
    /// Not Go, no mmap/brk symbol, no libc loaded (a stripped static C binary): no uprobe
    /// point, and what `oomprobe run` does for such a kubelet instead.
    #[error("{0}; `oomprobe run` counts such a kubelet's anonymous mmap/munmap syscalls instead (kubelet_memory mode `syscalls`)")]
    NothingToProbe(SymbolError),
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

/// One point as printed: the point's own fields, and `file` when its offset is into a file
/// other than the binary asked about (the libc a dynamically linked binary loads).
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    point: &'a ProbePoint,
    /// The file the offset is into (a path), when not the binary given.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
}

pub fn run(args: ProbePointsArgs) -> Result<(), ProbePointsError> {
    // Read, not mapped: a file rewritten or truncated meanwhile must not end the command
    // with SIGBUS (the agent maps it: see `Binary::open`).
    let bin = Binary::read(&args.binary)?;
    let mut file = None;
    let points = match bin.probe_points() {
        // Not Go and without mmap/brk of its own: the agent probes the libc the binary
        // loads (DT_NEEDED), as `kubelet::tracker` does; the same points are shown here.
        Err(e @ SymbolError::NothingToProbe { .. }) => {
            let Some(libc) = bin.needed_libc(Path::new("/")) else {
                return Err(ProbePointsError::NothingToProbe(e));
            };
            tracing::info!(
                libc = %libc.display(),
                "not a Go binary: the points are in the libc it loads, attached for its process only"
            );
            let points = Binary::read(&libc)?.probe_points()?;
            file = Some(libc.display().to_string());
            points
        }
        other => other?,
    };
    let mut out = super::Stdout::lock();
    for p in &points {
        let line = match args.format {
            OutputFormat::Json => serde_json::to_string(&Line {
                point: p,
                file: file.as_deref(),
            })
            .unwrap_or_default(),
            OutputFormat::Text => {
                let mut l = format!(
                    "{:<20} offset=0x{:08x} addr=0x{:x} source={} role={}",
                    p.symbol,
                    p.offset,
                    p.address,
                    p.source.as_str(),
                    p.role.as_str()
                );
                if let Some(f) = &file {
                    l.push_str(&format!(" file={f}"));
                }
                l
            }
        };
        out.line(line)?;
    }
    Ok(out.finish()?)
}
