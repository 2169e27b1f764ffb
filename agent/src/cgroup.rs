//! Memory cgroups on both hierarchies: where they are mounted, what a cgroup's limit and usage
//! are, which cgroup's limit fired for an OOM kill, and what pod a path belongs to.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// "No limit" on cgroup v1 is PAGE_COUNTER_MAX pages, printed as a huge byte count.
const V1_UNLIMITED_ABOVE: u64 = 1 << 62;

/// [`MemcgState::source`]: the kernel's `page_counter`, read at the kill.
pub const SOURCE_PAGE_COUNTER: &str = "page_counter";
/// [`MemcgState::source`]: the cgroup's files, read when the agent handled the event.
pub const SOURCE_CGROUP_FILES: &str = "cgroup_files";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1 memory controller mounted at this path.
    V1(PathBuf),
    /// cgroup v2 unified hierarchy with the memory controller, mounted at this path.
    V2(PathBuf),
}

impl Hierarchy {
    /// Finds the memory controller from `/proc/self/mountinfo` text.
    pub fn from_mountinfo(text: &str) -> Option<Hierarchy> {
        let mut v2 = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let _source = r.next();
            let opts = r.next().unwrap_or("");
            if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
                return Some(Hierarchy::V1(PathBuf::from(mount_point)));
            }
            if fstype == "cgroup2" && v2.is_none() {
                let controllers = Path::new(mount_point).join("cgroup.controllers");
                let has_memory = std::fs::read_to_string(controllers)
                    .map(|c| c.split_whitespace().any(|c| c == "memory"))
                    .unwrap_or(false);
                if has_memory {
                    v2 = Some(Hierarchy::V2(PathBuf::from(mount_point)));
                }
            }
        }
        v2
    }

    pub fn detect() -> Option<Hierarchy> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&text)
    }

    pub fn root(&self) -> &Path {
        match self {
            Hierarchy::V1(p) | Hierarchy::V2(p) => p,
        }
    }

    pub fn version(&self) -> u8 {
        match self {
            Hierarchy::V1(_) => 1,
            Hierarchy::V2(_) => 2,
        }
    }

    /// Filesystem directory of a cgroup path like `/kubepods/pod1`.
    pub fn dir(&self, cgroup: &str) -> PathBuf {
        self.root().join(cgroup.trim_start_matches('/'))
    }

    /// Memory cgroup path of a process from `/proc/<pid>/cgroup`, if it still exists.
    pub fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.parse_proc_cgroup(&text)
    }

    pub fn parse_proc_cgroup(&self, text: &str) -> Option<String> {
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = match self {
                Hierarchy::V1(_) => controllers.split(',').any(|c| c == "memory"),
                Hierarchy::V2(_) => controllers.is_empty(),
            };
            if wanted {
                return Some(path.to_string());
            }
        }
        None
    }

    /// Limit and usage of one memory cgroup, read now.
    pub fn memcg(&self, cgroup: &str) -> Option<MemcgState> {
        let dir = self.dir(cgroup);
        if !dir.is_dir() {
            return None;
        }
        let read_u64 = |file: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let state = match self {
            Hierarchy::V1(_) => MemcgState {
                path: cgroup.to_string(),
                limit_bytes: read_u64("memory.limit_in_bytes").filter(|&l| l < V1_UNLIMITED_ABOVE),
                usage_bytes: read_u64("memory.usage_in_bytes"),
                peak_bytes: read_u64("memory.max_usage_in_bytes"),
                failcnt: read_u64("memory.failcnt"),
                oom_events: None,
                oom_group: None,
                source: SOURCE_CGROUP_FILES,
            },
            Hierarchy::V2(_) => MemcgState {
                path: cgroup.to_string(),
                // "max" does not parse: no limit.
                limit_bytes: read_u64("memory.max"),
                usage_bytes: read_u64("memory.current"),
                peak_bytes: read_u64("memory.peak"),
                failcnt: None,
                oom_events: std::fs::read_to_string(dir.join("memory.events.local"))
                    .ok()
                    .and_then(|t| keyed_value(&t, "oom")),
                oom_group: read_u64("memory.oom.group").map(|v| v == 1),
                source: SOURCE_CGROUP_FILES,
            },
        };
        Some(state)
    }

    /// Finds a cgroup directory by kernfs node id (its inode number), for paths deeper than the
    /// kernel probe keeps.
    pub fn find_by_id(&self, id: u64) -> Option<String> {
        fn walk(dir: &Path, id: u64, budget: &mut u32) -> Option<PathBuf> {
            *budget = budget.checked_sub(1)?;
            let entries = std::fs::read_dir(dir).ok()?;
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                if meta.ino() == id {
                    return Some(e.path());
                }
                if let Some(p) = walk(&e.path(), id, budget) {
                    return Some(p);
                }
            }
            None
        }
        let mut budget = 100_000;
        let found = walk(self.root(), id, &mut budget)?;
        let rel = found.strip_prefix(self.root()).ok()?;
        Some(format!("/{}", rel.display()))
    }

    /// The memory cgroup whose limit fired for a memcg OOM kill: the nearest ancestor of the OOM
    /// trigger's cgroup (the charge that failed was the trigger's) that has a limit and is at it.
    /// The victim's cgroup is used only when the trigger's is unknown: a dying victim's
    /// `/proc/<pid>/cgroup` may already read `/`.
    pub fn oom_domain(&self, trigger: Option<&str>, victim: Option<&str>) -> Option<MemcgState> {
        let start = trigger.or(victim)?.to_string();
        let mut first_limited = None;
        for path in ancestors(&start) {
            let Some(state) = self.memcg(&path) else {
                continue;
            };
            let Some(limit) = state.limit_bytes else {
                continue;
            };
            if state.oom_events.is_some_and(|n| n > 0) {
                return Some(state);
            }
            let usage = state.usage_bytes.unwrap_or(0);
            // At the limit, give or take what the kernel already uncharged from the victim.
            // Saturating: `memory.usage_in_bytes` is a file's u64 (u64::MAX overflowed).
            if state.oom_events.is_none() && usage.saturating_add(limit / 10) >= limit {
                return Some(state);
            }
            if first_limited.is_none() {
                first_limited = Some(state);
            }
        }
        first_limited
    }
}

impl Hierarchy {
    /// The cgroup a group OOM kill takes down, from the files: the highest cgroup with
    /// `memory.oom.group` 1 from `victim` up to `domain` (the whole chain when `None`), as the
    /// kernel's `mem_cgroup_get_oom_group` walks it. v2 only (v1 has no `memory.oom.group`).
    pub fn oom_group_of(&self, victim: &str, domain: Option<&str>) -> Option<String> {
        if self.version() != 2 {
            return None;
        }
        let mut group = None;
        for path in ancestors(victim) {
            if path == "/" {
                break;
            }
            let set = std::fs::read_to_string(self.dir(&path).join("memory.oom.group"))
                .is_ok_and(|t| t.trim() == "1");
            if set {
                group = Some(path.clone());
            }
            if Some(path.as_str()) == domain {
                break;
            }
        }
        group
    }

    /// `memory.events.local` `oom_group_kill` of one cgroup (v2): group kills it took.
    pub fn group_kills(&self, path: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir(path).join("memory.events.local")).ok()?;
        keyed_value(&text, "oom_group_kill")
    }
}

fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `/a/b` -> [`/a/b`, `/a`, `/`].
pub fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (0..=parts.len())
        .rev()
        .map(|n| format!("/{}", parts[..n].join("/")))
        .collect()
}

/// Limit and usage of one memory cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemcgState {
    pub path: String,
    /// v1 `memory.limit_in_bytes` (null above 2^62: unlimited), v2 `memory.max` (null: `max`);
    /// or the kernel's `page_counter.max` at the kill (see `source`).
    pub limit_bytes: Option<u64>,
    /// v1 `memory.usage_in_bytes`, v2 `memory.current`; or `page_counter.usage` at the kill.
    pub usage_bytes: Option<u64>,
    /// v1 `memory.max_usage_in_bytes`, v2 `memory.peak`; or `page_counter.watermark` at the
    /// kill (kprobe tier).
    pub peak_bytes: Option<u64>,
    /// Where `limit_bytes` and `usage_bytes` come from: [`SOURCE_PAGE_COUNTER`] (the kernel's
    /// counter of this memcg read at the kill, before the victim's memory is uncharged: the
    /// limit as it fired) or [`SOURCE_CGROUP_FILES`] (the cgroup's files, read when the agent
    /// handled the event: milliseconds later, so a limit changed since reads as the new one).
    pub source: &'static str,
    #[serde(skip)]
    pub failcnt: Option<u64>,
    #[serde(skip)]
    pub oom_events: Option<u64>,
    /// v2 `memory.oom.group`: the kernel kills the whole cgroup together (Kubernetes 1.28+).
    pub oom_group: Option<bool>,
}

impl MemcgState {
    /// `path`'s state with the kernel's `page_counter` reading (pages of `page_bytes`) over the
    /// files' limit and usage (`files`: what the cgroup's files said, `None` when the cgroup is
    /// gone): the limit and the charge as they were at the kill. `max_pages` at
    /// `PAGE_COUNTER_MAX` (no limit) reads as no limit, as the files do; a negative
    /// `usage_pages` (the kernel's signed counter read mid-underflow) as no usage known.
    pub fn at_kill(
        path: &str,
        files: Option<MemcgState>,
        max_pages: u64,
        usage_pages: u64,
        watermark_pages: Option<u64>,
        page_bytes: u64,
    ) -> MemcgState {
        let mut s = files.unwrap_or_else(|| MemcgState {
            path: path.to_string(),
            limit_bytes: None,
            usage_bytes: None,
            peak_bytes: None,
            failcnt: None,
            oom_events: None,
            oom_group: None,
            source: SOURCE_CGROUP_FILES,
        });
        let limit = max_pages.saturating_mul(page_bytes);
        s.limit_bytes = (limit < V1_UNLIMITED_ABOVE).then_some(limit);
        // `usage` is an `atomic_long_t`: read negative (an uncharge underflow), it is unknown.
        s.usage_bytes =
            (usage_pages <= i64::MAX as u64).then(|| usage_pages.saturating_mul(page_bytes));
        if let Some(w) = watermark_pages {
            s.peak_bytes = Some(w.saturating_mul(page_bytes));
        }
        s.source = SOURCE_PAGE_COUNTER;
        s
    }
}

/// Pod identity from a kubepods cgroup path (systemd or cgroupfs driver; containerd, CRI-O,
/// Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub pod_uid: String,
    pub qos: String,
    pub container_id: Option<String>,
}

pub fn pod_identity(path: &str) -> Option<PodIdentity> {
    if !path.contains("kubepods") {
        return None;
    }
    let mut qos = "guaranteed".to_string();
    let mut pod_uid = None;
    let mut container_id = None;
    for comp in path.split('/').filter(|s| !s.is_empty()) {
        let base = comp.trim_end_matches(".slice").trim_end_matches(".scope");
        if let Some(uid) = base.rsplit_once("-pod").map(|(_, u)| u).or_else(|| {
            // cgroupfs driver: /kubepods/burstable/pod<uid>/<container>
            base.strip_prefix("pod")
        }) {
            pod_uid = Some(uid.replace('_', "-"));
            continue;
        }
        if base == "burstable" || base.ends_with("-burstable") {
            qos = "burstable".into();
        } else if base == "besteffort" || base.ends_with("-besteffort") {
            qos = "besteffort".into();
        } else if pod_uid.is_some() {
            let id = base
                .rsplit_once('-')
                .map(|(_, id)| id)
                .unwrap_or(base)
                .to_string();
            container_id = Some(id);
        }
    }
    Some(PodIdentity {
        pod_uid: pod_uid?,
        qos,
        container_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 cgroup whose `memory.usage_in_bytes` reads u64::MAX (a file's value, not the
    /// kernel's own) is at its limit: the OOM domain, not an overflow panic (debug) or a sum
    /// wrapped to under the limit (release) that passed it over.
    #[test]
    fn a_usage_of_u64_max_is_at_the_limit_not_an_overflow() {
        let root = std::env::temp_dir().join(format!("oomprobe-usage-max-{}", std::process::id()));
        let pod = root.join("kubepods/pod1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        std::fs::write(pod.join("memory.usage_in_bytes"), format!("{}\n", u64::MAX)).unwrap();
        let h = Hierarchy::V1(root.clone());
        let d = h.oom_domain(Some("/kubepods/pod1"), None);
        std::fs::remove_dir_all(&root).unwrap();
        let d = d.expect("the limited cgroup");
        assert_eq!(
            (d.path.as_str(), d.usage_bytes),
            ("/kubepods/pod1", Some(u64::MAX))
        );
    }

    /// `page_counter.usage` is an `atomic_long_t`: a kernel that uncharges more than it charged
    /// (its "page_counter underflow" warning) leaves it briefly negative, and a read in that
    /// window is a huge u64. That is no usage of 16 EiB: unknown. The limit (`unsigned long`
    /// `max`) at PAGE_COUNTER_MAX reads as none on every page size; u64::MAX pages too.
    #[test]
    fn a_negative_page_counter_usage_is_unknown_not_16_eib() {
        let s = MemcgState::at_kill("/k", None, 8192, (-3i64) as u64, Some(8192), 4096);
        assert_eq!(s.limit_bytes, Some(32 << 20));
        assert_eq!(s.usage_bytes, None);
        assert_eq!(s.peak_bytes, Some(32 << 20));
        assert_eq!(s.source, SOURCE_PAGE_COUNTER);
        for page in [4096u64, 16384, 65536] {
            let max = i64::MAX as u64 / page;
            let s = MemcgState::at_kill("/k", None, max, 1, None, page);
            assert_eq!((s.limit_bytes, s.usage_bytes), (None, Some(page)), "{page}");
            // One page under PAGE_COUNTER_MAX is still no limit a cgroup can be given.
            let s = MemcgState::at_kill("/k", None, max - 1, 1, None, page);
            assert_eq!(s.limit_bytes, None, "{page}");
            let s = MemcgState::at_kill("/k", None, u64::MAX, 0, None, page);
            assert_eq!((s.limit_bytes, s.usage_bytes), (None, Some(0)));
        }
    }

    #[test]
    fn finds_v1_memory_mount() {
        let mi =
            "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                  31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n";
        assert_eq!(
            Hierarchy::from_mountinfo(mi),
            Some(Hierarchy::V1("/sys/fs/cgroup/memory".into()))
        );
    }

    #[test]
    fn proc_cgroup_lines() {
        let text = "12:pids:/a\n5:memory:/oomprobe-test-1/x\n0::/user.slice\n";
        let v1 = Hierarchy::V1("/sys/fs/cgroup/memory".into());
        let v2 = Hierarchy::V2("/sys/fs/cgroup".into());
        assert_eq!(
            v1.parse_proc_cgroup(text).as_deref(),
            Some("/oomprobe-test-1/x")
        );
        assert_eq!(v2.parse_proc_cgroup(text).as_deref(), Some("/user.slice"));
        let combined = "4:cpu,memory:/k\n";
        assert_eq!(v1.parse_proc_cgroup(combined).as_deref(), Some("/k"));
    }

    #[test]
    fn ancestry() {
        assert_eq!(ancestors("/a/b"), vec!["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/"), vec!["/"]);
    }

    #[test]
    fn pods_systemd_containerd() {
        let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c_3d4e.slice/cri-containerd-abc123.scope";
        assert_eq!(
            pod_identity(p),
            Some(PodIdentity {
                pod_uid: "1b2c-3d4e".into(),
                qos: "burstable".into(),
                container_id: Some("abc123".into()),
            })
        );
    }

    #[test]
    fn pods_cgroupfs_and_crio() {
        let p = "/kubepods/besteffort/pod0000-11/deadbeef";
        let id = pod_identity(p).unwrap();
        assert_eq!(id.pod_uid, "0000-11");
        assert_eq!(id.qos, "besteffort");
        assert_eq!(id.container_id.as_deref(), Some("deadbeef"));
        let crio = "/kubepods.slice/kubepods-pod99_aa.slice/crio-cafe.scope";
        let id = pod_identity(crio).unwrap();
        assert_eq!(id.pod_uid, "99-aa");
        assert_eq!(id.qos, "guaranteed");
        assert_eq!(id.container_id.as_deref(), Some("cafe"));
        assert_eq!(pod_identity("/system.slice/kubelet.service"), None);
    }
}
