//! The kubelet side: where to attach in its binary, following its processes and attributing
//! their memory, and scraping its own `/metrics`.
pub mod symbols;
pub mod tracker;
pub mod metrics;
