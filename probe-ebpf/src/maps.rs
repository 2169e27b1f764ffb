use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use probe_common::{
    Config, Counter, PendingKill, ReclaimMark, COUNTERS_LEN, EVENTS_RING_BYTES, OFFSET_ABSENT,
    PENDING_KILLS_MAX, RECLAIM_MAX,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map]
pub static PENDING_KILLS: LruHashMap<u32, PendingKill> =
    LruHashMap::with_max_entries(PENDING_KILLS_MAX, 0);

#[map]
pub static RECLAIM: LruHashMap<u32, ReclaimMark> = LruHashMap::with_max_entries(RECLAIM_MAX, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn present(offset: u32) -> bool {
    offset != OFFSET_ABSENT
}

/// Kill records are rare and urgent: wake the reader on each one rather than adaptively.
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[map]
pub static KUBELET_TGIDS: aya_ebpf::maps::HashMap<u32, probe_common::KubeletText> =
    aya_ebpf::maps::HashMap::with_max_entries(probe_common::KUBELET_TGIDS_MAX, 0);

#[map]
pub static KUBELET_UPROBED: aya_ebpf::maps::HashMap<u32, u32> =
    aya_ebpf::maps::HashMap::with_max_entries(probe_common::KUBELET_TGIDS_MAX, 0);

#[map]
pub static ALLOC_STATS: aya_ebpf::maps::PerCpuHashMap<
    probe_common::AllocKey,
    probe_common::AllocVal,
> = aya_ebpf::maps::PerCpuHashMap::with_max_entries(probe_common::ALLOC_STATS_MAX, 0);

#[map]
pub static STACKS: aya_ebpf::maps::StackTrace =
    aya_ebpf::maps::StackTrace::with_max_entries(probe_common::STACKS_MAX, 0);

#[map]
pub static WATCHED_MEMCGS: aya_ebpf::maps::HashMap<u64, u32> =
    aya_ebpf::maps::HashMap::with_max_entries(probe_common::WATCHED_MEMCGS_MAX, 0);

#[map]
pub static RECLAIM_STATS: aya_ebpf::maps::PerCpuHashMap<u64, probe_common::ReclaimStats> =
    aya_ebpf::maps::PerCpuHashMap::with_max_entries(probe_common::WATCHED_MEMCGS_MAX, 0);

#[map]
pub static RECLAIM_IN_FLIGHT: LruHashMap<u32, probe_common::ReclaimFlight> =
    LruHashMap::with_max_entries(probe_common::RECLAIM_MAX, 0);

#[map]
pub static MEM_LAYOUT: Array<probe_common::MemLayout> = Array::with_max_entries(1, 0);

#[map]
pub static OOM_BASELINE: LruHashMap<u32, probe_common::exact::MemcgBaseline> =
    LruHashMap::with_max_entries(probe_common::exact::OOM_BASELINE_MAX, 0);

/// Never written: the addresses of its per-CPU slots give the kernel's per-CPU offsets.
#[map]
pub static PCPU_PROBE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Go allocator stacks walked by the program itself on arm64 (`probe_common::WalkedStack` says
/// why), keyed by a hash of the return addresses with `WALKED_STACK_ID_MIN` set.
#[cfg(bpf_target_arch = "aarch64")]
#[map]
pub static GO_STACKS: aya_ebpf::maps::HashMap<i64, probe_common::WalkedStack> =
    aya_ebpf::maps::HashMap::with_max_entries(probe_common::STACKS_MAX, 0);

/// Where a stack is walked (520 bytes: more than the BPF stack holds).
#[cfg(bpf_target_arch = "aarch64")]
#[map]
pub static WALK_SCRATCH: PerCpuArray<probe_common::WalkedStack> =
    PerCpuArray::with_max_entries(1, 0);
