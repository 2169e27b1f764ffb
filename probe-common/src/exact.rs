//! Wire types for readings the kernel makes exact (issues 11 and 16): the memory cgroup counters
//! that say which limit fired, a SIGKILLed task's RSS counters at the signal, and the
//! `memory.oom.group` settings along the victim's memory cgroup chain.
use core::mem::size_of;

use crate::{CgroupPath, EventHeader, CGROUP_MAX_DEPTH};

/// Levels of a memory cgroup chain read in the kernel (leaf first, root excluded), the same as
/// the components of a [`CgroupPath`].
pub const MEMCG_LEVELS: usize = CGROUP_MAX_DEPTH;
/// CPUs whose per-CPU RSS counter deltas are summed; more CPUs and the reading is flagged
/// [`mm_flags::PERCPU_PARTIAL`].
pub const MAX_CPUS: u32 = 256;
/// A trigger's counter baseline is retaken at a memcg reclaim once it is this old.
pub const BASELINE_REFRESH_NS: u64 = 1_000_000_000;
pub const OOM_BASELINE_MAX: u32 = 8192;

/// Map names.
pub mod maps {
    /// `Array<MemLayout>` with one entry, written by userspace before attaching.
    pub const MEM_LAYOUT: &str = "MEM_LAYOUT";
    /// LRU hash: tid -> [`super::MemcgBaseline`], the task's memcg counters at a reclaim.
    pub const OOM_BASELINE: &str = "OOM_BASELINE";
    /// Per-CPU array with one `u64`: its per-CPU addresses give the kernel's per-CPU offsets.
    pub const PCPU_PROBE: &str = "PCPU_PROBE";
}

/// Program names.
pub mod programs {
    /// `signal_generate` as a raw tracepoint: its arguments carry the target `task_struct`.
    pub const RAW_TP_SIGNAL_GENERATE: &str = "raw_tp_signal_generate";
    /// The same program for the atomic `rss_stat` layout (before 6.2): no per-CPU loop, which
    /// 6.1's verifier refuses (E2BIG) even where the layout makes it dead code.
    pub const RAW_TP_SIGNAL_GENERATE_ATOMIC: &str = "raw_tp_signal_generate_atomic";
}

/// How much each level of the OOM trigger's memory cgroup chain counted since the trigger's
/// memcg reclaim began (the kernel's own counters, read at the SIGKILL): the level whose limit
/// fired charged-and-failed there (`failcnt`) and went through `mem_cgroup_oom` there
/// (`memory_events_local[MEMCG_OOM]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainCounters {
    /// `DOMAIN_*` bits.
    pub flags: u32,
    /// Levels filled (leaf first).
    pub depth: u32,
    /// `page_counter.failcnt` of `mem_cgroup.memory`: rise since the baseline, saturated.
    pub failcnt_delta: [u32; MEMCG_LEVELS],
    /// `mem_cgroup.memory_events_local[MEMCG_OOM]` (v2's `memory.events.local` `oom`): rise.
    pub oom_delta: [u32; MEMCG_LEVELS],
    /// `page_counter.max` of `mem_cgroup.memory` at the SIGKILL (pages; `PAGE_COUNTER_MAX`
    /// without a limit): the limit that fired, as it was when it fired (with
    /// [`DOMAIN_PAGE_COUNTER`]).
    pub max_pages: [u64; MEMCG_LEVELS],
    /// `page_counter.usage` of `mem_cgroup.memory` at the SIGKILL (pages), before the victim's
    /// memory is uncharged (with [`DOMAIN_PAGE_COUNTER`]).
    pub usage_pages: [u64; MEMCG_LEVELS],
}

/// The trigger had a baseline whose chain matched this one: the deltas are meaningful.
pub const DOMAIN_BASELINE: u32 = 1;
/// The baseline was taken at a reclaim in a different chain (the task moved): no deltas.
pub const DOMAIN_CHAIN_CHANGED: u32 = 2;
/// `max_pages` and `usage_pages` were read (this kernel's BTF has `page_counter`'s `max` and
/// `usage`).
pub const DOMAIN_PAGE_COUNTER: u32 = 4;

/// A task's memory cgroup chain counters at a memcg reclaim (kernel-side map value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemcgBaseline {
    pub ktime_ns: u64,
    pub depth: u32,
    pub _pad: u32,
    /// `cgroup_subsys_state` addresses per level, to check the chain is the same one.
    pub css: [u64; MEMCG_LEVELS],
    pub failcnt: [u64; MEMCG_LEVELS],
    pub oom: [u64; MEMCG_LEVELS],
}

/// Bits of [`VictimMmEvent::flags`].
pub mod mm_flags {
    /// The target had an mm (a kernel thread or an exited task has none).
    pub const MM: u32 = 1 << 0;
    /// `rss_stat` is `atomic_long_t count[]` (before 6.2): the shared counters were read.
    pub const ATOMIC: u32 = 1 << 1;
    /// ...and the signaled task's own unsynced cache (`task_struct.rss_stat`) was added.
    pub const TASK_CACHE: u32 = 1 << 2;
    /// `rss_stat` is `percpu_counter[]` (6.2+): `count` plus every CPU's delta were summed.
    pub const PERCPU_SUMMED: u32 = 1 << 3;
    /// percpu layout, but some CPUs could not be read (or more than `MAX_CPUS`): the reading
    /// is the kernel's approximation (`count`) plus what could be read.
    pub const PERCPU_PARTIAL: u32 = 1 << 4;
    pub const TOTAL_VM: u32 = 1 << 5;
    pub const PGTABLES: u32 = 1 << 6;
    /// `oom_group_levels` and `memcg` were read.
    pub const MEMCG: u32 = 1 << 7;
}

/// A SIGKILL's target as the kernel had it at `signal_generate`: its RSS counters (pages) and
/// its memory cgroup chain.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VictimMmEvent {
    pub hdr: EventHeader,
    /// The task the signal was generated for (a tid), and its tgid.
    pub tid: u32,
    pub tgid: u32,
    /// `mm_flags` bits.
    pub flags: u32,
    /// CPUs whose per-CPU deltas were summed.
    pub cpus: u32,
    pub file_pages: i64,
    pub anon_pages: i64,
    pub shmem_pages: i64,
    pub swap_pages: i64,
    pub total_vm_pages: u64,
    pub pgtables_bytes: u64,
    /// Bit i: level i of `memcg` (leaf = 0) has `mem_cgroup.oom_group` set.
    pub oom_group_levels: u32,
    pub _pad: u32,
    pub memcg: CgroupPath,
}

/// Layout of the kernel structures read for exact memory figures, from BTF at load time.
/// `OFFSET_ABSENT` marks what this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemLayout {
    /// `cgroup_subsys_state.parent`
    pub css_parent: u32,
    /// `mem_cgroup.memory` + `page_counter.failcnt`
    pub memcg_failcnt: u32,
    /// `mem_cgroup.memory` + `page_counter.usage` (`atomic_long_t`, pages)
    pub memcg_usage: u32,
    /// `mem_cgroup.memory` + `page_counter.max` (pages: v1's `memory.limit_in_bytes`, v2's
    /// `memory.max`)
    pub memcg_max: u32,
    /// `mem_cgroup.memory` + `page_counter.watermark` (pages: v1's
    /// `memory.max_usage_in_bytes`, v2's `memory.peak`)
    pub memcg_watermark: u32,
    /// `mem_cgroup.memory_events_local` + 8 * `MEMCG_OOM`
    pub memcg_oom_local: u32,
    /// `mem_cgroup.oom_group` (bool)
    pub memcg_oom_group: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.rss_stat`
    pub mm_rss_stat: u32,
    /// [`RSS_LAYOUT_ATOMIC`] or [`RSS_LAYOUT_PERCPU`], else absent.
    pub rss_layout: u32,
    /// Bytes between two counters of `rss_stat` (8, or `sizeof(struct percpu_counter)`).
    pub rss_stride: u32,
    /// `percpu_counter.count` and `.counters`
    pub pcpu_count: u32,
    pub pcpu_counters: u32,
    /// Indices `MM_FILEPAGES`, `MM_ANONPAGES`, `MM_SHMEMPAGES`, `MM_SWAPENTS`.
    pub mm_file: u32,
    pub mm_anon: u32,
    pub mm_shmem: u32,
    pub mm_swap: u32,
    /// `task_struct.rss_stat` (split RSS counting before 6.2): `int events; int count[]`.
    pub task_rss_stat: u32,
    /// `mm_struct.total_vm` (pages) and `.pgtables_bytes`
    pub mm_total_vm: u32,
    pub mm_pgtables: u32,
    /// `bpf_array.pptrs`: where a per-CPU array map keeps its per-CPU pointers.
    pub bpf_array_pptrs: u32,
    /// Possible CPUs (`/sys/devices/system/cpu/possible`).
    pub nr_cpus: u32,
    pub _pad: u32,
}

pub const RSS_LAYOUT_ATOMIC: u32 = 1;
pub const RSS_LAYOUT_PERCPU: u32 = 2;

impl MemLayout {
    pub const EMPTY: MemLayout = MemLayout {
        css_parent: crate::OFFSET_ABSENT,
        memcg_failcnt: crate::OFFSET_ABSENT,
        memcg_usage: crate::OFFSET_ABSENT,
        memcg_max: crate::OFFSET_ABSENT,
        memcg_watermark: crate::OFFSET_ABSENT,
        memcg_oom_local: crate::OFFSET_ABSENT,
        memcg_oom_group: crate::OFFSET_ABSENT,
        task_mm: crate::OFFSET_ABSENT,
        mm_rss_stat: crate::OFFSET_ABSENT,
        rss_layout: 0,
        rss_stride: 0,
        pcpu_count: crate::OFFSET_ABSENT,
        pcpu_counters: crate::OFFSET_ABSENT,
        mm_file: crate::OFFSET_ABSENT,
        mm_anon: crate::OFFSET_ABSENT,
        mm_shmem: crate::OFFSET_ABSENT,
        mm_swap: crate::OFFSET_ABSENT,
        task_rss_stat: crate::OFFSET_ABSENT,
        mm_total_vm: crate::OFFSET_ABSENT,
        mm_pgtables: crate::OFFSET_ABSENT,
        bpf_array_pptrs: crate::OFFSET_ABSENT,
        nr_cpus: 0,
        _pad: 0,
    };
}

const _: () = assert!(size_of::<DomainCounters>() == 8 + 24 * MEMCG_LEVELS);
const _: () = assert!(size_of::<MemcgBaseline>() == 16 + 24 * MEMCG_LEVELS);
const _: () = assert!(size_of::<VictimMmEvent>() == 16 + 16 + 48 + 8 + size_of::<CgroupPath>());
const _: () = assert!(size_of::<MemLayout>() == 23 * 4);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain old data, repr(C), no padding left implicit.
    unsafe impl aya::Pod for MemLayout {}
    unsafe impl aya::Pod for MemcgBaseline {}
}
