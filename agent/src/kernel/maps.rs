//! Reading and writing the kernel programs' maps: the kubelet tgids and memcgs to watch, the
//! allocator and reclaim counters, captured stacks, the event ring and the drop counters.
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap};
use probe_common::{
    maps, AllocKey, AllocVal, Counter, KubeletText, WalkedStack, WALKED_STACK_ID_MIN,
};

use super::probes::{ProbeError, Probes};

impl Probes {
    fn tgids(&mut self) -> Result<HashMap<&mut MapData, u32, KubeletText>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::KUBELET_TGIDS)
            .ok_or(ProbeError::MissingMap(maps::KUBELET_TGIDS))?;
        HashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::KUBELET_TGIDS,
            source,
        })
    }

    /// Counts this process's allocations from now on.
    /// Watches a kubelet process; `text` is its executable code's address range (for the
    /// call-site scan of library entry points), zero when unknown.
    pub fn watch_tgid(&mut self, tgid: u32, text: KubeletText) -> Result<(), ProbeError> {
        self.tgids()?
            .insert(tgid, text, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::KUBELET_TGIDS,
                source,
            })
    }

    /// Stops following `tgid` (dead, or not a kubelet): its entries in `KUBELET_TGIDS`,
    /// `KUBELET_UPROBED` and `ALLOC_STATS` go, the stacks only it referenced leave `STACKS`,
    /// and the uprobes attached for it alone (its libc) are detached.
    pub fn unwatch_tgid(&mut self, tgid: u32) {
        if let Ok(mut m) = self.tgids() {
            let _ = m.remove(&tgid);
        }
        if let Some(map) = self.ebpf.map_mut(maps::KUBELET_UPROBED) {
            if let Ok(mut m) = HashMap::<_, u32, u32>::try_from(map) {
                let _ = m.remove(&tgid);
            }
        }
        let mut orphaned_stacks = Vec::new();
        if let Some(map) = self.ebpf.map_mut(maps::ALLOC_STATS) {
            if let Ok(mut stats) = PerCpuHashMap::<_, AllocKey, AllocVal>::try_from(map) {
                let keys: Vec<AllocKey> = stats.keys().flatten().collect();
                let (gone, kept): (Vec<AllocKey>, Vec<AllocKey>) =
                    keys.into_iter().partition(|k| k.tgid == tgid);
                let still: std::collections::HashSet<i64> =
                    kept.iter().map(|k| k.stack_id).collect();
                for k in &gone {
                    let _ = stats.remove(k);
                    if k.stack_id >= 0
                        && !still.contains(&k.stack_id)
                        && !orphaned_stacks.contains(&k.stack_id)
                    {
                        orphaned_stacks.push(k.stack_id);
                    }
                }
            }
        }
        self.forget_stacks(&orphaned_stacks);
        if let Some(links) = self.pid_links.remove(&tgid) {
            if let Some(prog) = self.ebpf.program_mut(probe_common::programs::UPROBE_ALLOC) {
                if let Ok(prog) = <&mut aya::programs::UProbe>::try_from(prog) {
                    for link in links {
                        if let Err(e) = prog.detach(link) {
                            tracing::debug!(tgid, error = %e, "uprobe already detached");
                        }
                    }
                }
            }
        }
    }

    /// Counts memcg reclaim in the cgroup with this kernfs id (its directory's inode); false
    /// when `WATCHED_MEMCGS` refused it (full).
    pub fn watch_memcg(&mut self, id: u64) -> bool {
        let Some(map) = self.ebpf.map_mut(maps::WATCHED_MEMCGS) else {
            return false;
        };
        match HashMap::<_, u64, u32>::try_from(map) {
            Ok(mut m) => m.insert(id, 1, 0).is_ok(),
            Err(_) => false,
        }
    }

    /// Stops counting reclaim in the memory cgroup `id` (removed): its `WATCHED_MEMCGS` and
    /// `RECLAIM_STATS` entries go.
    pub fn unwatch_memcg(&mut self, id: u64) {
        if let Some(map) = self.ebpf.map_mut(maps::WATCHED_MEMCGS) {
            if let Ok(mut m) = HashMap::<_, u64, u32>::try_from(map) {
                let _ = m.remove(&id);
            }
        }
        if let Some(map) = self.ebpf.map_mut(maps::RECLAIM_STATS) {
            if let Ok(mut m) = PerCpuHashMap::<_, u64, probe_common::ReclaimStats>::try_from(map) {
                let _ = m.remove(&id);
            }
        }
    }

    /// Entries in each of the kernel maps that follow processes and cgroups, by map name
    /// (`oomprobe_map_entries{map}`): counted by iterating their keys.
    pub fn map_entries(&self) -> Vec<(&'static str, usize)> {
        let mut out = Vec::new();
        let e = &self.ebpf;
        if let Some(m) = e.map(maps::KUBELET_TGIDS) {
            if let Ok(m) = HashMap::<_, u32, KubeletText>::try_from(m) {
                out.push((maps::KUBELET_TGIDS, m.keys().count()));
            }
        }
        if let Some(m) = e.map(maps::KUBELET_UPROBED) {
            if let Ok(m) = HashMap::<_, u32, u32>::try_from(m) {
                out.push((maps::KUBELET_UPROBED, m.keys().count()));
            }
        }
        if let Some(m) = e.map(maps::WATCHED_MEMCGS) {
            if let Ok(m) = HashMap::<_, u64, u32>::try_from(m) {
                out.push((maps::WATCHED_MEMCGS, m.keys().count()));
            }
        }
        if let Some(map) = self.ebpf.map(maps::RECLAIM_STATS) {
            if let Ok(m) = PerCpuHashMap::<_, u64, probe_common::ReclaimStats>::try_from(map) {
                out.push((maps::RECLAIM_STATS, m.keys().count()));
            }
        }
        if let Some(map) = self.ebpf.map(maps::ALLOC_STATS) {
            if let Ok(m) = PerCpuHashMap::<_, AllocKey, AllocVal>::try_from(map) {
                out.push((maps::ALLOC_STATS, m.keys().count()));
            }
        }
        if let Some(map) = self.ebpf.map(maps::STACKS) {
            if let Ok(m) = StackTraceMap::try_from(map) {
                out.push((maps::STACKS, m.stack_ids().count()));
            }
        }
        // arm64's object only (the Go stacks it walks itself).
        if let Some(map) = self.ebpf.map(maps::GO_STACKS) {
            if let Ok(m) = HashMap::<_, i64, WalkedStack>::try_from(map) {
                out.push((maps::GO_STACKS, m.keys().count()));
            }
        }
        out.push(("agent_uprobed_pids", self.pid_links.len()));
        out
    }

    /// Removes captured stacks `ids` from `STACKS`, and walked ones from `GO_STACKS` (their
    /// allocation counters are gone).
    pub fn forget_stacks(&mut self, ids: &[i64]) {
        if let Some(map) = self.ebpf.map_mut(maps::STACKS) {
            if let Ok(mut m) = StackTraceMap::try_from(map) {
                for id in ids.iter().filter_map(|&id| u32::try_from(id).ok()) {
                    let _ = m.remove(&id);
                }
            }
        }
        if let Some(map) = self.ebpf.map_mut(maps::GO_STACKS) {
            if let Ok(mut m) = HashMap::<_, i64, WalkedStack>::try_from(map) {
                for id in ids.iter().filter(|&&id| id >= WALKED_STACK_ID_MIN) {
                    let _ = m.remove(id);
                }
            }
        }
    }

    /// Reclaim counted per watched memcg id, summed over CPUs.
    pub fn reclaim_stats(&self) -> Vec<(u64, probe_common::ReclaimStats)> {
        let Some(map) = self.ebpf.map(maps::RECLAIM_STATS) else {
            return Vec::new();
        };
        let Ok(m) = PerCpuHashMap::<_, u64, probe_common::ReclaimStats>::try_from(map) else {
            return Vec::new();
        };
        m.iter()
            .flatten()
            .map(|(k, per_cpu)| (k, sum_reclaim(per_cpu.iter())))
            .collect()
    }

    /// Allocator counters summed over CPUs.
    pub fn alloc_stats(&self) -> Vec<(AllocKey, AllocVal)> {
        let Some(map) = self.ebpf.map(maps::ALLOC_STATS) else {
            return Vec::new();
        };
        let Ok(stats) = PerCpuHashMap::<_, AllocKey, AllocVal>::try_from(map) else {
            return Vec::new();
        };
        stats
            .iter()
            .flatten()
            .map(|(k, per_cpu)| (k, sum_alloc(per_cpu.iter())))
            .collect()
    }

    /// Instruction pointers of a captured user stack, innermost first.
    pub fn stack(&self, stack_id: i64) -> Vec<u64> {
        if stack_id >= WALKED_STACK_ID_MIN {
            let Some(map) = self.ebpf.map(maps::GO_STACKS) else {
                return Vec::new();
            };
            let Ok(stacks) = HashMap::<_, i64, WalkedStack>::try_from(map) else {
                return Vec::new();
            };
            return stacks
                .get(&stack_id, 0)
                .map(|st| st.frames().to_vec())
                .unwrap_or_default();
        }
        let (Some(map), Ok(id)) = (self.ebpf.map(maps::STACKS), u32::try_from(stack_id)) else {
            return Vec::new();
        };
        let Ok(stacks) = StackTraceMap::try_from(map) else {
            return Vec::new();
        };
        stacks
            .get(&id, 0)
            .map(|st| st.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default()
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(ProbeError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::EVENTS,
            source,
        })
    }

    /// Kernel-side counters summed over CPUs.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        let Some(map) = self.ebpf.map(maps::COUNTERS) else {
            return Vec::new();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return Vec::new();
        };
        Counter::ALL
            .iter()
            .filter_map(|&c| {
                arr.get(&(c as u32), 0)
                    .ok()
                    .map(|vals| (c, vals.iter().fold(0u64, |a, v| a.saturating_add(*v))))
            })
            .collect()
    }
}

/// Reclaim counters summed over CPUs, saturating: the kernel's per-CPU u64s wrap silently, and
/// a sum past u64::MAX panicked (debug) or wrapped to a small count (release).
fn sum_reclaim<'a>(
    per_cpu: impl Iterator<Item = &'a probe_common::ReclaimStats>,
) -> probe_common::ReclaimStats {
    per_cpu.fold(probe_common::ReclaimStats::default(), |a, v| {
        probe_common::ReclaimStats {
            count: a.count.saturating_add(v.count),
            ns: a.ns.saturating_add(v.ns),
            pages: a.pages.saturating_add(v.pages),
        }
    })
}

/// Allocator counters summed over CPUs, saturating: the syscall fallback counts the length
/// `mmap`/`munmap` were called with at syscall entry, before the kernel refuses it, so a
/// process calling `munmap(addr, SIZE_MAX)` puts ~2^64 bytes on a CPU's counter, and two
/// CPUs' sum panicked (debug) or wrapped (release).
fn sum_alloc<'a>(per_cpu: impl Iterator<Item = &'a AllocVal>) -> AllocVal {
    per_cpu.fold(AllocVal::default(), |a, v| AllocVal {
        bytes: a.bytes.saturating_add(v.bytes),
        calls: a.calls.saturating_add(v.calls),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-CPU values near u64::MAX (a refused `munmap(addr, SIZE_MAX)` counted at syscall
    /// entry on two CPUs) sum to u64::MAX, not a panic or a wrapped small number.
    #[test]
    fn per_cpu_sums_saturate() {
        let big = AllocVal {
            bytes: u64::MAX - 1,
            calls: u64::MAX,
        };
        let small = AllocVal {
            bytes: 4096,
            calls: 1,
        };
        let s = sum_alloc([big, small, big].iter());
        assert_eq!((s.bytes, s.calls), (u64::MAX, u64::MAX));
        let s = sum_alloc([small, small].iter());
        assert_eq!((s.bytes, s.calls), (8192, 2));
        let r = probe_common::ReclaimStats {
            count: u64::MAX,
            ns: u64::MAX,
            pages: u64::MAX,
        };
        let s = sum_reclaim([r, r].iter());
        assert_eq!((s.count, s.ns, s.pages), (u64::MAX, u64::MAX, u64::MAX));
    }
}
