//! A stand-in kubelet: a process named `kubelet` that leaks memory steadily, the way a kubelet
//! with a leak grows its heap, until its memory cgroup's limit stops it.
//!
//! usage: kubelet [--leak-mib-per-sec N] [--quiet]
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate = args
        .iter()
        .position(|a| a == "--leak-mib-per-sec")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(16)
        .max(1);
    let quiet = args.iter().any(|a| a == "--quiet");
    // Leak in 256 KiB chunks, spread over each second.
    let chunk = 256 * 1024;
    let chunks_per_sec = rate * 4;
    let tick = Duration::from_micros(1_000_000 / chunks_per_sec);
    let mut leaked: Vec<Vec<u8>> = Vec::new();
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut out = std::io::stdout();
    loop {
        // A "cache" that is never evicted: the leak.
        leaked.push(vec![0xa5u8; chunk]);
        if !quiet && last_report.elapsed() >= Duration::from_secs(1) {
            let mib = leaked.len() * chunk / (1024 * 1024);
            let _ = writeln!(
                out,
                "kubelet (stand-in) pid {}: leaked {mib} MiB after {:.0?}",
                std::process::id(),
                start.elapsed()
            );
            let _ = out.flush();
            last_report = Instant::now();
        }
        std::thread::sleep(tick);
    }
}
