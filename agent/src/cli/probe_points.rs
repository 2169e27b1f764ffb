//! `oomprobe probe-points BINARY`: what would be attached in a kubelet build, so an operator can
//! check a binary before rollout. Read-only; needs no privileges.
use std::path::{Path, PathBuf};

use super::OutputFormat;
use crate::kubelet::symbols::{Binary, SymbolError};

#[derive(Debug, clap::Args)]
pub struct ProbePointsArgs {
    /// The kubelet (or any) binary to inspect.
    pub binary: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbePointsError {
    #[error(transparent)]
    Symbol(#[from] SymbolError),
    #[error(transparent)]
    Stdout(#[from] super::StdoutError),
}

pub fn run(args: ProbePointsArgs) -> Result<(), ProbePointsError> {
    let bin = Binary::open(&args.binary)?;
    let points = match bin.probe_points() {
        // Not Go and without mmap/brk of its own: the agent probes the libc the binary
        // loads (DT_NEEDED), as `kubelet::tracker` does; the same points are shown here.
        Err(e @ SymbolError::NothingToProbe { .. }) => {
            let Some(libc) = bin.needed_libc(Path::new("/")) else {
                return Err(e.into());
            };
            tracing::info!(
                libc = %libc.display(),
                "not a Go binary: the points are in the libc it loads, attached for its process only"
            );
            Binary::open(&libc)?.probe_points()?
        }
        other => other?,
    };
    let mut out = super::Stdout::lock();
    for p in &points {
        let line = match args.format {
            OutputFormat::Json => serde_json::to_string(p).unwrap_or_default(),
            OutputFormat::Text => format!(
                "{:<20} offset=0x{:08x} addr=0x{:x} source={} role={}",
                p.symbol,
                p.offset,
                p.address,
                p.source.as_str(),
                p.role.as_str()
            ),
        };
        out.line(line)?;
    }
    Ok(out.finish()?)
}
