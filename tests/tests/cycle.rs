//! The OOM flap cycle on this kernel: a restart supervisor (as systemd restarts the kubelet)
//! around a leaking Go stand-in kubelet in a memory cgroup; every stage in order, the cycle
//! count, the storm's figures, collateral damage by pod, and the cordon action against a
//! loopback server that speaks the node PATCH API.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use oomprobe_tests::{
    cgroup_name, scratch_dir, spawn_in, spawn_path_in, standin_kubelet, Agent, ScratchCgroup, MIB,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A request the fake API server received.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<String>,
    body: String,
}

/// The agent's writes among `reqs`. Its reads are only the leak classifier's API inputs (the
/// node, for MemoryPressure, and the CertificateSigningRequests list, every 60 s): asserted.
fn writes(reqs: &[Request]) -> Vec<Request> {
    let (reads, writes): (Vec<&Request>, Vec<&Request>) =
        reqs.iter().partition(|r| r.method == "GET");
    for r in reads {
        let path = r.path.split('?').next().unwrap_or_default();
        assert!(
            path == "/api/v1/nodes/test-node"
                || path == "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            "a read the agent does not make: {r:?}"
        );
    }
    writes.into_iter().cloned().collect()
}

/// A loopback server answering every request with `status`: a 2xx with an empty Node, any
/// other status with a `Status` body carrying its code (as a real API server does; kube-rs
/// reads the code from it).
fn api_server(status: &'static str) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap_or(0);
            let mut it = line.split_whitespace();
            let (method, path) = (
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
            );
            let mut headers = Vec::new();
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push(h.trim().to_string());
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            s.lock().unwrap().push(Request {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let code: u16 = status[..3].parse().unwrap();
            let body = if (200..300).contains(&code) {
                r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"test-node"}}"#.to_string()
            } else {
                format!(
                    r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"{status}","reason":"InternalError","code":{code}}}"#
                )
            };
            let mut c = conn;
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (url, seen)
}

/// Runs `cycles` OOM-kill-and-restart rounds of the leaking stand-in, then one that stops
/// leaking. `between` runs while the kubelet is down after the first kill.
fn flap(
    cg: &ScratchCgroup,
    cycles: usize,
    mut between: impl FnMut(),
) -> (Vec<u64>, oomprobe_tests::Proc) {
    let kubelet = standin_kubelet("go");
    let mut pids = Vec::new();
    for i in 0..cycles {
        let mut k = spawn_path_in(cg, &kubelet, &["-chunk-kib", "1024", "-interval-ms", "20"]);
        pids.push(u64::from(k.pid()));
        assert_eq!(
            k.wait_signal(),
            Some(9),
            "stand-in kubelet {i} must be OOM-killed"
        );
        if i == 0 {
            between();
        }
        // RestartSec, as a systemd unit would have.
        std::thread::sleep(Duration::from_millis(300));
    }
    let last = spawn_path_in(cg, &kubelet, &["-total-mib", "4", "-interval-ms", "5"]);
    pids.push(u64::from(last.pid()));
    (pids, last)
}

fn stages(agent: &Agent) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|v| v["event"] == "stage")
        .collect()
}

fn agent_args(api: &str, token: &str, confirm: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--sample-interval",
        "1",
        "--attribution-interval",
        "1",
        "--storm-settle",
        "2",
        "--act",
        "cordon",
        "--node-name",
        "test-node",
        "--kube-api",
        api,
        "--kube-token-file",
        token,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if confirm {
        a.push("--act-confirm".into());
    }
    a
}

#[test]
fn flap_cycle_stages_storm_collateral_and_one_cordon() {
    let (api, requests) = api_server("200 OK");
    let dir = scratch_dir("token");
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    // A token file ending in a newline (as `echo` or an editor writes it): the agent
    // trims it, as client-go does.
    std::fs::write(&token, "s3cret\n").unwrap();
    let args = agent_args(&api, token.to_str().unwrap(), true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::builder().args(&args).start();
    let cg = ScratchCgroup::create(&cgroup_name("flap"), Some(48 * MIB)).unwrap();
    let pods = ScratchCgroup::create(&cgroup_name("kubepods"), None).unwrap();
    let pod = pods.child("burstable", None).unwrap();
    let pod = pod.child("pod1234-abcd", Some(16 * MIB)).unwrap();
    let ctr = pod.child("ctr1", None).unwrap();
    let mut workload_pid = 0;
    let (pids, _last) = flap(&cg, 3, || {
        // A workload OOM-killed while the kubelet is down: collateral damage.
        let mut w = spawn_in(&ctr, "memhog", &["64"]);
        workload_pid = u64::from(w.pid());
        assert_eq!(w.wait_signal(), Some(9));
    });

    let recovery = agent.wait_for_event(WAIT, "recovery", |v| {
        v["event"] == "stage" && v["stage"] == "recovery"
    });
    let seq: Vec<String> = stages(&agent)
        .iter()
        .filter(|v| v["stage"] != "pre_oom")
        .map(|v| v["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        seq,
        [
            "active_oom",
            "reconciliation_storm",
            "re_oom",
            "reconciliation_storm",
            "re_oom",
            "reconciliation_storm",
            "recovery"
        ],
        "{:#?}",
        stages(&agent)
    );
    let all = stages(&agent);
    // Kernel timestamps (the kills' SIGKILLs, the restarts' execs, the samples) in order. A
    // pre_oom stamped by a sample can come after the kill it foresaw: it is left out here.
    let times: Vec<u64> = all
        .iter()
        .filter(|v| v["stage"] != "pre_oom")
        .map(|v| v["ktime_ns"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "kernel timestamps in order: {times:?}"
    );
    let reooms: Vec<&Value> = all.iter().filter(|v| v["stage"] == "re_oom").collect();
    assert_eq!(reooms.last().unwrap()["cycles"].as_u64(), Some(3));
    assert!(reooms.iter().all(|v| v["flapping"] == true));
    assert!(reooms[0]["period_seconds"].as_f64().unwrap() < 600.0);
    assert!(reooms[0]["recommendations"].to_string().contains("cordon"));
    assert_eq!(recovery["cycles"].as_u64(), Some(3));
    let storm = &recovery["storm"];
    assert_eq!(storm["pid"].as_u64(), pids.last().copied(), "{recovery}");
    assert!(storm["settled_after_ns"].as_u64().is_some());
    assert!(storm["peak_rss_bytes"].as_u64() >= storm["start_rss_bytes"].as_u64());
    assert!(
        recovery["recommendations"]
            .to_string()
            .contains("kube-reserved"),
        "{recovery}"
    );

    // Collateral: the pod's container, by pod UID, as a kernel OOM kill (not an eviction).
    let first_storm = all
        .iter()
        .find(|v| v["stage"] == "reconciliation_storm")
        .unwrap();
    let c = &first_storm["collateral"]["1234-abcd"][0];
    assert_eq!(c["pid"].as_u64(), Some(workload_pid), "{first_storm}");
    assert_eq!(c["reason"], "oom_killed");
    assert_eq!(c["pod"]["container_id"], "ctr1");
    assert_eq!(c["pod"]["qos"], "burstable");

    // The cordon: once per episode, with the right body and credentials.
    let reqs = writes(&requests.lock().unwrap());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "PATCH");
    // The path, without the query (kube-rs adds `fieldManager=oomprobe`).
    assert_eq!(
        reqs[0].path.split('?').next().unwrap(),
        "/api/v1/nodes/test-node"
    );
    assert_eq!(reqs[0].body, r#"{"spec":{"unschedulable":true}}"#);
    // Header names are case-insensitive (hyper writes them lower-case).
    let header = |name: &str| {
        reqs[0].headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    assert_eq!(
        header("Content-Type").as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(header("Authorization").as_deref(), Some("Bearer s3cret"));
    let actions: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|v| v["event"] == "action")
        .collect();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["ok"], true);
    assert_eq!(actions[0]["dry_run"], false);
    let _ = std::fs::remove_dir_all(&dir);
    drop((ctr, pod));
}

/// A token file in a scratch directory of the test's own (the agent refuses a missing one),
/// removed with the guard, also when the test fails.
struct TokenDir(PathBuf);

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token_file(name: &str) -> (TokenDir, String) {
    let dir = scratch_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let path = token.to_str().unwrap().to_string();
    (TokenDir(dir), path)
}

#[test]
fn cordon_is_a_dry_run_unless_confirmed() {
    let (api, requests) = api_server("200 OK");
    let (_dir, token) = token_file("token-dryrun");
    let args = agent_args(&api, &token, false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::builder().args(&args).start();
    let cg = ScratchCgroup::create(&cgroup_name("dryrun"), Some(48 * MIB)).unwrap();
    let (_pids, _last) = flap(&cg, 2, || {});
    let action = agent.wait_for_event(WAIT, "dry-run action", |v| v["event"] == "action");
    assert_eq!(action["dry_run"], true);
    assert!(
        writes(&requests.lock().unwrap()).is_empty(),
        "nothing written in dry run"
    );
}

#[test]
fn cordon_errors_are_reported_and_not_retried_in_a_loop() {
    let (api, requests) = api_server("500 Internal Server Error");
    let (_dir, token) = token_file("token-apierr");
    let args = agent_args(&api, &token, true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::builder().args(&args).start();
    let cg = ScratchCgroup::create(&cgroup_name("apierr"), Some(48 * MIB)).unwrap();
    let (_pids, _last) = flap(&cg, 3, || {});
    let action = agent.wait_for_event(WAIT, "failed action", |v| v["event"] == "action");
    assert_eq!(action["ok"], false);
    assert!(
        action["detail"].as_str().unwrap().contains("500"),
        "{action}"
    );
    agent.wait_for_event(WAIT, "recovery", |v| {
        v["event"] == "stage" && v["stage"] == "recovery"
    });
    // Two flapping re-OOMs, one attempt: the next waits out its backoff.
    assert_eq!(writes(&requests.lock().unwrap()).len(), 1);
    agent.wait_for_log(WAIT, "cordon failed");
}
