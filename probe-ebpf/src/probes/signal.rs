//! `signal/signal_generate`, filtered in the kernel to SIGKILL.
//! Layout: include/trace/events/signal.h (field offsets come from the format file at load time).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{
    Counter, EventHeader, PendingKill, ReclaimKind, SignalEvent, SIGKILL, TASK_COMM_LEN,
};

use super::current_ids;
use crate::{
    exact::{domain_counters, domain_counters_none},
    maps::{config, count, present, BPF_RB_FORCE_WAKEUP, EVENTS, PENDING_KILLS, RECLAIM},
    task::current_memcg,
};

#[tracepoint]
pub fn tp_signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_tp_signal_generate(&ctx);
    0
}

fn try_tp_signal_generate(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config().ok_or(-1)?;
    if !present(cfg.signal_sig) || !present(cfg.signal_pid) {
        return Ok(());
    }
    let sig: i32 = unsafe { ctx.read_at(cfg.signal_sig as usize)? };
    if sig != SIGKILL {
        return Ok(());
    }
    let target_pid: i32 = unsafe { ctx.read_at(cfg.signal_pid as usize)? };
    if target_pid as u32 == cfg.agent_tgid {
        return Ok(());
    }
    count(Counter::SigkillSeen);
    let now = unsafe { bpf_ktime_get_ns() };
    let (tid, tgid) = current_ids();

    let pending = PendingKill {
        signal_ktime_ns: now,
        signaled_pid: target_pid as u32,
        _pad: 0,
    };
    // Keep the first SIGKILL's time when several arrive before death (BPF_NOEXIST).
    if unsafe { PENDING_KILLS.get(target_pid as u32) }.is_none()
        && PENDING_KILLS.insert(target_pid as u32, pending, 0).is_err()
    {
        count(Counter::PendingInsertFailed);
    }

    let Some(mut entry) = EVENTS.reserve::<SignalEvent>(0) else {
        count(Counter::RingbufFullSignal);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = EventHeader::of::<SignalEvent>(now);
        (*ev).target_pid = target_pid;
        (*ev).sig = sig;
        (*ev).code = read_or(ctx, cfg.signal_code, 0);
        (*ev).group = read_or(ctx, cfg.signal_group, 0);
        (*ev).result = read_or(ctx, cfg.signal_result, 0);
        (*ev).sender_tid = tid;
        (*ev).sender_tgid = tgid;
        (*ev).target_comm = if present(cfg.signal_comm) {
            ctx.read_at::<[u8; TASK_COMM_LEN]>(cfg.signal_comm as usize)
                .unwrap_or([0; TASK_COMM_LEN])
        } else {
            [0; TASK_COMM_LEN]
        };
        (*ev).sender_comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        match RECLAIM.get(tid) {
            Some(mark) => {
                (*ev).sender_reclaim_kind = mark.kind;
                (*ev).sender_reclaim_ktime_ns = mark.ktime_ns;
            }
            None => {
                (*ev).sender_reclaim_kind = ReclaimKind::None as u32;
                (*ev).sender_reclaim_ktime_ns = 0;
            }
        }
        current_memcg(cfg, &raw mut (*ev).sender_memcg);
        if (*ev).code == SI_KERNEL {
            domain_counters(cfg, tid, &raw mut (*ev).domain);
        } else {
            domain_counters_none(&raw mut (*ev).domain);
        }
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    Ok(())
}

/// `si_code` of a signal the kernel sent (the OOM killer's SEND_SIG_PRIV).
const SI_KERNEL: i32 = 0x80;

#[inline(always)]
unsafe fn read_or(ctx: &TracePointContext, offset: u32, default: i32) -> i32 {
    if !present(offset) {
        return default;
    }
    unsafe { ctx.read_at::<i32>(offset as usize) }.unwrap_or(default)
}
