//! `oomprobe diagnose` and the kubelet /metrics scrape, against loopback servers serving
//! recorded kubelet metrics, garbage, or nothing at all.
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::Command,
    time::Duration,
};

use oomprobe_tests::{
    bin, cgroup_name, metric, scratch_dir, spawn_path_in, standin_kubelet, Agent, ScratchCgroup,
    MIB,
};
use serde_json::Value;

/// Recorded from a kubelet under stress (trimmed).
const RECORDED: &str = "# TYPE kubelet_goroutines gauge\n\
kubelet_goroutines{operation=\"pod_worker\"} 410\n\
kubelet_goroutines{operation=\"volume\"} 200\n\
# TYPE kubelet_pleg_relist_duration_seconds histogram\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"0.5\"} 50\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"10\"} 90\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"30\"} 100\n\
kubelet_pleg_relist_duration_seconds_bucket{le=\"+Inf\"} 100\n\
kubelet_evictions_total{eviction_signal=\"memory.available\"} 3\n\
kubelet_running_containers{container_state=\"exited\"} 212\n\
kubelet_running_containers{container_state=\"running\"} 45\n\
kubelet_cgroup_version 1\n";

/// Serves `body` (or nothing, when `None`: the connection is held open, unanswered).
fn server(body: Option<&'static str>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            match body {
                Some(b) => {
                    let _ = c.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                            .as_bytes(),
                    );
                }
                None => held.push(c),
            }
        }
    });
    url
}

fn diagnose(extra: &[&str]) -> Vec<Value> {
    let state = scratch_dir("diag");
    let out = Command::new(bin("oomprobe"))
        .args(["diagnose", "--format", "json", "--state-dir"])
        .arg(&state)
        .args(extra)
        .output()
        .unwrap();
    let checks: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The exit contract: 2 when any check is bad, else 0.
    let bad = checks.iter().any(|c| c["verdict"] == "bad");
    assert_eq!(
        out.status.code(),
        Some(if bad { 2 } else { 0 }),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    checks
}

fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:?}"))
}

#[test]
fn diagnose_reports_each_check_in_the_guides_terms() {
    let url = server(Some(RECORDED));
    let cg = ScratchCgroup::create(&cgroup_name("diag"), Some(64 * MIB)).unwrap();
    let mut k = spawn_path_in(
        &cg,
        &standin_kubelet("go"),
        &[
            "-total-mib",
            "54",
            "-interval-ms",
            "1",
            "-stats-ms",
            "100000",
        ],
    );
    loop {
        let lines = k.read_until("{");
        if lines.last().is_some_and(|l| l.contains("\"done\":true")) {
            break;
        }
        assert!(!lines.is_empty(), "stand-in ended early");
    }
    let api = server(Some(
        r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"n1"},"status":{"conditions":[{"type":"Ready","status":"True"},{"type":"MemoryPressure","status":"True"}]}}"#,
    ));
    let api = api.trim_end_matches("/metrics").to_string();
    let checks = diagnose(&[
        "--kubelet-metrics",
        &url,
        "--kube-api",
        &api,
        "--node-name",
        "n1",
    ]);
    // JSON values are typed (`value` a number with its `unit`, a yes/no a boolean).
    assert_eq!(find(&checks, "memory_pressure")["value"], true);
    assert_eq!(find(&checks, "memory_pressure")["verdict"], "bad");
    let rss = find(&checks, "kubelet_rss");
    assert_eq!(rss["verdict"], "good");
    assert!(rss["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("pid {}", k.pid())));
    // 54 MiB leaked (84% of the 64 MiB limit before the runtime's own pages): near the limit, Pre-OOM.
    // (48 MiB was enough under go1.19, whose runtime held more; go1.26 stays below 80%.)
    assert_eq!(find(&checks, "kubelet_cgroup")["verdict"], "bad");
    assert_eq!(find(&checks, "kubelet_goroutines")["value"], 610);
    assert_eq!(find(&checks, "kubelet_goroutines")["verdict"], "bad");
    let exited = find(&checks, "exited_containers");
    assert_eq!(
        (&exited["value"], &exited["running_containers"]),
        (&Value::from(212), &Value::from(45))
    );
    assert_eq!(exited["verdict"], "bad");
    assert_eq!(find(&checks, "pleg_relist_p99")["value"], 28.0);
    assert_eq!(find(&checks, "pleg_relist_p99")["unit"], "seconds");
    assert_eq!(find(&checks, "pleg_relist_p99")["verdict"], "bad");
    assert_eq!(find(&checks, "memory_evictions")["verdict"], "bad");
    assert_eq!(find(&checks, "kubelet_oom_kills")["value"], 0);
    assert_eq!(find(&checks, "stage")["value"], "pre_oom");
    assert_eq!(find(&checks, "cgroup_and_kernel")["verdict"], "good");
}

#[test]
fn unreachable_metrics_are_unknown_not_fatal() {
    let checks = diagnose(&[
        "--kubelet-metrics",
        "http://127.0.0.1:1/metrics",
        "--kubelet-name",
        "no-such-kubelet",
    ]);
    let m = find(&checks, "kubelet_metrics");
    assert_eq!(m["verdict"], "unknown");
    assert!(
        m["detail"].as_str().unwrap().contains("cannot reach"),
        "{m}"
    );
    assert_eq!(find(&checks, "kubelet_rss")["verdict"], "bad");
}

#[test]
fn run_scrapes_kubelet_metrics_and_counts_garbage_and_timeouts() {
    let good = server(Some(RECORDED));
    let agent = Agent::builder()
        .args(&[
            "--sample-interval",
            "1",
            "--emit-samples",
            "--kubelet-metrics",
            &good,
        ])
        .start();
    let s = agent.wait_for_event(
        Duration::from_secs(20),
        "a sample with kubelet metrics",
        |v| v["event"] == "sample" && !v["kubelet_metrics"].is_null(),
    );
    assert_eq!(s["kubelet_metrics"]["goroutines"].as_f64(), Some(610.0));
    assert_eq!(
        s["kubelet_metrics"]["evictions_memory_total"].as_f64(),
        Some(3.0)
    );
    // Exited containers feed the container GC cause; they come only from the kubelet.
    assert_eq!(
        s["kubelet_metrics"]["exited_containers"].as_f64(),
        Some(212.0)
    );
    assert_eq!(s["exited_containers"].as_f64(), Some(212.0), "{s}");
    assert_eq!(s["containers"].as_f64(), Some(45.0), "{s}");
    drop(agent);

    for (body, reason) in [
        (Some("<html>not metrics</html>"), "garbage"),
        (None, "timeout"),
    ] {
        let url = server(body);
        let agent = Agent::builder()
            .metrics(19640)
            .args(&["--sample-interval", "1", "--kubelet-metrics", &url])
            .start();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let body = agent.scrape();
            let n = metric(
                &body,
                &format!("oomprobe_kubelet_metrics_errors_total{{reason=\"{reason}\"}}"),
            );
            if n.is_some_and(|n| n >= 1.0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {reason} counted:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        agent.wait_for_log(Duration::from_secs(20), "kubelet metrics unavailable");
    }
}
