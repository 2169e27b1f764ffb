//! Reclaim entry marks: which reclaim path a task entered last. The OOM killer runs after the
//! allocating task failed to reclaim, so the trigger's last mark tells a memcg OOM (memcg
//! reclaim, mm/vmscan.c try_to_free_mem_cgroup_pages) from a global one (direct reclaim in the
//! page allocator).
//!
//! For watched memory cgroups (the kubelet's, the pods'), memcg reclaim is also counted here,
//! in the kernel: how often, how long, how many pages (the early warning before any kill).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use probe_common::{ReclaimFlight, ReclaimKind, ReclaimMark, ReclaimStats};

use super::current_ids;
use crate::{
    maps::{config, present, RECLAIM, RECLAIM_IN_FLIGHT, RECLAIM_STATS, WATCHED_MEMCGS},
    task::current_memcg_id,
};

#[tracepoint]
pub fn tp_memcg_reclaim_begin(_ctx: TracePointContext) -> u32 {
    mark(ReclaimKind::Memcg);
    let Some(cfg) = config() else { return 0 };
    // The counters the OOM domain is decided by, as they were when this charge began to fail.
    crate::exact::take_baseline(cfg, current_ids().0);
    let Some(memcg) = current_memcg_id(cfg) else {
        return 0;
    };
    if unsafe { WATCHED_MEMCGS.get(memcg) }.is_none() {
        return 0;
    }
    let (tid, _) = current_ids();
    let flight = ReclaimFlight {
        memcg,
        begin_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = RECLAIM_IN_FLIGHT.insert(tid, flight, 0);
    0
}

#[tracepoint]
pub fn tp_memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    let (tid, _) = current_ids();
    let Some(flight) = (unsafe { RECLAIM_IN_FLIGHT.get(tid) }).copied() else {
        return 0;
    };
    let _ = RECLAIM_IN_FLIGHT.remove(tid);
    let pages = match config() {
        Some(cfg) if present(cfg.reclaim_end_nr) => {
            unsafe { ctx.read_at::<u64>(cfg.reclaim_end_nr as usize) }.unwrap_or(0)
        }
        _ => 0,
    };
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(flight.begin_ns);
    if let Some(s) = RECLAIM_STATS.get_ptr_mut(flight.memcg) {
        // Per-CPU value: no other writer on this CPU while we run.
        // Saturating: a per-CPU sum that wrapped would read as a small number.
        unsafe {
            (*s).count = (*s).count.saturating_add(1);
            (*s).ns = (*s).ns.saturating_add(ns);
            (*s).pages = (*s).pages.saturating_add(pages);
        }
    } else if RECLAIM_STATS
        .insert(
            flight.memcg,
            ReclaimStats {
                count: 1,
                ns,
                pages,
            },
            0,
        )
        .is_err()
    {
        crate::maps::count(probe_common::Counter::ReclaimStatsFull);
    }
    0
}

#[tracepoint]
pub fn tp_direct_reclaim_begin(_ctx: TracePointContext) -> u32 {
    mark(ReclaimKind::Direct);
    0
}

#[inline(always)]
fn mark(kind: ReclaimKind) {
    let (tid, _) = current_ids();
    let mark = ReclaimMark {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        kind: kind as u32,
        _pad: 0,
    };
    let _ = RECLAIM.insert(tid, mark, 0);
}
