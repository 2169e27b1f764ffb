//! `oom/mark_victim`: the OOM killer picked a victim. Runs in the context of the task that
//! invoked the OOM killer. Older kernels carry only `pid`; absent fields are flagged.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel_str},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use probe_common::{victim_fields as vf, Counter, EventKind, OomVictimEvent, TASK_COMM_LEN};

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
        (*ev).hdr.kind = EventKind::OomVictim as u32;
        (*ev).hdr.len = core::mem::size_of::<OomVictimEvent>() as u32;
        (*ev).hdr.ktime_ns = bpf_ktime_get_ns();
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
