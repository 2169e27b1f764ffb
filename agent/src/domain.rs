//! Which memory cgroup's limit fired, from the kernel's own counters (issue 11): per level of
//! the OOM trigger's memcg chain, how much `memory.failcnt` (v1) and the memcg's OOM count
//! (`memory_events_local[MEMCG_OOM]`, v2's `memory.events.local` `oom`) rose between the
//! trigger's first memcg reclaim of the charge and the SIGKILL (read in the kernel).
//!
//! The kernel charges a page to every level from the leaf up and fails at the first level over
//! its limit (`page_counter_try_charge`: `failcnt++` there), reclaims that level, retries, and
//! finally calls `mem_cgroup_oom` on it (`memcg_memory_event(memcg, MEMCG_OOM)`, local to that
//! level). So the level whose counters rose is the OOM domain, whatever the usages look like.
use crate::{cgroup::ancestors, kernel::events::DomainDeltas};

/// `evidence` when v1's `memory.failcnt` decided.
pub const EVIDENCE_FAILCNT: &str = "memory.failcnt";
/// `evidence` when v2's `memory.events.local` `oom` decided.
pub const EVIDENCE_EVENTS_LOCAL: &str = "memory.events.local";
/// `evidence` on v1 when only the kernel's per-memcg OOM count (the counter behind v2's
/// `memory.events.local` `oom`, which v1 has no file for) rose.
pub const EVIDENCE_OOM_EVENTS: &str = "memcg_oom_events";

/// The OOM domain as the kernel's counters decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountedDomain {
    /// The domain's memory cgroup path.
    pub path: String,
    /// The counter that decided (`EVIDENCE_*`).
    pub evidence: &'static str,
    /// Its level in the trigger's chain (0: the trigger's own cgroup), the index into
    /// [`DomainDeltas`]' per-level vectors.
    pub level: usize,
}

/// The OOM domain, or `None` when the counters do not tell (no rise, a chain deeper than the
/// probe reads, or lengths that do not match the path). `version`: the memory cgroup hierarchy
/// (1 or 2).
pub fn from_counters(trigger: &str, d: &DomainDeltas, version: u8) -> Option<CountedDomain> {
    let paths: Vec<String> = ancestors(trigger);
    // `ancestors` ends with "/", which is not a level.
    let levels = paths.len().checked_sub(1)?;
    if levels == 0 || d.failcnt.len() != levels || d.oom.len() != levels {
        return None;
    }
    let rose = |v: &[u32]| -> Vec<usize> { (0..levels).filter(|&i| v[i] > 0).collect() };
    let by_failcnt = |cands: &[usize]| -> Option<usize> {
        // Most failures first, then the leaf-most (the first level the charge reaches).
        cands
            .iter()
            .copied()
            .max_by(|&a, &b| d.failcnt[a].cmp(&d.failcnt[b]).then(b.cmp(&a)))
    };
    let oom = rose(&d.oom);
    let fail = rose(&d.failcnt);
    let (level, evidence) = if version == 1 {
        if !fail.is_empty() {
            // Several levels failing: the one that also went through mem_cgroup_oom.
            let both: Vec<usize> = fail.iter().copied().filter(|i| oom.contains(i)).collect();
            let pick = if both.is_empty() {
                by_failcnt(&fail)?
            } else {
                by_failcnt(&both)?
            };
            (pick, EVIDENCE_FAILCNT)
        } else {
            (by_failcnt(&oom)?, EVIDENCE_OOM_EVENTS)
        }
    } else {
        (by_failcnt(&oom)?, EVIDENCE_EVENTS_LOCAL)
    };
    Some(CountedDomain {
        path: paths[level].clone(),
        evidence,
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deltas(failcnt: &[u32], oom: &[u32]) -> DomainDeltas {
        DomainDeltas {
            failcnt: failcnt.to_vec(),
            oom: oom.to_vec(),
            counters: Vec::new(),
        }
    }

    fn pick(trigger: &str, d: &DomainDeltas, version: u8) -> Option<(String, &'static str)> {
        from_counters(trigger, d, version).map(|c| (c.path, c.evidence))
    }

    #[test]
    fn the_level_indexes_the_per_level_readings() {
        let d = deltas(&[0, 56], &[0, 1]);
        assert_eq!(from_counters("/pod/ctr", &d, 1).map(|c| c.level), Some(1));
        let d = deltas(&[0, 0, 0], &[1, 0, 0]);
        assert_eq!(from_counters("/a/b/c", &d, 2).map(|c| c.level), Some(0));
    }

    #[test]
    fn v1_pod_limit_fires_for_a_container_with_the_same_limit() {
        // Measured shape: pod failcnt +56, container 0 (levels leaf first: container, pod).
        let d = deltas(&[0, 56], &[0, 1]);
        assert_eq!(
            pick("/pod/ctr", &d, 1),
            Some(("/pod".into(), EVIDENCE_FAILCNT))
        );
    }

    #[test]
    fn v1_container_limit_fires() {
        let d = deltas(&[17, 0], &[1, 0]);
        assert_eq!(
            pick("/pod/ctr", &d, 1),
            Some(("/pod/ctr".into(), EVIDENCE_FAILCNT))
        );
    }

    #[test]
    fn v1_other_failures_do_not_outvote_the_oom_level() {
        // The container hit its limit too (and reclaimed), but the OOM was the pod's.
        let d = deltas(&[40, 3], &[0, 1]);
        assert_eq!(
            pick("/pod/ctr", &d, 1),
            Some(("/pod".into(), EVIDENCE_FAILCNT))
        );
        // Only the OOM count rose (the baseline was retaken at the last reclaim).
        let d = deltas(&[0, 0], &[0, 1]);
        assert_eq!(
            pick("/pod/ctr", &d, 1),
            Some(("/pod".into(), EVIDENCE_OOM_EVENTS))
        );
    }

    #[test]
    fn v2_events_local_decides() {
        let d = deltas(&[0, 0, 0], &[0, 1, 0]);
        assert_eq!(
            pick("/kubepods/pod/ctr", &d, 2),
            Some(("/kubepods/pod".into(), EVIDENCE_EVENTS_LOCAL))
        );
    }

    #[test]
    fn no_rise_or_mismatch_tells_nothing() {
        assert_eq!(pick("/a/b", &deltas(&[0, 0], &[0, 0]), 2), None);
        assert_eq!(pick("/a/b", &deltas(&[0, 0], &[0, 0]), 1), None);
        // A chain read deeper or shallower than the path: not this path's levels.
        assert_eq!(pick("/a/b", &deltas(&[1], &[1]), 2), None);
        assert_eq!(pick("/", &deltas(&[], &[]), 2), None);
    }
}
