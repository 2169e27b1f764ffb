//! The kubelet's allocator: uprobes on the Go runtime's (or libc's) memory entry points, counted
//! in the kernel per kubelet process, entry point and user call stack. Only processes in
//! `KUBELET_TGIDS` count; a process exec'ing under the kubelet's name joins that set here, in the
//! kernel, so a restarted kubelet is followed from its first allocation.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{tracepoint, uprobe},
    programs::{tracing::StackIdContext as _, ProbeContext, TracePointContext},
    EbpfContext as _,
};
use probe_common::{
    AllocKey, AllocVal, ArgReg, Counter, EventHeader, KubeletExecEvent, KubeletText,
    COOKIE_SCAN_STACK, POINT_SYSCALL_MMAP, POINT_SYSCALL_MUNMAP, SCAN_STACK_WORDS, TASK_COMM_LEN,
};

use super::current_ids;
use crate::maps::{
    config, count, ALLOC_STATS, BPF_RB_FORCE_WAKEUP, EVENTS, KUBELET_TGIDS, KUBELET_UPROBED, STACKS,
};

#[tracepoint]
pub fn tp_sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    if cfg.kubelet_comm[0] == 0 {
        return 0;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    if comm != cfg.kubelet_comm {
        return 0;
    }
    let (_, tgid) = current_ids();
    // The code range comes from userspace once it has read the process's maps.
    if KUBELET_TGIDS
        .insert(tgid, KubeletText::default(), 0)
        .is_err()
    {
        count(Counter::KubeletTgidsFull);
    }
    // A new image: its syscalls count until its own uprobes fire.
    let _ = KUBELET_UPROBED.remove(&tgid);
    let Some(mut entry) = EVENTS.reserve::<KubeletExecEvent>(0) else {
        count(Counter::RingbufFullExit);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = EventHeader::of::<KubeletExecEvent>(bpf_ktime_get_ns());
        (*ev).tgid = tgid;
        (*ev)._pad = 0;
        (*ev).comm = comm;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    0
}

#[uprobe]
pub fn uprobe_alloc(ctx: ProbeContext) -> u32 {
    let (_, tgid) = current_ids();
    let Some(text) = (unsafe { KUBELET_TGIDS.get(tgid) }).copied() else {
        return 0;
    };
    // From now on this process's allocator is seen here, not through its syscalls. A probed
    // entry point runs before the syscall it makes, so nothing is counted twice.
    if unsafe { KUBELET_UPROBED.get(tgid) }.is_none() {
        let _ = KUBELET_UPROBED.insert(tgid, 1, 0);
    }
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let point = (cookie & 0xffff) as u32;
    // No register map for this architecture: the agent does not attach this program there.
    let Some(regs) = entry_regs(&ctx) else {
        return 0;
    };
    let reg = ((cookie >> 16) & 0xff) as u32;
    let bytes = match reg {
        r if r == ArgReg::GoArg0 as u32 => regs.go0,
        r if r == ArgReg::GoArg1 as u32 => regs.go1,
        r if r == ArgReg::CArg0 as u32 => regs.c0,
        _ => regs.c1,
    };
    let go = reg == ArgReg::GoArg0 as u32 || reg == ArgReg::GoArg1 as u32;
    let stack_id = entry_stack_id(&ctx, go);
    let site = if cookie & COOKIE_SCAN_STACK != 0 {
        match regs.link {
            // arm64: the caller's return address is still in the link register at entry.
            Some(lr) if text.start != 0 && lr >= text.start && lr < text.end => lr,
            _ => scan_for_site(regs.sp, &text),
        }
    } else {
        0
    };
    add(tgid, point, stack_id, site, bytes);
    0
}

/// The registers an allocator entry point's arguments and call site are read from, at the
/// probed function's first instruction.
struct EntryRegs {
    go0: u64,
    go1: u64,
    c0: u64,
    c1: u64,
    sp: u64,
    /// The link register (arm64): the return address before the callee saves it.
    link: Option<u64>,
}

/// x86-64 `pt_regs`: Go's register ABI passes RAX, RBX...; System V RDI, RSI...; the return
/// address is on the stack at RSP. Fixed-offset loads: the verifier refuses a ctx load at a
/// computed offset.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn entry_regs(ctx: &ProbeContext) -> Option<EntryRegs> {
    unsafe {
        let regs = ctx.regs;
        Some(EntryRegs {
            go0: core::ptr::read_volatile(&raw const (*regs).rax),
            go1: core::ptr::read_volatile(&raw const (*regs).rbx),
            c0: core::ptr::read_volatile(&raw const (*regs).rdi),
            c1: core::ptr::read_volatile(&raw const (*regs).rsi),
            sp: core::ptr::read_volatile(&raw const (*regs).rsp),
            link: None,
        })
    }
}

/// arm64 `struct pt_regs` begins with `user_pt_regs` (`regs[31]`, `sp`, `pc`, `pstate`): Go's
/// register ABI passes R0, R1... and the C ABI X0, X1... (the same registers); X30 is the link
/// register.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn entry_regs(ctx: &ProbeContext) -> Option<EntryRegs> {
    unsafe {
        let regs = ctx.regs as *const aya_ebpf::bindings::user_pt_regs;
        let x0 = core::ptr::read_volatile(&raw const (*regs).regs[0]);
        let x1 = core::ptr::read_volatile(&raw const (*regs).regs[1]);
        Some(EntryRegs {
            go0: x0,
            go1: x1,
            c0: x0,
            c1: x1,
            sp: core::ptr::read_volatile(&raw const (*regs).sp),
            link: Some(core::ptr::read_volatile(&raw const (*regs).regs[30])),
        })
    }
}

/// No register map: the allocator uprobes read nothing here (the agent reports the feature
/// as unsupported and does not attach them).
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
#[inline(always)]
fn entry_regs(_ctx: &ProbeContext) -> Option<EntryRegs> {
    None
}

/// The user stack at an allocator entry point: the kernel's walk (`bpf_get_stackid`) on
/// x86-64, which follows Go's frame-pointer chain from the system stack (g0) back to the
/// goroutine's frames.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
fn entry_stack_id(ctx: &ProbeContext, _go: bool) -> i64 {
    stack_id(ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64))
}

/// arm64: Go entry points walk the frame-pointer chain here (the kernel's walk stops where the
/// chain steps from the system stack down to the goroutine's: `probe_common::WalkedStack`);
/// C entry points keep the kernel's walk.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn entry_stack_id(ctx: &ProbeContext, go: bool) -> i64 {
    if go {
        walk_go_stack(ctx)
    } else {
        stack_id(ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64))
    }
}

/// Walks Go's frame records from X29 (each `{previous X29, return address}`, the AAPCS64 layout
/// Go's arm64 prologue keeps) into `GO_STACKS`; returns the stack's id there, or -1 with the
/// failure counted. The walk ends at a null, misaligned or unreadable frame pointer, a null
/// return address (the goroutine's outermost frame) or the depth; it does not require frames to
/// climb, so it crosses from g0's stack to the goroutine's as x86-64's kernel walk does.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn walk_go_stack(ctx: &ProbeContext) -> i64 {
    use probe_common::{walked_stack_id, WALKED_STACK_DEPTH};

    use crate::maps::{GO_STACKS, WALK_SCRATCH};

    let Some(st) = WALK_SCRATCH.get_ptr_mut(0) else {
        count(Counter::StackCaptureFailed);
        return -1;
    };
    let (pc, lr, mut fp) = unsafe {
        let regs = ctx.regs as *const aya_ebpf::bindings::user_pt_regs;
        (
            core::ptr::read_volatile(&raw const (*regs).pc),
            core::ptr::read_volatile(&raw const (*regs).regs[30]),
            core::ptr::read_volatile(&raw const (*regs).regs[29]),
        )
    };
    // Per-CPU scratch: no other writer while this program runs on this CPU.
    let pcs = unsafe { &mut (*st).pcs };
    pcs[0] = pc;
    pcs[1] = lr;
    let mut hash = fnv1a(fnv1a(FNV_OFFSET, pc), lr);
    let mut len = 2;
    for i in 2..WALKED_STACK_DEPTH {
        if fp == 0 || fp & 7 != 0 {
            break;
        }
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user::<[u64; 2]>(fp as *const _) }) else {
            break;
        };
        if ret == 0 {
            break;
        }
        pcs[i] = ret;
        hash = fnv1a(hash, ret);
        len = i + 1;
        fp = next;
    }
    unsafe { (*st).len = len as u64 };
    // Equal stacks hash equal and share an entry; the tag keeps the id out of `STACKS`' range.
    let id = walked_stack_id(hash);
    if GO_STACKS.insert(&id, unsafe { &*st }, 0).is_err() {
        count(Counter::StackCaptureFailed);
        return -1;
    }
    id
}

#[cfg(bpf_target_arch = "aarch64")]
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over one 64-bit word.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn fnv1a(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The first word on the user stack (from the entry point's stack pointer) that points into
/// the kubelet's code: the return address of the innermost kubelet frame below the library.
/// A stale code pointer left on the stack can be mistaken for it; the scan is bounded.
#[inline(always)]
fn scan_for_site(rsp: u64, text: &KubeletText) -> u64 {
    if text.start == 0 {
        return 0;
    }
    // Eight words per read keeps the BPF stack small.
    for chunk in 0..SCAN_STACK_WORDS / 8 {
        let at = rsp + (chunk * 64) as u64;
        let Ok(words) = (unsafe { bpf_probe_read_user::<[u64; 8]>(at as *const _) }) else {
            return 0;
        };
        for w in words {
            if w >= text.start && w < text.end {
                return w;
            }
        }
    }
    0
}

/// Fallback for kubelets whose allocator cannot be resolved: the mmap/munmap syscalls.
#[tracepoint]
pub fn tp_sys_enter_mmap(ctx: TracePointContext) -> u32 {
    syscall(&ctx, POINT_SYSCALL_MMAP)
}

#[tracepoint]
pub fn tp_sys_enter_munmap(ctx: TracePointContext) -> u32 {
    syscall(&ctx, POINT_SYSCALL_MUNMAP)
}

#[inline(always)]
fn syscall(ctx: &TracePointContext, point: u16) -> u32 {
    let (_, tgid) = current_ids();
    if unsafe { KUBELET_TGIDS.get(tgid) }.is_none() {
        return 0;
    }
    // Counted by its allocator uprobes already.
    if unsafe { KUBELET_UPROBED.get(tgid) }.is_some() {
        return 0;
    }
    // sys_enter_mmap: addr at 16, len at 24, prot at 32, flags at 40; sys_enter_munmap: addr
    // at 16, len at 24 (syscall number at 8, then 8-byte args).
    let Ok(len) = (unsafe { ctx.read_at::<u64>(24) }) else {
        return 0;
    };
    if point == POINT_SYSCALL_MMAP {
        // Memory, not files or address-space reservations: anonymous and accessible.
        let (Ok(prot), Ok(flags)) = (unsafe { ctx.read_at::<u64>(32) }, unsafe {
            ctx.read_at::<u64>(40)
        }) else {
            return 0;
        };
        if flags & MAP_ANONYMOUS == 0 || prot == PROT_NONE {
            return 0;
        }
    }
    // The user stack as the syscall left it (whole for Go's frame pointers; libc's wrappers
    // keep none, so a C caller stays unknown on this path).
    let stack_id = if point == POINT_SYSCALL_MMAP {
        stack_id(ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64))
    } else {
        -1
    };
    add(tgid, u32::from(point), stack_id, 0, len);
    0
}

/// The captured stack's id, or -1 (no stack) with the failure counted.
#[inline(always)]
fn stack_id(r: Result<i64, i32>) -> i64 {
    match r {
        Ok(id) => id,
        Err(_) => {
            count(Counter::StackCaptureFailed);
            -1
        }
    }
}

const MAP_ANONYMOUS: u64 = 0x20;
/// The largest user address space of any kernel this runs on (x86-64 with 5-level paging).
const MAX_USER_BYTES: u64 = 1 << 57;
const PROT_NONE: u64 = 0;

#[inline(always)]
fn add(tgid: u32, point: u32, stack_id: i64, site: u64, bytes: u64) {
    // A length past any user address space (2^57 bytes: x86-64's 5-level paging; arm64 has
    // less) maps or unmaps nothing: the syscall fails with EINVAL or ENOMEM, a runtime never
    // asks for it (`munmap(p, SIZE_MAX)` would otherwise add 2^64 - 1 to the counts).
    if bytes > MAX_USER_BYTES {
        count(Counter::ImplausibleLength);
        return;
    }
    let key = AllocKey {
        tgid,
        point,
        stack_id,
        site,
    };
    // Per-CPU values: no other writer while this program runs on this CPU.
    if let Some(v) = ALLOC_STATS.get_ptr_mut(&key) {
        // Saturating: a per-CPU sum that wrapped would read as a small number.
        unsafe {
            (*v).bytes = (*v).bytes.saturating_add(bytes);
            (*v).calls = (*v).calls.saturating_add(1);
        }
        return;
    }
    let val = AllocVal { bytes, calls: 1 };
    if ALLOC_STATS.insert(&key, &val, 0).is_err() {
        count(Counter::AllocStatsFull);
    }
}

const _: () = assert!(TASK_COMM_LEN == 16);
