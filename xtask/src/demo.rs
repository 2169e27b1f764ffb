//! `cargo xtask demo`: the field guide's OOM flap cycle, told by the agent on this machine.
//!
//! The Go stand-in kubelet (target/standin/go/kubelet, named `kubelet`, leaking through one call
//! site, `main.leakPodCache`) runs in a memory cgroup the demo creates; the demo is its restart
//! supervisor, as systemd is a kubelet's (`Restart=always`, `RestartSec=1`). `oomprobe run
//! --format json` watches. Each line of the story is either the demo saying what it did
//! (`demo`) or one of the agent's own JSON records, rendered (`agent`): nothing the agent did not
//! report is printed as its result. The records are saved to `<out>/events.jsonl`, the agent's
//! series to `<out>/state`, and `oomprobe report` draws the picture from both at the end.
//!
//! Everything the demo creates (the cgroup, the agent, the stand-ins) is removed on success, on
//! error and on Ctrl-C (SIGINT/SIGTERM are caught; the children run in their own process
//! groups so the terminal's signal reaches the demo only, which then tears down in order).
use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use standin::ScratchCgroup;

use crate::workspace_root;

/// The demo's settings (`cargo xtask demo --help`).
pub struct Demo {
    /// memory.max of the stand-in's cgroup, MiB.
    pub limit_mib: u64,
    /// The first stand-in's leak rate, MiB/s; the restarted one leaks four times as fast (the
    /// reconciliation storm on top of the leak).
    pub leak_mib_per_sec: u64,
    /// Skip `cargo xtask build` (the privileged test runs the built xtask binary).
    pub no_build: bool,
    /// Where the event log, the agent's state and the picture go (default target/demo).
    pub out: Option<PathBuf>,
}

/// Seconds the supervisor waits before a restart (systemd's RestartSec).
const RESTART_SEC: u64 = 1;
/// The longest any one step of the story may take.
const STEP: Duration = Duration::from_secs(60);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A child killed (its whole process group) and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The story so far: the agent's records as they arrive, and what has been told.
struct Story {
    rx: mpsc::Receiver<Value>,
    records: Vec<Value>,
    start: Instant,
    /// Kubelet pids whose allocator attribution was told.
    attributed: Vec<u64>,
    /// Stage events told (by index in `records`).
    told: usize,
    /// Lines told, for the caller's summary.
    lines: usize,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

impl Story {
    fn say(&mut self, who: &str, what: &str, line: &str) {
        let t = self.start.elapsed().as_secs_f64();
        println!("{:>7}  {who:<5}  {what:<20} {line}", format!("{t:.1}s"));
        let _ = std::io::stdout().flush();
        self.lines += 1;
    }

    fn demo(&mut self, what: &str, line: &str) {
        self.say("demo", what, line);
    }

    /// Renders one agent record as a line of the story (or nothing, for records that are not
    /// a step: samples, memcg counters, attribution after the first telling per pid).
    fn tell(&mut self, v: &Value) {
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        match v["event"].as_str().unwrap_or("") {
            "kubelet_start" => {
                let line = match v["previous_pid"].as_u64() {
                    Some(prev) => format!(
                        "kubelet pid {} started (restart {}): the previous one, pid {prev}, ended by {}",
                        u("pid"),
                        u("restarts"),
                        v["previous_end"].as_str().unwrap_or("?")
                    ),
                    None => format!(
                        "kubelet pid {} ({}) followed: allocator uprobes attached",
                        u("pid"),
                        s("exe")
                    ),
                };
                self.say("agent", "kubelet", &line);
            }
            "kubelet_memory" => {
                let pid = u("pid");
                let top = &v["top_call_sites"][0];
                let function = top["function"].as_str().unwrap_or("");
                // Told once per kubelet: the first report whose top call site is the kubelet's
                // own code (the runtime's start-up mappings lead until the leak passes them).
                if self.attributed.contains(&pid)
                    || function.is_empty()
                    || function.starts_with("runtime.")
                    || function == "unknown"
                {
                    return;
                }
                let bytes = top["bytes"].as_u64().unwrap_or(0);
                self.attributed.push(pid);
                let line = format!(
                    "pid {pid}: top call site {function} = {:.1} MiB in {} calls, of {:.1} MiB its allocator mapped ({})",
                    mib(bytes),
                    top["calls"].as_u64().unwrap_or(0),
                    mib(u("mapped_bytes")),
                    s("mode")
                );
                self.say("agent", "attribution", &line);
            }
            "kill" => {
                let victim = &v["victim"];
                let oom = &v["oom"];
                let line = format!(
                    "{} victim {}({}) in {}: domain {} limit {:.0} MiB, sender {}, died {:.1} ms after the SIGKILL",
                    s("kind"),
                    victim["pid"].as_u64().unwrap_or(0),
                    victim["comm"].as_str().unwrap_or("?"),
                    victim["cgroup"].as_str().unwrap_or("?"),
                    oom["domain"]["path"].as_str().unwrap_or("-"),
                    mib(oom["domain"]["limit_bytes"].as_u64().unwrap_or(0)),
                    v["sender"]["code"].as_str().unwrap_or("?"),
                    u("exit_after_ns") as f64 / 1e6
                );
                self.say("agent", "kill", &line);
            }
            "stage" => {
                let stage = s("stage");
                let detail = s("detail");
                let line = match stage.as_str() {
                    "pre_oom" => match v["seconds_left"].as_f64() {
                        Some(left) => format!(
                            "{left:.1} s left before the limit ({}): {detail}",
                            s("ending")
                        ),
                        None => format!("{} (no time left computed): {detail}", s("ending")),
                    },
                    "reconciliation_storm" => {
                        let storm = &v["storm"];
                        format!(
                            "pid {} starts at {:.1} MiB RSS: {detail}",
                            storm["pid"].as_u64().unwrap_or(0),
                            mib(storm["start_rss_bytes"].as_u64().unwrap_or(0))
                        )
                    }
                    "re_oom" | "active_oom" => format!(
                        "cycle {}{}, flapping={}: {detail}",
                        u("cycles"),
                        v["period_seconds"]
                            .as_f64()
                            .map(|p| format!(", {p:.1} s after the previous kubelet OOM kill"))
                            .unwrap_or_default(),
                        v["flapping"]
                    ),
                    "recovery" => {
                        let storm = &v["storm"];
                        format!(
                            "{detail} (storm peak {:.1} MiB RSS, {:.2} CPU s)",
                            mib(storm["peak_rss_bytes"].as_u64().unwrap_or(0)),
                            storm["cpu_seconds"].as_f64().unwrap_or(0.0)
                        )
                    }
                    _ => detail,
                };
                self.say("agent", &stage, &line);
                if v["flapping"] == true && stage == "re_oom" {
                    let recs: Vec<&str> = v["recommendations"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    self.say("agent", "recommend", &recs.join("; "));
                }
            }
            "verdict" => {
                let line = format!(
                    "leak verdict: subject {} cause {} slope {:.0} MB/day",
                    s("subject"),
                    s("cause"),
                    v["slope_bytes_per_day"].as_f64().unwrap_or(0.0) / 1e6
                );
                self.say("agent", "verdict", &line);
            }
            "action" => {
                let line = format!(
                    "{} on {}: dry_run={} ok={} {}",
                    s("action"),
                    s("node"),
                    v["dry_run"],
                    v["ok"],
                    s("detail")
                );
                self.say("agent", "action", &line);
            }
            _ => {}
        }
    }

    /// Reads records (telling each) until `pred` accepts one, the agent's stream ends, `within`
    /// passes or the demo is interrupted. Records already read are searched first.
    fn until(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(v) = self.records[self.told..].iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + within;
        loop {
            if STOP.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {what} from the agent within {} s", within.as_secs());
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(v) => {
                    self.tell(&v);
                    let hit = pred(&v);
                    self.records.push(v.clone());
                    if hit {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the agent's stream ended before its {what}")
                }
            }
        }
    }

    /// Tells whatever arrives for `d` (the supervisor's RestartSec).
    fn pause(&mut self, d: Duration) -> Result<()> {
        match self.until("", d, |_| false) {
            Err(e) if e.to_string().starts_with("no ") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Marks every record so far as searched: the next `until` looks at new records only.
    fn mark(&mut self) {
        self.told = self.records.len();
    }
}

fn kubelet_killed(v: &Value, pid: u32) -> bool {
    v["event"] == "kill" && v["victim"]["pid"].as_u64() == Some(u64::from(pid))
}

fn is_stage(v: &Value, stage: &str) -> bool {
    v["event"] == "stage" && v["stage"] == stage
}

/// The Go stand-in's arguments for a leak of `mib_per_sec` through 256 KiB steps.
fn leak_args(mib_per_sec: u64) -> Vec<String> {
    let interval_ms = (250 / mib_per_sec.max(1)).max(1);
    vec![
        "-chunk-kib".into(),
        "256".into(),
        "-interval-ms".into(),
        interval_ms.to_string(),
    ]
}

pub fn run(d: Demo) -> Result<()> {
    let wall = Instant::now();
    if !d.no_build {
        crate::build()?;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and creates a memory cgroup: run it as root");
    }
    if d.limit_mib < 32 || d.leak_mib_per_sec == 0 {
        bail!("--limit-mib must be at least 32 and --leak-mib-per-sec at least 1");
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let root = workspace_root();
    let out = d.out.clone().unwrap_or_else(|| root.join("target/demo"));
    let state = out.join("state");
    // A fresh story each run: the picture is of this run only.
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let result = story(&d, &root, &out, &state);
    if let Err(e) = &result {
        eprintln!(
            "demo: {e:#}; the agent's log is {}",
            out.join("agent.log").display()
        );
    }
    println!(
        "demo: wall time {:.1} s; its cgroup and processes are removed",
        wall.elapsed().as_secs_f64()
    );
    result
}

fn story(d: &Demo, root: &Path, out: &Path, state: &Path) -> Result<()> {
    let bin = root.join("target/debug");
    let kubelet = root.join("target/standin/go/kubelet");
    if !kubelet.exists() {
        bail!("{} not built: run `cargo xtask build`", kubelet.display());
    }
    let name = format!("oomprobe-demo-{}", std::process::id());
    let cg = ScratchCgroup::create(&name, Some(d.limit_mib << 20))
        .context("cannot create the demo's memory cgroup")?;

    let events = out.join("events.jsonl");
    let agent_log = out.join("agent.log");
    let mut agent = Reaped(
        Command::new(bin.join("oomprobe"))
            .args(["run", "--format", "json", "--no-metrics"])
            .args(["--sample-interval", "1", "--attribution-interval", "1"])
            .args(["--storm-settle", "2", "--duration", "300"])
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "info")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start target/debug/oomprobe")?,
    );
    let (tx, rx) = mpsc::channel::<Value>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let stderr = agent.0.stderr.take().context("agent stderr")?;
    let mut log = File::create(&agent_log)?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if line.contains("oomprobe ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    let stdout = agent.0.stdout.take().context("agent stdout")?;
    let mut ev_log = File::create(&events)?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(ev_log, "{line}");
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    let _ = tx.send(v);
                }
                Err(e) => eprintln!("demo: the agent wrote a non-JSON line ({e}): {line}"),
            }
        }
    });
    let mut story = Story {
        rx,
        records: Vec::new(),
        start: Instant::now(),
        attributed: Vec::new(),
        told: 0,
        lines: 0,
    };
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        match ready_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < ready_by => {}
            _ => bail!("oomprobe did not become ready within 30 s"),
        }
    }
    story.demo(
        "setup",
        &format!(
            "memory cgroup {} (cgroup v{}) limited to {} MiB; oomprobe run (pid {}) has its probes loaded",
            cg.path,
            cg.version,
            d.limit_mib,
            agent.0.id()
        ),
    );

    // Cycle 1: the leak, foreseen, attributed and killed.
    let k1 = start_kubelet(&cg, &kubelet, &leak_args(d.leak_mib_per_sec))?;
    let p1 = k1.0.id();
    story.demo(
        "supervisor",
        &format!(
            "started the stand-in kubelet pid {p1}, leaking {} MiB/s through main.leakPodCache",
            d.leak_mib_per_sec
        ),
    );
    let mut k1 = k1;
    story.until("kill of the first kubelet", STEP, |v| kubelet_killed(v, p1))?;
    story.until("active_oom stage", Duration::from_secs(10), |v| {
        is_stage(v, "active_oom")
    })?;
    let status = k1.0.wait()?;
    if status.signal() != Some(libc::SIGKILL) {
        bail!("the first stand-in ended with {status}, not SIGKILL");
    }
    story.mark();

    // The supervisor restarts it; the new kubelet leaks faster: storm and re-OOM.
    story.pause(Duration::from_secs(RESTART_SEC))?;
    let mut k2 = start_kubelet(&cg, &kubelet, &leak_args(4 * d.leak_mib_per_sec))?;
    let p2 = k2.0.id();
    story.demo(
        "supervisor",
        &format!(
            "pid {p1} died of SIGKILL: restarted after {RESTART_SEC} s (as systemd Restart=always), new pid {p2}"
        ),
    );
    story.until("kill of the restarted kubelet", STEP, |v| {
        kubelet_killed(v, p2)
    })?;
    story.until("re_oom stage", Duration::from_secs(10), |v| {
        is_stage(v, "re_oom")
    })?;
    let _ = k2.0.wait();
    story.demo(
        "cordon",
        "not configured: this agent runs without --act cordon (opt-in, needs an API server; none on this machine), so nothing is cordoned",
    );
    story.mark();

    // A third start that holds: the storm settles, the cycle ends in recovery.
    story.pause(Duration::from_secs(RESTART_SEC))?;
    let k3 = start_kubelet(&cg, &kubelet, &["-total-mib", "4", "-interval-ms", "5"])?;
    story.demo(
        "supervisor",
        &format!(
            "pid {p2} died of SIGKILL: restarted after {RESTART_SEC} s, new pid {}, which takes 4 MiB and holds",
            k3.0.id()
        ),
    );
    story.until("recovery stage", Duration::from_secs(30), |v| {
        is_stage(v, "recovery")
    })?;
    drop(k3);

    // The agent stops (its series flushed), then the picture.
    // SAFETY: a plain syscall on the agent this demo started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let _ = agent.0.wait();
    drop(agent);
    drop(cg);
    let html = out.join("oomprobe-demo.html");
    let svg = out.join("oomprobe-demo.svg");
    let report = Command::new(bin.join("oomprobe"))
        .arg("report")
        .arg("--state-dir")
        .arg(state)
        .arg("--events")
        .arg(&events)
        .arg("--html")
        .arg(&html)
        .arg("--svg")
        .arg(&svg)
        .output()
        .context("cannot run oomprobe report")?;
    if !report.status.success() {
        bail!(
            "oomprobe report failed: {}",
            String::from_utf8_lossy(&report.stderr)
        );
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    story.demo(
        "picture",
        &format!(
            "oomprobe report --html {} ({} bytes) --svg {} ({} bytes), from {} records",
            html.display(),
            size(&html),
            svg.display(),
            size(&svg),
            story.records.len()
        ),
    );
    Ok(())
}

fn start_kubelet<S: AsRef<std::ffi::OsStr>>(
    cg: &ScratchCgroup,
    kubelet: &Path,
    args: &[S],
) -> Result<Reaped> {
    let args: Vec<&str> = args.iter().filter_map(|a| a.as_ref().to_str()).collect();
    Ok(Reaped(
        cg.command(kubelet, &args)
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the stand-in kubelet")?,
    ))
}
