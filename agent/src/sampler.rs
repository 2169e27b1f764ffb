//! Periodic sampling of the node for the leak detectors (one clock: unix seconds): the kubelet's
//! RSS split, its cgroup's usage and limit, node memory, the pod count and the pods' working
//! sets from the kubepods tree (systemd and cgroupfs drivers, v1 and v2 layouts).
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    cgroup::{pod_identity, Hierarchy},
    detect::Sample,
};

/// The kubelet process's memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KubeletMemory {
    pub pid: u32,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub shmem_bytes: u64,
}

/// A sample as it appears in the JSON stream (`Output::Sample`).
#[derive(Debug, Clone, Serialize)]
pub struct SampleEvent {
    pub time: String,
    pub kubelet: Option<KubeletMemory>,
    pub kubelet_cgroup: Option<String>,
    pub kubelet_cgroup_bytes: Option<u64>,
    pub kubelet_working_set_bytes: Option<u64>,
    pub kubelet_limit_bytes: Option<u64>,
    pub node_mem_available_bytes: Option<u64>,
    pub node_mem_total_bytes: Option<u64>,
    pub pods: u64,
    pub workload_working_set_bytes: u64,
    /// Running and exited containers the kubelet holds (from its /metrics).
    pub containers: Option<f64>,
    pub exited_containers: Option<f64>,
    /// From the kubelet's /metrics, when configured and reachable.
    pub kubelet_metrics: Option<crate::kubelet::metrics::KubeletMetrics>,
    /// The pod cgroups this sample's walk found (paths in the memory hierarchy): what
    /// [`PodChurn`] compares between samples.
    #[serde(skip)]
    pub pod_cgroups: Vec<String>,
}

/// Pod churn from the sampler's walks of the kubepods tree: pod cgroups that appeared or
/// disappeared between two walks, per hour. No I/O of its own. A pod created and removed
/// between two walks (shorter-lived than the sample interval) is not seen.
#[derive(Debug, Default)]
pub struct PodChurn {
    prev: Option<(i64, std::collections::HashSet<String>)>,
    /// Pod cgroups created + removed between walks, by the later walk's time, for the last
    /// hour.
    changes: std::collections::VecDeque<(i64, usize)>,
}

/// The window over which [`PodChurn`] counts: one hour.
const CHURN_WINDOW_S: i64 = 3600;

impl PodChurn {
    /// Pods created + removed over the last hour of walks (`t` unix seconds), per hour. A
    /// trailing count, so that any one sample
    /// carries the hour's churn: the store keeps one sample a minute past 6 h, and a per-walk
    /// rate (a Deployment scaled in one 10 s step, then nothing) was lost to that thinning
    /// (recorded on the lab: 15 of 181 samples non-zero, every one-a-minute sample 0). None
    /// for the first walk and when time did not move forward (the set is taken as the new
    /// start).
    pub fn observe(&mut self, t: i64, pods: &[String]) -> Option<f64> {
        let now: std::collections::HashSet<String> = pods.iter().cloned().collect();
        let rate = match &self.prev {
            Some((t0, before)) if t > *t0 => {
                let created = now.difference(before).count();
                let removed = before.difference(&now).count();
                self.changes.push_back((t, created.saturating_add(removed)));
                while self
                    .changes
                    .front()
                    .is_some_and(|(ti, _)| *ti <= t.saturating_sub(CHURN_WINDOW_S))
                {
                    self.changes.pop_front();
                }
                // Counted, not extrapolated: in the agent's first hour the rate is what that
                // part of an hour saw (a node's first minutes, pods starting, are not an
                // hour's churn).
                let n: usize = self.changes.iter().map(|(_, c)| c).sum();
                Some(n as f64)
            }
            _ => {
                self.changes.clear();
                None
            }
        };
        self.prev = Some((t, now));
        rate
    }
}

/// PLEG relists since the previous scrape, from the kubelet's cumulative
/// `kubelet_pleg_relist_duration_seconds_bucket` counters: how many, and how many slower than
/// 1, 5 and 10 s (the real kubelet's buckets, `metrics.DefBuckets`, have `le` 1, 5 and 10; 10 s
/// is the top finite one, so a lifetime p99 can never say "above 10 s").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlegRelists {
    pub relists: f64,
    pub slower_1s: Option<f64>,
    pub slower_5s: Option<f64>,
    pub slower_10s: Option<f64>,
    /// p99 of these relists (seconds, at most the top finite bucket); None without relists.
    pub p99_seconds: Option<f64>,
}

/// The previous scrape's buckets, to difference the next against.
#[derive(Debug, Default)]
pub struct PlegWindow {
    prev: Option<Vec<(f64, f64)>>,
}

impl PlegWindow {
    /// The relists between the previous buckets and `buckets` (sorted by `le`, `+Inf` last).
    /// None for the first scrape and for an empty histogram. A counter that went down (the
    /// kubelet restarted) or a changed bucket layout counts the new buckets from zero.
    pub fn observe(&mut self, buckets: &[(f64, f64)]) -> Option<PlegRelists> {
        if buckets.is_empty() {
            return None;
        }
        let prev = self.prev.replace(buckets.to_vec())?;
        let same_layout = prev.len() == buckets.len()
            && prev
                .iter()
                .zip(buckets)
                .all(|(a, b)| a.0 == b.0 && b.1 >= a.1);
        let diff: Vec<(f64, f64)> = if same_layout {
            prev.iter()
                .zip(buckets)
                .map(|(a, b)| (b.0, b.1 - a.1))
                .collect()
        } else {
            buckets.to_vec()
        };
        let total = diff.last()?.1;
        let slower = |le: f64| {
            diff.iter()
                .find(|b| b.0 == le)
                .map(|b| (total - b.1).max(0.0))
        };
        Some(PlegRelists {
            relists: total,
            slower_1s: slower(1.0),
            slower_5s: slower(5.0),
            slower_10s: slower(10.0),
            p99_seconds: crate::kubelet::metrics::histogram_quantile(&diff, 0.99),
        })
    }
}

pub fn kubelet_memory(pid: u32) -> Option<KubeletMemory> {
    let status = procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?;
    let kb = kib_to_bytes;
    Some(KubeletMemory {
        pid,
        rss_bytes: kb(status.vmrss),
        anon_bytes: kb(status.rssanon),
        file_bytes: kb(status.rssfile),
        shmem_bytes: kb(status.rssshmem),
    })
}

/// A `/proc/<pid>/status` kB figure in bytes, saturating (a u64 of kB past 2^54 overflowed).
fn kib_to_bytes(v: Option<u64>) -> u64 {
    v.unwrap_or(0).saturating_mul(1024)
}

fn meminfo() -> (Option<u64>, Option<u64>) {
    use procfs::Current as _;
    match procfs::Meminfo::current() {
        Ok(m) => (m.mem_available, Some(m.mem_total)),
        Err(_) => (None, None),
    }
}

/// `usage - inactive_file`, the kubelet's notion of a cgroup's working set.
pub fn working_set(h: &Hierarchy, cgroup: &str) -> Option<u64> {
    let state = h.memcg(cgroup)?;
    let usage = state.usage_bytes?;
    let stat = std::fs::read_to_string(h.dir(cgroup).join("memory.stat")).unwrap_or_default();
    let key = match h {
        Hierarchy::V1(_) => "total_inactive_file",
        Hierarchy::V2(_) => "inactive_file",
    };
    let inactive = stat
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// Where kubelets put pods: cgroupfs and systemd drivers.
pub const KUBEPODS_ROOTS: &[&str] = &["/kubepods", "/kubepods.slice"];

/// Pod cgroups under the kubepods tree(s): (path, working set).
pub fn pod_cgroups(h: &Hierarchy, roots: &[String]) -> Vec<(String, u64)> {
    let root = h.root();
    let mut out = Vec::new();
    for top in roots {
        let dir = root.join(top.trim_start_matches('/'));
        if dir.is_dir() {
            walk_pods(h, root, &dir, 0, &mut out);
        }
    }
    out
}

fn walk_pods(h: &Hierarchy, root: &Path, dir: &Path, depth: u32, out: &mut Vec<(String, u64)>) {
    if depth > 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p: PathBuf = e.path();
        if !p.is_dir() {
            continue;
        }
        let rel = format!("/{}", p.strip_prefix(root).unwrap_or(&p).display());
        match pod_identity(&rel) {
            // A pod directory (no container part): count it once.
            Some(id) if id.container_id.is_none() => {
                out.push((rel.clone(), working_set(h, &rel).unwrap_or(0)));
            }
            Some(_) => {}
            None => walk_pods(h, root, &p, depth + 1, out),
        }
    }
}

/// A kernel release as (major, minor, patch), ordered as versions are: 6.10 after 6.9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses a release string (`/proc/sys/kernel/osrelease`, `uname -r`): `6.1.0-28-cloud-amd64`,
    /// `5.15.0`, `6.18`. The patch is 0 when absent.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut it = release.trim().split(['.', '-', '+']);
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(KernelVersion::new(major, minor, patch))
    }

    /// Parses a kernel release as a distribution writes it, strictly: `major.minor.patch`
    /// then any suffix without whitespace (`5.15.0-1034-aws`, `4.18.0-513.el8.x86_64`,
    /// `5.15.153.1-microsoft-standard-WSL2`), or `major.minor` alone or followed by a suffix
    /// starting with `-`, `+`, `_` or `~` (`6.10-rc3`). Anything else (`linux`, `5`, `5.15x`,
    /// `x5.15.0`) is None. For recorded series, where a wrong cell must be refused.
    pub fn parse_release(release: &str) -> Option<KernelVersion> {
        fn number(s: &str) -> Option<(u32, &str)> {
            let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            Some((s[..end].parse().ok()?, &s[end..]))
        }
        if release.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (major, rest) = number(release)?;
        let (minor, rest) = number(rest.strip_prefix('.')?)?;
        let (patch, suffix_ok) = match rest.strip_prefix('.').and_then(number) {
            Some((patch, _)) => (patch, true),
            None => (0, rest.is_empty() || rest.starts_with(['-', '+', '_', '~'])),
        };
        suffix_ok.then_some(KernelVersion::new(major, minor, patch))
    }

    /// The running kernel's.
    pub fn running() -> Option<KernelVersion> {
        KernelVersion::parse(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
    }

    /// The same major and minor (any patch): the line a known issue is tied to.
    pub fn is_line(self, major: u32, minor: u32) -> bool {
        self.major == major && self.minor == minor
    }

    /// The series' `kernel` column (persisted and in recorded CSVs): major.minor as a decimal,
    /// two digits of minor from 10 on (5.15). Only ever compared for equality with one line.
    pub fn series_value(self) -> f64 {
        let minor = f64::from(self.minor);
        f64::from(self.major) + minor / if minor >= 10.0 { 100.0 } else { 10.0 }
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Takes one sample. `pid`: the kubelet process followed now, if any.
pub fn sample(
    h: Option<&Hierarchy>,
    kubepods: &[String],
    pid: Option<u32>,
    restarts: u64,
    now: i64,
) -> (Sample, SampleEvent) {
    let mem = pid.and_then(kubelet_memory);
    let cg = match (h, pid) {
        (Some(h), Some(p)) => h.cgroup_of(p),
        _ => None,
    };
    let state = match (h, &cg) {
        (Some(h), Some(c)) => h.memcg(c),
        _ => None,
    };
    let ws = match (h, &cg) {
        (Some(h), Some(c)) => working_set(h, c),
        _ => None,
    };
    let pods = h.map(|h| pod_cgroups(h, kubepods)).unwrap_or_default();
    let workload: u64 = pods.iter().map(|(_, w)| w).sum();
    let (avail, total) = meminfo();
    let s = Sample {
        t: now,
        // 0 while no kubelet runs: the store's column has no "missing" (a record without it is
        // invalid to every agent that reads it), so the detectors read 0 as "no kubelet"
        // (`detect::kubelet_seen`), not a level.
        kubelet_rss_bytes: mem.as_ref().map_or(0.0, |m| m.rss_bytes as f64),
        pods: pods.len() as f64,
        kubelet_cgroup_bytes: state.as_ref().and_then(|s| s.usage_bytes).map(|v| v as f64),
        kubelet_limit_bytes: state.as_ref().and_then(|s| s.limit_bytes).map(|v| v as f64),
        node_mem_available_bytes: avail.map(|v| v as f64),
        node_mem_total_bytes: total.map(|v| v as f64),
        workload_working_set_bytes: Some(workload as f64),
        kubelet_restarts: Some(restarts as f64),
        cgroup_version: h.map(|h| f64::from(h.version())),
        kernel: KernelVersion::running().map(KernelVersion::series_value),
        ..Default::default()
    };
    let ev = SampleEvent {
        time: crate::clock::rfc3339(
            time::OffsetDateTime::from_unix_timestamp(now)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        ),
        kubelet: mem,
        kubelet_cgroup: cg,
        kubelet_cgroup_bytes: state.as_ref().and_then(|s| s.usage_bytes),
        kubelet_working_set_bytes: ws,
        kubelet_limit_bytes: state.as_ref().and_then(|s| s.limit_bytes),
        node_mem_available_bytes: avail,
        node_mem_total_bytes: total,
        pods: pods.len() as u64,
        workload_working_set_bytes: workload,
        containers: None,
        exited_containers: None,
        kubelet_metrics: None,
        pod_cgroups: pods.into_iter().map(|(p, _)| p).collect(),
    };
    (s, ev)
}

#[cfg(test)]
mod churn_tests {
    use super::PodChurn;

    /// A Deployment scaled from 30 to 10 pods in one 10 s step, then nothing for an hour:
    /// every sample of that hour says 20 per hour (so the store's one-a-minute thinning keeps
    /// it), and the hour after, 0.
    #[test]
    fn churn_is_the_last_hours_count_in_every_sample() {
        let pods = |n: usize| {
            (0..n)
                .map(|i| format!("/kubepods/pod{i}"))
                .collect::<Vec<_>>()
        };
        let mut c = PodChurn::default();
        assert_eq!(c.observe(0, &pods(30)), None);
        assert_eq!(c.observe(10, &pods(10)), Some(20.0));
        for t in (20..3610).step_by(10) {
            assert_eq!(c.observe(t, &pods(10)), Some(20.0), "at {t} s");
        }
        assert_eq!(c.observe(3610, &pods(10)), Some(0.0));
        // Time that does not move forward starts over.
        assert_eq!(c.observe(3610, &pods(12)), None);
        assert_eq!(c.observe(3620, &pods(13)), Some(1.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/<pid>/status` kB figure past what bytes hold in a u64 saturates (it overflowed:
    /// a panic in debug builds, a wrapped small RSS in release).
    #[test]
    fn kib_figures_past_u64_bytes_saturate() {
        assert_eq!(kib_to_bytes(Some(4)), 4096);
        assert_eq!(kib_to_bytes(None), 0);
        assert_eq!(kib_to_bytes(Some(u64::MAX / 1024 + 1)), u64::MAX);
        assert_eq!(kib_to_bytes(Some(u64::MAX)), u64::MAX);
    }

    #[test]
    fn counts_pods_in_a_cgroupfs_tree() {
        let root = std::env::temp_dir().join(format!("oomprobe-kubepods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "kubepods/burstable/pod1111/c1",
            "kubepods/burstable/pod2222",
            "kubepods/besteffort/pod3333/c3",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod44_44.slice/cri-containerd-x.scope",
            "system.slice/kubelet.service",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let h = Hierarchy::V2(root.clone());
        let roots: Vec<String> = KUBEPODS_ROOTS.iter().map(|s| s.to_string()).collect();
        let mut pods: Vec<String> = pod_cgroups(&h, &roots)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        pods.sort();
        assert_eq!(
            pods,
            vec![
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod44_44.slice",
                "/kubepods/besteffort/pod3333",
                "/kubepods/burstable/pod1111",
                "/kubepods/burstable/pod2222",
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn kernel_versions_order_as_versions() {
        let v = |s: &str| KernelVersion::parse(s).unwrap();
        assert!(v("6.10.0") > v("6.9.12"));
        assert!(v("6.1.0-28-cloud-amd64") < v("6.12.0"));
        assert_eq!(v("5.15.0-1050-aws"), KernelVersion::new(5, 15, 0));
        assert_eq!(v("6.18"), KernelVersion::new(6, 18, 0));
        assert!(v("5.15.3").is_line(5, 15));
        assert_eq!(KernelVersion::parse("linux"), None);
        // The series column keeps its recorded encoding.
        assert_eq!(v("5.15.3").series_value(), 5.15);
        assert_eq!(v("6.1.0").series_value(), 6.1);
    }

    /// Distribution kernel releases are read (a trial's replay refused `5.15.0-1034-aws`);
    /// what is not a release is refused.
    #[test]
    fn distribution_releases_parse_strictly() {
        let v = |s: &str| KernelVersion::parse_release(s);
        for (release, want) in [
            ("5.15.0-1034-aws", (5, 15, 0)),
            ("6.1.0-28-cloud-amd64", (6, 1, 0)),
            ("4.18.0-513.el8.x86_64", (4, 18, 0)),
            ("5.15.153.1-microsoft-standard-WSL2", (5, 15, 153)),
            ("6.18.44-fc-v857", (6, 18, 44)),
            ("6.8.0", (6, 8, 0)),
            ("5.15.0+", (5, 15, 0)),
            ("6.10-rc3", (6, 10, 0)),
            ("6.18", (6, 18, 0)),
        ] {
            assert_eq!(
                v(release),
                Some(KernelVersion::new(want.0, want.1, want.2)),
                "{release}"
            );
        }
        for garbage in [
            "",
            "linux",
            "5",
            "5.",
            ".15",
            "5.15x",
            "x5.15.0",
            "5.15.0 junk",
            "5..15",
            "99999999999.1.0",
            "-5.15.0",
            "5.15.\n",
        ] {
            assert_eq!(v(garbage), None, "{garbage:?}");
        }
        assert_eq!(v("5.15.0-1034-aws").unwrap().series_value(), 5.15);
    }

    #[test]
    fn running_kernel_parses() {
        assert!(KernelVersion::running().unwrap() >= KernelVersion::new(4, 0, 0));
    }
}
