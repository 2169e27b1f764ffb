//! Exact kernel readings: the memory cgroup counters along a chain (which limit fired), the RSS
//! counters of a task's mm, and `memory.oom.group` along a task's chain. Offsets come from BTF
//! through [`MemLayout`].
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_ktime_get_ns, bpf_probe_read_kernel,
    generated::{bpf_get_current_task, bpf_map_lookup_percpu_elem},
};
use probe_common::{
    exact::{
        mm_flags, MemcgBaseline, BASELINE_REFRESH_NS, DOMAIN_BASELINE, DOMAIN_CHAIN_CHANGED,
        DOMAIN_PAGE_COUNTER, MAX_CPUS, MEMCG_LEVELS, RSS_LAYOUT_ATOMIC, RSS_LAYOUT_PERCPU,
    },
    Config, DomainCounters, MemLayout, VictimMmEvent,
};

use crate::{
    maps::{present, MEM_LAYOUT, OOM_BASELINE, PCPU_PROBE},
    task::read_ptr,
};

#[inline(always)]
pub fn layout() -> Option<&'static MemLayout> {
    MEM_LAYOUT.get(0)
}

/// The memory controller's `cgroup_subsys_state` of a task.
#[inline(always)]
pub unsafe fn task_memory_css(cfg: &Config, task: *const u8) -> Result<*const u8, i32> {
    let css_set = unsafe { read_ptr(task, cfg.task_cgroups)? };
    unsafe {
        read_ptr(
            css_set,
            cfg.css_set_subsys + (cfg.memory_cgrp_id & 0x3f) * 8,
        )
    }
}

#[inline(always)]
unsafe fn read_u64(base: *const u8, off: u32) -> Result<u64, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const u64) }
}

#[inline(always)]
fn counters_present(cfg: &Config, lay: &MemLayout) -> bool {
    present(lay.css_parent)
        && present(lay.memcg_failcnt)
        && present(lay.memcg_oom_local)
        && present(cfg.memcg_css)
        && present(cfg.task_cgroups)
}

/// At a memcg reclaim of the current task: its chain's counters, unless a baseline younger than
/// `BASELINE_REFRESH_NS` is kept (the first reclaim of a charge that ends in an OOM is the one to
/// keep: the limit's failures and the OOM follow it).
#[inline(always)]
pub fn take_baseline(cfg: &Config, tid: u32) {
    let Some(lay) = layout() else { return };
    if !counters_present(cfg, lay) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(b) = unsafe { OOM_BASELINE.get(tid) } {
        if now.saturating_sub(b.ktime_ns) < BASELINE_REFRESH_NS {
            return;
        }
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(mut css) = (unsafe { task_memory_css(cfg, task) }) else {
        return;
    };
    // Filled in place in the map value: levels written at a variable index into a stack copy
    // cost the 6.1 verifier over a million instructions.
    let zero = MemcgBaseline {
        ktime_ns: now,
        depth: 0,
        _pad: 0,
        css: [0; MEMCG_LEVELS],
        failcnt: [0; MEMCG_LEVELS],
        oom: [0; MEMCG_LEVELS],
    };
    if OOM_BASELINE.insert(tid, &zero, 0).is_err() {
        return;
    }
    let Some(b) = OOM_BASELINE.get_ptr_mut(tid) else {
        return;
    };
    for i in 0..MEMCG_LEVELS {
        if css.is_null() {
            break;
        }
        let parent = unsafe { read_ptr(css, lay.css_parent) }.unwrap_or(core::ptr::null());
        if parent.is_null() {
            // The root: it has no limit and is not a level of the path.
            break;
        }
        let memcg = unsafe { css.sub(cfg.memcg_css as usize) };
        unsafe {
            (*b).css[i] = css as u64;
            (*b).failcnt[i] = read_u64(memcg, lay.memcg_failcnt).unwrap_or(0);
            (*b).oom[i] = read_u64(memcg, lay.memcg_oom_local).unwrap_or(0);
            (*b).depth = i as u32 + 1;
        }
        css = parent;
    }
}

/// At a kernel-sent SIGKILL, in the OOM trigger's context: how much each level of its chain
/// counted since its baseline.
#[inline(always)]
pub fn domain_counters(cfg: &Config, tid: u32, out: *mut DomainCounters) {
    unsafe {
        (*out).flags = 0;
        (*out).depth = 0;
        (*out).failcnt_delta = [0; MEMCG_LEVELS];
        (*out).oom_delta = [0; MEMCG_LEVELS];
        (*out).max_pages = [0; MEMCG_LEVELS];
        (*out).usage_pages = [0; MEMCG_LEVELS];
    }
    let Some(lay) = layout() else { return };
    if !counters_present(cfg, lay) {
        return;
    }
    let Some(base) = (unsafe { OOM_BASELINE.get(tid) }) else {
        return;
    };
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(mut css) = (unsafe { task_memory_css(cfg, task) }) else {
        return;
    };
    let mut flags = DOMAIN_BASELINE;
    let page_counter = present(lay.memcg_max) && present(lay.memcg_usage);
    if page_counter {
        flags |= DOMAIN_PAGE_COUNTER;
    }
    let mut depth = 0u32;
    for i in 0..MEMCG_LEVELS {
        if css.is_null() {
            break;
        }
        let parent = unsafe { read_ptr(css, lay.css_parent) }.unwrap_or(core::ptr::null());
        if parent.is_null() {
            break;
        }
        if base.css[i] != css as u64 {
            flags = DOMAIN_CHAIN_CHANGED;
            break;
        }
        let memcg = unsafe { css.sub(cfg.memcg_css as usize) };
        let f = unsafe { read_u64(memcg, lay.memcg_failcnt) }.unwrap_or(0);
        let o = unsafe { read_u64(memcg, lay.memcg_oom_local) }.unwrap_or(0);
        let fd = f.saturating_sub(base.failcnt[i]).min(u32::MAX as u64) as u32;
        let od = o.saturating_sub(base.oom[i]).min(u32::MAX as u64) as u32;
        unsafe {
            (*out).failcnt_delta[i] = fd;
            (*out).oom_delta[i] = od;
        }
        if page_counter {
            // The limit as it fired: read after the kill, a limit changed within milliseconds
            // of it (an operator, the kubelet's restart) would be read instead.
            unsafe {
                (*out).max_pages[i] = read_u64(memcg, lay.memcg_max).unwrap_or(0);
                (*out).usage_pages[i] = read_u64(memcg, lay.memcg_usage).unwrap_or(0);
            }
        }
        depth = i as u32 + 1;
        css = parent;
    }
    unsafe {
        (*out).flags = flags;
        (*out).depth = depth;
    }
}

/// The OOM domain's `page_counter` (`memcg->memory`) into `ev`, at `oom_kill_process`: the
/// limit that fired and the charge at it, before the victim's memory is uncharged. Returns
/// `OC_DOMAIN_*` bits for what was read.
#[inline(always)]
pub unsafe fn domain_page_counter(memcg: *const u8, ev: *mut probe_common::OomControlEvent) -> u32 {
    let Some(lay) = layout() else { return 0 };
    let mut flags = 0;
    if present(lay.memcg_max) && present(lay.memcg_usage) {
        if let (Ok(max), Ok(usage)) = unsafe {
            (
                read_u64(memcg, lay.memcg_max),
                read_u64(memcg, lay.memcg_usage),
            )
        } {
            unsafe {
                (*ev).domain_max_pages = max;
                (*ev).domain_usage_pages = usage;
            }
            flags |= probe_common::OC_DOMAIN_COUNTERS;
        }
    }
    if present(lay.memcg_watermark) {
        if let Ok(w) = unsafe { read_u64(memcg, lay.memcg_watermark) } {
            unsafe { (*ev).domain_watermark_pages = w };
            flags |= probe_common::OC_DOMAIN_WATERMARK;
        }
    }
    flags
}

/// Reads a pointer-typed value through memory, so the verifier sees a plain number (privileged
/// programs may; the value is only used as an address to read from with probe_read).
#[inline(always)]
unsafe fn as_number(p: u64) -> u64 {
    let slot = p;
    unsafe { bpf_probe_read_kernel(&slot as *const u64) }.unwrap_or(0)
}

/// `task`'s RSS counters (pages), its `memory.oom.group` chain and memcg path into `ev`.
#[inline(always)]
pub fn read_victim_mm<const PERCPU: bool>(
    cfg: &Config,
    lay: &MemLayout,
    task: *const u8,
    ev: *mut VictimMmEvent,
) {
    let mut flags = 0u32;
    unsafe {
        (*ev).file_pages = 0;
        (*ev).anon_pages = 0;
        (*ev).shmem_pages = 0;
        (*ev).swap_pages = 0;
        (*ev).total_vm_pages = 0;
        (*ev).pgtables_bytes = 0;
        (*ev).cpus = 0;
        (*ev).oom_group_levels = 0;
        (*ev)._pad = 0;
    }
    // The memory cgroup chain first: the verifier walks whatever follows the per-CPU loop once
    // per way out of it (6.1's refused the program when the chain walks came after).
    if let Ok(css) = unsafe { task_memory_css(cfg, task) } {
        let memcg_path = unsafe { &raw mut (*ev).memcg };
        if crate::task::css_path(cfg, css, memcg_path).is_ok() {
            flags |= mm_flags::MEMCG;
            unsafe { (*ev).oom_group_levels = oom_group_levels(cfg, lay, css) };
        }
    }
    if present(lay.task_mm) && present(lay.mm_rss_stat) {
        let mm = unsafe { read_ptr(task, lay.task_mm) }.unwrap_or(core::ptr::null());
        if !mm.is_null() {
            flags |= mm_flags::MM;
            flags |= read_rss::<PERCPU>(lay, task, mm, ev);
            if present(lay.mm_total_vm) {
                if let Ok(v) = unsafe { read_u64(mm, lay.mm_total_vm) } {
                    unsafe { (*ev).total_vm_pages = v };
                    flags |= mm_flags::TOTAL_VM;
                }
            }
            if present(lay.mm_pgtables) {
                if let Ok(v) = unsafe { read_u64(mm, lay.mm_pgtables) } {
                    unsafe { (*ev).pgtables_bytes = v };
                    flags |= mm_flags::PGTABLES;
                }
            }
        }
    }
    unsafe { (*ev).flags = flags };
}

#[inline(always)]
fn oom_group_levels(cfg: &Config, lay: &MemLayout, mut css: *const u8) -> u32 {
    if !present(lay.memcg_oom_group) || !present(lay.css_parent) || !present(cfg.memcg_css) {
        return 0;
    }
    let mut bits = 0u32;
    for i in 0..MEMCG_LEVELS {
        if css.is_null() {
            break;
        }
        let parent = unsafe { read_ptr(css, lay.css_parent) }.unwrap_or(core::ptr::null());
        if parent.is_null() {
            break;
        }
        let memcg = unsafe { css.sub(cfg.memcg_css as usize) };
        let set =
            unsafe { bpf_probe_read_kernel(memcg.add(lay.memcg_oom_group as usize) as *const u8) }
                .unwrap_or(0);
        if set != 0 {
            bits |= 1 << i;
        }
        css = parent;
    }
    bits
}

/// Returns `mm_flags` bits for what was read.
#[inline(always)]
fn read_rss<const PERCPU: bool>(
    lay: &MemLayout,
    task: *const u8,
    mm: *const u8,
    ev: *mut VictimMmEvent,
) -> u32 {
    let idx = [lay.mm_file, lay.mm_anon, lay.mm_shmem, lay.mm_swap];
    for i in idx {
        if !present(i) || i >= 8 {
            return 0;
        }
    }
    let mut vals = [0i64; 4];
    let mut flags = 0u32;
    if lay.rss_layout == RSS_LAYOUT_ATOMIC {
        for (k, i) in idx.iter().enumerate() {
            let at = lay.mm_rss_stat + *i * 8;
            vals[k] =
                unsafe { bpf_probe_read_kernel(mm.add(at as usize) as *const i64) }.unwrap_or(0);
        }
        flags |= mm_flags::ATOMIC;
        if present(lay.task_rss_stat) {
            // struct task_rss_stat { int events; int count[NR_MM_COUNTERS]; }
            for (k, i) in idx.iter().enumerate() {
                let at = lay.task_rss_stat + 4 + *i * 4;
                let c = unsafe { bpf_probe_read_kernel(task.add(at as usize) as *const i32) }
                    .unwrap_or(0);
                vals[k] += c as i64;
            }
            flags |= mm_flags::TASK_CACHE;
        }
    } else if PERCPU
        && lay.rss_layout == RSS_LAYOUT_PERCPU
        && present(lay.pcpu_count)
        && present(lay.pcpu_counters)
    {
        let mut counters = [0u64; 4];
        for (k, i) in idx.iter().enumerate() {
            let fbc = unsafe { mm.add((lay.mm_rss_stat + *i * lay.rss_stride) as usize) };
            vals[k] =
                unsafe { bpf_probe_read_kernel(fbc.add(lay.pcpu_count as usize) as *const i64) }
                    .unwrap_or(0);
            counters[k] = unsafe { read_u64(fbc, lay.pcpu_counters) }.unwrap_or(0);
        }
        let (cpus, complete) = sum_percpu(lay, &counters, &mut vals);
        unsafe { (*ev).cpus = cpus };
        flags |= if complete {
            mm_flags::PERCPU_SUMMED
        } else {
            mm_flags::PERCPU_PARTIAL
        };
    } else {
        return 0;
    }
    unsafe {
        (*ev).file_pages = vals[0];
        (*ev).anon_pages = vals[1];
        (*ev).shmem_pages = vals[2];
        (*ev).swap_pages = vals[3];
    }
    flags
}

/// Adds every possible CPU's `s32` delta of each percpu_counter (what `percpu_counter_sum`
/// does). A CPU's copy of a per-CPU pointer `p` is at `p + offset(cpu)`; the offsets come from
/// this program's own per-CPU array: `bpf_map_lookup_percpu_elem(PCPU_PROBE, 0, cpu)` is
/// `pptrs[0] + offset(cpu)`, and `pptrs[0]` is read from the map's `struct bpf_array`.
#[inline(always)]
fn sum_percpu(lay: &MemLayout, counters: &[u64; 4], vals: &mut [i64; 4]) -> (u32, bool) {
    if !present(lay.bpf_array_pptrs) || lay.nr_cpus == 0 {
        return (0, false);
    }
    let map = &PCPU_PROBE as *const _ as *mut c_void;
    let map_addr = unsafe { as_number(map as u64) };
    if map_addr == 0 {
        return (0, false);
    }
    let Ok(base) = (unsafe { read_u64(map_addr as *const u8, lay.bpf_array_pptrs) }) else {
        return (0, false);
    };
    let key = 0u32;
    let mut summed = 0u32;
    let mut complete = lay.nr_cpus <= MAX_CPUS;
    let mut failed = 0i64;
    for cpu in 0..MAX_CPUS {
        if cpu >= lay.nr_cpus {
            break;
        }
        let slot =
            unsafe { bpf_map_lookup_percpu_elem(map, &key as *const u32 as *const c_void, cpu) };
        if slot.is_null() {
            complete = false;
            break;
        }
        let offset = unsafe { as_number(slot as u64) }.wrapping_sub(base);
        for k in 0..4 {
            // Branch-free: a failed read leaves 0 and a negative return; a branch per read
            // doubles the verifier's states per CPU (6.1 then refuses the program).
            let mut d = 0i32;
            let ret = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    &mut d as *mut i32 as *mut c_void,
                    4,
                    counters[k].wrapping_add(offset) as *const c_void,
                )
            };
            failed |= ret;
            vals[k] += d as i64;
        }
        summed += 1;
    }
    (summed, complete && failed == 0)
}

/// Zeroes the counters of a signal the kernel did not send.
#[inline(always)]
pub fn domain_counters_none(out: *mut DomainCounters) {
    unsafe {
        (*out).flags = 0;
        (*out).depth = 0;
        (*out).failcnt_delta = [0; MEMCG_LEVELS];
        (*out).oom_delta = [0; MEMCG_LEVELS];
        (*out).max_pages = [0; MEMCG_LEVELS];
        (*out).usage_pages = [0; MEMCG_LEVELS];
    }
}
