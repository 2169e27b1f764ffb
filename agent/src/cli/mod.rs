//! One file per CLI verb.
pub mod bench_detect;
pub mod diagnose;
pub mod endpoints;
pub mod gen_trace;
pub mod probe_points;
pub mod replay;
pub mod run;

pub use crate::output::OutputFormat;
