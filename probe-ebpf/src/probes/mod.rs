mod kubelet;
mod memcg;
mod mm;
mod oom;
mod sched;
mod signal;

use aya_ebpf::helpers::bpf_get_current_pid_tgid;

/// (tid, tgid) of the current task.
#[inline(always)]
fn current_ids() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    (v as u32, (v >> 32) as u32)
}
