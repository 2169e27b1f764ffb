//! Group OOM kills (issue 16): with `memory.oom.group` set, the kernel kills every process of
//! the group cgroup after its chosen victim (mm/oom_kill.c `oom_kill_process`:
//! `mem_cgroup_get_oom_group`, then `mem_cgroup_scan_tasks(oom_group, oom_kill_memcg_member)`).
//! The records of one group kill are held until the group is complete, then released together,
//! each naming the group, how many processes it lost, and whether it was the kernel's chosen
//! victim or a member.
use serde::Serialize;

use crate::cgroup::ancestors;

/// A group's kills all come from one `oom_kill_process` call; its records are released once no
/// new one has joined for this long.
pub const GROUP_SETTLE_NS: u64 = 100_000_000;

/// The group of a group OOM kill, as every record of it reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupKill {
    /// The cgroup whose `memory.oom.group` caused the kill: the highest one with it set between
    /// the victim's cgroup and the OOM domain (`mem_cgroup_get_oom_group`).
    pub path: String,
    /// Processes the kernel killed with the group (the records released together).
    pub killed: u32,
    /// `chosen` (the OOM killer's own choice) or `member` (killed for sharing the group).
    pub role: &'static str,
    /// The chosen victim's pid.
    pub chosen_pid: u32,
    /// The group cgroup's `memory.events.local` `oom_group_kill`, read at release (v2).
    pub oom_group_kill: Option<u64>,
    /// How the group was found: `kernel` (`mem_cgroup.oom_group` along the victim's chain, read
    /// at the SIGKILL) or `cgroup_files` (`memory.oom.group`, read after).
    pub source: &'static str,
}

/// The group from the victim's memcg chain as read in the kernel: `victim` its path,
/// `levels` bit i set when level i (leaf = 0) has `oom_group`; the walk stops at `domain` (or
/// at the top for a global OOM, `domain` = None), as the kernel's does.
pub fn group_from_levels(victim: &str, levels: u32, domain: Option<&str>) -> Option<String> {
    let chain = ancestors(victim);
    let top = chain.len().checked_sub(1)?; // "/" is not a level
    let mut group = None;
    for (i, path) in chain.iter().enumerate().take(top.min(32)) {
        if levels & (1 << i) != 0 {
            group = Some(path.clone());
        }
        if Some(path.as_str()) == domain {
            break;
        }
    }
    group
}

#[derive(Debug)]
struct Episode<R> {
    trigger_tid: u32,
    group: String,
    records: Vec<R>,
    last_added_ns: u64,
}

/// Records of group kills waiting for their group to be complete.
#[derive(Debug)]
pub struct GroupBuffer<R> {
    episodes: Vec<Episode<R>>,
}

impl<R> Default for GroupBuffer<R> {
    fn default() -> Self {
        GroupBuffer {
            episodes: Vec::new(),
        }
    }
}

impl<R> GroupBuffer<R> {
    pub fn hold(&mut self, trigger_tid: u32, group: &str, rec: R, now_ns: u64) {
        match self
            .episodes
            .iter_mut()
            .find(|e| e.trigger_tid == trigger_tid && e.group == group)
        {
            Some(e) => {
                e.records.push(rec);
                e.last_added_ns = e.last_added_ns.max(now_ns);
            }
            None => self.episodes.push(Episode {
                trigger_tid,
                group: group.to_string(),
                records: vec![rec],
                last_added_ns: now_ns,
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.episodes.iter().map(|e| e.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }

    /// Complete groups: nothing joined for [`GROUP_SETTLE_NS`] and `busy(trigger)` false (no
    /// kill of that trigger still open). Returns (group path, records).
    pub fn release(&mut self, now_ns: u64, busy: impl Fn(u32) -> bool) -> Vec<(String, Vec<R>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.episodes.len() {
            let e = &self.episodes[i];
            if now_ns.saturating_sub(e.last_added_ns) > GROUP_SETTLE_NS && !busy(e.trigger_tid) {
                let e = self.episodes.swap_remove(i);
                out.push((e.group, e.records));
            } else {
                i += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_is_the_highest_flagged_level_up_to_the_domain() {
        // /pod/ctr with oom.group on ctr (level 0), domain /pod: the group is below the domain.
        assert_eq!(
            group_from_levels("/pod/ctr", 0b01, Some("/pod")),
            Some("/pod/ctr".into())
        );
        // Flag on the domain itself (level 1) and the container: the highest wins.
        assert_eq!(
            group_from_levels("/pod/ctr", 0b11, Some("/pod")),
            Some("/pod".into())
        );
        // A flag above the domain does not count.
        assert_eq!(group_from_levels("/a/pod/ctr", 0b100, Some("/a/pod")), None);
        assert_eq!(group_from_levels("/g", 0b1, Some("/g")), Some("/g".into()));
        assert_eq!(group_from_levels("/g", 0, Some("/g")), None);
        // Global OOM: up to the top.
        assert_eq!(group_from_levels("/a/b", 0b10, None), Some("/a".into()));
    }

    #[test]
    fn episodes_release_when_settled_and_idle() {
        let mut b = GroupBuffer::default();
        b.hold(7, "/g", 1, 1_000);
        b.hold(7, "/g", 2, 2_000);
        b.hold(8, "/h", 3, 2_000);
        assert_eq!(b.len(), 3);
        assert!(b.release(2_000 + GROUP_SETTLE_NS, |_| false).is_empty());
        // Trigger 7 still has an open kill: its group waits.
        let out = b.release(2_001 + GROUP_SETTLE_NS, |t| t == 7);
        assert_eq!(out, vec![("/h".to_string(), vec![3])]);
        let out = b.release(2_001 + GROUP_SETTLE_NS, |_| false);
        assert_eq!(out, vec![("/g".to_string(), vec![1, 2])]);
        assert!(b.is_empty());
    }
}
