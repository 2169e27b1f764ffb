//! The agent's real /metrics, scraped from a running agent, passes `promtool check metrics`
//! (Debian's prometheus package): names, types, help texts and units as Prometheus wants them.
use std::{io::Write as _, process::Command};

use oomprobe_tests::{require_root, Agent};

#[test]
fn real_scrape_passes_promtool_check_metrics() {
    require_root();
    let agent = Agent::builder().metrics(19631).start();
    let response = agent.scrape();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(head, body)| {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            body
        })
        .expect("an HTTP response");
    assert!(body.contains("oomprobe_kills_total"), "{body}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is needed: apt-get install prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
