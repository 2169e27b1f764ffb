//! `cargo xtask bench`: real OOM kills, one at a time and in a burst, measured end to end for
//! oomprobe and, in the same run, for two baselines: a bpftrace one-liner on
//! `tracepoint:oom:mark_victim` and a `/dev/kmsg` reader like the kubelet's OOM watcher.
//!
//! Latency is the reader's CLOCK_MONOTONIC at the moment it has the line, minus the kernel's
//! timestamp of the kill (oomprobe: the SIGKILL's `bpf_ktime_get_ns`; bpftrace: `nsecs` at
//! mark_victim, ~50 us later; kmsg: the printk timestamp of the OOM report).
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use standin::{vmstat_oom_kills, ScratchCgroup};

use crate::workspace_root;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Per-pid observations of one tool: (latency ns, named the cgroup).
type Seen = Arc<Mutex<HashMap<u32, (u64, bool)>>>;

struct Reader {
    child: Option<Child>,
    seen: Seen,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_lines(
    mut cmd: Command,
    ready_marker: Option<&'static str>,
    parse: impl Fn(&str, u64) -> Option<(u32, u64, bool)> + Send + 'static,
) -> Result<Reader> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    let seen: Seen = Arc::default();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    let s = seen.clone();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let now = mono_ns();
            if ready_marker.is_some_and(|m| line.contains(m)) {
                let _ = tx2.send(());
            }
            if let Some((pid, lat, cg)) = parse(&line, now) {
                s.lock().unwrap().entry(pid).or_insert((lat, cg));
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if ready_marker.is_some_and(|m| line.contains(m)) {
                let _ = tx.send(());
            }
        }
    });
    if ready_marker.is_some() {
        rx.recv_timeout(Duration::from_secs(60))
            .context("tool did not become ready")?;
    }
    Ok(Reader {
        child: Some(child),
        seen,
    })
}

fn json_u64(line: &str, key: &str) -> Option<u64> {
    let i = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    line[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

/// oomprobe's complete records; `seen` gets its own ring-buffer latency (`seen_after_ns`).
fn start_oomprobe(seen: Seen) -> Result<Reader> {
    let mut cmd = Command::new(workspace_root().join("target/release/oomprobe"));
    cmd.args(["run", "--format", "json", "--no-metrics", "--state-dir"]);
    cmd.arg(workspace_root().join("target/bench-state"));
    spawn_lines(cmd, Some("oomprobe ready"), move |line, now| {
        if !line.contains("\"kind\":\"oom_") {
            return None;
        }
        let victim = &line[line.find("\"victim\":")?..];
        let pid = json_u64(victim, "pid")? as u32;
        let ktime = json_u64(line, "ktime_ns")?;
        let named = victim.contains("\"cgroup\":\"/");
        if let Some(ns) = json_u64(line, "seen_after_ns") {
            seen.lock().unwrap().insert(pid, (ns, named));
        }
        Some((pid, now.saturating_sub(ktime), named))
    })
}

fn start_bpftrace() -> Result<Reader> {
    let mut cmd = Command::new("bpftrace");
    cmd.args([
        "-e",
        r#"tracepoint:oom:mark_victim { printf("victim %d %llu\n", args->pid, nsecs); }"#,
    ]);
    spawn_lines(cmd, Some("Attaching"), |line, now| {
        let mut it = line.strip_prefix("victim ")?.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let ns: u64 = it.next()?.parse().ok()?;
        Some((pid, now.saturating_sub(ns), false))
    })
}

/// A /dev/kmsg follower: the kernel's OOM report, as the kubelet's OOM watcher and
/// node-problem-detector read it.
fn start_kmsg() -> Result<Reader> {
    use std::{fs::File, io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("open /dev/kmsg")?;
    // SAFETY: valid fd; SEEK_END on /dev/kmsg skips the backlog.
    unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_END) };
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        let _keep: Option<File> = None;
        let mut buf = vec![0u8; 8192];
        // pid -> cgroup named by the "oom-kill:" line (printed just before "Killed process").
        let mut memcg_of: HashMap<u32, bool> = HashMap::new();
        loop {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let now = mono_ns();
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let (head, msg) = rec.split_once(';').unwrap_or(("", ""));
                    let ts_us: u64 = head
                        .split(',')
                        .nth(2)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    if let Some(rest) = msg.strip_prefix("oom-kill:") {
                        let pid = rest
                            .split(',')
                            .find_map(|kv| kv.strip_prefix("pid="))
                            .and_then(|p| p.parse().ok());
                        if let Some(pid) = pid {
                            memcg_of.insert(pid, rest.contains("task_memcg=/"));
                        }
                    } else if let Some(rest) = msg
                        .strip_prefix("Memory cgroup out of memory: Killed process ")
                        .or_else(|| msg.strip_prefix("Out of memory: Killed process "))
                    {
                        if let Some(pid) =
                            rest.split_whitespace().next().and_then(|p| p.parse().ok())
                        {
                            let named = memcg_of.get(&pid).copied().unwrap_or(false);
                            s.lock()
                                .unwrap()
                                .entry(pid)
                                .or_insert((now.saturating_sub(ts_us * 1000), named));
                        }
                    }
                }
                Ok(_) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                // EPIPE: records were overwritten before we read them (lost).
                Err(_) => {}
            }
        }
    });
    Ok(Reader { child: None, seen })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn proc_stat(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (kb("VmRSS:"), kb("VmHWM:"), ticks)
}

fn run_kills(parallel: usize, cgroups: usize, tag: &str) -> Result<(Vec<u32>, u64)> {
    let bin = workspace_root().join("target/debug/memhog");
    let before = vmstat_oom_kills();
    let cgs: Vec<ScratchCgroup> = (0..cgroups)
        .map(|i| {
            ScratchCgroup::create(
                &format!("oomprobe-bench-{}-{tag}{i}", std::process::id()),
                Some(16 << 20),
            )
        })
        .collect::<std::io::Result<_>>()?;
    let mut pids = Vec::new();
    let mut children = Vec::new();
    for i in 0..parallel {
        let cg = &cgs[i % cgroups];
        let c = cg.command(&bin, &["64"]).stdout(Stdio::null()).spawn()?;
        pids.push(c.id());
        children.push(c);
    }
    for mut c in children {
        c.wait()?;
    }
    Ok((pids, vmstat_oom_kills() - before))
}

struct Tool {
    name: &'static str,
    reader: Reader,
}

fn report(tools: &[Tool], pids: &[u32], kernel_kills: u64, label: &str) {
    println!(
        "\n{label}: {} OOM kills (kernel oom_kill delta {kernel_kills})",
        pids.len()
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>16}",
        "tool", "p50 ms", "p99 ms", "max ms", "coverage", "cgroup named"
    );
    for t in tools {
        let seen = t.reader.seen.lock().unwrap();
        let mut lat: Vec<u64> = pids
            .iter()
            .filter_map(|p| seen.get(p).map(|s| s.0))
            .collect();
        let named = pids
            .iter()
            .filter(|p| seen.get(p).is_some_and(|s| s.1))
            .count();
        lat.sort_unstable();
        println!(
            "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>8}/{} {:>14}/{}",
            t.name,
            percentile(&lat, 0.5) as f64 / 1e6,
            percentile(&lat, 0.99) as f64 / 1e6,
            lat.last().copied().unwrap_or(0) as f64 / 1e6,
            lat.len(),
            kernel_kills,
            named,
            pids.len()
        );
    }
}

/// Runs a stand-in's benchmark loop: its ns per op and its pid.
fn ns_per_op(program: &std::path::Path, args: &[&str]) -> Result<(f64, u32)> {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    json_u64(&text, "ns_per_op")
        .map(|v| (v as f64, pid))
        .with_context(|| format!("no ns_per_op from {}: {text}", program.display()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The kubelet allocator probes' cost: the Go stand-in's allocation loop and a libc mmap/munmap
/// loop, each without and with the agent's uprobes attached, in the same run. Runs alternate
/// (bare, probed, bare, ...) with the agent up throughout, so drift on the machine hits both
/// sides alike: the bare runs use a copy of each binary named `kubelet-bare`, which the agent
/// neither follows (another name) nor traps (uprobes are per inode).
pub fn run_alloc() -> Result<()> {
    crate::build()?;
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "oomprobe"]))?;
    let root = workspace_root();
    let go = root.join("target/standin/go/kubelet");
    let c = root.join("target/standin/c/kubelet");
    let go_bare = root.join("target/standin/go/kubelet-bare");
    let c_bare = root.join("target/standin/c/kubelet-bare");
    std::fs::copy(&go, &go_bare)?;
    std::fs::copy(&c, &c_bare)?;
    let go_args = ["-loop", "300000"];
    let c_args = ["-mmap-loop", "200000", "-delay-ms", "300"];
    let pairs = 9;
    let mut agent = Command::new(root.join("target/release/oomprobe"))
        .args(["run", "--format", "json", "--no-metrics", "--kubelet-bin"])
        .arg(&go)
        .args(["--attribution-interval", "1", "--state-dir"])
        .arg(root.join("target/bench-state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = agent.stderr.take().context("stderr")?;
    let out = agent.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("oomprobe ready") {
                let _ = tx.send(());
            }
        }
    });
    // Probe hits per kubelet pid, from the agent's latest kubelet_memory report.
    let hits: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let h = hits.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if !l.contains("\"kubelet_memory\"") {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            let calls: u64 = v["top_call_sites"]
                .as_array()
                .map_or(0, |a| a.iter().filter_map(|s| s["calls"].as_u64()).sum());
            if let Some(pid) = v["pid"].as_u64() {
                h.lock().unwrap().insert(pid as u32, calls);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .context("agent not ready")?;
    let result = (|| -> Result<()> {
        let mut go_r = Vec::new();
        let mut c_r = Vec::new();
        let (mut go_b, mut go_p, mut c_b, mut c_p) = (vec![], vec![], vec![], vec![]);
        let mut go_hits = Vec::new();
        for _ in 0..pairs {
            let b = ns_per_op(&go_bare, &go_args)?.0;
            let (p, pid) = ns_per_op(&go, &go_args)?;
            go_r.push(p / b);
            go_b.push(b);
            go_p.push(p);
            go_hits.push(pid);
            let b = ns_per_op(&c_bare, &c_args)?.0;
            let p = ns_per_op(&c, &c_args)?.0;
            c_r.push(p / b);
            c_b.push(b);
            c_p.push(p);
        }
        std::thread::sleep(Duration::from_millis(1500));
        let counted = hits.lock().unwrap();
        let go_hits: Vec<f64> = go_hits
            .iter()
            .filter_map(|p| counted.get(p).map(|&c| c as f64))
            .collect();
        let (c_base, c_probed) = (median(c_b), median(c_p));
        let per_hit = (c_probed - c_base) / 2.0;
        let spread = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            (v[0], v[v.len() / 2], v[v.len() - 1])
        };
        let (lo, mid, hi) = spread(go_r);
        println!("\nkubelet allocator probes ({pairs} alternating bare/probed pairs):");
        println!(
            "Go stand-in allocation loop (64 KiB make per op, {} ops): {:.0} ns/op bare, {:.0} ns/op probed; slowdown per pair: median x{mid:.3} (min x{lo:.3}, max x{hi:.3})",
            go_args[1],
            median(go_b.clone()),
            median(go_p)
        );
        if !go_hits.is_empty() {
            let run_ns = median(go_b) * go_args[1].parse::<f64>()?;
            let hits = median(go_hits);
            println!(
                "  probe hits per Go run (agent's count): {hits:.0}; at {per_hit:.0} ns per hit that is {:.4}% of the run: the loop allocates from the heap the runtime already mapped",
                hits * per_hit / run_ns * 100.0
            );
        }
        let (lo, mid, hi) = spread(c_r);
        println!(
            "libc mmap+munmap loop (2 probe hits per op): {c_base:.0} ns/op bare, {c_probed:.0} ns/op probed; slowdown median x{mid:.3} (min x{lo:.3}, max x{hi:.3}), {per_hit:.0} ns per hit"
        );
        Ok(())
    })();
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_file(&go_bare);
    let _ = std::fs::remove_file(&c_bare);
    result
}

/// The agent's CPU while sampling a node with 100 pod cgroups (a kubepods tree of our own).
pub fn run_sampling() -> Result<()> {
    crate::build()?;
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "oomprobe"]))?;
    let root = workspace_root();
    let tree = ScratchCgroup::create(
        &format!("oomprobe-bench-{}-kubepods", std::process::id()),
        None,
    )?;
    let qos = tree.child("burstable", None)?;
    let mut pods = Vec::new();
    for i in 0..100 {
        let pod = qos.child(&format!("pod{i:04}-bench"), None)?;
        pods.push(pod.child("ctr", None)?);
        pods.push(pod);
    }
    let mut results = Vec::new();
    for interval in ["10", "1"] {
        let mut agent = Command::new(root.join("target/release/oomprobe"))
            .args([
                "run",
                "--format",
                "json",
                "--no-metrics",
                "--sample-interval",
                interval,
            ])
            .args(["--kubepods-root", &tree.path, "--state-dir"])
            .arg(root.join("target/bench-state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(3));
        let (_, _, t0) = proc_stat(agent.id());
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(30));
        let (rss, _, t1) = proc_stat(agent.id());
        let cpu = (t1 - t0) as f64 / 100.0 / start.elapsed().as_secs_f64() * 100.0;
        let _ = agent.kill();
        let _ = agent.wait();
        results.push((interval, cpu, rss));
    }
    drop(pods);
    println!("\nsampling a node with 100 pod cgroups (30 s each):");
    for (interval, cpu, rss) in results {
        println!(
            "  --sample-interval {interval:>2}s: agent CPU {cpu:.2}% of a core, RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

pub fn run(sequential: usize, burst: usize) -> Result<()> {
    crate::build()?;
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "oomprobe"]))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark makes real OOM kills and loads eBPF: run it as root");
    }
    crate::setup::apt_install(&["bpftrace"])?;

    let seen: Seen = Arc::default();
    let oomprobe = start_oomprobe(seen.clone())?;
    let agent_pid = oomprobe.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let mut tools = vec![
        Tool {
            name: "oomprobe",
            reader: Reader { child: None, seen },
        },
        Tool {
            name: "(record)",
            reader: oomprobe,
        },
    ];
    match start_bpftrace() {
        Ok(r) => tools.push(Tool {
            name: "bpftrace",
            reader: r,
        }),
        Err(e) => eprintln!("bench: bpftrace baseline unavailable: {e:#}"),
    }
    tools.push(Tool {
        name: "kmsg",
        reader: start_kmsg()?,
    });

    let (_, _, t0) = proc_stat(agent_pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (idle_rss, _, t1) = proc_stat(agent_pid);
    let hz = 100.0;
    let idle_cpu = (t1 - t0) as f64 / hz / start.elapsed().as_secs_f64() * 100.0;

    let mut seq_pids = Vec::new();
    let mut seq_kernel = 0;
    for i in 0..sequential {
        let (p, k) = run_kills(1, 1, &format!("s{i}-"))?;
        seq_pids.extend(p);
        seq_kernel += k;
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    report(&tools, &seq_pids, seq_kernel, "one at a time");

    let (_, _, b0) = proc_stat(agent_pid);
    let bstart = Instant::now();
    let (burst_pids, burst_kernel) = run_kills(burst, 5, "b")?;
    std::thread::sleep(Duration::from_secs(1));
    let (_, hwm, b1) = proc_stat(agent_pid);
    let burst_cpu = (b1 - b0) as f64 / hz / bstart.elapsed().as_secs_f64() * 100.0;
    report(
        &tools,
        &burst_pids,
        burst_kernel,
        &format!("burst of {burst}"),
    );

    println!(
        "\noomprobe agent: RSS idle {:.1} MiB, peak {:.1} MiB; CPU idle {idle_cpu:.2}% of a core, during the burst {burst_cpu:.1}%",
        idle_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "oomprobe: SIGKILL to the kill in the agent's userspace (seen_after_ns); (record): to the complete \
         JSON line on stdout, which waits for the victim's death (exit_after_ns)"
    );
    Ok(())
}

/// The leak detectors on the generated corpus (`oomprobe bench-detect`), on two independent
/// corpora: the default seed and one whose traces share none with it.
pub fn run_detect() -> Result<()> {
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "oomprobe"]))?;
    let bin = workspace_root().join("target/release/oomprobe");
    for seed in ["1", "100000"] {
        println!("\nleak detection, corpus seed {seed}:");
        crate::run(Command::new(&bin).args(["bench-detect", "--scale", "40", "--seed", seed]))?;
    }
    Ok(())
}
