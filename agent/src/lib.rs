//! oomprobe: an eBPF agent that watches the kubelet's memory and every SIGKILL on a node.
//!
//! The modules in data-flow order: the kernel programs and their events, the kubelet they
//! watch, the memory cgroups, per-kill forensics, sampling, leak detection, the OOM cycle and
//! its one action, then export (metrics over HTTP) and the CLI verbs.
pub mod clock; // kernel timestamps (bpf_ktime_get_ns) to wall-clock time
pub mod kernel; // BTF, tracefs, config, load/attach, maps, ring readers, decode
pub mod kubelet; // symbols, tracker (attribution per call site), its /metrics scrape
pub mod cgroup; // memory cgroups: limits, usage, OOM domain, pod identity
pub mod domain; // the exact OOM domain from the kernel's memcg counters
pub mod forensics; // the kill record, the correlator, the live node view
pub mod memcg_events; // memcg notifications, PSI and reclaim: the early warning
pub mod sampler; // periodic samples of the kubelet and the node
pub mod detect; // leak detectors (live) and offline tools (tracegen, csv, score)
pub mod cycle; // the OOM -> restart -> storm -> re-OOM stage machine
pub mod act; // the opt-in cordon
pub mod kubeapi; // the Kubernetes API (kube-rs): client, cordon, node conditions and Events
pub mod output; // the event stream: one Output enum, its JSON and text
pub mod report; // `oomprobe report`: an episode drawn as SVG/HTML
pub mod pipeline; // the run loop as a type: one method per stage
pub mod metrics; // Prometheus metrics and their endpoint
pub mod cli; // one file per verb
pub mod files; // operator-named files (kubeconfig, tokens, CAs) read bounded
#[cfg(feature = "heap-count")]
pub mod heap_count; // the soak bench's counting allocator

/// The kernel programs, built by build.rs from probe-ebpf.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

/// An error and its causes on one line: `a: b: c`. A cause whose text the line already holds
/// (an error that prints its source itself, as reqwest's and some wrappers do) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    line.replace('\n', " ")
}

/// `url` as it may be shown in logs and errors: credentials (`user:password@`), the query and
/// the fragment (where tokens travel) replaced by `***`; a string that is not a URL is shown as
/// `<not a URL>` rather than echoed (it may be a secret pasted in the wrong flag).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            if u.fragment().is_some() {
                u.set_fragment(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<not a URL>".into(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn credentials_queries_and_non_urls_are_not_shown() {
        assert_eq!(
            redact_url("https://admin:s3cret@10.0.0.1:10250/metrics?token=abc#x"),
            "https://***@10.0.0.1:10250/metrics?***#***"
        );
        assert_eq!(
            redact_url("https://127.0.0.1:10250/metrics"),
            "https://127.0.0.1:10250/metrics"
        );
        assert_eq!(redact_url("eyJhbGciOiJSUzI1NiJ9.secret"), "<not a URL>");
    }

    #[test]
    fn a_cause_already_in_the_line_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "outer: disk on fire");
    }
}
