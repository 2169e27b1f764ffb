//! The live node view behind the correlator: what procfs and the memory cgroup hierarchy say
//! about a process or a cgroup, behind a trait so tests can feed a recorded node.
use crate::cgroup::{Hierarchy, MemcgState};

/// What the node tells about a process, read when the SIGKILL is seen (it may be gone later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcSnapshot {
    pub tgid: Option<u32>,
    pub cgroup: Option<String>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
}

/// The node's live state the correlator consults (real: procfs and cgroupfs; tests: recorded).
pub trait Node {
    fn snapshot(&self, pid: u32) -> Option<ProcSnapshot>;
    fn oom_domain(&self, trigger: Option<&str>, victim: Option<&str>) -> Option<MemcgState>;
    /// Limit and usage of one memory cgroup now.
    fn memcg_state(&self, path: &str) -> Option<MemcgState>;
    fn cgroup_by_id(&self, id: u64) -> Option<String>;
    /// The memory cgroup hierarchy's version (1 or 2), when known.
    fn hierarchy_version(&self) -> Option<u8> {
        None
    }
    /// The group cgroup of a group OOM kill from the cgroup files: the highest cgroup with
    /// `memory.oom.group` 1 from `victim` up to `domain` (v2).
    fn oom_group_of(&self, _victim: &str, _domain: Option<&str>) -> Option<String> {
        None
    }
    /// `memory.events.local` `oom_group_kill` of a cgroup (v2).
    fn group_kills(&self, _path: &str) -> Option<u64> {
        None
    }
}

pub struct LiveNode {
    pub hierarchy: Option<Hierarchy>,
}

impl LiveNode {
    pub fn detect() -> LiveNode {
        let hierarchy = Hierarchy::detect();
        match &hierarchy {
            Some(h) => tracing::info!(
                version = h.version(),
                root = %h.root().display(),
                "memory cgroup hierarchy"
            ),
            None => tracing::warn!("no memory cgroup controller mounted; OOM domains unavailable"),
        }
        LiveNode { hierarchy }
    }
}

impl Node for LiveNode {
    fn snapshot(&self, pid: u32) -> Option<ProcSnapshot> {
        let proc = procfs::process::Process::new(pid as i32).ok()?;
        let status = proc.status().ok()?;
        Some(ProcSnapshot {
            tgid: u32::try_from(status.tgid).ok(),
            cgroup: self.hierarchy.as_ref().and_then(|h| h.cgroup_of(pid)),
            anon_rss_kb: status.rssanon,
            file_rss_kb: status.rssfile,
            shmem_rss_kb: status.rssshmem,
        })
    }

    fn oom_domain(&self, trigger: Option<&str>, victim: Option<&str>) -> Option<MemcgState> {
        self.hierarchy.as_ref()?.oom_domain(trigger, victim)
    }

    fn memcg_state(&self, path: &str) -> Option<MemcgState> {
        self.hierarchy.as_ref()?.memcg(path)
    }

    fn cgroup_by_id(&self, id: u64) -> Option<String> {
        self.hierarchy.as_ref()?.find_by_id(id)
    }

    fn hierarchy_version(&self) -> Option<u8> {
        self.hierarchy.as_ref().map(Hierarchy::version)
    }

    fn oom_group_of(&self, victim: &str, domain: Option<&str>) -> Option<String> {
        self.hierarchy.as_ref()?.oom_group_of(victim, domain)
    }

    fn group_kills(&self, path: &str) -> Option<u64> {
        self.hierarchy.as_ref()?.group_kills(path)
    }
}
