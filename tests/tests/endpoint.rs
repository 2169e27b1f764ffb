//! The agent's `/metrics` endpoint under a flood of idle and malformed connections from
//! loopback while real OOM kills flow: bounded count (the connection limit) and time (the
//! request head timeout), every kill still recorded, a scrape still answered, and the
//! exposition clean for `promtool check metrics`.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use oomprobe_tests::{cgroup_name, metric, spawn_in, Agent, ScratchCgroup, MIB};

/// The agent's limits (`metrics::ServeLimits::default()`).
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const PORT: u16 = 19652;

/// Opens `n` connections that send nothing, each read by a thread of its own until the
/// agent closes it: how long after `since` each was closed.
fn flood(addr: &str, n: usize, since: Instant) -> Vec<std::thread::JoinHandle<Duration>> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("connect");
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap_or(0);
                assert_eq!(n, 0, "an idle client got an answer");
                since.elapsed()
            })
        })
        .collect()
}

fn closed_after(flood: Vec<std::thread::JoinHandle<Duration>>) -> Vec<Duration> {
    flood.into_iter().map(|h| h.join().unwrap()).collect()
}

/// GET /metrics, retried while the agent refuses (at its connection limit): the body and how
/// long it took.
fn scrape(addr: &str, deadline: Duration) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let mut answer = String::new();
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let _ = s.read_to_string(&mut answer);
        }
        if answer.starts_with("HTTP/1.1 200") {
            return (answer, start.elapsed());
        }
        assert!(
            start.elapsed() < deadline,
            "no scrape answered in {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn oom_kill(cg: &ScratchCgroup) -> u64 {
    let mut hog = spawn_in(cg, "memhog", &["64"]);
    let pid = u64::from(hog.pid());
    assert_eq!(hog.wait_signal(), Some(9), "memhog was not OOM-killed");
    pid
}

#[test]
fn metrics_endpoint_survives_a_flood_while_kills_flow() {
    let agent = Agent::builder().metrics(PORT).start();
    let addr = agent.metrics_addr.clone().unwrap();
    let cg = ScratchCgroup::create(&cgroup_name("flood"), Some(32 * MIB)).expect("cgroup");
    let count = |body: &str, result: &str| {
        metric(
            body,
            &format!("oomprobe_metrics_connections_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0) as u64
    };

    // Malformed requests, one after the other: each answered 400 and closed.
    for _ in 0..50 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    }

    // 300 idle connections at once while a real OOM kill happens: the limit's worth held
    // until the head timeout, the rest closed at accept; the kill recorded meanwhile.
    let start = Instant::now();
    let first = flood(&addr, 300, start);
    let pid = oom_kill(&cg);
    agent.wait_for_kill(Duration::from_secs(20), |v| v["victim"]["pid"] == pid);
    let mut lived = closed_after(first);
    lived.sort();
    let held = lived
        .iter()
        .filter(|t| **t >= HEADER_TIMEOUT - Duration::from_millis(100))
        .count();
    assert_eq!(held, MAX_CONNECTIONS, "{lived:?}");
    assert!(
        lived[299] < HEADER_TIMEOUT + Duration::from_secs(1),
        "an idle connection outlived the head timeout: {lived:?}"
    );
    let (body, _) = scrape(&addr, Duration::from_secs(5));
    assert_eq!(count(&body, "error"), 50);
    assert_eq!(count(&body, "timeout"), MAX_CONNECTIONS as u64);
    assert_eq!(count(&body, "refused"), 300 - MAX_CONNECTIONS as u64);

    // A second flood held open while kills keep coming: every kill recorded, and a scrape
    // answers as soon as the head timeout frees a slot.
    let second = flood(&addr, 300, Instant::now());
    let kills: Vec<u64> = (0..3).map(|_| oom_kill(&cg)).collect();
    for pid in &kills {
        agent.wait_for_kill(Duration::from_secs(20), |v| v["victim"]["pid"] == *pid);
    }
    let (body, took) = scrape(&addr, Duration::from_secs(10));
    assert!(
        took < HEADER_TIMEOUT + Duration::from_secs(1),
        "scrape took {took:?}"
    );
    let lived = closed_after(second);
    assert!(
        lived
            .iter()
            .all(|t| *t < HEADER_TIMEOUT + Duration::from_secs(1)),
        "{lived:?}"
    );
    assert!(
        metric(&body, "oomprobe_kills_total{kind=\"oom_memcg\"}").unwrap() >= 4.0,
        "{body}"
    );

    // The exposition is clean for Prometheus' own checker.
    let exposition = body.split_once("\r\n\r\n").unwrap().1;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Prometheus' CLI) on PATH");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
