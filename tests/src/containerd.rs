//! A containerd of the test's own: its config, root, state and sockets under a scratch
//! directory, nothing shared with any other containerd on the machine, and everything it made
//! (tasks, containers, its namespace's cgroups, the directory) removed when dropped, also when
//! the test fails.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub struct Containerd {
    dir: PathBuf,
    child: Child,
    pub namespace: String,
}

/// Installs Debian's containerd and runc when they are missing (loudly: the test needs them).
fn ensure_installed() {
    if Path::new("/usr/bin/containerd").exists() && Path::new("/usr/sbin/runc").exists() {
        return;
    }
    eprintln!("containerd or runc missing: apt-get install containerd runc");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "containerd",
            "runc",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot install containerd and runc from Debian");
}

impl Containerd {
    /// Starts containerd under `target/containerd-<pid>-<tag>` and waits (deadline 30 s) until
    /// `ctr version` answers.
    pub fn start(tag: &str) -> Containerd {
        ensure_installed();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(format!("containerd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let d = dir.display();
        // The CRI plugin is off: the tests drive containerd through ctr only, and CRI would set
        // up CNI and a streaming server of its own.
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n\
             [metrics]\n  address = \"\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        let c = Containerd {
            dir,
            child,
            namespace: format!("oomprobe-test-{}", std::process::id()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s; its log: {}",
                std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` against this containerd, in this test's namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", &self.namespace])
            .args(args)
            .output()
            .expect("cannot run ctr")
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers of our namespace first (ctr run --rm removes them on success).
        let ids = self.ctr(&["containers", "list", "--quiet"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        // SAFETY: kill(2) on the pid of the child this struct started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // runc leaves the namespace's parent cgroup in every v1 hierarchy (and in v2).
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.namespace));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.namespace));
        // Snapshots are unmounted once their tasks are gone; anything still mounted under the
        // scratch directory is unmounted before it is removed.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                if m.starts_with(&prefix) {
                    let _ = Command::new("umount").arg(m).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The runc shim keeps its state under /run/containerd whatever containerd's own state
        // directory: this namespace's directory goes, and the parents if nothing else uses them.
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        for d in ["runc", "s", "fifo", ""] {
            let _ = std::fs::remove_dir(Path::new("/run/containerd").join(d));
        }
    }
}
