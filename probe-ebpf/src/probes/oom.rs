//! `oom/mark_victim`: the OOM killer picked a victim. Runs in the context of the task that
//! invoked the OOM killer. Older kernels carry only `pid`; absent fields are flagged.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel_str},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use probe_common::{victim_fields as vf, Counter, EventHeader, OomVictimEvent, TASK_COMM_LEN};

use super::current_ids;
use crate::maps::{config, count, present, BPF_RB_FORCE_WAKEUP, EVENTS};

#[tracepoint]
pub fn tp_oom_mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_tp_oom_mark_victim(&ctx);
    0
}

fn try_tp_oom_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config().ok_or(-1)?;
    if !present(cfg.victim_pid) {
        return Ok(());
    }
    count(Counter::OomVictimSeen);
    let Some(mut entry) = EVENTS.reserve::<OomVictimEvent>(0) else {
        count(Counter::RingbufFullVictim);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let (tid, tgid) = current_ids();
    let mut fields = 0u32;
    unsafe {
        (*ev).hdr = EventHeader::of::<OomVictimEvent>(bpf_ktime_get_ns());
        (*ev).pid = ctx.read_at::<i32>(cfg.victim_pid as usize).unwrap_or(-1);
        (*ev).trigger_tid = tid;
        (*ev).trigger_tgid = tgid;
        (*ev).total_vm_kb = read_u64(ctx, cfg.victim_total_vm, vf::TOTAL_VM, &mut fields);
        (*ev).anon_rss_kb = read_u64(ctx, cfg.victim_anon_rss, vf::ANON_RSS, &mut fields);
        (*ev).file_rss_kb = read_u64(ctx, cfg.victim_file_rss, vf::FILE_RSS, &mut fields);
        (*ev).shmem_rss_kb = read_u64(ctx, cfg.victim_shmem_rss, vf::SHMEM_RSS, &mut fields);
        (*ev).pgtables_kb = read_u64(ctx, cfg.victim_pgtables, vf::PGTABLES, &mut fields);
        (*ev).uid = 0;
        if present(cfg.victim_uid) {
            if let Ok(uid) = ctx.read_at::<u32>(cfg.victim_uid as usize) {
                (*ev).uid = uid;
                fields |= vf::UID;
            }
        }
        (*ev).oom_score_adj = 0;
        if present(cfg.victim_oom_score_adj) {
            if let Ok(adj) = ctx.read_at::<i16>(cfg.victim_oom_score_adj as usize) {
                (*ev).oom_score_adj = adj as i32;
                fields |= vf::OOM_SCORE_ADJ;
            }
        }
        (*ev).comm = [0; TASK_COMM_LEN];
        if present(cfg.victim_comm) {
            // __data_loc: low 16 bits offset from the record start, high 16 bits length.
            if let Ok(loc) = ctx.read_at::<u32>(cfg.victim_comm as usize) {
                let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
                let dst = (*ev).comm.as_mut_ptr();
                if bpf_probe_read_kernel_str(dst.cast(), TASK_COMM_LEN as u32, src.cast()) > 0 {
                    fields |= vf::COMM;
                }
            }
        }
        (*ev).fields = fields;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    Ok(())
}

#[inline(always)]
unsafe fn read_u64(ctx: &TracePointContext, offset: u32, bit: u32, fields: &mut u32) -> u64 {
    if !present(offset) {
        return 0;
    }
    match unsafe { ctx.read_at::<u64>(offset as usize) } {
        Ok(v) => {
            *fields |= bit;
            v
        }
        Err(_) => {
            count(Counter::ReadFailed);
            0
        }
    }
}

/// kprobe tier: `oom_kill_process(struct oom_control *oc, const char *message)` runs before the
/// SIGKILL, in the OOM-invoking task, with the kernel's own OOM domain and constraint.
#[aya_ebpf::macros::kprobe]
pub fn kprobe_oom_kill_process(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
    let _ = try_kprobe_oom_kill_process(&ctx);
    0
}

fn try_kprobe_oom_kill_process(ctx: &aya_ebpf::programs::ProbeContext) -> Result<(), i32> {
    use probe_common::{OomControlEvent, CGROUP_PATH_UNAVAILABLE};

    use crate::task::{css_path, read_ptr};
    let cfg = config().ok_or(-1)?;
    if !present(cfg.oc_memcg) || !present(cfg.oc_chosen) || !present(cfg.task_pid) {
        return Ok(());
    }
    let oc: *const u8 = ctx.arg(0).ok_or(-1)?;
    let Some(mut entry) = EVENTS.reserve::<OomControlEvent>(0) else {
        count(Counter::RingbufFullVictim);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = EventHeader::of::<OomControlEvent>(bpf_ktime_get_ns());
        let chosen = read_ptr(oc, cfg.oc_chosen).unwrap_or(core::ptr::null());
        (*ev).chosen_pid = if chosen.is_null() {
            0
        } else {
            aya_ebpf::helpers::bpf_probe_read_kernel(chosen.add(cfg.task_pid as usize) as *const u32).unwrap_or(0)
        };
        (*ev).chosen_tgid = if chosen.is_null() || !present(cfg.task_tgid) {
            0
        } else {
            aya_ebpf::helpers::bpf_probe_read_kernel(
                chosen.add(cfg.task_tgid as usize) as *const u32
            )
            .unwrap_or(0)
        };
        (*ev).constraint = if present(cfg.oc_constraint) {
            aya_ebpf::helpers::bpf_probe_read_kernel(
                oc.add(cfg.oc_constraint as usize) as *const u32
            )
            .unwrap_or(0)
        } else {
            0
        };
        (*ev).flags = 0;
        (*ev).domain_max_pages = 0;
        (*ev).domain_usage_pages = 0;
        (*ev).domain_watermark_pages = 0;
        (*ev).totalpages = if present(cfg.oc_totalpages) {
            aya_ebpf::helpers::bpf_probe_read_kernel(
                oc.add(cfg.oc_totalpages as usize) as *const u64
            )
            .unwrap_or(0)
        } else {
            0
        };
        (*ev).chosen_points = if present(cfg.oc_chosen_points) {
            aya_ebpf::helpers::bpf_probe_read_kernel(
                oc.add(cfg.oc_chosen_points as usize) as *const i64
            )
            .unwrap_or(0)
        } else {
            0
        };
        let domain = &raw mut (*ev).domain;
        (*domain).id = 0;
        (*domain).depth = 0;
        (*domain).flags = CGROUP_PATH_UNAVAILABLE;
        let memcg = read_ptr(oc, cfg.oc_memcg).unwrap_or(core::ptr::null());
        if !memcg.is_null() && present(cfg.memcg_css) {
            if css_path(cfg, memcg.add(cfg.memcg_css as usize), domain).is_err() {
                count(Counter::ReadFailed);
            }
        }
        if !memcg.is_null() {
            (*ev).flags = crate::exact::domain_page_counter(memcg, ev);
        }
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    Ok(())
}
