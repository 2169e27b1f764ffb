//! The offline tools around the detectors: generated labelled series, recorded series as CSV,
//! and scoring the detectors against the baselines.
pub mod tracegen;
pub mod csv;
pub mod score;
pub mod realnoise;
pub mod causes;
