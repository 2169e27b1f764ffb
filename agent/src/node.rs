//! The live node behind the correlator: procfs and the memory cgroup hierarchy.
use crate::{
    cgroup::{Hierarchy, MemcgState},
    forensics::{Node, ProcSnapshot},
};

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
