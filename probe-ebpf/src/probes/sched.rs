//! `sched/sched_process_exit`, only for processes with a pending SIGKILL (kernel-side filter on
//! the pending-kill map). Fires per thread; we report the last one (`group_dead`). It runs in the
//! dying task, before `cgroup_exit()`, so its memory cgroup is still readable.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use probe_common::{Counter, EventHeader, ExitEvent, TASK_COMM_LEN};

use super::current_ids;
use crate::{
    maps::{
        config, count, present, BPF_RB_FORCE_WAKEUP, EVENTS, KUBELET_TGIDS, KUBELET_UPROBED,
        PENDING_KILLS,
    },
    task::{current_exit_code, current_memcg},
};

#[tracepoint]
pub fn tp_sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_tp_sched_process_exit(&ctx);
    0
}

fn try_tp_sched_process_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (tid, tgid) = current_ids();
    // A process followed as a kubelet leaves the kubelet maps with its last thread (anything
    // that exec'd under the kubelet's name joined them).
    if unsafe { KUBELET_TGIDS.get(tgid) }.is_some() && group_dead(ctx, tid, tgid)? {
        let _ = KUBELET_TGIDS.remove(&tgid);
        let _ = KUBELET_UPROBED.remove(&tgid);
    }
    let (key, pending) = match unsafe { PENDING_KILLS.get(tid) } {
        Some(p) => (tid, *p),
        None => match unsafe { PENDING_KILLS.get(tgid) } {
            Some(p) => (tgid, *p),
            None => return Ok(()),
        },
    };
    let cfg = config().ok_or(-1)?;
    if !group_dead(ctx, tid, tgid)? {
        if key == tid && tid != tgid {
            // A signalled thread died first: wait for the process under its tgid.
            let _ = PENDING_KILLS.insert(tgid, pending, 0);
            let _ = PENDING_KILLS.remove(tid);
        }
        return Ok(());
    }
    let _ = PENDING_KILLS.remove(tid);
    let _ = PENDING_KILLS.remove(tgid);

    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count(Counter::RingbufFullExit);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = EventHeader::of::<ExitEvent>(bpf_ktime_get_ns());
        (*ev).tid = tid;
        (*ev).tgid = tgid;
        (*ev).signaled_pid = pending.signaled_pid;
        (*ev).signal_ktime_ns = pending.signal_ktime_ns;
        (*ev).exit_code = current_exit_code(cfg);
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        current_memcg(cfg, &raw mut (*ev).memcg);
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    Ok(())
}

/// Whether the exiting thread is its process's last (`group_dead`).
#[inline(always)]
fn group_dead(ctx: &TracePointContext, tid: u32, tgid: u32) -> Result<bool, i32> {
    let cfg = config().ok_or(-1)?;
    Ok(if present(cfg.exit_group_dead) {
        unsafe { ctx.read_at::<u8>(cfg.exit_group_dead as usize)? != 0 }
    } else {
        // Kernels without the field: the leader's exit stands for the process.
        tid == tgid
    })
}
