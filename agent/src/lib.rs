//! oomprobe: an eBPF agent that watches the kubelet's memory and every SIGKILL on a node.
//!
//! Data flow: `probes` (load/attach) -> `events` (decode) -> `forensics` (per-kill records)
//! -> `metrics` / CLI output. `cgroup` and `node` read the live system.
pub mod act;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod cycle;
pub mod detect;
pub mod events;
pub mod forensics;
pub mod http;
pub mod kubelet;
pub mod kubelet_metrics;
pub mod memcg_events;
pub mod metrics;
pub mod node;
pub mod probes;
pub mod report;
pub mod ring;
pub mod sampler;
pub mod symbols;
pub mod tracefs;

/// The kernel programs, built by build.rs from probe-ebpf.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(&format!(": {s}"));
        source = s.source();
    }
    line.replace('\n', " ")
}
