//! The series store's decoder (formats 1 and 2): a file's bytes as the agent loads them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The clock of the recordings the seeds come from (2026-11), and a clock at the epoch.
    let _ = oomprobe::detect::store::parse(data, 1_795_000_000);
    let _ = oomprobe::detect::store::parse(data, 0);
});
