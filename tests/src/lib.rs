//! Harness for the privileged tests: the real agent binary, started and stopped per test, its
//! JSON stream collected, and waits with deadlines (never fixed sleeps).
pub mod containerd;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
pub use standin::{vmstat_oom_kills, ScratchCgroup};

/// Fails loudly when not root: these tests exist to load eBPF and make real OOM kills.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged test run as uid {euid}: it loads eBPF programs (CAP_BPF, CAP_PERFMON) and \
         creates memory cgroups; run `cargo xtask test` as root"
    );
}

/// Where the agent and stand-in binaries are (`cargo xtask test` sets OOMPROBE_BIN_DIR).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("OOMPROBE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test` (it builds the workspace first)",
        p.display()
    );
    p
}

/// A cgroup name unique to this test process.
pub fn cgroup_name(tag: &str) -> String {
    format!("oomprobe-test-{}-{tag}", std::process::id())
}

#[derive(Default)]
struct Shared {
    lines: Vec<Value>,
    stderr: Vec<String>,
    ready: bool,
    exited: bool,
}

/// A running `oomprobe run --format json`.
pub struct Agent {
    child: Child,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    pub metrics_addr: Option<String>,
    pub state_dir: PathBuf,
    owns_state: bool,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(&["--no-metrics"], None)
    }

    /// With metrics on a loopback port and extra arguments.
    pub fn start_with_metrics_args(port: u16, args: &[&str]) -> Agent {
        let addr = format!("127.0.0.1:{port}");
        let mut all = vec!["--metrics-addr", addr.as_str()];
        all.extend_from_slice(args);
        Self::start_with(&all, Some(addr.clone()))
    }

    /// With extra `oomprobe run` arguments (metrics off).
    pub fn start_args(args: &[&str]) -> Agent {
        let mut all = vec!["--no-metrics"];
        all.extend_from_slice(args);
        Self::start_with(&all, None)
    }

    /// With metrics on a loopback port.
    pub fn start_with_metrics(port: u16) -> Agent {
        let addr = format!("127.0.0.1:{port}");
        Self::start_with(&["--metrics-addr", &addr], Some(addr.clone()))
    }

    fn start_with(extra: &[&str], metrics_addr: Option<String>) -> Agent {
        require_root();
        let state_dir = scratch_dir("state");
        let mut agent = Self::start_in(extra, metrics_addr, state_dir);
        agent.owns_state = true;
        agent
    }

    /// With a given state directory (persistence tests), which the caller removes.
    pub fn start_in(extra: &[&str], metrics_addr: Option<String>, state_dir: PathBuf) -> Agent {
        Self::start_via(&[], extra, metrics_addr, state_dir)
    }

    /// Run through `wrapper` (e.g. `setpriv ... --`), metrics off.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Agent {
        require_root();
        let mut all = vec!["--no-metrics"];
        all.extend_from_slice(args);
        let mut agent = Self::start_via(wrapper, &all, None, scratch_dir("state"));
        agent.owns_state = true;
        agent
    }

    fn start_via(
        wrapper: &[&str],
        extra: &[&str],
        metrics_addr: Option<String>,
        state_dir: PathBuf,
    ) -> Agent {
        require_root();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin("oomprobe"));
                c
            }
            None => Command::new(bin("oomprobe")),
        };
        let mut child = cmd
            .args(["run", "--format", "json"])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start oomprobe");
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let out = child.stdout.take().expect("stdout");
        let s = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent wrote a non-JSON line ({e}): {line}"));
                let (m, c) = &*s;
                m.lock().unwrap().lines.push(v);
                c.notify_all();
            }
            let (m, c) = &*s;
            m.lock().unwrap().exited = true;
            c.notify_all();
        });
        let err = child.stderr.take().expect("stderr");
        let s = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                let (m, c) = &*s;
                let mut g = m.lock().unwrap();
                if line.contains("oomprobe ready") {
                    g.ready = true;
                }
                g.stderr.push(line);
                c.notify_all();
            }
        });
        let agent = Agent {
            child,
            shared,
            metrics_addr,
            state_dir,
            owns_state: false,
        };
        agent.wait_until(Duration::from_secs(30), "agent ready", |s| {
            s.ready || s.exited
        });
        let ready = agent.shared.0.lock().unwrap().ready;
        assert!(
            ready,
            "agent exited before becoming ready: {:?}",
            agent.stderr()
        );
        agent
    }

    fn wait_until(&self, timeout: Duration, what: &str, mut pred: impl FnMut(&Shared) -> bool) {
        let (m, c) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut g = m.lock().unwrap();
        while !pred(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {what}"
            );
            g = c.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits for a kill record matching `pred`.
    pub fn wait_for_kill(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        self.wait_until(timeout, "kill record", |s| {
            found = s
                .lines
                .iter()
                .find(|v| v["event"] == "kill" && pred(v))
                .cloned();
            found.is_some()
        });
        found.expect("found")
    }

    /// Waits for any JSON event matching `pred`.
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut found = None;
        self.wait_until(timeout, what, |s| {
            found = s.lines.iter().find(|v| pred(v)).cloned();
            found.is_some()
        });
        found.expect("found")
    }

    /// True when a stderr line contains `needle` (waits up to `timeout`).
    pub fn wait_for_log(&self, timeout: Duration, needle: &str) {
        self.wait_until(timeout, needle, |s| {
            s.stderr.iter().any(|l| l.contains(needle))
        });
    }

    /// Waits until `n` kill records match `pred`, returns them.
    pub fn wait_for_kills(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut found = Vec::new();
        self.wait_until(timeout, &format!("{n} kill records"), |s| {
            found = s
                .lines
                .iter()
                .filter(|v| v["event"] == "kill" && pred(v))
                .cloned()
                .collect();
            found.len() >= n
        });
        found
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn records(&self) -> Vec<Value> {
        self.shared.0.lock().unwrap().lines.clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    /// GET /metrics from the agent.
    pub fn scrape(&self) -> String {
        let addr = self
            .metrics_addr
            .as_ref()
            .expect("agent started with metrics");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_state {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// A fresh directory under the temp dir, unique to this test process.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "oomprobe-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Value of a metric sample line `name{labels} value` in a scrape.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Reads stdout lines until one starts with `prefix`; returns all lines read.
    pub fn read_until(&mut self, prefix: &str) -> Vec<String> {
        let out = self.0.stdout.as_mut().expect("piped stdout");
        let mut reader = BufReader::new(out);
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).unwrap_or(0) == 0 {
                return lines;
            }
            let done = l.starts_with(prefix);
            lines.push(l.trim_end().to_string());
            if done {
                return lines;
            }
        }
    }

    /// Waits (30 s at most) for exit; returns the signal that killed it, if any.
    pub fn wait_signal(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt as _;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return status.signal(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => panic!("pid {} did not exit within 30 s: {other:?}", self.0.id()),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A stand-in kubelet build: `go`, `go-stripped`, `c` or `static` (built by `cargo xtask build`).
pub fn standin_kubelet(flavor: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/standin")
        .join(flavor)
        .join("kubelet");
    let p = p.canonicalize().unwrap_or(p);
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test`",
        p.display()
    );
    p
}

/// Starts any program in `cg` with piped stdout.
pub fn spawn_path_in(cg: &ScratchCgroup, program: &std::path::Path, args: &[&str]) -> Proc {
    Proc(
        cg.command(program, args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display())),
    )
}

/// Starts a stand-in in `cg` with piped stdout.
pub fn spawn_in(cg: &ScratchCgroup, program: &str, args: &[&str]) -> Proc {
    Proc(
        cg.command(&bin(program), args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}")),
    )
}

pub const MIB: u64 = 1 << 20;
