//! Finding and following the kubelet: by process name (or an explicit pid or binary), probing its
//! allocator, following restarts, and attributing the memory its runtime maps to call sites.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use probe_common::{AllocKey, AllocVal, KubeletText, POINT_SYSCALL_MMAP, POINT_SYSCALL_MUNMAP};
use serde::Serialize;

use super::symbols::{Binary, FuncTable, ProbePoint};
use crate::{forensics::KillRecord, kernel::probes::Kernel};

/// How the kubelet is identified. The kernel reports every exec under `name` (and counts its
/// allocations from then on); the agent then keeps or rejects it by `pid` and `binary`, and a
/// periodic scan of `/proc` finds kubelets that exec'd under another name or before the agent.
#[derive(Debug, Clone)]
pub struct Target {
    /// Process name (comm), `kubelet` by default; as the kernel keeps it, only its first 15
    /// bytes count. With neither `pid` nor `binary` (or once the `pid` process is gone and no
    /// `binary` is given), every process of this name is a kubelet.
    pub name: String,
    /// `--kubelet-pid`: this process is the kubelet, whatever its name or executable, and
    /// while it runs the only one. Once it is gone (its pid no longer names a process with the
    /// start time it had) its successors are found by `binary`, else by `name`, and the pid
    /// is never matched again (a reused pid is another program).
    pub pid: Option<u32>,
    /// `--kubelet-bin`: only processes running this file are kubelets, compared by device and
    /// inode with the path re-read at each decision (an upgrade renames a new file over it),
    /// or still running the file that was there (`/proc/PID/exe` reads `PATH (deleted)`).
    /// When the agent cannot stat the path, the executable's path as the kernel shows it.
    pub binary: Option<PathBuf>,
}

/// Why a process that exec'd under the kubelet's name is not followed
/// (`oomprobe_kubelet_candidates_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// It runs another executable than `--kubelet-bin` (`binary`).
    Binary,
    /// The `--kubelet-pid` process still runs, the only kubelet (`pid`).
    Pid,
}

impl Rejected {
    pub const ALL: [Rejected; 2] = [Rejected::Binary, Rejected::Pid];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Binary => "binary",
            Rejected::Pid => "pid",
        }
    }
}

/// Executables whose rejection was logged (once each): at most this many, oldest out.
pub const REJECTED_LOGGED_MAX: usize = 64;

/// Rejected processes remembered while they run (a scan does not take them later): at most
/// this many, oldest out (`KUBELET_TGIDS_MAX`, the processes the kernel follows by name).
pub const REJECTED_PROCS_MAX: usize = probe_common::KUBELET_TGIDS_MAX as usize;

/// A file by device and inode, as `stat(2)` finds it (following symlinks and `/proc/PID/exe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Whether a process runs the configured kubelet binary `bin`: `link` is its `/proc/PID/exe`
/// as read (the path the kernel shows, ` (deleted)` appended once the file was replaced or
/// removed), `exe` the file that link opens, `bin_now` the file at `bin` now. The same file;
/// or the one that was at `bin` before it was replaced (a kubelet still running its old
/// binary after an upgrade's rename); or, when the agent cannot stat `bin`, the same path.
/// A process of another mount namespace whose own file has the same path is not it.
fn is_binary(
    link: Option<&Path>,
    exe: Option<FileId>,
    bin: &Path,
    bin_now: Option<FileId>,
) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    if exe.is_some() && exe == bin_now {
        return true;
    }
    let Some(link) = link.map(|l| l.as_os_str().as_bytes()) else {
        return false;
    };
    let bin = bin.as_os_str().as_bytes();
    link.strip_suffix(b" (deleted)") == Some(bin) || (bin_now.is_none() && link == bin)
}

/// Whether `pid` runs the file at `bin` (see [`is_binary`]), `bin` stat'ed now.
fn runs_binary(pid: u32, bin: &Path) -> bool {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    is_binary(
        link.as_deref(),
        FileId::of(&exe_file(pid)),
        bin,
        FileId::of(bin),
    )
}

/// A process's start time (`/proc/PID/stat` field 22, clock ticks since boot): with the pid,
/// what tells a process from a later one given the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm (field 2) may hold spaces and parentheses: fields after its last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The `--kubelet-pid` process, while it runs.
#[derive(Debug)]
struct Pinned {
    pid: u32,
    /// Its start time ([`start_time`]), read at first sight.
    start: Option<u64>,
}

impl Pinned {
    /// Whether the process still runs: its pid names a process with the start time first seen.
    fn running(&mut self) -> bool {
        match (self.start, start_time(self.pid)) {
            (_, None) => false,
            (None, now) => {
                self.start = now;
                true
            }
            (first, now) => first == now,
        }
    }
}

/// How a kubelet process's allocations are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Uprobes,
    Syscalls,
}

struct Probed {
    points: Vec<ProbePoint>,
    /// The functions call sites are named from. A Go kubelet's table is large (116,743
    /// functions, 12.2 MiB of heap for v1.36.1): one read from the executable itself
    /// (`reloadable`) is held while a followed process runs the file or the file is the last
    /// kubelet's (for its restart), and read again from the next process of the file after
    /// that, while the entry (its uprobes, attached once for every process of the file) stays.
    funcs: Option<Arc<FuncTable>>,
    /// `funcs` is the file's own Go table (not a per-process libc's): dropped when no followed
    /// process runs the file and another file's kubelet came after it, reloaded at the next.
    reloadable: bool,
    mode: Mode,
}

struct Proc {
    exe: PathBuf,
    /// Load bias of a PIE executable (runtime address - link address).
    bias: u64,
    key: FileKey,
}

/// What the probe cache is keyed by: the file itself (device, inode and modification time, from
/// `stat(2)` through the process's `/proc/PID/exe`), not its path. An in-place upgrade that
/// renames a new kubelet over the old path is a new inode and is probed again; `pid` is set for
/// libc, which is probed per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    pid: Option<u32>,
}

impl FileKey {
    fn of(path: &Path, pid: Option<u32>) -> std::io::Result<FileKey> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path)?;
        Ok(FileKey {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            pid,
        })
    }
}

/// One call site's share of the kubelet's growth.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CallSite {
    pub function: String,
    pub bytes: u64,
    pub calls: u64,
}

/// The periodic attribution report (`Output::KubeletMemory` in the JSON stream).
#[derive(Debug, Clone, Serialize)]
pub struct KubeletReport {
    pub pid: u32,
    pub exe: String,
    pub mode: Mode,
    /// Bytes the runtime (or libc) obtained from the kernel since the agent began watching.
    pub mapped_bytes: u64,
    /// Bytes it handed back (freed or returned by the scavenger).
    pub released_bytes: u64,
    pub by_entry_point: BTreeMap<String, u64>,
    pub top_call_sites: Vec<CallSite>,
}

/// A kubelet (re)start (`Output::KubeletStart` in the JSON stream).
#[derive(Debug, Clone, Serialize)]
pub struct KubeletStart {
    /// When the agent adopted it: UTC, RFC 3339 with nanoseconds (the wall clock).
    pub time: String,
    pub pid: u32,
    pub exe: String,
    pub previous_pid: Option<u32>,
    /// How the previous kubelet ended: the kind of its kill record, or `exited`.
    pub previous_end: Option<String>,
    pub restarts: u64,
}

/// Pids remembered as kubelets after they are gone.
pub const SEEN_MAX: usize = 4096;

pub struct Tracker {
    target: Target,
    probed: HashMap<FileKey, Probed>,
    procs: BTreeMap<u32, Proc>,
    /// The kill kind of the last kubelet followed (`last_pid`), the one a restart's
    /// `previous_end` reads: one entry at most, whatever the node's churn.
    last_kill: Option<(u32, String)>,
    last_pid: Option<u32>,
    /// The file the last kubelet followed runs: its function table stays for a restart.
    last_file: Option<FileKey>,
    /// Pids followed as a kubelet with their comm at adoption (None: unreadable), oldest first
    /// (kill records arrive after the process is gone): at most [`SEEN_MAX`], the oldest dead
    /// ones leave first. The comm guards against pid reuse: a dead kubelet's pid handed to
    /// another process (pid_max wraps on a busy node) is not that kubelet.
    seen: std::collections::VecDeque<(u32, Option<String>)>,
    /// `--kubelet-pid` until that process is gone.
    pinned: Option<Pinned>,
    /// Processes rejected, by [`Rejected`] (its index in [`Rejected::ALL`]).
    rejected: [u64; 2],
    /// Executables whose rejection was logged, oldest first, at most [`REJECTED_LOGGED_MAX`]
    /// (`None`: unreadable, the process was gone).
    rejected_logged: std::collections::VecDeque<Option<FileId>>,
    /// Processes rejected at their exec that still run, by pid and [`start_time`], oldest
    /// first, at most [`REJECTED_PROCS_MAX`]: not the kubelet for their life (a scan after the
    /// `--kubelet-pid` process is gone would otherwise take one by name); a new exec decides
    /// again.
    rejected_procs: std::collections::VecDeque<(u32, Option<u64>)>,
    pub restarts: u64,
    pub fallbacks: u64,
}

/// The process's name (comm) as `/proc/PID/comm` shows it, without the newline; bytes that
/// are not UTF-8 (a name the kernel cut inside a character) read as U+FFFD.
pub fn comm_of(pid: u32) -> Option<String> {
    let b = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let b = b.strip_suffix(b"\n").unwrap_or(&b);
    Some(String::from_utf8_lossy(b).into_owned())
}

/// `name` as the kernel keeps it in a process's comm: cut to its first 15 bytes
/// (`TASK_COMM_LEN` - 1), as [`comm_of`] reads it. `averyverylongkubeletname` runs as
/// `averyverylongku`.
pub fn comm_name(name: &str) -> std::borrow::Cow<'_, str> {
    let b = name.as_bytes();
    String::from_utf8_lossy(&b[..b.len().min(probe_common::TASK_COMM_LEN - 1)])
}

/// Whether a process named `comm` (as [`comm_of`] reads it) runs under the name `name`.
pub fn comm_matches(comm: &str, name: &str) -> bool {
    comm == comm_name(name)
}

/// The executable's path as the process sees it (in its own mount namespace): for display and
/// for matching its `/proc/PID/maps` lines, never for opening.
/// A binary replaced while running reads `PATH (deleted)`, as its maps lines do once split.
fn exe_of(pid: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = link.to_string_lossy();
    Some(match text.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => link,
    })
}

/// The executable itself, opened or probed through the `/proc/PID/exe` magic link: the file the
/// process runs even when the agent runs in a container without the host's root mounted, and
/// even after a new binary was renamed over its path.
fn exe_file(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

/// A path of `pid`'s mount namespace, seen from the agent's (`/proc/PID/root` + path).
fn in_root_of(pid: u32, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    Path::new(&format!("/proc/{pid}/root")).join(rel)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The mappings of `exe` in `pid`: (start, end, executable, file offset), runtime addresses.
fn exe_mappings(pid: u32, exe: &Path) -> Vec<(u64, u64, bool, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    maps.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[5] != exe {
                return None;
            }
            let (a, b) = f[0].split_once('-')?;
            let exec = f[1].as_bytes().get(2) == Some(&b'x');
            Some((hex(a)?, hex(b)?, exec, hex(f[2])?))
        })
        .collect()
}

/// Load bias of `exe` in `pid`: start of its offset-0 mapping minus the page of the PT_LOAD
/// segment that maps file offset 0 (0 for a non-PIE executable, whose mapping starts at its link
/// address: 0x400000 for Go on x86-64, 0x10000 for Go on arm64).
fn load_bias(pid: u32, exe: &Path) -> u64 {
    let Some(&(start, ..)) = exe_mappings(pid, exe).iter().find(|m| m.3 == 0) else {
        return 0;
    };
    // The process's own executable (also when `exe` is a path in another mount namespace).
    let link = crate::kubelet::symbols::Binary::open(Path::new(&format!("/proc/{pid}/exe")))
        .ok()
        .and_then(|b| b.offset0_load_address());
    match link {
        Some(link) => start.saturating_sub(link),
        // Unreadable ELF: x86-64 Go's non-PIE link address, else a PIE.
        None if start == 0x400000 => 0,
        None => start,
    }
}

/// The executable mappings of `exe` in `pid` (runtime addresses), as one range.
fn text_range(pid: u32, exe: &Path) -> KubeletText {
    exe_mappings(pid, exe)
        .iter()
        .filter(|m| m.2)
        .map(|m| (m.0, m.1))
        .reduce(|(x, y), (a, b)| (x.min(a), y.max(b)))
        .map_or_else(KubeletText::default, |(start, end)| KubeletText {
            start,
            end,
        })
}

/// libc as mapped by `pid`, for kubelets that are not Go binaries.
fn libc_of(pid: u32) -> Option<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .map(PathBuf::from)
}

impl Tracker {
    pub fn new(target: Target) -> Tracker {
        Tracker {
            probed: HashMap::new(),
            procs: BTreeMap::new(),
            last_kill: None,
            last_pid: None,
            last_file: None,
            seen: Default::default(),
            pinned: target.pid.map(|pid| Pinned { pid, start: None }),
            rejected: [0; 2],
            rejected_logged: Default::default(),
            rejected_procs: Default::default(),
            restarts: 0,
            fallbacks: 0,
            target,
        }
    }

    /// Probes the configured kubelet binary before any process runs it, so a kubelet that
    /// starts later is measured from its first allocation.
    pub fn probe_target_binary(&mut self, probes: &mut impl Kernel) {
        let Some(bin) = self.target.binary.clone() else {
            return;
        };
        let key = match FileKey::of(&bin, None) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(binary = %bin.display(), error = %e, "cannot probe the kubelet binary yet");
                return;
            }
        };
        match Binary::open(&bin).and_then(|b| Ok((b.go_functions()?, b.probe_points()?))) {
            Ok((funcs, points)) => {
                self.probe_as(key, &bin, points, funcs.map(Arc::new), None, probes)
            }
            Err(e) => {
                tracing::warn!(binary = %bin.display(), error = %e, "cannot probe the kubelet binary yet")
            }
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// Entries in the tracker's own collections, by `oomprobe_map_entries{map}` name:
    /// followed processes, probed files (binaries and per-process libcs), kill kinds kept for a
    /// restart's `previous_end`, pids ever followed, rejected processes still running,
    /// executables whose rejection was logged.
    pub fn state_sizes(&self) -> [(&'static str, usize); 6] {
        [
            ("agent_kubelet_procs", self.procs.len()),
            ("agent_kubelet_probed", self.probed.len()),
            ("agent_kubelet_kills", usize::from(self.last_kill.is_some())),
            ("agent_kubelet_seen", self.seen.len()),
            ("agent_kubelet_rejected", self.rejected_procs.len()),
            ("agent_kubelet_rejected_logged", self.rejected_logged.len()),
        ]
    }

    /// Whether `pid` was rejected at its exec (and is still that process).
    fn was_rejected(&self, pid: u32) -> bool {
        self.rejected_procs
            .iter()
            .any(|(p, start)| *p == pid && start.is_some() && *start == start_time(pid))
    }

    /// Processes that exec'd under the kubelet's name and were not followed, by reason (a
    /// count since the agent started).
    pub fn rejected(&self) -> [(Rejected, u64); 2] {
        Rejected::ALL.map(|r| (r, self.rejected[r as usize]))
    }

    /// The `--kubelet-pid` process while it runs; once it is gone, `None` from then on.
    fn pinned_running(&mut self) -> Option<u32> {
        let pin = self.pinned.as_mut()?;
        if pin.running() {
            return Some(pin.pid);
        }
        let pid = pin.pid;
        self.pinned = None;
        let by = match &self.target.binary {
            Some(bin) => format!("--kubelet-bin {}", bin.display()),
            None => format!("--kubelet-name {}", self.target.name),
        };
        tracing::info!(pid, successors_by = %by, "the --kubelet-pid process is gone: the next kubelet is found by the binary, else the name");
        None
    }

    /// Whether `pid` is a kubelet by `--kubelet-bin`, else by name (a scan's question; the
    /// `--kubelet-pid` process is decided before).
    fn matches(&self, pid: u32) -> bool {
        if let Some(bin) = &self.target.binary {
            return runs_binary(pid, bin);
        }
        comm_of(pid).is_some_and(|c| comm_matches(&c, &self.target.name))
    }

    /// Looks for kubelet processes not yet followed (start-up, and periodically: a kubelet that
    /// was not running is picked up when it appears). While the `--kubelet-pid` process runs,
    /// only that one.
    pub fn scan(&mut self, probes: &mut impl Kernel) -> Vec<KubeletStart> {
        let mut found = Vec::new();
        if let Some(pid) = self.pinned_running() {
            if !self.procs.contains_key(&pid) {
                found.extend(self.adopt(pid, probes));
            }
            return found;
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        let me = std::process::id();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid != me
                && !self.procs.contains_key(&pid)
                && self.matches(pid)
                && !self.was_rejected(pid)
            {
                found.extend(self.adopt(pid, probes));
            }
        }
        found
    }

    /// A process exec'd under the kubelet's name (seen in the kernel, which put it in
    /// `KUBELET_TGIDS` and counts its allocations): followed when it is the kubelet by
    /// `--kubelet-pid` and `--kubelet-bin` ([`Target`]); otherwise it leaves the kernel's maps
    /// with what they counted for it, is counted under [`Tracker::rejected`], and its
    /// executable is logged once.
    pub fn on_exec(&mut self, tgid: u32, probes: &mut impl Kernel) -> Option<KubeletStart> {
        if self.procs.contains_key(&tgid) {
            return None;
        }
        let why = match self.pinned_running() {
            Some(pin) if pin == tgid => None,
            Some(_) => Some(Rejected::Pid),
            None => self
                .target
                .binary
                .as_deref()
                .filter(|bin| !runs_binary(tgid, bin))
                .map(|_| Rejected::Binary),
        };
        if let Some(why) = why {
            self.reject(tgid, why, probes);
            return None;
        }
        self.adopt(tgid, probes)
    }

    /// `pid` exec'd under the kubelet's name but is not the kubelet: out of the kernel's maps,
    /// counted, its executable logged once.
    fn reject(&mut self, pid: u32, why: Rejected, probes: &mut impl Kernel) {
        probes.unwatch_tgid(pid);
        self.rejected[why as usize] += 1;
        self.rejected_procs.retain(|(p, _)| *p != pid);
        if self.rejected_procs.len() >= REJECTED_PROCS_MAX {
            self.rejected_procs.pop_front();
        }
        self.rejected_procs.push_back((pid, start_time(pid)));
        let file = FileId::of(&exe_file(pid));
        if self.rejected_logged.contains(&file) {
            return;
        }
        if self.rejected_logged.len() >= REJECTED_LOGGED_MAX {
            self.rejected_logged.pop_front();
        }
        self.rejected_logged.push_back(file);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_or_else(|_| "?".into(), |l| l.display().to_string());
        match why {
            Rejected::Binary => tracing::info!(
                pid,
                exe,
                kubelet_bin = %self.target.binary.as_deref().unwrap_or(Path::new("")).display(),
                "not the kubelet: a process named like it runs another executable than --kubelet-bin (logged once per executable; oomprobe_kubelet_candidates_rejected_total counts each)"
            ),
            Rejected::Pid => tracing::info!(
                pid,
                exe,
                kubelet_pid = self.pinned.as_ref().map_or(0, |p| p.pid),
                "not the kubelet: a process named like it exec'd while the --kubelet-pid process runs (logged once per executable; oomprobe_kubelet_candidates_rejected_total counts each)"
            ),
        }
    }

    /// Whether `pid` with `comm` (the kill record's, the kernel's `task->comm`) is or was a
    /// followed kubelet: followed now, or remembered with the same comm (a reused pid of a
    /// dead kubelet names another program).
    pub fn is_kubelet(&self, pid: u32, comm: &str) -> bool {
        self.procs.contains_key(&pid)
            || self
                .seen
                .iter()
                .any(|(p, c)| *p == pid && c.as_deref().is_none_or(|c| c == comm))
    }

    /// Bytes the kubelet `pid`'s allocator mapped since it was followed.
    pub fn mapped_bytes(&self, pid: u32, probes: &impl Kernel) -> u64 {
        let Some(p) = self.procs.get(&pid).and_then(|p| self.probed.get(&p.key)) else {
            return 0;
        };
        probes
            .alloc_stats()
            .iter()
            .filter(|(k, _)| k.tgid == pid)
            .filter(|(k, _)| match k.point as u16 {
                POINT_SYSCALL_MMAP => true,
                POINT_SYSCALL_MUNMAP => false,
                i => p.points.get(i as usize).is_some_and(|pp| pp.role.grows()),
            })
            .fold(0u64, |a, (_, v)| a.saturating_add(v.bytes))
    }

    /// A kill record: kept when it killed the last kubelet followed (the only one a restart
    /// asks about); other kubelets' kills are in their records already.
    pub fn on_kill(&mut self, rec: &KillRecord) {
        if self.last_pid == Some(rec.victim.pid) {
            self.last_kill = Some((rec.victim.pid, rec.kind.as_str().to_string()));
        }
    }

    /// Adds `pid` to the pids followed; past [`SEEN_MAX`] the oldest that is no longer followed
    /// leaves (a followed process stays: the kernel's KUBELET_TGIDS holds far fewer).
    fn remember(&mut self, pid: u32) {
        self.remember_as(pid, comm_of(pid));
    }

    fn remember_as(&mut self, pid: u32, comm: Option<String>) {
        // A pid remembered before is a new process now: its entry is replaced.
        self.seen.retain(|(p, _)| *p != pid);
        self.seen.push_back((pid, comm));
        while self.seen.len() > SEEN_MAX {
            let Some(i) = self
                .seen
                .iter()
                .position(|(p, _)| !self.procs.contains_key(p))
            else {
                break;
            };
            self.seen.remove(i);
        }
    }

    /// Follows one kubelet process: probes its binary if new, counts it in the kernel.
    fn adopt(&mut self, pid: u32, probes: &mut impl Kernel) -> Option<KubeletStart> {
        let file = exe_file(pid);
        let (Some(exe), Ok(exe_key)) = (exe_of(pid), FileKey::of(&file, None)) else {
            tracing::warn!(pid, "kubelet candidate vanished before it could be probed");
            // Its kernel entries went at its exit, but not what it allocated meanwhile.
            probes.unwatch_tgid(pid);
            return None;
        };
        // Already probed (another process of the same file, a restart): the uprobes are
        // attached; only a function table let go since is read again.
        let key = if self.probed.contains_key(&exe_key) {
            self.reload_funcs(exe_key, &file);
            exe_key
        } else {
            self.probe_new(pid, &file, exe_key, probes)
        };
        if let Err(e) = probes.watch_tgid(pid, text_range(pid, &exe)) {
            tracing::warn!(pid, error = %e, "cannot watch kubelet pid");
            // What was attached for this process alone goes with it.
            self.probed.retain(|k, _| k.pid != Some(pid));
            probes.unwatch_tgid(pid);
            self.release_funcs(key);
            return None;
        }
        let bias = load_bias(pid, &exe);
        self.rejected_procs.retain(|(p, _)| *p != pid);
        self.remember(pid);
        self.procs.insert(
            pid,
            Proc {
                exe: exe.clone(),
                bias,
                key,
            },
        );
        let previous_pid = self.last_pid.filter(|p| *p != pid && !alive(*p));
        let previous_end = previous_pid.map(|p| match self.last_kill.take() {
            Some((pid, kind)) if pid == p => kind,
            _ => "exited".into(),
        });
        if previous_pid.is_some() {
            self.restarts += 1;
        }
        self.last_pid = Some(pid);
        if let Some(before) = self.last_file.replace(key).filter(|k| *k != key) {
            self.release_funcs(before);
        }
        tracing::info!(pid, exe = %exe.display(), restarts = self.restarts, "following kubelet");
        Some(KubeletStart {
            time: crate::clock::rfc3339(time::OffsetDateTime::now_utc()),
            pid,
            exe: exe.display().to_string(),
            previous_pid,
            previous_end,
            restarts: self.restarts,
        })
    }

    /// Probes the binary `pid` runs (`file`, its `/proc/PID/exe`), or its libc when it is not a
    /// Go binary; returns the cache key the result is stored under.
    fn probe_new(
        &mut self,
        pid: u32,
        file: &Path,
        exe_key: FileKey,
        probes: &mut impl Kernel,
    ) -> FileKey {
        let bin = Binary::open(file);
        let go = bin.as_ref().ok().and_then(|b| {
            Some((
                b.go_functions().ok()??,
                b.probe_points().unwrap_or_default(),
            ))
        });
        if let Some((funcs, points)) = go {
            self.probe_as(exe_key, file, points, Some(Arc::new(funcs)), None, probes);
            return exe_key;
        }
        // Not Go: its allocations go through libc, probed for this pid only (one libc serves
        // every process on the node). At exec the loader has not mapped libc yet, so it is
        // found from the binary's DT_NEEDED, else from the process's maps; either path is the
        // process's own, reached through /proc/PID/root.
        let root = in_root_of(pid, Path::new("/"));
        let libc = bin
            .as_ref()
            .ok()
            .and_then(|b| b.needed_libc(&root))
            .or_else(|| libc_of(pid).map(|l| in_root_of(pid, &l)));
        match libc.and_then(|l| Some((FileKey::of(&l, Some(pid)).ok()?, l))) {
            Some((key, libc)) => {
                let points = Binary::open(&libc)
                    .and_then(|b| b.probe_points())
                    .unwrap_or_default();
                let funcs = bin
                    .as_ref()
                    .ok()
                    .and_then(Binary::elf_functions)
                    .map(Arc::new);
                self.probe_as(key, &libc, points, funcs, Some(pid), probes);
                key
            }
            None => {
                self.probe_as(exe_key, file, Vec::new(), None, None, probes);
                exe_key
            }
        }
    }

    fn probe_as(
        &mut self,
        key: FileKey,
        binary: &Path,
        points: Vec<ProbePoint>,
        funcs: Option<Arc<FuncTable>>,
        pid: Option<u32>,
        probes: &mut impl Kernel,
    ) {
        if self.probed.contains_key(&key) {
            return;
        }
        let mode = match (
            points.is_empty(),
            probes.attach_allocator(binary, &points, pid),
        ) {
            (false, Ok(n)) => {
                tracing::info!(binary = %binary.display(), points = n, "allocator uprobes attached");
                Mode::Uprobes
            }
            (empty, result) => {
                let why = match (empty, result) {
                    (_, Err(e)) => crate::error_chain(&e),
                    _ => "no allocator symbol resolves (neither Go nor libc)".into(),
                };
                tracing::warn!(
                    binary = %binary.display(),
                    reason = %why,
                    "falling back to mmap/munmap syscall tracepoints filtered by the kubelet's tgid"
                );
                self.fallbacks += 1;
                if let Err(e) = probes.attach_syscalls() {
                    tracing::warn!(error = %e, "syscall fallback unavailable too");
                }
                Mode::Syscalls
            }
        };
        // Only the executable's own table is read without a pid (the configured binary, a Go
        // kubelet); a libc and the binary's ELF symbols are per process and leave with it.
        let reloadable = pid.is_none() && funcs.is_some();
        self.probed.insert(
            key,
            Probed {
                points,
                funcs,
                reloadable,
                mode,
            },
        );
    }

    /// Lets go of the function table of file `key` when no followed process runs it and it is
    /// not the last kubelet's file (a one-off `kubelet --version` of another build, the binary
    /// a kubelet upgraded in place ran): the table of every kubelet binary ever seen would
    /// otherwise stay for the agent's life. The last kubelet's stays, so a restart of the same
    /// binary reads nothing.
    fn release_funcs(&mut self, key: FileKey) {
        if self.last_file == Some(key) || self.procs.values().any(|p| p.key == key) {
            return;
        }
        if let Some(p) = self.probed.get_mut(&key).filter(|p| p.reloadable) {
            p.funcs = None;
        }
    }

    /// Reads the Go function table of file `key` again from `file` (a process running it)
    /// when [`Tracker::release_funcs`] let it go.
    fn reload_funcs(&mut self, key: FileKey, file: &Path) {
        let Some(p) = self
            .probed
            .get_mut(&key)
            .filter(|p| p.reloadable && p.funcs.is_none())
        else {
            return;
        };
        match Binary::open(file).and_then(|b| b.go_functions()) {
            Ok(Some(funcs)) => p.funcs = Some(Arc::new(funcs)),
            Ok(None) => {
                tracing::warn!(binary = %file.display(), "no Go function table any more: call sites unknown")
            }
            Err(e) => {
                tracing::warn!(binary = %file.display(), error = %e, "cannot read the function table again: call sites unknown")
            }
        }
    }

    /// Attribution reports for every followed kubelet; forgets processes that are gone
    /// (followed or rejected).
    pub fn report(&mut self, probes: &mut impl Kernel) -> Vec<KubeletReport> {
        self.rejected_procs
            .retain(|(pid, start)| start.is_some() && *start == start_time(*pid));
        let stats = probes.alloc_stats();
        let mut out = Vec::new();
        for (&pid, proc_) in &self.procs {
            let Some(probed) = self.probed.get(&proc_.key) else {
                continue;
            };
            let mine: Vec<&(AllocKey, AllocVal)> =
                stats.iter().filter(|(k, _)| k.tgid == pid).collect();
            out.push(attribute(pid, proc_, probed, &mine, |id| probes.stack(id)));
        }
        let dead: Vec<u32> = self.procs.keys().copied().filter(|p| !alive(*p)).collect();
        for pid in dead {
            let gone = self.procs.remove(&pid);
            // Its own libc probes (detached by unwatch_tgid) and their cache entry.
            self.probed.retain(|k, _| k.pid != Some(pid));
            probes.unwatch_tgid(pid);
            if let Some(p) = gone {
                self.release_funcs(p.key);
            }
        }
        out
    }
}

fn attribute(
    pid: u32,
    proc_: &Proc,
    probed: &Probed,
    stats: &[&(AllocKey, AllocVal)],
    stack: impl Fn(i64) -> Vec<u64>,
) -> KubeletReport {
    let mut by_point: BTreeMap<String, u64> = BTreeMap::new();
    let mut sites: HashMap<String, (u64, u64)> = HashMap::new();
    let (mut mapped, mut released) = (0u64, 0u64);
    for (k, v) in stats {
        let (name, grows) = match k.point as u16 {
            POINT_SYSCALL_MMAP => ("syscall_mmap".to_string(), true),
            POINT_SYSCALL_MUNMAP => ("syscall_munmap".to_string(), false),
            i => match probed.points.get(i as usize) {
                Some(p) => (p.symbol.clone(), p.role.grows()),
                None => continue,
            },
        };
        // Saturating: per-CPU sums near u64::MAX (the kernel drops lengths past 2^57 bytes, but
        // the map's values come from outside all the same).
        let at = by_point.entry(name).or_default();
        *at = at.saturating_add(v.bytes);
        if grows {
            mapped = mapped.saturating_add(v.bytes);
            let site = call_site(
                &stack(k.stack_id),
                k.site,
                probed.funcs.as_deref(),
                proc_.bias,
            );
            let e = sites.entry(site).or_default();
            e.0 = e.0.saturating_add(v.bytes);
            e.1 = e.1.saturating_add(v.calls);
        } else {
            released = released.saturating_add(v.bytes);
        }
    }
    let mut top: Vec<CallSite> = sites
        .into_iter()
        .map(|(function, (bytes, calls))| CallSite {
            function,
            bytes,
            calls,
        })
        .collect();
    top.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.function.cmp(&b.function)));
    top.truncate(10);
    KubeletReport {
        pid,
        exe: proc_.exe.display().to_string(),
        mode: probed.mode,
        mapped_bytes: mapped,
        released_bytes: released,
        by_entry_point: by_point,
        top_call_sites: top,
    }
}

/// The first frame outside the runtime (the code that wanted the memory), or the innermost
/// frame's function, or `unknown`. `site` is the scanned return address into the kubelet's
/// code (library entry points, whose frame-pointer walk loses the caller): it wins when set.
pub fn call_site(frames: &[u64], site: u64, funcs: Option<&FuncTable>, bias: u64) -> String {
    let Some(funcs) = funcs else {
        return "unknown".into();
    };
    if site != 0 {
        // A return address: the call instruction is just before it.
        if let Some(name) = funcs.symbolize(site.saturating_sub(bias).saturating_sub(1)) {
            return name.to_string();
        }
    }
    let names: Vec<&str> = frames
        .iter()
        .enumerate()
        .filter_map(|(i, &ip)| {
            // Return addresses point after the call: look up the call instruction.
            let addr = ip.saturating_sub(bias).saturating_sub(u64::from(i > 0));
            funcs.symbolize(addr)
        })
        .collect();
    names
        .iter()
        .find(|n| !n.starts_with("runtime.") && !n.starts_with("internal/"))
        .or(names.first())
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl KubeletReport {
    /// The readable one-line form.
    pub fn text(&self) -> String {
        let sites: Vec<String> = self
            .top_call_sites
            .iter()
            .take(3)
            .map(|c| format!("{}={:.1}MiB", c.function, c.bytes as f64 / 1048576.0))
            .collect();
        format!(
            "KUBELET pid={} mapped={:.1}MiB released={:.1}MiB via={:?} top: {}",
            self.pid,
            self.mapped_bytes as f64 / 1048576.0,
            self.released_bytes as f64 / 1048576.0,
            self.mode,
            sites.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Map values near u64::MAX (the kernel side drops lengths past 2^57 bytes and saturates,
    /// but the values are read from outside): two CPUs, two stacks of `mmap`s near u64::MAX. The report's sums saturate: no overflow panic (debug), no wrapped small figure
    /// (release).
    #[test]
    fn attribution_of_counters_near_u64_max_saturates() {
        let key = |point: u16, stack_id: i64| AllocKey {
            tgid: 7,
            point: u32::from(point),
            stack_id,
            site: 0,
        };
        let big = AllocVal {
            bytes: u64::MAX - 10,
            calls: u64::MAX,
        };
        let stats = [
            (key(POINT_SYSCALL_MMAP, 1), big),
            (key(POINT_SYSCALL_MMAP, 2), big),
            (key(POINT_SYSCALL_MUNMAP, -1), big),
            (key(POINT_SYSCALL_MUNMAP, -2), big),
        ];
        let refs: Vec<&(AllocKey, AllocVal)> = stats.iter().collect();
        let proc_ = Proc {
            exe: PathBuf::from("/usr/bin/kubelet"),
            bias: 0,
            key: FileKey {
                dev: 0,
                ino: 0,
                mtime_ns: 0,
                pid: None,
            },
        };
        let probed = Probed {
            points: Vec::new(),
            funcs: None,
            reloadable: false,
            mode: Mode::Syscalls,
        };
        let r = attribute(7, &proc_, &probed, &refs, |_| Vec::new());
        assert_eq!((r.mapped_bytes, r.released_bytes), (u64::MAX, u64::MAX));
        assert_eq!(r.by_entry_point["syscall_mmap"], u64::MAX);
        assert_eq!(r.by_entry_point["syscall_munmap"], u64::MAX);
        // Both stacks name the same (unknown) call site: its bytes and calls saturate too.
        assert_eq!(r.top_call_sites.len(), 1);
        assert_eq!(
            (r.top_call_sites[0].bytes, r.top_call_sites[0].calls),
            (u64::MAX, u64::MAX)
        );
    }
    use crate::forensics::{
        record::{Memory, Sender, Victim},
        KillKind,
    };

    fn tracker() -> Tracker {
        Tracker::new(Target {
            name: "kubelet".into(),
            pid: None,
            binary: None,
        })
    }

    /// The kernel keeps 15 bytes of a process name: a kubelet run as
    /// `averyverylongkubeletname` is found under that name (it used to be missed).
    #[test]
    fn a_long_name_matches_the_comm_the_kernel_cut() {
        assert_eq!(comm_name("averyverylongkubeletname"), "averyverylongku");
        assert_eq!(comm_name("kubelet"), "kubelet");
        // Cut inside a character as the kernel cuts it: 14 ASCII bytes and the first of 'é'.
        assert_eq!(comm_name("abcdefghijklmné"), "abcdefghijklmn\u{FFFD}");
        let dir = std::env::temp_dir().join(format!("oomprobe-comm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("averyverylongkubeletname");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let pid = child.id();
        // spawn returns when the vfork'd child has released the parent's memory, which exec
        // does before it sets the new comm: until then the comm is this test thread's.
        let t0 = std::time::Instant::now();
        let mut comm = comm_of(pid);
        while comm.as_deref() != Some("averyverylongku") && t0.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            comm = comm_of(pid);
        }
        let t = Tracker::new(Target {
            name: "averyverylongkubeletname".into(),
            pid: None,
            binary: None,
        });
        let found = t.matches(pid);
        let other = tracker().matches(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(comm.as_deref(), Some("averyverylongku"));
        assert!(found, "pid {pid} not matched");
        assert!(!other);
    }

    fn follow(t: &mut Tracker, pid: u32) {
        t.remember(pid);
        let key = FileKey {
            dev: 1,
            ino: 2,
            mtime_ns: 3,
            pid: None,
        };
        let exe = PathBuf::from("/usr/bin/kubelet");
        t.procs.insert(pid, Proc { exe, bias: 0, key });
    }

    fn signal_kill(pid: u32) -> KillRecord {
        KillRecord {
            time: String::new(),
            ktime_ns: 1,
            kind: KillKind::Signal,
            victim: Victim {
                pid,
                tid: pid,
                comm: "kubelet".into(),
                cgroup: None,
                pod: None,
            },
            sender: Sender {
                pid: 1,
                tid: 1,
                comm: "systemd".into(),
                code: "SI_USER".into(),
                cgroup: None,
            },
            memory: Memory {
                anon_rss_kb: None,
                file_rss_kb: None,
                shmem_rss_kb: None,
                total_vm_kb: None,
                pgtables_kb: None,
                source: None,
            },
            oom: None,
            exit_after_ns: Some(1),
            exit_code: Some(9),
            extra_sigkills: 0,
            delivery: "delivered",
            seen_after_ns: None,
        }
    }

    /// A kernel that accepts everything, counts the allocator uprobe attachments and keeps
    /// `KUBELET_TGIDS`'s keys (a test inserts an exec'd pid, as the kernel's exec hook does).
    #[derive(Default)]
    struct Accepting {
        attached: usize,
        tgids: std::collections::BTreeSet<u32>,
    }

    impl Kernel for Accepting {
        fn attach_allocator(
            &mut self,
            _binary: &Path,
            points: &[ProbePoint],
            _pid: Option<u32>,
        ) -> Result<usize, crate::kernel::probes::ProbeError> {
            self.attached += points.len();
            Ok(points.len())
        }
        fn attach_syscalls(&mut self) -> Result<(), crate::kernel::probes::ProbeError> {
            Ok(())
        }
        fn watch_tgid(
            &mut self,
            tgid: u32,
            _text: KubeletText,
        ) -> Result<(), crate::kernel::probes::ProbeError> {
            self.tgids.insert(tgid);
            Ok(())
        }
        fn unwatch_tgid(&mut self, tgid: u32) {
            self.tgids.remove(&tgid);
        }
        fn watch_memcg(&mut self, _id: u64) -> bool {
            true
        }
        fn reclaim_stats(&self) -> Vec<(u64, probe_common::ReclaimStats)> {
            Vec::new()
        }
        fn alloc_stats(&self) -> Vec<(AllocKey, AllocVal)> {
            Vec::new()
        }
        fn stack(&self, _stack_id: i64) -> Vec<u64> {
            Vec::new()
        }
        fn counters(&self) -> Vec<(probe_common::Counter, u64)> {
            Vec::new()
        }
    }

    /// `gofmt` of the Go toolchain (in PATH or /usr/local/go/bin): a real Go executable that
    /// waits on its stdin.
    fn gofmt() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/local/go/bin")])
            .map(|d| d.join("gofmt"))
            .find(|p| p.is_file())
    }

    /// The soak's 12 MiB step: a process running a Go kubelet binary once (v1.36.1, built on
    /// the node during the soak) left that binary's function table in the probe cache for the
    /// agent's life, after the soak's stand-in kubelets (another binary) took over. Now the
    /// table stays while the file is the last kubelet's (a restart reads nothing), goes once
    /// another file's kubelet came and none of its own runs, and the next process of it reads
    /// it again; the file's entry and its uprobes (attached once for every process of the file)
    /// stay throughout.
    #[test]
    fn a_go_binarys_function_table_goes_when_another_kubelet_took_over() {
        // The machine's Go (`cargo xtask setup` checks it): without it this test fails loudly.
        let bin = gofmt().expect(
            "no gofmt (Go toolchain) in PATH or /usr/local/go/bin: this test needs a real Go executable to follow",
        );
        let run = |program: &Path, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
        };
        let stop = |mut c: std::process::Child| {
            c.kill().unwrap();
            c.wait().unwrap();
        };
        let mut t = tracker();
        let mut k = Accepting::default();
        let first = run(&bin, &[]);
        let start = t.on_exec(first.id(), &mut k).expect("gofmt followed");
        assert_eq!(start.pid, first.id());
        assert_eq!(t.probed.len(), 1);
        let key = *t.probed.keys().next().unwrap();
        assert_eq!(
            key.pid, None,
            "a Go executable is probed for all its processes"
        );
        let table = t.probed[&key]
            .funcs
            .clone()
            .expect("Go function table read");
        assert!(table.len() > 1000, "{} functions", table.len());
        assert!(k.attached > 0, "allocator uprobes attached");
        stop(first);
        t.report(&mut k);
        assert_eq!(t.state_sizes()[0], ("agent_kubelet_procs", 0));
        assert!(
            t.probed[&key].funcs.is_some(),
            "the last kubelet's table stays for its restart"
        );

        // Another binary's kubelet (the soak's stand-in, a libc one) takes over.
        let other = run(Path::new("sleep"), &["60"]);
        t.on_exec(other.id(), &mut k).expect("sleep followed");
        assert!(
            t.probed.contains_key(&key),
            "the file's entry and uprobes stay"
        );
        assert!(t.probed[&key].funcs.is_none(), "the table went");
        assert_eq!(Arc::strong_count(&table), 1, "nothing else holds the table");
        stop(other);
        t.report(&mut k);
        assert_eq!(t.probed.len(), 1, "the libc probes left with their process");
        let attached = k.attached;

        let again = run(&bin, &[]);
        t.on_exec(again.id(), &mut k).expect("gofmt followed again");
        let reread = t.probed[&key].funcs.clone().expect("table read again");
        assert_eq!(reread.len(), table.len());
        assert_eq!(k.attached, attached, "uprobes not attached twice");
        stop(again);
    }

    /// 10,000 kubelet pids over a node's life: SEEN_MAX remembered, the oldest dead ones
    /// gone first, the ones still followed kept however old.
    #[test]
    fn pids_remembered_are_bounded_and_keep_the_followed() {
        let mut t = tracker();
        follow(&mut t, 1);
        follow(&mut t, 2);
        for pid in 3..10_003 {
            t.remember_as(pid, Some("kubelet".into()));
        }
        assert_eq!(t.state_sizes()[3], ("agent_kubelet_seen", SEEN_MAX));
        let k = |pid: u32| t.is_kubelet(pid, "kubelet");
        assert!(k(1) && k(2), "followed pids stay");
        assert!(k(10_002) && k(10_002 - SEEN_MAX as u32 + 3));
        assert!(!k(10_002 - SEEN_MAX as u32 + 2));
        assert!(!k(3));
    }

    /// A dead kubelet's pid reused by another program (pid_max wraps on a busy node) is not
    /// taken for the kubelet: its kill is someone else's (found by the 30-minute soak, where
    /// memhogs' OOM kills on reused stand-in pids became kubelet kills and collateral).
    #[test]
    fn a_reused_pid_of_a_dead_kubelet_is_not_the_kubelet() {
        let mut t = tracker();
        t.remember_as(40_001, Some("kubelet".into()));
        assert!(t.is_kubelet(40_001, "kubelet"));
        assert!(!t.is_kubelet(40_001, "memhog"));
        // Unknown comm at adoption (the process was gone): the pid alone decides.
        t.remember_as(40_002, None);
        assert!(t.is_kubelet(40_002, "memhog"));
    }

    /// Kills of many kubelet processes keep one kind: the last followed one's, which a
    /// restart reports as `previous_end`.
    #[test]
    fn kill_kinds_kept_are_the_last_kubelets_only() {
        let mut t = tracker();
        for pid in 100..5_100 {
            follow(&mut t, pid);
            t.last_pid = Some(pid);
            t.on_kill(&signal_kill(pid));
            t.on_kill(&signal_kill(pid + 100_000));
        }
        assert_eq!(t.state_sizes()[2], ("agent_kubelet_kills", 1));
        assert_eq!(t.last_kill, Some((5_099, "signal".to_string())));
    }

    /// A scratch directory of this test process, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("oomprobe-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }

        /// A copy of sleep(1) at `rel` (a new file, its own inode).
        fn sleep_at(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::copy("/bin/sleep", &p).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Processes killed and reaped on drop.
    #[derive(Default)]
    struct Procs(Vec<std::process::Child>);

    impl Procs {
        /// Runs `program 60` and waits until it has exec'd (its `/proc/PID/exe` is `program`:
        /// spawn returns at the vfork release, before exec completes); its pid.
        fn run(&mut self, program: &Path) -> u32 {
            let child = std::process::Command::new(program)
                .arg("60")
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
            let pid = child.id();
            self.0.push(child);
            let t0 = std::time::Instant::now();
            while exe_of(pid).as_deref() != Some(program) {
                assert!(t0.elapsed().as_secs() < 5, "{pid} never exec'd {program:?}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            pid
        }

        /// Kills and reaps `pid`.
        fn stop(&mut self, pid: u32) {
            let i = self.0.iter().position(|c| c.id() == pid).unwrap();
            let mut c = self.0.remove(i);
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    impl Drop for Procs {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// The kernel's exec hook put `pid` in KUBELET_TGIDS (it exec'd under the kubelet's name);
    /// the tracker decides.
    fn exec(t: &mut Tracker, k: &mut Accepting, pid: u32) -> Option<KubeletStart> {
        k.tgids.insert(pid);
        t.on_exec(pid, k)
    }

    /// The soak's 12 MiB step: with `--kubelet-bin`, a process named like the kubelet but
    /// running another file (a `kubelet --version` of another build) was followed, probed and
    /// counted as a restart. Now it is rejected: counted, out of the kernel's map, nothing
    /// probed, no restart, its executable logged once. The file at the path is followed,
    /// also once an upgrade renamed a new file over it, and the process still running the
    /// replaced file is still the kubelet.
    #[test]
    fn with_kubelet_bin_only_processes_of_that_file_are_followed_across_an_upgrade() {
        let dir = Scratch::new("adopt-bin");
        let bin = dir.sleep_at("a/kl");
        let other = dir.sleep_at("b/kl");
        let mut ps = Procs::default();
        let mut k = Accepting::default();
        let mut t = Tracker::new(Target {
            name: "kl".into(),
            pid: None,
            binary: Some(bin.clone()),
        });
        let stranger = ps.run(&other);
        assert!(
            exec(&mut t, &mut k, stranger).is_none(),
            "{other:?} followed"
        );
        let stranger2 = ps.run(&other);
        assert!(exec(&mut t, &mut k, stranger2).is_none());
        assert_eq!(t.rejected(), [(Rejected::Binary, 2), (Rejected::Pid, 0)]);
        assert!(k.tgids.is_empty(), "left in KUBELET_TGIDS: {:?}", k.tgids);
        assert_eq!(k.attached, 0, "nothing probed for it");
        assert_eq!(
            t.state_sizes(),
            [
                ("agent_kubelet_procs", 0),
                ("agent_kubelet_probed", 0),
                ("agent_kubelet_kills", 0),
                ("agent_kubelet_seen", 0),
                ("agent_kubelet_rejected", 2),
                ("agent_kubelet_rejected_logged", 1),
            ]
        );
        assert!(!t.matches(stranger), "a scan would adopt it");

        let first = ps.run(&bin);
        let start = exec(&mut t, &mut k, first).expect("the kubelet at --kubelet-bin");
        assert_eq!((start.pid, start.previous_pid), (first, None));
        assert_eq!(start.exe, bin.display().to_string());
        assert!(t.matches(first));

        // An upgrade: a new file renamed over the path (a new inode), the next kubelet runs it.
        let new = dir.sleep_at("a/kl.new");
        std::fs::rename(&new, &bin).unwrap();
        assert_eq!(
            std::fs::read_link(format!("/proc/{first}/exe")).unwrap(),
            PathBuf::from(format!("{} (deleted)", bin.display()))
        );
        assert!(
            t.matches(first),
            "the kubelet still running the replaced file"
        );
        ps.stop(first);
        let upgraded = ps.run(&bin);
        let start = exec(&mut t, &mut k, upgraded).expect("the upgraded kubelet");
        assert_eq!(start.previous_pid, Some(first));
        assert_eq!(start.previous_end.as_deref(), Some("exited"));
        assert_eq!(t.restarts, 1);
        assert!(k.tgids.contains(&upgraded));
        assert!(exec(&mut t, &mut k, ps.run(&other)).is_none());
        assert_eq!(t.rejected(), [(Rejected::Binary, 3), (Rejected::Pid, 0)]);
        assert_eq!(t.restarts, 1);
    }

    /// With `--kubelet-pid`, that process is the only kubelet while it runs (another process
    /// named like it used to be followed beside it); once it is gone, the next one by name is
    /// its restart.
    #[test]
    fn with_kubelet_pid_only_that_process_until_it_is_gone() {
        let dir = Scratch::new("adopt-pid");
        let bin = dir.sleep_at("kl");
        let mut ps = Procs::default();
        let mut k = Accepting::default();
        let pinned = ps.run(&bin);
        let mut t = Tracker::new(Target {
            name: "kl".into(),
            pid: Some(pinned),
            binary: None,
        });
        let found = t.scan(&mut k);
        assert_eq!(
            found.iter().map(|s| s.pid).collect::<Vec<_>>(),
            [pinned],
            "a scan finds the pinned process only"
        );
        let other = ps.run(&bin);
        assert!(exec(&mut t, &mut k, other).is_none(), "followed beside it");
        assert_eq!(t.rejected(), [(Rejected::Binary, 0), (Rejected::Pid, 1)]);
        assert_eq!(k.tgids.iter().copied().collect::<Vec<_>>(), [pinned]);
        assert!(t.scan(&mut k).is_empty());

        ps.stop(pinned);
        t.report(&mut k);
        assert!(k.tgids.is_empty());
        // Named like the kubelet, but rejected at its exec: not taken by name now.
        assert!(t.scan(&mut k).is_empty(), "the rejected process taken");
        assert!(t.pinned.is_none(), "the pin is retired for good");
        let next = ps.run(&bin);
        let start = exec(&mut t, &mut k, next).expect("the restarted kubelet, by name");
        assert_eq!(start.previous_pid, Some(pinned));
        assert_eq!(start.previous_end.as_deref(), Some("exited"));
        assert_eq!(t.restarts, 1);
        assert_eq!(t.state_sizes()[4], ("agent_kubelet_rejected", 1));
        ps.stop(other);
        t.report(&mut k);
        assert_eq!(
            t.state_sizes()[4],
            ("agent_kubelet_rejected", 0),
            "gone with it"
        );
    }

    /// A pid reused after the pinned process: not it (the start time differs).
    #[test]
    fn a_pinned_pid_reused_by_another_process_is_not_the_kubelet() {
        let me = std::process::id();
        let mut first = Pinned {
            pid: me,
            start: None,
        };
        assert!(first.running());
        let started = start_time(me).expect("own start time");
        assert_eq!(first.start, Some(started));
        assert!(first.running());
        let mut reused = Pinned {
            pid: me,
            start: Some(started + 1),
        };
        assert!(!reused.running());
    }

    /// A candidate gone before the agent read it: what the kernel counted for it goes too.
    #[test]
    fn a_candidate_gone_before_adoption_leaves_the_kernel_maps() {
        let dir = Scratch::new("adopt-gone");
        let bin = dir.sleep_at("kl");
        let mut ps = Procs::default();
        let mut k = Accepting::default();
        let mut t = tracker();
        let pid = ps.run(&bin);
        ps.stop(pid);
        assert!(exec(&mut t, &mut k, pid).is_none());
        assert!(k.tgids.is_empty(), "left in the kernel maps");
    }

    /// The executable comparison: the same file (device and inode) whatever its path; the file
    /// that was at the path before an upgrade replaced it; the path only when it cannot be
    /// stat'ed; never another file at the same path (another mount namespace's).
    #[test]
    fn the_binary_is_the_file_at_the_path_or_the_one_it_replaced() {
        let f = |ino| Some(FileId { dev: 8, ino });
        let bin = Path::new("/usr/bin/kubelet");
        let link = |s: &str| Some(PathBuf::from(s));
        let same = link("/usr/bin/kubelet");
        assert!(is_binary(same.as_deref(), f(1), bin, f(1)));
        // A symlink to it, or a hard link: the file decides.
        assert!(is_binary(
            link("/opt/k8s/kubelet").as_deref(),
            f(1),
            bin,
            f(1)
        ));
        // The same path, another file: another mount namespace's kubelet, not this one.
        assert!(!is_binary(same.as_deref(), f(2), bin, f(1)));
        // Still running the file an upgrade renamed a new one over.
        let deleted = link("/usr/bin/kubelet (deleted)");
        assert!(is_binary(deleted.as_deref(), f(1), bin, f(2)));
        assert!(!is_binary(
            link("/usr/local/bin/kubelet (deleted)").as_deref(),
            f(1),
            bin,
            f(2)
        ));
        // The path cannot be stat'ed by the agent: the path the kernel shows.
        assert!(is_binary(same.as_deref(), f(1), bin, None));
        assert!(!is_binary(link("/tmp/kubelet").as_deref(), f(1), bin, None));
        // The process is gone.
        assert!(!is_binary(None, None, bin, f(1)));
    }
}
