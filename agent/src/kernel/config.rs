//! The load-time configuration of the kernel programs: tracepoint field offsets (from tracefs)
//! and struct member offsets (from BTF) of the kernel that runs, written to the `CONFIG` map.
use probe_common::{Config, OFFSET_ABSENT, TASK_COMM_LEN};

use super::{
    btf::Btf,
    probes::ProbeError,
    tracefs::{self, Format, TracefsError},
};

/// A process name as the kernel keeps it: at most 15 bytes and a NUL.
pub fn comm_bytes(name: &str) -> [u8; TASK_COMM_LEN] {
    let mut out = [0u8; TASK_COMM_LEN];
    let b = name.as_bytes();
    let n = b.len().min(TASK_COMM_LEN - 1);
    out[..n].copy_from_slice(&b[..n]);
    out
}

fn offset(format: &Format, field: &str) -> u32 {
    format.offset(field).unwrap_or(OFFSET_ABSENT)
}

/// Builds the load-time configuration from the tracepoint formats and BTF of this kernel.
pub fn build_config(agent_tgid: u32, kubelet_comm: &str, btf: &Btf) -> Result<Config, ProbeError> {
    let root = tracefs::tracefs_root()?;
    let signal = tracefs::read_format(&root, "signal", "signal_generate")?;
    let victim = tracefs::read_format(&root, "oom", "mark_victim")?;
    let exit = tracefs::read_format(&root, "sched", "sched_process_exit")?;
    for (format, cat, name, field) in [
        (&signal, "signal", "signal_generate", "sig"),
        (&signal, "signal", "signal_generate", "pid"),
        (&victim, "oom", "mark_victim", "pid"),
    ] {
        if format.offset(field).is_none() {
            return Err(TracefsError::MissingField {
                category: cat.into(),
                name: name.into(),
                field: field.into(),
            }
            .into());
        }
    }
    let memory_cgrp_id = btf.enum_value("memory_cgrp_id")?;
    Ok(Config {
        agent_tgid,
        signal_sig: offset(&signal, "sig"),
        signal_code: offset(&signal, "code"),
        signal_comm: offset(&signal, "comm"),
        signal_pid: offset(&signal, "pid"),
        signal_group: offset(&signal, "group"),
        signal_result: offset(&signal, "result"),
        victim_pid: offset(&victim, "pid"),
        victim_comm: offset(&victim, "comm"),
        victim_total_vm: offset(&victim, "total_vm"),
        victim_anon_rss: offset(&victim, "anon_rss"),
        victim_file_rss: offset(&victim, "file_rss"),
        victim_shmem_rss: offset(&victim, "shmem_rss"),
        victim_uid: offset(&victim, "uid"),
        victim_pgtables: offset(&victim, "pgtables"),
        victim_oom_score_adj: offset(&victim, "oom_score_adj"),
        exit_group_dead: offset(&exit, "group_dead"),
        task_cgroups: btf.member_offset("task_struct", "cgroups")?,
        task_exit_code: btf.member_offset("task_struct", "exit_code")?,
        css_set_subsys: btf.member_offset("css_set", "subsys")?,
        memory_cgrp_id: u32::try_from(memory_cgrp_id).unwrap_or(OFFSET_ABSENT),
        css_cgroup: btf.member_offset("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kn_name: btf.member_offset("kernfs_node", "name")?,
        kn_parent: btf.member_offset_any("kernfs_node", &["__parent", "parent"])?,
        kn_id: btf.member_offset("kernfs_node", "id")?,
        reclaim_end_nr: tracefs::read_format(&root, "vmscan", "mm_vmscan_memcg_reclaim_end")
            .map(|f| offset(&f, "nr_reclaimed"))
            .unwrap_or(OFFSET_ABSENT),
        kubelet_comm: comm_bytes(kubelet_comm),
        // kprobe tier: optional, absent members leave the tier's fields empty.
        oc_memcg: btf
            .member_offset("oom_control", "memcg")
            .unwrap_or(OFFSET_ABSENT),
        oc_chosen: btf
            .member_offset("oom_control", "chosen")
            .unwrap_or(OFFSET_ABSENT),
        oc_constraint: btf
            .member_offset("oom_control", "constraint")
            .unwrap_or(OFFSET_ABSENT),
        oc_totalpages: btf
            .member_offset("oom_control", "totalpages")
            .unwrap_or(OFFSET_ABSENT),
        oc_chosen_points: btf
            .member_offset("oom_control", "chosen_points")
            .unwrap_or(OFFSET_ABSENT),
        memcg_css: btf
            .member_offset("mem_cgroup", "css")
            .unwrap_or(OFFSET_ABSENT),
        task_pid: btf
            .member_offset("task_struct", "pid")
            .unwrap_or(OFFSET_ABSENT),
        task_tgid: btf
            .member_offset("task_struct", "tgid")
            .unwrap_or(OFFSET_ABSENT),
    })
}
