//! Reading the current task's memory cgroup by following kernel pointers whose member offsets
//! userspace took from BTF at load time (see `Config`).
use aya_ebpf::helpers::{
    bpf_probe_read_kernel, generated::bpf_get_current_task, generated::bpf_probe_read_kernel_str,
};
use probe_common::{
    CgroupPath, Config, Counter, CGROUP_MAX_DEPTH, CGROUP_NAME_LEN, CGROUP_PATH_TRUNCATED,
    CGROUP_PATH_UNAVAILABLE,
};

use crate::maps::{count, present};

#[inline(always)]
pub unsafe fn read_ptr(base: *const u8, offset: u32) -> Result<*const u8, i32> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const *const u8) }
}

/// kernfs id of the current task's memory cgroup.
#[inline(always)]
pub fn current_memcg_id(cfg: &Config) -> Option<u64> {
    if !present(cfg.task_cgroups) || !present(cfg.kn_id) || !present(cfg.memory_cgrp_id) {
        return None;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let css_set = unsafe { read_ptr(task, cfg.task_cgroups).ok()? };
    let css = unsafe {
        read_ptr(
            css_set,
            cfg.css_set_subsys + (cfg.memory_cgrp_id & 0x3f) * 8,
        )
        .ok()?
    };
    if css.is_null() {
        return None;
    }
    let cgroup = unsafe { read_ptr(css, cfg.css_cgroup).ok()? };
    let kn = unsafe { read_ptr(cgroup, cfg.cgroup_kn).ok()? };
    unsafe { bpf_probe_read_kernel(kn.add(cfg.kn_id as usize) as *const u64).ok() }
}

/// The current task's `exit_code`, or -1.
#[inline(always)]
pub fn current_exit_code(cfg: &Config) -> i32 {
    if !present(cfg.task_exit_code) {
        return -1;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    unsafe { bpf_probe_read_kernel(task.add(cfg.task_exit_code as usize) as *const i32) }
        .unwrap_or(-1)
}

/// Fills `out` with the current task's memory cgroup path, leaf first.
#[inline(always)]
pub fn current_memcg(cfg: &Config, out: *mut CgroupPath) {
    unsafe {
        (*out).id = 0;
        (*out).depth = 0;
        (*out).flags = CGROUP_PATH_UNAVAILABLE;
    }
    if !present(cfg.task_cgroups)
        || !present(cfg.css_set_subsys)
        || !present(cfg.memory_cgrp_id)
        || !present(cfg.css_cgroup)
        || !present(cfg.cgroup_kn)
        || !present(cfg.kn_name)
        || !present(cfg.kn_parent)
    {
        return;
    }
    if read_memcg(cfg, out).is_err() {
        count(Counter::ReadFailed);
    }
}

#[inline(always)]
fn read_memcg(cfg: &Config, out: *mut CgroupPath) -> Result<(), i32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let css_set = unsafe { read_ptr(task, cfg.task_cgroups)? };
    let memory_id = cfg.memory_cgrp_id & 0x3f;
    let css = unsafe { read_ptr(css_set, cfg.css_set_subsys + memory_id * 8)? };
    css_path(cfg, css, out)
}

/// Fills `out` with the path of the cgroup a `cgroup_subsys_state` belongs to.
#[inline(always)]
pub fn css_path(cfg: &Config, css: *const u8, out: *mut CgroupPath) -> Result<(), i32> {
    if css.is_null() {
        return Err(-1);
    }
    let cgroup = unsafe { read_ptr(css, cfg.css_cgroup)? };
    let mut kn = unsafe { read_ptr(cgroup, cfg.cgroup_kn)? };
    if present(cfg.kn_id) {
        let id = unsafe { bpf_probe_read_kernel(kn.add(cfg.kn_id as usize) as *const u64)? };
        unsafe { (*out).id = id };
    }
    unsafe { (*out).flags = 0 };
    let mut depth = 0u32;
    for i in 0..CGROUP_MAX_DEPTH {
        if kn.is_null() {
            break;
        }
        let parent = unsafe { read_ptr(kn, cfg.kn_parent)? };
        if parent.is_null() {
            // The hierarchy's root has no name worth keeping.
            break;
        }
        let name = unsafe { read_ptr(kn, cfg.kn_name)? };
        unsafe {
            let dst = (*out).names[i].as_mut_ptr();
            bpf_probe_read_kernel_str(dst.cast(), CGROUP_NAME_LEN as u32, name.cast());
        }
        depth += 1;
        kn = parent;
    }
    unsafe { (*out).depth = depth };
    if depth as usize == CGROUP_MAX_DEPTH && !kn.is_null() {
        // Deeper than we keep: userspace resolves the id instead.
        if let Ok(parent) = unsafe { read_ptr(kn, cfg.kn_parent) } {
            if !parent.is_null() {
                unsafe { (*out).flags |= CGROUP_PATH_TRUNCATED };
            }
        }
    }
    Ok(())
}
