//! The kubelet's `/metrics` text (Prometheus exposition) as the scraper parses it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What the scraper does with a body: lossy UTF-8, then parse.
    let _ = oomprobe::kubelet::metrics::parse(&String::from_utf8_lossy(data));
});
