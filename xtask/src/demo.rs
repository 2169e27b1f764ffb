//! `cargo xtask demo`: a stand-in kubelet leaks inside a memory cgroup the demo creates, the
//! agent watches, the kernel OOM-kills the stand-in, the agent reports it; then everything the
//! demo created is removed.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use standin::ScratchCgroup;

use crate::workspace_root;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn say(s: &str) {
    println!("\x1b[1m{s}\x1b[0m");
}

pub fn run(limit_mib: u64, leak_mib_per_sec: u64) -> Result<()> {
    crate::build()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and creates a memory cgroup: run it as root");
    }
    let bin = workspace_root().join("target/debug");
    let name = format!("oomprobe-demo-{}", std::process::id());
    let cg = ScratchCgroup::create(&name, Some(limit_mib << 20))
        .context("cannot create the demo's memory cgroup")?;
    say(&format!(
        "1. created memory cgroup {} (cgroup v{}) with a {limit_mib} MiB limit",
        cg.path, cg.version
    ));

    let metrics_addr = "127.0.0.1:19464";
    let mut agent = KillOnDrop(
        Command::new(bin.join("oomprobe"))
            .args(["run", "--duration", "120", "--state-dir"])
            .arg(workspace_root().join("target/demo-state"))
            .args(["--metrics-addr", metrics_addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start oomprobe")?,
    );
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = agent.0.stderr.take().context("agent stderr")?;
    let ready_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("   [oomprobe] {line}");
            if line.contains("oomprobe ready") {
                let _ = ready_tx.send("READY".into());
            }
        }
    });
    let stdout = agent.0.stdout.take().context("agent stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if l == "READY" => {}
        _ => bail!("oomprobe did not become ready (see its log above)"),
    }
    say(&format!(
        "2. oomprobe run (pid {}) is watching every SIGKILL and OOM kill on this machine",
        agent.0.id()
    ));

    let mut kubelet = KillOnDrop(
        cg.command(
            &bin.join("kubelet"),
            &["--leak-mib-per-sec", &leak_mib_per_sec.to_string()],
        )
        .stdout(Stdio::inherit())
        .spawn()
        .context("cannot start the stand-in kubelet")?,
    );
    say(&format!(
        "3. stand-in kubelet (pid {}) leaks {leak_mib_per_sec} MiB/s inside {}; the kernel will OOM-kill it at the limit",
        kubelet.0.id(),
        cg.path
    ));

    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(" KILL ") => break line,
            Ok(_) => continue,
            Err(_) => bail!("no kill record within 60 s"),
        }
    };
    say("4. the kernel OOM-killed the stand-in; oomprobe's record:");
    println!("\n{record}\n");
    let _ = kubelet.0.wait();
    if let Ok(body) = scrape(metrics_addr) {
        say("5. and in its Prometheus metrics:");
        for l in body
            .lines()
            .filter(|l| l.starts_with("oomprobe_kills_total"))
        {
            println!("   {l}");
        }
    }
    // SAFETY: plain syscall on the agent this demo started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait()?;
    drop(cg);
    say(&format!(
        "done: agent exited ({status}); the demo's cgroup and processes are removed."
    ));
    println!(
        "   Try it yourself: `sudo target/debug/oomprobe run --format json` in one shell, `kill -9` something in another."
    );
    Ok(())
}

fn scrape(addr: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}
