//! Support shared by the demo and the privileged tests: memory cgroups that this project
//! creates and always removes, and processes started inside them.
use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

/// A memory cgroup created for a test or the demo, removed on drop with every process in it.
/// It never touches a cgroup it did not create.
pub struct ScratchCgroup {
    /// Path inside the hierarchy, e.g. `/oomprobe-test-123-burst0`.
    pub path: String,
    pub dir: PathBuf,
    pub version: u8,
}

fn memory_root() -> io::Result<(PathBuf, u8)> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((v1.to_path_buf(), 1));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        return Ok((v2.to_path_buf(), 2));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no memory cgroup controller (v1 /sys/fs/cgroup/memory, or v2 with +memory in the root's subtree_control)",
    ))
}

impl ScratchCgroup {
    /// Creates `/<name>` under the memory hierarchy with `limit_bytes` (None: no limit).
    pub fn create(name: &str, limit_bytes: Option<u64>) -> io::Result<ScratchCgroup> {
        let (root, version) = memory_root()?;
        let dir = root.join(name);
        if dir.exists() {
            // A leftover of our own from a crashed run (names carry our prefix): reuse it.
            kill_all_in(&dir);
        } else {
            fs::create_dir(&dir)?;
        }
        let cg = ScratchCgroup {
            path: format!("/{name}"),
            dir,
            version,
        };
        if let Some(limit) = limit_bytes {
            cg.set_limit(limit)?;
        }
        Ok(cg)
    }

    /// A child cgroup inside this one (removed before its parent).
    pub fn child(&self, name: &str, limit_bytes: Option<u64>) -> io::Result<ScratchCgroup> {
        let rel = format!("{}/{name}", self.path.trim_start_matches('/'));
        ScratchCgroup::create(&rel, limit_bytes)
    }

    pub fn set_limit(&self, bytes: u64) -> io::Result<()> {
        match self.version {
            1 => fs::write(self.dir.join("memory.limit_in_bytes"), bytes.to_string()),
            _ => fs::write(self.dir.join("memory.max"), bytes.to_string()),
        }
    }

    /// The kernel's count of OOM kills of processes in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            1 => ("memory.oom_control", "oom_kill"),
            _ => ("memory.events", "oom_kill"),
        };
        fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }

    /// Starts `program args...` inside this cgroup: a shell writes its own pid into the cgroup
    /// and then execs the program, so the pid is the program's from its first instruction.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> io::Result<Child> {
        self.command(program, args).spawn()
    }

    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let procs = self.dir.join("cgroup.procs");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(procs)
            .arg(program)
            .args(args);
        cmd
    }

    pub fn pids(&self) -> Vec<u32> {
        read_pids(&self.dir)
    }
}

fn read_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn kill_all_in(dir: &Path) {
    // Children first.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                kill_all_in(&e.path());
                let _ = remove_when_empty(&e.path());
            }
        }
    }
    for pid in read_pids(dir) {
        // SAFETY: plain syscall; the pid is in a cgroup this project created.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

fn remove_when_empty(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        if !self.dir.exists() {
            return;
        }
        kill_all_in(&self.dir);
        if let Err(e) = remove_when_empty(&self.dir) {
            eprintln!(
                "warning: could not remove cgroup {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Node-wide OOM kills so far (`/proc/vmstat` oom_kill).
pub fn vmstat_oom_kills() -> u64 {
    fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}
