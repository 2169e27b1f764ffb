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

/// How to start an agent: `Agent::builder().metrics(port).args(&[...]).start()`.
#[derive(Default)]
pub struct AgentBuilder {
    wrapper: Vec<String>,
    args: Vec<String>,
    metrics_port: Option<u16>,
    state_dir: Option<PathBuf>,
}

impl AgentBuilder {
    /// Serve metrics on this loopback port (otherwise `--no-metrics`).
    pub fn metrics(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    /// Extra `oomprobe run` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A state directory the caller owns and removes (persistence tests); otherwise a fresh
    /// one, removed with the agent.
    pub fn state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }

    /// Run through a wrapper, e.g. `setpriv ... --`.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Starts it and waits (30 s at most) until it is ready.
    pub fn start(self) -> Agent {
        require_root();
        let metrics_addr = self.metrics_port.map(|p| format!("127.0.0.1:{p}"));
        let mut extra: Vec<String> = match &metrics_addr {
            Some(addr) => vec!["--metrics-addr".into(), addr.clone()],
            None => vec!["--no-metrics".into()],
        };
        extra.extend(self.args);
        let owns_state = self.state_dir.is_none();
        let state_dir = self.state_dir.unwrap_or_else(|| scratch_dir("state"));
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut agent = Agent::start_via(&wrapper, &extra, metrics_addr, state_dir);
        agent.owns_state = owns_state;
        agent
    }
}

impl Agent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// An agent with the defaults (metrics off).
    pub fn start() -> Agent {
        Agent::builder().start()
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

    /// Waits for a kill record matching `pred` (a raw JSON view, for records whose pid is not
    /// known in advance, such as a container's process in the lab).
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

    /// Waits (20 s at most) for the kill record of the process `pid`, to check field by field.
    pub fn expect_kill(&self, pid: u64) -> Kill {
        self.expect_kill_within(pid, Duration::from_secs(20))
    }

    /// [`Agent::expect_kill`] with another deadline.
    pub fn expect_kill_within(&self, pid: u64, deadline: Duration) -> Kill {
        Kill(self.wait_for_kill(deadline, |v| v["victim"]["pid"].as_u64() == Some(pid)))
    }

    /// Every kill record so far of the processes `pred` accepts.
    pub fn kills(&self, pred: impl Fn(&Kill) -> bool) -> Vec<Kill> {
        self.records()
            .into_iter()
            .filter(|v| v["event"] == "kill")
            .map(Kill)
            .filter(|k| pred(k))
            .collect()
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
        pred: impl Fn(&Kill) -> bool,
    ) -> Vec<Kill> {
        let mut found = Vec::new();
        self.wait_until(timeout, &format!("{n} kill records"), |s| {
            found = s
                .lines
                .iter()
                .filter(|v| v["event"] == "kill")
                .map(|v| Kill(v.clone()))
                .filter(|k| pred(k))
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
    remove_at_exit(d.clone());
    d
}

/// Paths removed when the test binary exits (the harness ends with `exit`, also after failed
/// tests, so `atexit` handlers run): scratch directories leave nothing in /tmp.
static AT_EXIT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes `path` (a directory tree or a file) when the test binary exits.
pub fn remove_at_exit(path: PathBuf) {
    extern "C" fn cleanup() {
        let paths = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
        for p in paths {
            if std::fs::remove_dir_all(&p).is_err() {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: `cleanup` is a plain extern "C" function that neither unwinds nor calls exit.
    REGISTER.call_once(|| unsafe {
        libc::atexit(cleanup);
    });
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(path);
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
        self.wait_signal_reaped().0
    }

    /// Like [`Proc::wait_signal`], with the CLOCK_MONOTONIC time (ns) at which the exit was
    /// reaped: the process had exited before it (polled every 10 ms, so at most ~10 ms before).
    pub fn wait_signal_reaped(&mut self) -> (Option<i32>, u64) {
        use std::os::unix::process::ExitStatusExt as _;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return (status.signal(), monotonic_ns()),
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

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, ns: the clock of the kernel's event timestamps (`bpf_ktime_get_ns`),
/// so a record's `ktime_ns` can be placed between two readings of it.
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).expect("monotonic time fits u64")
}

/// CLOCK_REALTIME now, ns since the Unix epoch.
pub fn realtime_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// A record's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillKind {
    OomMemcg,
    OomGlobal,
    Signal,
}

impl KillKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KillKind::OomMemcg => "oom_memcg",
            KillKind::OomGlobal => "oom_global",
            KillKind::Signal => "signal",
        }
    }
}

/// The sender's `si_code` as the record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiCode {
    /// `kill(2)`.
    User,
    /// The kernel (the OOM killer).
    Kernel,
}

impl SiCode {
    pub fn as_str(self) -> &'static str {
        match self {
            SiCode::User => "SI_USER",
            SiCode::Kernel => "SI_KERNEL",
        }
    }
}

/// One kill record of the agent's stream. Each check asserts an exact value and names the
/// field and the whole record when it fails; checks chain:
/// `agent.expect_kill(pid).kind(KillKind::OomMemcg).sender(trigger).code(SiCode::Kernel)`.
#[derive(Debug, Clone)]
pub struct Kill(pub Value);

impl Kill {
    fn field(&self, path: &str) -> &Value {
        path.split('.').fold(&self.0, |v, k| &v[k])
    }

    #[track_caller]
    fn is(&self, path: &str, want: impl Into<Value>) -> &Self {
        let want = want.into();
        assert_eq!(self.field(path), &want, "{path} of kill record {}", self.0);
        self
    }

    #[track_caller]
    fn u64_at(&self, path: &str) -> u64 {
        self.field(path)
            .as_u64()
            .unwrap_or_else(|| panic!("{path} missing from kill record {}", self.0))
    }

    #[track_caller]
    pub fn kind(&self, kind: KillKind) -> &Self {
        self.is("kind", kind.as_str())
    }
    /// The sender's tgid.
    #[track_caller]
    pub fn sender(&self, pid: u64) -> &Self {
        self.is("sender.pid", pid)
    }
    #[track_caller]
    pub fn sender_comm(&self, comm: &str) -> &Self {
        self.is("sender.comm", comm)
    }
    #[track_caller]
    pub fn sender_cgroup(&self, path: &str) -> &Self {
        self.is("sender.cgroup", path)
    }
    #[track_caller]
    pub fn code(&self, code: SiCode) -> &Self {
        self.is("sender.code", code.as_str())
    }
    #[track_caller]
    pub fn victim_comm(&self, comm: &str) -> &Self {
        self.is("victim.comm", comm)
    }
    #[track_caller]
    pub fn victim_cgroup(&self, path: &str) -> &Self {
        self.is("victim.cgroup", path)
    }
    /// The task whose allocation invoked the OOM killer.
    #[track_caller]
    pub fn trigger(&self, pid: u64) -> &Self {
        self.is("oom.trigger_pid", pid)
    }
    /// The memory cgroup whose limit fired, and that limit.
    #[track_caller]
    pub fn domain(&self, path: &str, limit_bytes: u64) -> &Self {
        self.is("oom.domain.path", path)
            .is("oom.domain.limit_bytes", limit_bytes)
    }
    #[track_caller]
    pub fn domain_path(&self, path: &str) -> &Self {
        self.is("oom.domain.path", path)
    }
    #[track_caller]
    pub fn exit_code(&self, code: i64) -> &Self {
        self.is("exit_code", code)
    }
    /// No OOM details: a plain signal.
    #[track_caller]
    pub fn not_oom(&self) -> &Self {
        self.is("oom", Value::Null)
    }

    pub fn victim_pid(&self) -> u64 {
        self.u64_at("victim.pid")
    }
    pub fn kind_str(&self) -> &str {
        self.field("kind").as_str().unwrap_or("")
    }
    pub fn victim_cgroup_str(&self) -> &str {
        self.field("victim.cgroup").as_str().unwrap_or("")
    }
    pub fn domain_path_str(&self) -> &str {
        self.field("oom.domain.path").as_str().unwrap_or("")
    }
    #[track_caller]
    pub fn anon_rss_kb(&self) -> u64 {
        self.u64_at("memory.anon_rss_kb")
    }
    #[track_caller]
    pub fn exit_after_ns(&self) -> u64 {
        self.u64_at("exit_after_ns")
    }
    #[track_caller]
    pub fn seen_after_ns(&self) -> u64 {
        self.u64_at("seen_after_ns")
    }
    #[track_caller]
    pub fn ktime_ns(&self) -> u64 {
        self.u64_at("ktime_ns")
    }
    pub fn time(&self) -> &str {
        self.field("time").as_str().unwrap_or("")
    }
    /// `time` (RFC 3339, UTC, nanoseconds) as ns since the Unix epoch.
    #[track_caller]
    pub fn time_unix_ns(&self) -> i128 {
        use time::{format_description::well_known::Rfc3339, OffsetDateTime};
        OffsetDateTime::parse(self.time(), &Rfc3339)
            .unwrap_or_else(|e| panic!("time of kill record {} is not RFC 3339: {e}", self.0))
            .unix_timestamp_nanos()
    }
}

/// Go's own pclntab reader (`go tool addr2line`) on `binary`: the function containing each of
/// `addrs`, in order. `toolchain` is the Go release to run (`GOTOOLCHAIN`, e.g. `go1.27.3`: the
/// one that built the binary knows its tables); `None` the machine's Go (checked by `cargo xtask
/// setup`). Panics when the tool fails: the caller's test needs the answer.
pub fn go_functions_at(
    binary: &std::path::Path,
    toolchain: Option<&str>,
    addrs: &[u64],
) -> Vec<String> {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new("go");
    cmd.args(["tool", "addr2line"])
        .arg(binary)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if let Some(go) = toolchain {
        cmd.env("GOTOOLCHAIN", go);
    }
    let mut child = cmd.spawn().expect("run `go tool addr2line`");
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "GOTOOLCHAIN={} go tool addr2line {}",
        toolchain.unwrap_or("(the machine's)"),
        binary.display()
    );
    // Two lines per address: the function, then file:line.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .step_by(2)
        .map(str::to_string)
        .collect()
}
