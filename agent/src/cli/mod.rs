//! One file per CLI verb.
pub mod diagnose;
pub mod endpoints;
pub mod probe_points;
pub mod replay;
pub mod report;
pub mod run;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
