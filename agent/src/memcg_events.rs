//! Memory cgroup events for the kubelet's cgroup and the kubepods tree, the early warning
//! before any kill: OOM and limit notifications (v1 `memory.oom_control` and
//! `memory.pressure_level` eventfds, v2 `memory.events` changes), memory pressure (PSI triggers
//! on `/proc/pressure/memory`), and memcg reclaim counted in the kernel for watched cgroups.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::cgroup::Hierarchy;

/// A memory cgroup event (`Output::Memcg` in the JSON stream).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemcgEvent {
    /// When the agent had it: UTC, RFC 3339 with nanoseconds (the wall clock).
    pub time: String,
    /// Cgroup path, or `/` with `scope` node for node-wide PSI.
    pub cgroup: String,
    /// `oom`, `oom_kill`, `max`, `high`, `oom_group_kill` (v2 `memory.events`),
    /// `pressure_medium`, `pressure_critical` (v1 `memory.pressure_level`), `psi`, `reclaim`,
    /// `thrashing`.
    pub kind: String,
    /// How many since the last event of this kind (or the kernel's counter where it has one).
    pub count: u64,
    pub detail: String,
}

fn event(cgroup: &str, kind: &str, count: u64, detail: String) -> MemcgEvent {
    MemcgEvent {
        time: crate::clock::rfc3339(time::OffsetDateTime::now_utc()),
        cgroup: cgroup.to_string(),
        kind: kind.to_string(),
        count,
        detail,
    }
}

fn keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a v1 eventfd notification: `cgroup.event_control` gets "<efd> <fd> [args]".
fn v1_register(
    dir: &std::path::Path,
    file: &str,
    args: &str,
) -> std::io::Result<(OwnedFd, std::fs::File)> {
    let efd = eventfd()?;
    let target = std::fs::File::open(dir.join(file))?;
    let line = format!("{} {} {args}", efd.as_raw_fd(), target.as_raw_fd());
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?
        .write_all(line.trim_end().as_bytes())?;
    Ok((efd, target))
}

/// Waits on an eventfd and sends an event each time it fires.
fn spawn_eventfd(
    efd: OwnedFd,
    keep: std::fs::File,
    tx: mpsc::UnboundedSender<(String, String)>,
    dir: std::path::PathBuf,
    cgroup: String,
    kind: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _keep = keep;
        // SAFETY: the eventfd is owned by the AsyncFd until it drops.
        let Ok(afd) =
            (unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) })
        else {
            return;
        };
        loop {
            let Ok(mut g) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into a valid buffer from our eventfd.
            let n = unsafe { libc::read(afd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            g.clear_ready();
            // The kernel also signals the eventfd when the cgroup is removed: then stop.
            if !dir.exists() {
                return;
            }
            if n == 8 && tx.send((cgroup.clone(), kind.clone())).is_err() {
                return;
            }
        }
    })
}

/// A PSI trigger: POLLPRI when memory stalls exceed `stall_us` within `window_us`.
fn spawn_psi(
    path: std::path::PathBuf,
    cgroup: String,
    tx: mpsc::UnboundedSender<(String, String)>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    f.write_all(b"some 150000 1000000\0")?;
    let fd: OwnedFd = f.into();
    Ok(tokio::spawn(async move {
        // SAFETY: the trigger fd stays open while the AsyncFd owns it.
        let Ok(afd) =
            (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::PRIORITY) })
        else {
            return;
        };
        loop {
            let Ok(mut g) = afd.ready(tokio::io::Interest::PRIORITY).await else {
                return;
            };
            g.clear_ready();
            if tx.send((cgroup.clone(), "psi".into())).is_err() {
                return;
            }
            // At most one event per window.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }))
}

/// One memory cgroup found under a watched tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path in the memory hierarchy (`/kubepods/burstable/pod...`).
    pub path: String,
    /// Its kernfs id (the directory's inode), the key of the kernel's maps.
    pub ino: u64,
    /// Levels below the tree's top (0: the top).
    pub depth: u32,
}

/// The memory cgroups at and below `cgroup` (six levels deep), read from cgroupfs: a
/// directory walk, to run off the agent's loop (`spawn_blocking`). A cgroup removed during the
/// walk is left out.
pub fn list_tree(h: &Hierarchy, cgroup: &str) -> Vec<TreeEntry> {
    let mut out = Vec::new();
    let mut stack = vec![(h.dir(cgroup), cgroup.to_string(), 0u32)];
    while let Some((d, path, depth)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&d) else {
            continue;
        };
        out.push(TreeEntry {
            path: path.clone(),
            ino: meta.ino(),
            depth,
        });
        if depth >= 6 {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let child = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    e.file_name().to_string_lossy()
                );
                stack.push((e.path(), child, depth + 1));
            }
        }
    }
    out
}

pub struct Watcher {
    h: Hierarchy,
    /// Cgroups with notifications registered (path -> last counters).
    notified: HashMap<String, HashMap<String, u64>>,
    /// kernfs id -> path, for the kernel's reclaim counters.
    ids: HashMap<u64, String>,
    last_reclaim: HashMap<u64, u64>,
    tx: mpsc::UnboundedSender<(String, String)>,
    pub rx: mpsc::UnboundedReceiver<(String, String)>,
    pub psi_armed: bool,
    psi_high: bool,
    /// Last time each (cgroup, kind) was reported, to coalesce bursts of notifications.
    last_emit: HashMap<(String, String), (std::time::Instant, u64)>,
    /// Notifications the kernel refused since the last `take_registration_failures`, by kind.
    failures: Vec<&'static str>,
    /// Kinds already warned about (the first refusal of each is a warning, the rest debug).
    warned: std::collections::HashSet<&'static str>,
    /// The notification tasks of each cgroup (aborted when it is removed).
    tasks: HashMap<String, Vec<tokio::task::JoinHandle<()>>>,
    /// Cgroups left unwatched since the last `take_full`: the kernel's map was full.
    full: u64,
}

/// `some avg10` at or above this (percent) is memory pressure when polling PSI.
const PSI_POLL_THRESHOLD: f64 = 10.0;

impl Watcher {
    pub fn new(h: Hierarchy) -> Watcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let psi_armed = match spawn_psi("/proc/pressure/memory".into(), "/".into(), tx.clone()) {
            Ok(_) => {
                tracing::info!("PSI trigger armed on /proc/pressure/memory (some 150 ms per 1 s)");
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "PSI trigger refused on /proc/pressure/memory; polling its avg10 every sample instead"
                );
                false
            }
        };
        Watcher {
            h,
            notified: HashMap::new(),
            ids: HashMap::new(),
            last_reclaim: HashMap::new(),
            tx,
            rx,
            psi_armed,
            psi_high: false,
            last_emit: HashMap::new(),
            failures: Vec::new(),
            warned: Default::default(),
            tasks: HashMap::new(),
            full: 0,
        }
    }

    /// Watches the listed cgroups ([`list_tree`], taken off the agent's loop): notifications
    /// on the top levels when `notify`, reclaim counting on all; returns the kernfs ids that
    /// are new (to add to the kernel's `WATCHED_MEMCGS`).
    pub fn watch_listed(&mut self, listed: &[TreeEntry], notify: bool) -> Vec<u64> {
        let mut new_ids = Vec::new();
        for e in listed {
            if !self.ids.contains_key(&e.ino)
                && self.ids.len() >= probe_common::WATCHED_MEMCGS_MAX as usize
            {
                self.full += 1;
                continue;
            }
            if self.ids.insert(e.ino, e.path.clone()).is_none() {
                new_ids.push(e.ino);
            }
            if notify && e.depth <= 3 && !self.notified.contains_key(&e.path) {
                self.register(&e.path);
            }
        }
        new_ids
    }

    /// Forgets the cgroups that are no longer listed (removed since): their notification
    /// tasks stop, their reclaim counters go. Returns the kernfs ids to remove from the
    /// kernel's `WATCHED_MEMCGS` and `RECLAIM_STATS`.
    pub fn prune(&mut self, listed: &[TreeEntry]) -> Vec<u64> {
        let present: HashSet<u64> = listed.iter().map(|e| e.ino).collect();
        let paths: HashSet<&str> = listed.iter().map(|e| e.path.as_str()).collect();
        let gone: Vec<u64> = self
            .ids
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in &gone {
            self.ids.remove(id);
            self.last_reclaim.remove(id);
        }
        self.notified
            .retain(|path, _| paths.contains(path.as_str()));
        self.tasks.retain(|path, handles| {
            let keep = paths.contains(path.as_str());
            if !keep {
                for h in handles.iter() {
                    h.abort();
                }
            }
            keep
        });
        self.last_emit
            .retain(|(path, _), _| path == "/" || paths.contains(path.as_str()));
        gone
    }

    /// Cgroups with reclaim counting (kernfs ids known), with notifications, and notification
    /// tasks running: what `oomprobe_map_entries` and the soak watch.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let tasks = self
            .tasks
            .values()
            .map(|h| h.iter().filter(|t| !t.is_finished()).count())
            .sum();
        (self.ids.len(), self.notified.len(), tasks)
    }

    /// Entries of the watcher's other per-cgroup state: reclaim counts last reported and the
    /// notification rate limiter's, by `oomprobe_map_entries{map}` name.
    pub fn more_sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("agent_memcg_last_reclaim", self.last_reclaim.len()),
            ("agent_memcg_last_emit", self.last_emit.len()),
            (
                "agent_memcg_task_slots",
                self.tasks.values().map(Vec::len).sum(),
            ),
        ]
    }

    /// Cgroups not watched since the last call because `WATCHED_MEMCGS` was full.
    pub fn take_full(&mut self) -> u64 {
        std::mem::take(&mut self.full)
    }

    fn register(&mut self, path: &str) {
        let dir = self.h.dir(path);
        let mut tasks = Vec::new();
        let counters = match &self.h {
            Hierarchy::V1(_) => {
                match v1_register(&dir, "memory.oom_control", "") {
                    Ok((efd, keep)) => tasks.push(spawn_eventfd(
                        efd,
                        keep,
                        self.tx.clone(),
                        dir.clone(),
                        path.into(),
                        "oom".into(),
                    )),
                    Err(e) => self.refused("oom_control", path, &e),
                }
                for level in ["medium", "critical"] {
                    match v1_register(&dir, "memory.pressure_level", level) {
                        Ok((efd, keep)) => tasks.push(spawn_eventfd(
                            efd,
                            keep,
                            self.tx.clone(),
                            dir.clone(),
                            path.into(),
                            format!("pressure_{level}"),
                        )),
                        Err(e) => self.refused("pressure_level", path, &e),
                    }
                }
                HashMap::new()
            }
            Hierarchy::V2(_) => {
                match spawn_psi(
                    dir.join("memory.pressure"),
                    path.to_string(),
                    self.tx.clone(),
                ) {
                    Ok(t) => tasks.push(t),
                    Err(e) => self.refused("psi", path, &e),
                }
                keyed(&std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default())
            }
        };
        self.notified.insert(path.to_string(), counters);
        self.tasks.insert(path.to_string(), tasks);
    }

    /// A notification the kernel refused (`EROFS`: cgroupfs mounted read-only; `EACCES`: no
    /// write permission): counted for `oomprobe_memcg_registration_failures_total{kind}`, and a
    /// warning the first time for each kind, since that cgroup's early warnings are lost.
    fn refused(&mut self, kind: &'static str, cgroup: &str, e: &std::io::Error) {
        self.failures.push(kind);
        let hint = match e.raw_os_error() {
            Some(libc::EROFS) => "cgroupfs is mounted read-only: mount /sys/fs/cgroup read-write",
            Some(libc::EACCES) | Some(libc::EPERM) => "no write permission on the cgroup's files",
            _ => "",
        };
        if self.warned.insert(kind) {
            tracing::warn!(cgroup, kind, error = %e, hint, "memory cgroup notification refused; further refusals are counted in oomprobe_memcg_registration_failures_total");
        } else {
            tracing::debug!(cgroup, kind, error = %e, "memory cgroup notification refused");
        }
    }

    /// Refusals since the last call, one `kind` (`oom_control`, `pressure_level`, `psi`) each.
    pub fn take_registration_failures(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.failures)
    }

    /// Without a PSI trigger: an event when `some avg10` crosses the threshold upwards.
    pub fn poll_psi(&mut self) -> Vec<MemcgEvent> {
        if self.psi_armed {
            return Vec::new();
        }
        let text = std::fs::read_to_string("/proc/pressure/memory").unwrap_or_default();
        let avg10 = text
            .lines()
            .find(|l| l.starts_with("some"))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let high = avg10 >= PSI_POLL_THRESHOLD;
        let rising = high && !self.psi_high;
        self.psi_high = high;
        if rising {
            vec![event(
                "/",
                "psi",
                1,
                text.lines().next().unwrap_or("").to_string(),
            )]
        } else {
            Vec::new()
        }
    }

    /// Turns a raw notification into an event, reading the cgroup's counters. Notifications of
    /// one kind for one cgroup are coalesced to one event per second (vmpressure fires in bursts).
    pub fn describe(&mut self, cgroup: &str, kind: &str) -> Vec<MemcgEvent> {
        let now = std::time::Instant::now();
        let key = (cgroup.to_string(), kind.to_string());
        let suppressed = match self.last_emit.get_mut(&key) {
            Some((at, n))
                if now.duration_since(*at) < std::time::Duration::from_secs(1) && kind != "oom" =>
            {
                *n += 1;
                return Vec::new();
            }
            Some((_, n)) => std::mem::take(n),
            None => 0,
        };
        self.last_emit.insert(key, (now, 0));
        let dir = self.h.dir(cgroup);
        match kind {
            "oom" => {
                let c = keyed(
                    &std::fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default(),
                );
                vec![event(
                    cgroup,
                    "oom",
                    c.get("oom_kill").copied().unwrap_or(0),
                    format!(
                        "under_oom={} oom_kill={}",
                        c.get("under_oom").unwrap_or(&0),
                        c.get("oom_kill").unwrap_or(&0)
                    ),
                )]
            }
            "psi" => {
                let file = if cgroup == "/" {
                    "/proc/pressure/memory".into()
                } else {
                    dir.join("memory.pressure")
                };
                let text = std::fs::read_to_string(file).unwrap_or_default();
                vec![event(
                    cgroup,
                    "psi",
                    1,
                    text.lines().next().unwrap_or("").to_string(),
                )]
            }
            other => vec![event(
                cgroup,
                other,
                1 + suppressed,
                if suppressed > 0 {
                    format!("{suppressed} more coalesced")
                } else {
                    String::new()
                },
            )],
        }
    }

    /// v2: `memory.events` deltas since the last poll (oom, oom_kill, max, high).
    pub fn poll_v2(&mut self) -> Vec<MemcgEvent> {
        let mut out = Vec::new();
        if !matches!(self.h, Hierarchy::V2(_)) {
            return out;
        }
        let paths: Vec<String> = self.notified.keys().cloned().collect();
        for path in paths {
            let now = keyed(
                &std::fs::read_to_string(self.h.dir(&path).join("memory.events"))
                    .unwrap_or_default(),
            );
            let last = self.notified.entry(path.clone()).or_default();
            for key in ["oom", "oom_kill", "max", "high", "oom_group_kill"] {
                let (n, l) = (
                    now.get(key).copied().unwrap_or(0),
                    last.get(key).copied().unwrap_or(0),
                );
                if n > l {
                    out.push(event(&path, key, n - l, format!("memory.events {key} {n}")));
                }
            }
            *last = now;
        }
        out
    }

    /// Reclaim deltas from the kernel's counters, by cgroup path.
    pub fn reclaim(&mut self, stats: &[(u64, probe_common::ReclaimStats)]) -> Vec<MemcgEvent> {
        let mut by_path: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for (id, s) in stats {
            let last = self.last_reclaim.insert(*id, s.count).unwrap_or(0);
            if s.count > last {
                let path = self
                    .ids
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("id:{id}"));
                let e = by_path.entry(path).or_default();
                // Saturating: two ids of one path (a cgroup removed and made again) add up
                // the kernel's u64 counters.
                e.0 = e.0.saturating_add(s.count - last);
                e.1 = e.1.saturating_add(s.pages);
                e.2 = e.2.saturating_add(s.ns);
            }
        }
        by_path
            .into_iter()
            .map(|(path, (n, pages, ns))| {
                event(
                    &path,
                    "reclaim",
                    n,
                    format!(
                        "{pages} pages reclaimed in {:.1} ms in total",
                        ns as f64 / 1e6
                    ),
                )
            })
            .collect()
    }

    pub fn path_of(&self, id: u64) -> Option<&str> {
        self.ids.get(&id).map(String::as_str)
    }
}

/// Major page faults per second of the kubelet at which, with its cgroup at its limit, it is
/// thrashing (a kubelet at steady state takes almost none: 0-4 over minutes on the lab's; the C
/// stand-in re-reading a 64 MiB file under a 16 MiB limit took 13,584/s on this kernel).
pub const THRASH_FAULTS_PER_S: f64 = 50.0;
/// Usage over limit at or above which the kubelet's cgroup counts as at its limit.
pub const THRASH_AT_LIMIT: f64 = 0.95;
/// While thrashing goes on, one event at most this often (ns), whatever the kubelet's pid.
pub const THRASH_EVERY_NS: u64 = 60_000_000_000;
/// The shortest time the fault rate is taken over (ns; the shortest `--sample-interval`): a
/// sample sooner than this after the last keeps the last as the baseline.
pub const THRASH_MIN_WINDOW_NS: u64 = 1_000_000_000;

/// The kubelet thrashing in its own memory cgroup: at its limit, it takes major page faults
/// (its binary's text and the files it reads, reclaimed from its cgroup and read back from
/// disk) instead of being OOM-killed, the kernel's reclaim always finding clean page cache to
/// drop. It can stall there (PLEG relists, status updates, the node NotReady) without a kill
/// ever coming; the lab's kubelet did under a kube-reserved a few MiB above its anon memory.
/// Fed once a sample; no I/O of its own.
#[derive(Debug, Default)]
pub struct KubeletThrash {
    /// The last sample: (pid, CLOCK_MONOTONIC ns, `/proc/<pid>/stat` majflt).
    last: Option<(u32, u64, u64)>,
    /// The last event's time, and the kubelet's pid and majflt then.
    reported: Option<(u64, u32, u64)>,
}

impl KubeletThrash {
    /// One sample of the kubelet `pid` (`major_faults`: its `/proc/<pid>/stat` majflt, the
    /// process's major page faults since it started) and its memory cgroup (`usage_bytes`,
    /// `limit_bytes`: v1 `memory.usage_in_bytes`/`memory.limit_in_bytes`, v2
    /// `memory.current`/`memory.max`). An event of kind `thrashing` when, since the previous
    /// sample of the same process (at least [`THRASH_MIN_WINDOW_NS`] before), it took at least
    /// [`THRASH_FAULTS_PER_S`] major faults a second with its cgroup at [`THRASH_AT_LIMIT`] of
    /// its limit or above, and no event came in the last [`THRASH_EVERY_NS`] (a restarted
    /// kubelet included); `count` is the major faults since the last event (since the previous
    /// sample for the first of a process).
    pub fn observe(
        &mut self,
        cgroup: &str,
        pid: u32,
        ktime_ns: u64,
        major_faults: u64,
        usage_bytes: Option<u64>,
        limit_bytes: Option<u64>,
    ) -> Option<MemcgEvent> {
        if let Some((lpid, lt, _)) = self.last {
            if lpid == pid && (lt..lt.saturating_add(THRASH_MIN_WINDOW_NS)).contains(&ktime_ns) {
                return None;
            }
        }
        let last = self.last.replace((pid, ktime_ns, major_faults));
        let (lpid, lt, lf) = last?;
        if lpid != pid {
            return None;
        }
        let secs = ktime_ns.checked_sub(lt)? as f64 / 1e9;
        if secs <= 0.0 {
            return None;
        }
        let rate = major_faults.checked_sub(lf)? as f64 / secs;
        let (usage, limit) = (usage_bytes?, limit_bytes.filter(|&l| l > 0)?);
        let at_limit = usage as f64 >= THRASH_AT_LIMIT * limit as f64;
        if rate < THRASH_FAULTS_PER_S || !at_limit {
            return None;
        }
        let since = match self.reported {
            Some((t, _, _)) if ktime_ns.saturating_sub(t) < THRASH_EVERY_NS => return None,
            Some((_, rpid, f)) if rpid == pid => major_faults.saturating_sub(f),
            _ => major_faults.saturating_sub(lf),
        };
        self.reported = Some((ktime_ns, pid, major_faults));
        Some(event(
            cgroup,
            "thrashing",
            since,
            format!(
                "kubelet pid {pid}: {rate:.0} major page faults/s with {} of its {} MiB limit in use: the kernel reclaims its page cache (its binary's text, the files it reads) and it reads them back, instead of an OOM kill; it can stall here without being killed (raise kube-reserved, keep its log and binary cache out of its cgroup)",
                usage >> 20,
                limit >> 20
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thrashing_at_the_limit_is_named_once_a_minute() {
        let mut t = KubeletThrash::default();
        let s = 1_000_000_000u64;
        let (lim, at) = (Some(16u64 << 20), Some(16u64 << 20));
        // The first sample has nothing to compare with.
        assert_eq!(t.observe("/k", 7, s, 1_000, at, lim), None);
        // 13,584/s at the limit (measured with the C stand-in): named.
        let e = t
            .observe("/k", 7, 2 * s, 14_584, at, lim)
            .expect("thrashing");
        assert_eq!(
            (e.kind.as_str(), e.count, e.cgroup.as_str()),
            ("thrashing", 13_584, "/k")
        );
        assert!(
            e.detail
                .starts_with("kubelet pid 7: 13584 major page faults/s with 16 of its 16 MiB"),
            "{}",
            e.detail
        );
        // Still thrashing: once a minute, counting the faults since the last event.
        assert_eq!(t.observe("/k", 7, 3 * s, 28_000, at, lim), None);
        let e = t
            .observe("/k", 7, 62 * s, 900_000, at, lim)
            .expect("a minute later");
        assert_eq!(e.count, 900_000 - 14_584);
        // Faults but well under the limit (a kubelet starting, reading its binary): not thrashing.
        let mut t = KubeletThrash::default();
        t.observe("/k", 7, s, 0, Some(8 << 20), lim);
        assert_eq!(t.observe("/k", 7, 2 * s, 10_000, Some(8 << 20), lim), None);
        // At the limit with few faults (anon memory growing into it): not thrashing.
        let mut t = KubeletThrash::default();
        t.observe("/k", 7, s, 0, at, lim);
        assert_eq!(t.observe("/k", 7, 2 * s, 49, at, lim), None);
        // No limit, a new pid, a counter going back or time not moving: nothing, no panic.
        let mut t = KubeletThrash::default();
        t.observe("/k", 7, s, 0, at, None);
        assert_eq!(t.observe("/k", 7, 2 * s, 10_000, at, None), None);
        assert_eq!(t.observe("/k", 8, 3 * s, 20_000, at, lim), None);
        assert_eq!(t.observe("/k", 8, 4 * s, 10, at, lim), None);
        assert_eq!(t.observe("/k", 8, 4 * s, u64::MAX, at, lim), None);
        assert_eq!(t.observe("/k", 8, 3 * s, u64::MAX, at, lim), None);
    }

    /// Two samples close together (a tick burst after the loop was held, a walk that outlived
    /// the minute and finished with the next): one major fault in 10 ms is not 100 a second of
    /// thrashing. The rate is taken over a second at least.
    #[test]
    fn one_fault_between_close_samples_is_not_thrashing() {
        let mut t = KubeletThrash::default();
        let (lim, at) = (Some(16u64 << 20), Some(16u64 << 20));
        let s = 1_000_000_000u64;
        t.observe("/k", 7, 10 * s, 500, at, lim);
        assert_eq!(t.observe("/k", 7, 10 * s + 10_000_000, 501, at, lim), None);
        assert_eq!(t.observe("/k", 7, 10 * s + 20_000_000, 502, at, lim), None);
        // The second after the first sample: 2 faults in it, still nothing.
        assert_eq!(t.observe("/k", 7, 11 * s, 502, at, lim), None);
        // Real thrashing over close samples is still named once the second has passed.
        let e = t
            .observe("/k", 7, 12 * s, 20_502, at, lim)
            .expect("thrashing");
        assert_eq!(e.count, 20_000);
    }

    /// A kubelet that restarts while thrashing (the OOM flap cycle restarts it every few
    /// seconds) is still named once a minute at most, as the README says, not once a process.
    #[test]
    fn a_restarting_kubelet_thrashing_is_named_once_a_minute() {
        let mut t = KubeletThrash::default();
        let (lim, at) = (Some(16u64 << 20), Some(16u64 << 20));
        let s = 1_000_000_000u64;
        let mut events = Vec::new();
        // A new pid every 20 s, each sampled every 10 s while faulting 10,000/s.
        for (i, at_s) in (0..12u64).map(|i| (i, i * 10)) {
            let pid = 100 + (i / 2) as u32;
            let faults = (at_s % 20) * 10_000;
            events.extend(t.observe("/k", pid, at_s * s, faults, at, lim));
        }
        assert_eq!(events.len(), 2, "{events:?}");
        // The first counts the faults of that process since its previous sample.
        assert_eq!(events[0].count, 100_000);
    }

    /// Two kernel ids of one path (a cgroup removed and made again at the same path) with
    /// counters near u64::MAX: their sums saturate, no overflow panic (debug) or wrap (release).
    #[test]
    fn reclaim_sums_of_one_path_saturate() {
        let dir = std::env::temp_dir().join(format!("oomprobe-reclaim-{}", std::process::id()));
        let mut w = Watcher::new(Hierarchy::V1(dir));
        w.ids.insert(1, "/kubepods/pod1".into());
        w.ids.insert(2, "/kubepods/pod1".into());
        let big = probe_common::ReclaimStats {
            count: u64::MAX,
            ns: u64::MAX,
            pages: u64::MAX,
        };
        let ev = w.reclaim(&[(1, big), (2, big)]);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].cgroup.as_str(), ev[0].count),
            ("/kubepods/pod1", u64::MAX)
        );
        assert!(
            ev[0].detail.starts_with(&format!("{} pages", u64::MAX)),
            "{}",
            ev[0].detail
        );
    }

    fn entry(path: &str, ino: u64, depth: u32) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            ino,
            depth,
        }
    }

    #[tokio::test]
    async fn removed_cgroups_are_forgotten_and_a_full_map_is_counted() {
        let dir = std::env::temp_dir().join(format!("oomprobe-watcher-{}", std::process::id()));
        let mut w = Watcher::new(Hierarchy::V1(dir));
        let a = entry("/kubepods", 10, 0);
        let b = entry("/kubepods/pod1", 11, 1);
        let c = entry("/kubepods/pod2", 12, 1);
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(w.watch_listed(&all, false), vec![10, 11, 12]);
        assert!(w.watch_listed(&all, false).is_empty(), "already watched");
        assert!(w.prune(&all).is_empty());
        // pod1 removed.
        let now = [a.clone(), c.clone()];
        assert_eq!(w.prune(&now), vec![11]);
        assert_eq!(w.sizes().0, 2);
        assert_eq!(w.path_of(11), None);
        assert_eq!(w.path_of(12), Some("/kubepods/pod2"));
        // Listed again (it came back): watched again.
        assert_eq!(w.watch_listed(&[a, b, c], false), vec![11]);
        assert_eq!(w.take_full(), 0);
        // Past WATCHED_MEMCGS_MAX: not watched, counted.
        let max = probe_common::WATCHED_MEMCGS_MAX as u64;
        let many: Vec<TreeEntry> = (0..max + 5)
            .map(|i| entry(&format!("/kubepods/p{i}"), 1000 + i, 1))
            .collect();
        let added = w.watch_listed(&many, false);
        assert_eq!(added.len() as u64, max - 3);
        assert_eq!(w.sizes().0 as u64, max);
        assert_eq!(w.take_full(), 8);
        assert_eq!(w.take_full(), 0);
        // Everything gone: nothing kept.
        assert_eq!(w.prune(&[]).len() as u64, max);
        assert_eq!(w.sizes(), (0, 0, 0));
    }
}
