//! `cargo xtask bench --only soak [--minutes N]`: the agent under churn for a long time (30
//! minutes by default; `OOMPROBE_SOAK_MINUTES` or `--minutes` for shorter runs), to show that
//! nothing it keeps grows with what it has seen.
//!
//! Every second: ten pod-like memory cgroups (a pod with two containers) are created under a
//! kubepods root the agent watches and the ten of the previous second removed; one process is
//! OOM-killed in a container; two processes exec under the kubelet's name and the two of the
//! previous second are SIGKILLed. Every 20 s the agent's RSS (VmRSS), open fds, threads and
//! `oomprobe_map_entries{map}` are read. At the end: the RSS slope (least-squares fit over the
//! run after its first tenth, KiB/hour), and map occupancy, fds and threads at the start (after
//! the first sample) against the end (after the churn stopped and one attribution round).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use standin::ScratchCgroup;

use crate::workspace_root;

const METRICS: &str = "127.0.0.1:19499";
const PODS_PER_SECOND: usize = 10;
const CONTAINER_LIMIT: u64 = 16 << 20;

/// One reading of the agent.
#[derive(Debug, Clone)]
struct Reading {
    at_s: f64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    maps: Vec<(String, i64)>,
}

fn scrape() -> Result<String> {
    let mut s = std::net::TcpStream::connect(METRICS).context("connect to the agent's metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// `oomprobe_map_entries{map="..."} N` lines, and the dropped counters, as (series, value).
fn map_entries(body: &str) -> Vec<(String, i64)> {
    body.lines()
        .filter(|l| {
            l.starts_with("oomprobe_map_entries{")
                || l.starts_with("oomprobe_events_dropped_total{")
                || l.starts_with("oomprobe_heap_bytes{")
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse::<f64>().ok()? as i64))
        })
        .chain(std::iter::once((
            "metrics series (all families)".to_string(),
            body.lines().filter(|l| l.starts_with("oomprobe_")).count() as i64,
        )))
        .collect()
}

/// The counting allocator's live heap bytes in a reading (0 without it).
fn heap_live(r: &Reading) -> i64 {
    r.maps
        .iter()
        .find(|(k, _)| k == HEAP_LIVE)
        .map_or(0, |(_, v)| *v)
}

const HEAP_LIVE: &str = "oomprobe_heap_bytes{what=\"live\"}";

fn read(pid: u32, start: Instant) -> Result<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Reading {
        at_s: start.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        maps: map_entries(&scrape()?),
    })
}

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// A pod cgroup and its containers (removed containers first).
struct Pod {
    containers: Vec<ScratchCgroup>,
    _pod: ScratchCgroup,
}

fn pod(root: &ScratchCgroup, name: &str) -> Result<Pod> {
    let p = root.child(name, None)?;
    let containers = (0..2)
        .map(|c| p.child(&format!("ctr{c}"), Some(CONTAINER_LIMIT)))
        .collect::<std::io::Result<_>>()?;
    Ok(Pod {
        containers,
        _pod: p,
    })
}

fn kill_and_reap(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
}

/// `--minutes`, else `OOMPROBE_SOAK_MINUTES`, else 30.
pub fn minutes(flag: Option<u64>) -> Result<u64> {
    match (flag, std::env::var("OOMPROBE_SOAK_MINUTES")) {
        (Some(m), _) => Ok(m),
        (None, Ok(v)) => v
            .trim()
            .parse()
            .with_context(|| format!("OOMPROBE_SOAK_MINUTES={v:?} is not a number of minutes")),
        (None, Err(_)) => Ok(30),
    }
}

pub fn run(minutes: u64) -> Result<()> {
    crate::build()?;
    // With the counting allocator (`oomprobe_heap_bytes`): heap growth told apart from RSS.
    crate::run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "oomprobe",
        "--features",
        "heap-count",
    ]))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak makes real OOM kills and loads eBPF: run it as root");
    }
    let ws = workspace_root();
    let memhog = ws.join("target/debug/memhog");
    let scratch = ws.join("target/soak");
    std::fs::create_dir_all(&scratch)?;
    let kubelet = scratch.join("kubelet");
    std::fs::copy("/bin/sleep", &kubelet).context("copy sleep(1) as `kubelet`")?;
    let root = ScratchCgroup::create(
        &format!("oomprobe-soak-{}-kubepods", std::process::id()),
        None,
    )?;
    let state = scratch.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let mut agent = Command::new(ws.join("target/release/oomprobe"))
        .args(["run", "--format", "json", "--metrics-addr", METRICS])
        .args(["--kubepods-root", &root.path])
        .args(["--sample-interval", "1", "--attribution-interval", "1"])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the agent")?;
    let result = soak(&mut agent, &root, &memhog, &kubelet, minutes);
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn soak(
    agent: &mut Child,
    root: &ScratchCgroup,
    memhog: &std::path::Path,
    kubelet: &std::path::Path,
    minutes: u64,
) -> Result<()> {
    let pid = agent.id();
    let records = Arc::new(AtomicU64::new(0));
    let incomplete = Arc::new(AtomicU64::new(0));
    let out = agent.stdout.take().context("stdout")?;
    let (r, inc) = (records.clone(), incomplete.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("\"event\":\"kill\"") {
                r.fetch_add(1, Ordering::Relaxed);
                if line.contains("\"exit_after_ns\":null") {
                    inc.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let err = agent.stderr.take().context("stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // Kubelet adoptions that held the agent's loop >= 20 ms (its own log line): count, longest.
    let slow_adoptions = Arc::new(AtomicU64::new(0));
    let longest_adoption_ms = Arc::new(AtomicU64::new(0));
    let (slow, longest) = (slow_adoptions.clone(), longest_adoption_ms.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("oomprobe ready") {
                let _ = ready_tx.send(());
            }
            if let Some(rest) = line.split("adoption_ms=").nth(1) {
                let ms: u64 = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                slow.fetch_add(1, Ordering::Relaxed);
                longest.fetch_max(ms, Ordering::Relaxed);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the agent did not become ready")?;
    // The first sample and attribution round.
    std::thread::sleep(Duration::from_secs(3));
    let start = Instant::now();
    let first = read(pid, start)?;
    let deadline = start + Duration::from_secs(minutes.saturating_mul(60));
    let mut readings = vec![first.clone()];
    let mut last_read = Instant::now();
    let mut live: Vec<Pod> = Vec::new();
    let mut kubelets: Vec<Child> = Vec::new();
    let mut hogs: Vec<Child> = Vec::new();
    let (mut pods_made, mut execs, mut ooms, mut sigkills) = (0u64, 0u64, 0u64, 0u64);
    let mut second = 0u64;
    while Instant::now() < deadline {
        let tick = Instant::now();
        second += 1;
        // Pods: this second's in, the previous second's out.
        let old = std::mem::take(&mut live);
        for i in 0..PODS_PER_SECOND {
            live.push(pod(root, &format!("pod{second}-{i}"))?);
            pods_made += 1;
        }
        // The previous second's processes: the OOM-killed memhog is reaped, the kubelets die.
        for mut h in hogs.drain(..) {
            let _ = h.wait();
        }
        sigkills += kubelets.len() as u64;
        kill_and_reap(&mut kubelets);
        drop(old);
        let ctr = &live[0].containers[0];
        hogs.push(ctr.command(memhog, &["64"]).stdout(Stdio::null()).spawn()?);
        ooms += 1;
        for _ in 0..2 {
            let k = live[1].containers[0]
                .command(kubelet, &["600"])
                .stdout(Stdio::null())
                .spawn()?;
            kubelets.push(k);
            execs += 1;
        }
        if last_read.elapsed() >= Duration::from_secs(20) {
            last_read = Instant::now();
            let r = read(pid, start)?;
            eprintln!(
                "soak {:>6.0} s: RSS {} KiB, heap {} KiB, fds {}, threads {}, kill records {}",
                r.at_s,
                r.rss_kib,
                heap_live(&r) / 1024,
                r.fds,
                r.threads,
                records.load(Ordering::Relaxed)
            );
            if std::env::var_os("OOMPROBE_SOAK_VERBOSE").is_some() {
                for (k, v) in &r.maps {
                    eprintln!("    {k} {v}");
                }
            }
            readings.push(r);
        }
        if let Some(left) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    for mut h in hogs.drain(..) {
        let _ = h.wait();
    }
    sigkills += kubelets.len() as u64;
    kill_and_reap(&mut kubelets);
    drop(live);
    // One sample and attribution round past the last removal and death.
    std::thread::sleep(Duration::from_secs(5));
    let last = read(pid, start)?;
    readings.push(last.clone());

    let warm = minutes as f64 * 60.0 / 10.0;
    let points: Vec<(f64, f64)> = readings
        .iter()
        .filter(|r| r.at_s >= warm)
        .map(|r| (r.at_s / 3600.0, r.rss_kib as f64))
        .collect();
    let kib_per_hour = slope(&points);
    let heap_points: Vec<(f64, f64)> = readings
        .iter()
        .filter(|r| r.at_s >= warm)
        .map(|r| (r.at_s / 3600.0, heap_live(r) as f64 / 1024.0))
        .collect();
    let heap_kib_per_hour = slope(&heap_points);
    let plateau = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    println!(
        "\nsoak: {minutes} min, {pods_made} pod cgroups created and removed ({} cgroups), {execs} execs as `kubelet` (all SIGKILLed: {sigkills}), {ooms} OOM kills; {} kill records ({} without an exit)",
        pods_made * 3,
        records.load(Ordering::Relaxed),
        incomplete.load(Ordering::Relaxed)
    );
    println!(
        "  agent RSS: {} KiB at the start, {} KiB at the end, slope {kib_per_hour:+.1} KiB/hour ({} readings after the first {warm:.0} s)",
        first.rss_kib,
        last.rss_kib,
        points.len()
    );
    println!(
        "  RSS after the first {warm:.0} s: max {plateau:.0} KiB; heap (counting allocator): {} KiB at the start, {} KiB at the end, slope {heap_kib_per_hour:+.1} KiB/hour",
        heap_live(&first) / 1024,
        heap_live(&last) / 1024,
    );
    println!(
        "  fds: {} -> {}; threads: {} -> {}",
        first.fds, last.fds, first.threads, last.threads
    );
    println!(
        "  kubelet adoptions that held the agent's loop >= 20 ms: {} (longest {} ms)",
        slow_adoptions.load(Ordering::Relaxed),
        longest_adoption_ms.load(Ordering::Relaxed)
    );
    println!("  state (start -> end):");
    let mut keys: Vec<&String> = first
        .maps
        .iter()
        .chain(&last.maps)
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let get = |r: &Reading| r.maps.iter().find(|(m, _)| m == k).map_or(0, |(_, v)| *v);
        println!("    {k}: {} -> {}", get(&first), get(&last));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((super::slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0)).collect();
        assert_eq!(super::slope(&flat), 0.0);
        assert_eq!(super::slope(&[(1.0, 1.0)]), 0.0);
    }
}
