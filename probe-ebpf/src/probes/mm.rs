//! `signal_generate` as a raw tracepoint, for SIGKILL: the target `task_struct` is an argument
//! here (the classic tracepoint only has its pid), so its RSS counters and memory cgroup chain
//! are read at the moment of the signal. TP_PROTO(int sig, struct kernel_siginfo *info,
//! struct task_struct *task, int group, int result), include/trace/events/signal.h.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use probe_common::{Counter, EventHeader, VictimMmEvent, SIGKILL};

use crate::{
    exact::{layout, read_victim_mm},
    maps::{config, count, present, BPF_RB_FORCE_WAKEUP, EVENTS},
};

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn raw_tp_signal_generate(ctx: RawTracePointContext) -> i32 {
    let _ = try_raw_tp_signal_generate::<true>(&ctx);
    0
}

/// The program for the atomic `rss_stat` layout (before 6.2): the per-CPU sum compiled out.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn raw_tp_signal_generate_atomic(ctx: RawTracePointContext) -> i32 {
    let _ = try_raw_tp_signal_generate::<false>(&ctx);
    0
}

#[inline(always)]
fn try_raw_tp_signal_generate<const PERCPU: bool>(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sig: u64 = ctx.arg(0);
    if sig as i32 != SIGKILL {
        return Ok(());
    }
    let cfg = config().ok_or(-1)?;
    let lay = layout().ok_or(-1)?;
    if !present(cfg.task_pid) || !present(cfg.task_tgid) {
        return Ok(());
    }
    let task = ctx.arg::<u64>(2) as *const u8;
    if task.is_null() {
        return Ok(());
    }
    let tgid: u32 =
        unsafe { bpf_probe_read_kernel(task.add(cfg.task_tgid as usize) as *const u32)? };
    if tgid == cfg.agent_tgid {
        return Ok(());
    }
    let tid: u32 = unsafe { bpf_probe_read_kernel(task.add(cfg.task_pid as usize) as *const u32)? };
    let Some(mut entry) = EVENTS.reserve::<VictimMmEvent>(0) else {
        count(Counter::RingbufFullVictimMm);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = EventHeader::of::<VictimMmEvent>(bpf_ktime_get_ns());
        (*ev).tid = tid;
        (*ev).tgid = tgid;
    }
    read_victim_mm::<PERCPU>(cfg, lay, task, ev);
    entry.submit(BPF_RB_FORCE_WAKEUP);
    Ok(())
}
