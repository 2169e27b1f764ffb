//! Reclaim entry marks: which reclaim path a task entered last. The OOM killer runs after the
//! allocating task failed to reclaim, so the trigger's last mark tells a memcg OOM (memcg
//! reclaim, mm/vmscan.c try_to_free_mem_cgroup_pages) from a global one (direct reclaim in the
//! page allocator).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use probe_common::{ReclaimKind, ReclaimMark};

use super::current_ids;
use crate::maps::RECLAIM;

#[tracepoint]
pub fn tp_memcg_reclaim_begin(_ctx: TracePointContext) -> u32 {
    mark(ReclaimKind::Memcg);
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
