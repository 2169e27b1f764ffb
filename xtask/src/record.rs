//! `cargo xtask lab record`: the real kubelet of the lab recorded through the agent's own store
//! (`series.bin`, the file `oomprobe run --state-dir` writes), at the agent's default sample
//! interval, while the lab does what nodes do: idle, pod churn (a Deployment scaled up and down,
//! one-off pods created and deleted every minute), a `kill -9` of the kubelet, a graceful stop
//! (SIGTERM, as `systemctl restart kubelet`), steady pods, idle again (`--no-restarts`: the
//! same without the two restarts). With `--second-kubelet`
//! the kubelet binary is then replaced by another build at the same path (an upgrade: SIGTERM,
//! the supervisor starts the new binary) and recorded with the same pods for `--second-minutes`.
//!
//! Output under `--out` (default `target/lab-record`): `series.bin.gz` (the store, gzip),
//! `timeline.jsonl` (every action with its unix time and the kubelet's pid), `agent.jsonl` (the
//! agent's records) and `meta.json` (versions, settings). The lab is brought up for the
//! recording and down after it, also on failure; a swapped kubelet binary is put back by
//! `lab down` (see [`crate::lab::restore_kubelet`]).
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::{
    lab::{self, kubectl, Lab},
    workspace_root,
};

/// What `cargo xtask lab record` was asked for.
#[derive(Clone, clap::Args)]
pub struct Record {
    /// Minutes with the lab's own kubelet.
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// Pods (pause containers) of the steady phases and the churn's upper level.
    #[arg(long, default_value_t = 30)]
    pub pods: u32,
    /// The kubelet's syncFrequency in seconds for the whole recording (default: the kubelet's
    /// own, 1 min).
    #[arg(long)]
    pub sync_frequency: Option<u64>,
    /// Another kubelet build put at the same path after the first part (an upgrade); `leak`:
    /// the lab's second kubelet build, v1.36.1 (`LEAK_KUBELET` in xtask/src/lab.rs), a release
    /// with kubernetes#139823's leak.
    #[arg(long)]
    pub second_kubelet: Option<PathBuf>,
    /// No kubelet restarts in the churn (no `kill -9`, no graceful stop): a healthy node's
    /// hours, where a kubelet restarts every few days at most.
    #[arg(long)]
    pub no_restarts: bool,
    /// Minutes with the second kubelet.
    #[arg(long, default_value_t = 30)]
    pub second_minutes: u64,
    /// The kubelet's syncFrequency (seconds) from the second part on: first `control_minutes`
    /// with the lab's own kubelet (the control), then the second kubelet with the same settings.
    #[arg(long)]
    pub second_sync_frequency: Option<u64>,
    /// Minutes of the control: the lab's kubelet with the second part's settings and pods.
    #[arg(long, default_value_t = 10)]
    pub control_minutes: u64,
    /// Pods during the control and the second kubelet.
    #[arg(long, default_value_t = 30)]
    pub second_pods: u32,
    /// Output directory (series.bin.gz, timeline.jsonl, agent.jsonl, meta.json), relative to
    /// the workspace.
    #[arg(long, default_value = "target/lab-record")]
    pub out: PathBuf,
}

const NS: &str = "default";
const DEPLOYMENT: &str = "rec-churn";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn kubelet_pid(lab: &Lab) -> Option<u32> {
    fs::read_to_string(lab.run.join("pids/kubelet.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Timeline {
    file: fs::File,
    lab: Lab,
}

impl Timeline {
    fn log(&mut self, action: &str, detail: serde_json::Value) -> Result<()> {
        let line = json!({
            "t": unix_now(),
            "action": action,
            "kubelet_pid": kubelet_pid(&self.lab),
            "detail": detail,
        });
        eprintln!("record: {line}");
        writeln!(self.file, "{line}")?;
        Ok(())
    }
}

/// A pod spec running the lab's pause image on the host network (the lab has no pod network).
fn pod_spec() -> serde_json::Value {
    json!({
        "hostNetwork": true,
        "terminationGracePeriodSeconds": 2,
        "containers": [{
            "name": "pause",
            "image": lab::PAUSE_IMAGE,
            "imagePullPolicy": "Never",
            "resources": {"limits": {"memory": "16Mi"}, "requests": {"memory": "4Mi", "cpu": "1m"}},
        }],
    })
}

fn apply(value: &serde_json::Value, scratch: &Path) -> Result<()> {
    let path = scratch.join("apply.json");
    fs::write(&path, serde_json::to_vec(value)?)?;
    kubectl(&["apply", "-f", &path.display().to_string()])?;
    Ok(())
}

fn scale(n: u32) -> Result<()> {
    kubectl(&[
        "scale",
        "-n",
        NS,
        &format!("deployment/{DEPLOYMENT}"),
        &format!("--replicas={n}"),
    ])?;
    Ok(())
}

fn node_ready() -> bool {
    kubectl(&[
        "get",
        "node",
        lab::NODE,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
    .is_ok_and(|s| s.trim() == "True")
}

/// Signals the kubelet and waits for the supervisor's next one to be running.
fn restart_kubelet(lab: &Lab, signal: i32) -> Result<u32> {
    let old = kubelet_pid(lab).context("no kubelet pid (is the lab up?)")?;
    // SAFETY: a signal to the lab's kubelet, whose pid the supervisor recorded.
    if unsafe { libc::kill(old as i32, signal) } != 0 {
        bail!(
            "cannot signal the kubelet {old}: {}",
            std::io::Error::last_os_error()
        );
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Some(new) = kubelet_pid(lab).filter(|p| *p != old) {
            return Ok(new);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the supervisor did not start a new kubelet within 60 s")
}

/// Sets `syncFrequency` in the kubelet's configuration (read at its next start).
fn set_sync_frequency(lab: &Lab, seconds: u64) -> Result<()> {
    let path = lab.run.join("kubelet/config.yaml");
    let text = fs::read_to_string(&path)?;
    let mut kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("syncFrequency:"))
        .collect();
    let line = format!("syncFrequency: {seconds}s");
    kept.push(&line);
    fs::write(&path, kept.join("\n") + "\n")?;
    Ok(())
}

struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the agent this command started (it flushes and exits).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo xtask lab record`: see the module's documentation.
pub fn record(args: &Record) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lab record runs the lab and the agent (eBPF): run as root");
    }
    let mut args = args.clone();
    args.out = workspace_root().join(&args.out);
    if let Some(p) = &args.second_kubelet {
        if p.as_os_str() == "leak" {
            args.second_kubelet = Some(lab::LEAK_KUBELET.ensure()?);
        } else if !p.is_file() {
            bail!("--second-kubelet {}: not a file", p.display());
        }
    }
    let args = &args;
    crate::build()?;
    lab::up()?;
    let result = record_inner(args);
    let down = lab::down();
    result.and(down)
}

fn record_inner(args: &Record) -> Result<()> {
    let lab = Lab::new();
    let out = &args.out;
    let _ = fs::remove_dir_all(out);
    let state = out.join("state");
    fs::create_dir_all(&state)?;
    let scratch = lab.run.join("record");
    fs::create_dir_all(&scratch)?;
    let mut tl = Timeline {
        file: fs::File::create(out.join("timeline.jsonl"))?,
        lab: Lab::new(),
    };
    let env: serde_json::Value =
        serde_json::from_slice(&fs::read(lab.run.join("env.json"))?).context("env.json")?;
    let s = |k: &str| env[k].as_str().unwrap_or_default().to_string();

    // The agent's identity as deploy/ ships it; the token lives under the lab's run directory.
    let rbac = workspace_root().join("deploy/base/rbac.yaml");
    kubectl(&[
        "apply",
        "-n",
        "kube-system",
        "-f",
        &rbac.display().to_string(),
    ])?;
    let token = kubectl(&[
        "create",
        "token",
        "oomprobe",
        "-n",
        "kube-system",
        "--duration=12h",
    ])?;
    let token_file = scratch.join("agent-token");
    fs::write(&token_file, token.trim())?;

    if let Some(sf) = args.sync_frequency {
        set_sync_frequency(&lab, sf)?;
        restart_kubelet(&lab, libc::SIGTERM)?;
        wait_ready()?;
        tl.log("sync_frequency", json!({"seconds": sf}))?;
    }

    let agent_bin = workspace_root().join("target/debug/oomprobe");
    let agent_out = fs::File::create(out.join("agent.jsonl"))?;
    let agent_err = fs::File::create(out.join("agent.log"))?;
    let mut agent = AgentProc(
        Command::new(&agent_bin)
            .arg("run")
            .args(["--format", "json", "--no-metrics", "--state-dir"])
            .arg(&state)
            .args(["--kubepods-root", &s("kubepods_root")])
            .args(["--node-name", &s("node"), "--kube-api", &s("api")])
            .arg("--kube-token-file")
            .arg(&token_file)
            .args(["--kube-ca-file", &s("ca")])
            .arg("--kubelet-metrics")
            .arg(format!(
                "https://127.0.0.1:{}/metrics",
                env["kubelet_port"].as_u64().unwrap_or(0)
            ))
            .arg("--kubelet-metrics-token-file")
            .arg(&token_file)
            .args(["--kubelet-metrics-ca-file", &s("ca")])
            .stdin(Stdio::null())
            .stdout(agent_out)
            .stderr(agent_err)
            .spawn()
            .with_context(|| format!("cannot start {}", agent_bin.display()))?,
    );
    tl.log("agent_start", json!({"pid": agent.0.id()}))?;

    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "template": {"metadata": {"labels": {"app": DEPLOYMENT}}, "spec": pod_spec()},
        },
    });
    apply(&deployment, &scratch)?;

    let minute = Duration::from_secs(60);
    let total = Duration::from_secs(args.minutes.saturating_mul(60));
    let start = Instant::now();
    let frac = |f: f64| total.mul_f64(f);
    let mut phase = "";
    let mut last_once: Option<String> = None;
    let mut next_once = start;
    let mut next_toggle = start;
    let mut up = false;
    let mut killed = false;
    let mut stopped = false;
    let mut once_n = 0u32;
    while start.elapsed() < total {
        let now = start.elapsed();
        let p = if now < frac(0.1) {
            "idle"
        } else if now < frac(0.5) {
            "churn"
        } else if now < frac(0.8) {
            "steady"
        } else {
            "idle_end"
        };
        if p != phase {
            phase = p;
            tl.log("phase", json!({"phase": phase}))?;
            match phase {
                "steady" => scale(args.pods)?,
                "idle_end" => scale(0)?,
                _ => {}
            }
        }
        if phase == "churn" {
            if Instant::now() >= next_toggle {
                up = !up;
                let n = if up { args.pods } else { args.pods / 3 };
                scale(n)?;
                tl.log("scale", json!({"replicas": n}))?;
                next_toggle = Instant::now() + 3 * minute;
            }
            if Instant::now() >= next_once {
                if let Some(name) = last_once.take() {
                    kubectl(&["delete", "pod", "-n", NS, &name, "--wait=false"])?;
                }
                once_n += 1;
                let name = format!("rec-once-{once_n}");
                apply(
                    &json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": NS}, "spec": pod_spec()}),
                    &scratch,
                )?;
                tl.log("pod_created", json!({"name": name}))?;
                last_once = Some(name);
                next_once = Instant::now() + minute;
            }
            if !killed && !args.no_restarts && now >= frac(0.35) {
                killed = true;
                let new = restart_kubelet(&lab, libc::SIGKILL)?;
                tl.log("kubelet_kill_9", json!({"new_pid": new}))?;
            }
        } else if let Some(name) = last_once.take() {
            kubectl(&["delete", "pod", "-n", NS, &name, "--wait=false"])?;
        }
        if !stopped && !args.no_restarts && now >= frac(0.5) {
            stopped = true;
            let new = restart_kubelet(&lab, libc::SIGTERM)?;
            tl.log("kubelet_graceful_stop", json!({"new_pid": new}))?;
        }
        check_agent(&mut agent, out)?;
        std::thread::sleep(Duration::from_secs(1));
    }

    if let Some(second) = &args.second_kubelet {
        if let Some(sf) = args.second_sync_frequency {
            set_sync_frequency(&lab, sf)?;
            let new = restart_kubelet(&lab, libc::SIGTERM)?;
            tl.log("sync_frequency", json!({"seconds": sf, "new_pid": new}))?;
            wait_ready()?;
        }
        scale(args.second_pods)?;
        tl.log(
            "phase",
            json!({"phase": "control", "replicas": args.second_pods}),
        )?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(args.control_minutes.saturating_mul(60)) {
            check_agent(&mut agent, out)?;
            std::thread::sleep(Duration::from_secs(1));
        }
        let bin = lab.k8s_bin("kubelet");
        lab::swap_kubelet(&lab, second)?;
        let new = restart_kubelet(&lab, libc::SIGTERM)?;
        tl.log(
            "kubelet_replaced",
            json!({"path": bin, "from": second, "new_pid": new}),
        )?;
        wait_ready()?;
        tl.log("phase", json!({"phase": "second"}))?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(args.second_minutes.saturating_mul(60)) {
            check_agent(&mut agent, out)?;
            std::thread::sleep(Duration::from_secs(1));
        }
        tl.log("end_second", json!({}))?;
    }
    scale(0)?;
    drop(agent);
    tl.log("agent_stop", json!({}))?;

    let series = state.join("series.bin");
    let raw = fs::read(&series).with_context(|| format!("{}", series.display()))?;
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(out.join("series.bin.gz"))?,
        flate2::Compression::best(),
    );
    gz.write_all(&raw)?;
    gz.finish()?;
    fs::write(
        out.join("meta.json"),
        serde_json::to_vec_pretty(&json!({
            "k8s_version": lab::K8S_VERSION,
            "second_kubelet": args.second_kubelet,
            "minutes": args.minutes,
            "restarts": !args.no_restarts,
            "second_minutes": args.second_minutes,
            "second_sync_frequency_seconds": args.second_sync_frequency,
            "control_minutes": args.control_minutes,
            "second_pods": args.second_pods,
            "pods": args.pods,
            "sync_frequency_seconds": args.sync_frequency,
            "sample_interval_seconds": 10,
            "series_bytes": raw.len(),
        }))?,
    )?;
    eprintln!(
        "record: {} bytes of series in {}",
        raw.len(),
        out.join("series.bin.gz").display()
    );
    Ok(())
}

fn wait_ready() -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if node_ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("the node is not Ready within 120 s")
}

fn check_agent(agent: &mut AgentProc, out: &Path) -> Result<()> {
    if let Some(status) = agent.0.try_wait()? {
        let log = fs::read_to_string(out.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        bail!(
            "the agent exited ({status}) during the recording:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}
