//! The kernel/userspace ABI of oomprobe, defined once.
//!
//! Every wire type is `#[repr(C)]`, `Copy`, made of integers and fixed arrays, with explicit
//! padding. Enums cross the boundary as integers and are decoded in userspace with `TryFrom`.
//! Every record starts with an [`EventHeader`] so the decoder can check kind and length first.
#![cfg_attr(not(feature = "user"), no_std)]

use core::mem::size_of;

pub mod exact;
pub use exact::{DomainCounters, MemLayout, VictimMmEvent};

/// Map names, so userspace never types one by hand.
pub mod maps {
    /// Ring buffer carrying [`super::SignalEvent`], [`super::OomVictimEvent`], [`super::ExitEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// `Array<Config>` with one entry, written by userspace before attaching.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU `u64` counters indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// LRU hash: pid (tid) of a SIGKILLed task -> [`super::PendingKill`], until its process dies.
    pub const PENDING_KILLS: &str = "PENDING_KILLS";
    /// LRU hash: tid -> [`super::ReclaimMark`], the last reclaim a task entered.
    pub const RECLAIM: &str = "RECLAIM";
    /// Hash: tgid -> 1 for each kubelet process the allocator probes count for.
    pub const KUBELET_TGIDS: &str = "KUBELET_TGIDS";
    /// Hash: kubelet tgid -> 1 once one of its allocator uprobes has fired; until then its
    /// mmap/munmap syscalls are counted instead (the gap between exec and the uprobes).
    pub const KUBELET_UPROBED: &str = "KUBELET_UPROBED";
    /// Hash: [`super::AllocKey`] -> [`super::AllocVal`], bytes per kubelet, entry point, stack.
    pub const ALLOC_STATS: &str = "ALLOC_STATS";
    /// Stack traces of allocation call sites (user stacks).
    pub const STACKS: &str = "STACKS";
    /// Hash: walked stack id -> [`super::WalkedStack`], the Go allocator's user stacks as the
    /// arm64 eBPF object walks them itself (see [`super::WalkedStack`]); absent on x86-64.
    pub const GO_STACKS: &str = "GO_STACKS";
    /// Hash: memcg kernfs id -> 1 for the cgroups whose reclaim is counted (kubelet, pods).
    pub const WATCHED_MEMCGS: &str = "WATCHED_MEMCGS";
    /// Per-CPU hash: memcg kernfs id -> [`super::ReclaimStats`].
    pub const RECLAIM_STATS: &str = "RECLAIM_STATS";
    /// LRU hash: tid -> (memcg id, begin ktime) of a reclaim in progress.
    pub const RECLAIM_IN_FLIGHT: &str = "RECLAIM_IN_FLIGHT";
}

pub const WATCHED_MEMCGS_MAX: u32 = 4096;

/// Memory cgroup reclaim, counted in the kernel for watched cgroups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    pub count: u64,
    pub ns: u64,
    pub pages: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReclaimFlight {
    pub memcg: u64,
    pub begin_ns: u64,
}

/// Program names: the hook they attach to is in the name.
pub mod programs {
    pub const TP_SIGNAL_GENERATE: &str = "tp_signal_generate";
    pub const TP_OOM_MARK_VICTIM: &str = "tp_oom_mark_victim";
    pub const TP_SCHED_PROCESS_EXIT: &str = "tp_sched_process_exit";
    pub const TP_MEMCG_RECLAIM_BEGIN: &str = "tp_memcg_reclaim_begin";
    pub const TP_MEMCG_RECLAIM_END: &str = "tp_memcg_reclaim_end";
    /// Faster tier where kprobes exist: the OOM control structure, domain and constraint.
    pub const KPROBE_OOM_KILL_PROCESS: &str = "kprobe_oom_kill_process";
    pub const TP_DIRECT_RECLAIM_BEGIN: &str = "tp_direct_reclaim_begin";
    pub const TP_SCHED_PROCESS_EXEC: &str = "tp_sched_process_exec";
    /// One uprobe program for every allocator entry point; the attach cookie says which.
    pub const UPROBE_ALLOC: &str = "uprobe_alloc";
    /// Fallback when no allocator symbol resolves: syscalls, filtered by kubelet tgid.
    pub const TP_SYS_ENTER_MMAP: &str = "tp_sys_enter_mmap";
    pub const TP_SYS_ENTER_MUNMAP: &str = "tp_sys_enter_munmap";
}

pub const KUBELET_TGIDS_MAX: u32 = 64;
pub const ALLOC_STATS_MAX: u32 = 16384;
pub const STACKS_MAX: u32 = 4096;

/// Return addresses kept of a walked stack (the program counter at the entry point first).
pub const WALKED_STACK_DEPTH: usize = 64;
/// [`AllocKey::stack_id`]s from this value up name a [`WalkedStack`] in `GO_STACKS`; below it
/// (and non-negative) a `bpf_get_stackid` stack in `STACKS`, whose ids are `u32`.
pub const WALKED_STACK_ID_MIN: i64 = 1 << 62;

/// The `GO_STACKS` key of a walked stack whose return addresses hash to `hash`: positive and
/// at least [`WALKED_STACK_ID_MIN`], so never a `STACKS` id nor the no-stack marker.
pub const fn walked_stack_id(hash: u64) -> i64 {
    ((hash >> 2) as i64) | WALKED_STACK_ID_MIN
}

/// A user stack walked by the eBPF program along the frame-pointer chain (arm64, Go entry
/// points): `pcs[0]` the program counter at the entry point, `pcs[1]` the link register (the
/// caller's return address, not yet saved at the first instruction), then the return address of
/// each frame record, innermost first. Only `pcs[..len]` is meaningful.
///
/// Why not `bpf_get_stackid`: the Go runtime maps heap on the system stack (g0), and
/// `systemstack` keeps the frame-pointer chain linked from g0's frames back to the goroutine's
/// (R29 is carried across the switch, `runtime/asm_arm64.s`). x86-64's kernel walk follows that
/// link; arm64's (`unwind_user_frame`, `arch/arm64/kernel/stacktrace.c`, 6.12) stops at a frame
/// record that is not above the current one, which the step from a g0 stack to a goroutine stack
/// at a lower address is. This walk has no such check and is bounded by the depth instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkedStack {
    pub len: u64,
    pub pcs: [u64; WALKED_STACK_DEPTH],
}

impl WalkedStack {
    /// The meaningful return addresses, innermost first.
    pub fn frames(&self) -> &[u64] {
        let n = usize::try_from(self.len)
            .unwrap_or(WALKED_STACK_DEPTH)
            .min(WALKED_STACK_DEPTH);
        &self.pcs[..n]
    }
}

/// Which argument holds the byte count at an allocator entry point (in the attach cookie). The
/// eBPF object maps it to its architecture's register, chosen when the object is built
/// (`bpf_target_arch`): on x86-64 Go's register ABI uses RAX, RBX and the C ABI RDI, RSI; on
/// arm64 both use X0, X1 (`user_pt_regs.regs[0]`, `regs[1]`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgReg {
    /// Go register ABI, 1st integer argument (x86-64 RAX, arm64 R0).
    GoArg0 = 0,
    /// Go register ABI, 2nd integer argument (x86-64 RBX, arm64 R1).
    GoArg1 = 1,
    /// C ABI, 1st argument (x86-64 RDI, arm64 X0).
    CArg0 = 2,
    /// C ABI, 2nd argument (x86-64 RSI, arm64 X1).
    CArg1 = 3,
}

/// Attach cookie: entry-point index (low 16 bits), [`ArgReg`] (bits 16..24) and
/// [`COOKIE_SCAN_STACK`].
pub const fn alloc_cookie(point: u16, reg: ArgReg, scan_stack: bool) -> u64 {
    (point as u64) | ((reg as u64) << 16) | if scan_stack { COOKIE_SCAN_STACK } else { 0 }
}

/// Cookie flag: find the call site by scanning the user stack for the first return address
/// into the kubelet's own code (for entry points in a library built without frame pointers,
/// libc, where the frame-pointer walk loses the caller).
pub const COOKIE_SCAN_STACK: u64 = 1 << 24;
/// Stack words scanned from the stack pointer at the entry point.
pub const SCAN_STACK_WORDS: usize = 128;

/// Value of `KUBELET_TGIDS`: the kubelet's executable code, as mapped in that process
/// (runtime addresses), for the stack scan. Zero when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KubeletText {
    pub start: u64,
    pub end: u64,
}

/// Entry-point index reserved for the syscall fallback.
pub const POINT_SYSCALL_MMAP: u16 = 0xfff0;
pub const POINT_SYSCALL_MUNMAP: u16 = 0xfff1;

/// Aggregation key of allocator hits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    /// Entry-point index from the cookie.
    pub point: u32,
    /// `bpf_get_stackid` of the user stack (a `STACKS` id), or from [`WALKED_STACK_ID_MIN`] up
    /// a `GO_STACKS` key; negative when unavailable.
    pub stack_id: i64,
    /// First return address into the kubelet's code found on the stack (scan entry points
    /// only), else 0.
    pub site: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocVal {
    pub bytes: u64,
    pub calls: u64,
}

/// `sched/sched_process_exec` of a process whose comm is the configured kubelet name.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KubeletExecEvent {
    pub hdr: EventHeader,
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

pub const SIGKILL: i32 = 9;
pub const TASK_COMM_LEN: usize = 16;
/// Depth of the memory cgroup path captured in the kernel (leaf first).
pub const CGROUP_MAX_DEPTH: usize = 8;
/// Bytes kept of each cgroup path component (kubepods' scope names are ~80 bytes).
pub const CGROUP_NAME_LEN: usize = 128;
/// Marks a tracepoint field or struct member that this kernel does not have.
pub const OFFSET_ABSENT: u32 = u32::MAX;
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
pub const PENDING_KILLS_MAX: u32 = 16384;
pub const RECLAIM_MAX: u32 = 8192;

/// Record kinds on the `EVENTS` ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Signal = 1,
    OomVictim = 2,
    Exit = 3,
    KubeletExec = 4,
    OomControl = 5,
    /// [`VictimMmEvent`]: a SIGKILL target's RSS counters and memcg chain.
    VictimMm = 6,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(Self::Signal),
            2 => Ok(Self::OomVictim),
            3 => Ok(Self::Exit),
            4 => Ok(Self::KubeletExec),
            5 => Ok(Self::OomControl),
            6 => Ok(Self::VictimMm),
            other => Err(other),
        }
    }
}

/// Kernel-side counters (per CPU), exported by userspace as metrics.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `bpf_ringbuf_reserve` failed for a signal record: the ring was full, the record is lost.
    RingbufFullSignal = 0,
    RingbufFullVictim = 1,
    RingbufFullExit = 2,
    /// A `bpf_probe_read*` of a tracepoint field or kernel struct failed.
    ReadFailed = 3,
    /// The pending-kill map refused an insert.
    PendingInsertFailed = 4,
    /// SIGKILLs seen by the signal probe (before any userspace processing).
    SigkillSeen = 5,
    /// `mark_victim` hits.
    OomVictimSeen = 6,
    /// The allocation stats map refused an insert (full): bytes not attributed.
    AllocStatsFull = 7,
    /// `bpf_ringbuf_reserve` failed for a SIGKILL target's RSS record (raw tracepoint).
    RingbufFullVictimMm = 8,
    /// `KUBELET_TGIDS` refused a process exec'ing under the kubelet's name (full): its
    /// allocations are not counted.
    KubeletTgidsFull = 9,
    /// `bpf_get_stackid` failed for an allocation (`STACKS` bucket taken by another stack, or
    /// the stack unreadable), or a walked stack found `GO_STACKS` full (arm64): the bytes are
    /// counted without a call stack.
    StackCaptureFailed = 10,
    /// `RECLAIM_STATS` refused a watched memory cgroup (full): its reclaim is not counted.
    ReclaimStatsFull = 11,
    /// An allocation or syscall length past any user address space (2^57 bytes): not counted
    /// (the call maps nothing; `munmap(p, SIZE_MAX)` fails with EINVAL).
    ImplausibleLength = 12,
}

pub const COUNTERS_LEN: u32 = 16;

impl Counter {
    pub const ALL: [Counter; 13] = [
        Counter::RingbufFullSignal,
        Counter::RingbufFullVictim,
        Counter::RingbufFullExit,
        Counter::ReadFailed,
        Counter::PendingInsertFailed,
        Counter::SigkillSeen,
        Counter::OomVictimSeen,
        Counter::AllocStatsFull,
        Counter::RingbufFullVictimMm,
        Counter::KubeletTgidsFull,
        Counter::StackCaptureFailed,
        Counter::ReclaimStatsFull,
        Counter::ImplausibleLength,
    ];
}

/// Which reclaim path a task last entered (a memcg OOM is preceded by memcg reclaim, a global
/// OOM by direct reclaim in the page allocator).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimKind {
    None = 0,
    Memcg = 1,
    Direct = 2,
}

impl TryFrom<u32> for ReclaimKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::Memcg),
            2 => Ok(Self::Direct),
            other => Err(other),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReclaimMark {
    pub ktime_ns: u64,
    pub kind: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingKill {
    /// `bpf_ktime_get_ns` of the SIGKILL.
    pub signal_ktime_ns: u64,
    /// The pid the signal was sent to (may be a thread; the entry moves to its tgid).
    pub signaled_pid: u32,
    pub _pad: u32,
}

/// Common record header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// [`EventKind`] as an integer.
    pub kind: u32,
    /// `size_of` the whole record, for the decoder to check.
    pub len: u32,
    /// `bpf_ktime_get_ns()` when the probe ran (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
}

/// A memory cgroup path read in the kernel from the task's css_set, leaf first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupPath {
    /// kernfs node id of the leaf (the cgroup directory's inode number); 0 if unread.
    pub id: u64,
    /// Number of components filled in `names` (the root is not a component).
    pub depth: u32,
    /// `CGROUP_PATH_*` flags.
    pub flags: u32,
    pub names: [[u8; CGROUP_NAME_LEN]; CGROUP_MAX_DEPTH],
}

pub const CGROUP_PATH_TRUNCATED: u32 = 1;
pub const CGROUP_PATH_UNAVAILABLE: u32 = 2;

impl core::fmt::Debug for CgroupPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CgroupPath")
            .field("id", &self.id)
            .field("depth", &self.depth)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

/// `signal/signal_generate` for SIGKILL (filtered in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalEvent {
    pub hdr: EventHeader,
    /// Target task's pid (a tid in kernel terms).
    pub target_pid: i32,
    pub sig: i32,
    /// `si_code`: 0 SI_USER, 0x80 SI_KERNEL, negative for SI_QUEUE, SI_TKILL...
    pub code: i32,
    pub group: i32,
    /// `enum trace_signal_result`: 0 delivered, 1 ignored, 2 already pending, 3/4 overflow.
    pub result: i32,
    /// The task running when the signal was generated: the killer, or the OOM trigger.
    pub sender_tid: u32,
    pub sender_tgid: u32,
    /// [`ReclaimKind`] the sender last entered, and when (0 if never seen).
    pub sender_reclaim_kind: u32,
    pub sender_reclaim_ktime_ns: u64,
    pub target_comm: [u8; TASK_COMM_LEN],
    pub sender_comm: [u8; TASK_COMM_LEN],
    pub sender_memcg: CgroupPath,
    /// For a kernel-sent SIGKILL: the sender's memcg chain counters since its reclaim began.
    pub domain: DomainCounters,
}

/// Bits of [`OomVictimEvent::fields`]: which tracepoint fields this kernel has.
pub mod victim_fields {
    pub const COMM: u32 = 1 << 0;
    pub const TOTAL_VM: u32 = 1 << 1;
    pub const ANON_RSS: u32 = 1 << 2;
    pub const FILE_RSS: u32 = 1 << 3;
    pub const SHMEM_RSS: u32 = 1 << 4;
    pub const UID: u32 = 1 << 5;
    pub const PGTABLES: u32 = 1 << 6;
    pub const OOM_SCORE_ADJ: u32 = 1 << 7;
}

/// `oom/mark_victim`: the kernel OOM killer chose this task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictimEvent {
    pub hdr: EventHeader,
    pub pid: i32,
    pub uid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    /// `victim_fields` bits present on this kernel.
    pub fields: u32,
    /// The task that invoked the OOM killer.
    pub trigger_tid: u32,
    pub trigger_tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// `sched/sched_process_exit` of a process that has a pending SIGKILL, on its last thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    pub tid: u32,
    pub tgid: u32,
    /// The pid the SIGKILL was sent to, as recorded in the pending-kill map.
    pub signaled_pid: u32,
    /// `task_struct.exit_code` (signal number in the low 7 bits); -1 when unreadable.
    pub exit_code: i32,
    pub signal_ktime_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// The dying task's memory cgroup (still attached at this tracepoint).
    pub memcg: CgroupPath,
}

/// `oom_kill_process(struct oom_control *oc, ...)` (kprobe tier): the kernel's own answer to
/// which limit fired and why.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomControlEvent {
    pub hdr: EventHeader,
    pub chosen_pid: u32,
    pub chosen_tgid: u32,
    /// `enum oom_constraint`: 0 none, 1 cpuset, 2 memory policy, 3 memcg.
    pub constraint: u32,
    /// `OC_*` bits: which of the domain's page counters were read.
    pub flags: u32,
    pub totalpages: u64,
    pub chosen_points: i64,
    /// `oc->memcg->memory`'s `page_counter` as `oom_kill_process` found it (pages): the limit
    /// that fired (`max`), the charge at it (`usage`) and its high-water mark (`watermark`).
    /// Read before the victim is killed, so none of its memory is uncharged yet.
    pub domain_max_pages: u64,
    pub domain_usage_pages: u64,
    pub domain_watermark_pages: u64,
    /// `oc->memcg`'s cgroup (the OOM domain); unavailable for a global OOM.
    pub domain: CgroupPath,
}

/// [`OomControlEvent::flags`]: `domain_max_pages` and `domain_usage_pages` were read.
pub const OC_DOMAIN_COUNTERS: u32 = 1;
/// [`OomControlEvent::flags`]: `domain_watermark_pages` was read.
pub const OC_DOMAIN_WATERMARK: u32 = 2;

/// Load-time configuration: tracepoint field offsets from the format files and kernel struct
/// member offsets from BTF, so no kernel's layout is hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The agent's own tgid: its events are not traced.
    pub agent_tgid: u32,
    pub signal_sig: u32,
    pub signal_code: u32,
    pub signal_comm: u32,
    pub signal_pid: u32,
    pub signal_group: u32,
    pub signal_result: u32,
    pub victim_pid: u32,
    pub victim_comm: u32,
    pub victim_total_vm: u32,
    pub victim_anon_rss: u32,
    pub victim_file_rss: u32,
    pub victim_shmem_rss: u32,
    pub victim_uid: u32,
    pub victim_pgtables: u32,
    pub victim_oom_score_adj: u32,
    pub exit_group_dead: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `css_set.subsys`
    pub css_set_subsys: u32,
    /// `enum cgroup_subsys_id` value of `memory_cgrp_id`
    pub memory_cgrp_id: u32,
    /// `cgroup_subsys_state.cgroup`
    pub css_cgroup: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.name`
    pub kn_name: u32,
    /// `kernfs_node.parent` (`__parent` since 6.15)
    pub kn_parent: u32,
    /// `kernfs_node.id`
    pub kn_id: u32,
    /// `mm_vmscan_memcg_reclaim_end.nr_reclaimed`
    pub reclaim_end_nr: u32,
    /// The kubelet's comm (NUL-padded); a process exec'ing with it is watched at once.
    pub kubelet_comm: [u8; TASK_COMM_LEN],
    /// `oom_control.{memcg,chosen,constraint,totalpages,chosen_points}`
    pub oc_memcg: u32,
    pub oc_chosen: u32,
    pub oc_constraint: u32,
    pub oc_totalpages: u32,
    pub oc_chosen_points: u32,
    /// `mem_cgroup.css`
    pub memcg_css: u32,
    /// `task_struct.{pid,tgid}`
    pub task_pid: u32,
    pub task_tgid: u32,
}

impl Config {
    /// Everything absent: a kernel program reading it does nothing harmful.
    pub const EMPTY: Config = Config {
        agent_tgid: 0,
        signal_sig: OFFSET_ABSENT,
        signal_code: OFFSET_ABSENT,
        signal_comm: OFFSET_ABSENT,
        signal_pid: OFFSET_ABSENT,
        signal_group: OFFSET_ABSENT,
        signal_result: OFFSET_ABSENT,
        victim_pid: OFFSET_ABSENT,
        victim_comm: OFFSET_ABSENT,
        victim_total_vm: OFFSET_ABSENT,
        victim_anon_rss: OFFSET_ABSENT,
        victim_file_rss: OFFSET_ABSENT,
        victim_shmem_rss: OFFSET_ABSENT,
        victim_uid: OFFSET_ABSENT,
        victim_pgtables: OFFSET_ABSENT,
        victim_oom_score_adj: OFFSET_ABSENT,
        exit_group_dead: OFFSET_ABSENT,
        task_cgroups: OFFSET_ABSENT,
        task_exit_code: OFFSET_ABSENT,
        css_set_subsys: OFFSET_ABSENT,
        memory_cgrp_id: OFFSET_ABSENT,
        css_cgroup: OFFSET_ABSENT,
        cgroup_kn: OFFSET_ABSENT,
        kn_name: OFFSET_ABSENT,
        kn_parent: OFFSET_ABSENT,
        kn_id: OFFSET_ABSENT,
        reclaim_end_nr: OFFSET_ABSENT,
        kubelet_comm: [0; TASK_COMM_LEN],
        oc_memcg: OFFSET_ABSENT,
        oc_chosen: OFFSET_ABSENT,
        oc_constraint: OFFSET_ABSENT,
        oc_totalpages: OFFSET_ABSENT,
        oc_chosen_points: OFFSET_ABSENT,
        memcg_css: OFFSET_ABSENT,
        task_pid: OFFSET_ABSENT,
        task_tgid: OFFSET_ABSENT,
    };
}

/// A ring-buffer record: a wire struct that starts with an [`EventHeader`] and is sent as one
/// [`EventKind`]. The binding is made once, here: a probe writes its header with
/// [`EventHeader::of`], and the decoder reads a kind's payload only as the struct bound to it.
pub trait WireEvent: Copy {
    const KIND: EventKind;
}

impl WireEvent for SignalEvent {
    const KIND: EventKind = EventKind::Signal;
}
impl WireEvent for OomVictimEvent {
    const KIND: EventKind = EventKind::OomVictim;
}
impl WireEvent for ExitEvent {
    const KIND: EventKind = EventKind::Exit;
}
impl WireEvent for KubeletExecEvent {
    const KIND: EventKind = EventKind::KubeletExec;
}
impl WireEvent for OomControlEvent {
    const KIND: EventKind = EventKind::OomControl;
}
impl WireEvent for VictimMmEvent {
    const KIND: EventKind = EventKind::VictimMm;
}

impl EventHeader {
    /// The header of a `T` record written at `ktime_ns`: its kind and its length.
    #[inline(always)]
    pub const fn of<T: WireEvent>(ktime_ns: u64) -> EventHeader {
        EventHeader {
            kind: T::KIND as u32,
            len: size_of::<T>() as u32,
            ktime_ns,
        }
    }
}

/// `enum oom_constraint` (mm/oom_kill.c): what the OOM killer was constrained to. Crosses the
/// wire as `u32` ([`OomControlEvent::constraint`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomConstraint {
    /// `CONSTRAINT_NONE`: the whole node (a global OOM).
    None = 0,
    /// `CONSTRAINT_CPUSET`.
    Cpuset = 1,
    /// `CONSTRAINT_MEMORY_POLICY`.
    MemoryPolicy = 2,
    /// `CONSTRAINT_MEMCG`: a memory cgroup's limit.
    Memcg = 3,
}

impl TryFrom<u32> for OomConstraint {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::Cpuset),
            2 => Ok(Self::MemoryPolicy),
            3 => Ok(Self::Memcg),
            other => Err(other),
        }
    }
}

impl OomConstraint {
    /// The record's name: `global` (`CONSTRAINT_NONE`), `cpuset`, `memory_policy`, `memcg`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "global",
            Self::Cpuset => "cpuset",
            Self::MemoryPolicy => "memory_policy",
            Self::Memcg => "memcg",
        }
    }
}

/// `enum trace_signal_result` (include/trace/events/signal.h): what became of a signal.
/// Crosses the wire as `i32` ([`SignalEvent::result`]).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalDelivery {
    /// `TRACE_SIGNAL_DELIVERED`.
    Delivered = 0,
    /// `TRACE_SIGNAL_IGNORED`: the target was already dying, or ignores the signal.
    Ignored = 1,
    /// `TRACE_SIGNAL_ALREADY_PENDING`.
    AlreadyPending = 2,
    /// `TRACE_SIGNAL_OVERFLOW_FAIL`.
    OverflowFail = 3,
    /// `TRACE_SIGNAL_LOSE_INFO`.
    LoseInfo = 4,
}

impl TryFrom<i32> for SignalDelivery {
    type Error = i32;
    fn try_from(v: i32) -> Result<Self, i32> {
        match v {
            0 => Ok(Self::Delivered),
            1 => Ok(Self::Ignored),
            2 => Ok(Self::AlreadyPending),
            3 => Ok(Self::OverflowFail),
            4 => Ok(Self::LoseInfo),
            other => Err(other),
        }
    }
}

impl SignalDelivery {
    /// The record's name: `delivered`, `ignored`, `already_pending`, `overflow_fail`,
    /// `lose_info`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Ignored => "ignored",
            Self::AlreadyPending => "already_pending",
            Self::OverflowFail => "overflow_fail",
            Self::LoseInfo => "lose_info",
        }
    }
}

/// A signal's `si_code` (include/uapi/asm-generic/siginfo.h). Any `i32` is a valid code (the
/// architecture and the signal add their own), so this is a newtype with the kernel's names
/// for the codes a SIGKILL carries, not a closed enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiCode(pub i32);

impl SiCode {
    /// Sent by `kill(2)`.
    pub const USER: SiCode = SiCode(0);
    /// Sent by the kernel (the OOM killer among others).
    pub const KERNEL: SiCode = SiCode(0x80);
    pub const QUEUE: SiCode = SiCode(-1);
    pub const TIMER: SiCode = SiCode(-2);
    pub const MESGQ: SiCode = SiCode(-3);
    pub const ASYNCIO: SiCode = SiCode(-4);
    pub const SIGIO: SiCode = SiCode(-5);
    /// Sent by `tkill(2)`/`tgkill(2)`.
    pub const TKILL: SiCode = SiCode(-6);
    pub const DETHREAD: SiCode = SiCode(-7);
    pub const ASYNCNL: SiCode = SiCode(-60);

    /// The kernel's name (`SI_USER`, `SI_KERNEL`, ...), or None for a code without one here.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "SI_USER",
            0x80 => "SI_KERNEL",
            -1 => "SI_QUEUE",
            -2 => "SI_TIMER",
            -3 => "SI_MESGQ",
            -4 => "SI_ASYNCIO",
            -5 => "SI_SIGIO",
            -6 => "SI_TKILL",
            -7 => "SI_DETHREAD",
            -60 => "SI_ASYNCNL",
            _ => return None,
        })
    }
}

// The layout is the ABI: a change here must be deliberate.
const _: () = assert!(size_of::<EventHeader>() == 16);
const _: () = assert!(size_of::<CgroupPath>() == 16 + CGROUP_NAME_LEN * CGROUP_MAX_DEPTH);
const _: () = assert!(
    size_of::<SignalEvent>()
        == 16 + 32 + 8 + 32 + size_of::<CgroupPath>() + size_of::<DomainCounters>()
);
const _: () = assert!(size_of::<OomVictimEvent>() == 16 + 8 + 40 + 16 + 16);
const _: () = assert!(size_of::<ExitEvent>() == 16 + 16 + 8 + 16 + size_of::<CgroupPath>());
const _: () = assert!(size_of::<Config>() == 35 * 4 + TASK_COMM_LEN);
const _: () = assert!(size_of::<OomControlEvent>() == 16 + 16 + 16 + 24 + size_of::<CgroupPath>());
const _: () = assert!(size_of::<AllocKey>() == 24);
const _: () = assert!(size_of::<KubeletText>() == 16);
const _: () = assert!(size_of::<WalkedStack>() == 8 + 8 * WALKED_STACK_DEPTH);
const _: () = assert!(size_of::<AllocVal>() == 16);
const _: () = assert!(size_of::<ReclaimStats>() == 24);
const _: () = assert!(size_of::<ReclaimFlight>() == 16);
const _: () = assert!(size_of::<KubeletExecEvent>() == 16 + 8 + TASK_COMM_LEN);
const _: () = assert!(size_of::<PendingKill>() == 16);
const _: () = assert!(size_of::<ReclaimMark>() == 16);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain old data, repr(C), no padding left implicit.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PendingKill {}
    unsafe impl aya::Pod for ReclaimMark {}
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for KubeletText {}
    unsafe impl aya::Pod for AllocVal {}
    unsafe impl aya::Pod for ReclaimStats {}
    unsafe impl aya::Pod for WalkedStack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walked_stack_yields_its_first_len_addresses_and_never_reads_past_the_array() {
        let mut st = WalkedStack {
            len: 3,
            pcs: [0xdead; WALKED_STACK_DEPTH],
        };
        st.pcs[..3].copy_from_slice(&[0x10, 0x20, 0x30]);
        assert_eq!(st.frames(), &[0x10, 0x20, 0x30]);
        // A length the kernel side cannot write (it stops at the depth) is clamped, not trusted.
        st.len = u64::MAX;
        assert_eq!(st.frames().len(), WALKED_STACK_DEPTH);
        st.len = 0;
        assert!(st.frames().is_empty());
    }

    #[test]
    fn walked_stack_ids_cannot_collide_with_stack_map_ids_or_the_no_stack_marker() {
        // STACKS ids are u32; -1 is "no stack".
        for hash in [0, 1, u64::from(u32::MAX), 1 << 63, u64::MAX] {
            let id = walked_stack_id(hash);
            assert!(id >= WALKED_STACK_ID_MIN, "{hash:#x} -> {id:#x}");
            assert!(id > i64::from(u32::MAX));
        }
        assert_ne!(walked_stack_id(0x1234 << 2), walked_stack_id(0x1235 << 2));
    }
}
