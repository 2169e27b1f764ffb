//! Loading and attaching the kernel programs. The hooks are a declarative table: each program
//! with its tracepoint and whether the agent can run without it.
use std::path::Path;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{
        uprobe::{UProbeAttachPoint, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use probe_common::{
    alloc_cookie, maps, programs, AllocKey, AllocVal, ArgReg, Config, Counter, KubeletText,
    OFFSET_ABSENT, TASK_COMM_LEN,
};

use crate::symbols::{ProbePoint, Role};

use crate::{
    btf::{Btf, BtfError},
    tracefs::{self, Format, TracefsError},
};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("oomprobe must run as root to load eBPF programs (effective uid is {0})")]
    NotRoot(u32),
    #[error("kernel BTF is required to read memory cgroups in the kernel")]
    Btf(#[from] BtfError),
    #[error("cannot read tracepoint formats")]
    Tracefs(#[from] TracefsError),
    #[error("the kernel refused to load the eBPF object (no BPF permission? CAP_BPF and CAP_PERFMON are needed)")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF object has no program {0} (agent and probes built from different sources?)")]
    MissingProgram(&'static str),
    #[error("eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("the verifier rejected {program}")]
    Verifier {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("required tracepoint {category}/{name} could not be attached")]
    Attach {
        category: &'static str,
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach the allocator uprobe at {symbol} in {binary}")]
    Uprobe {
        symbol: String,
        binary: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the {tier} hook tier is unavailable on this kernel")]
    Tier {
        tier: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// One kernel hook.
pub struct Hook {
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// Without a required hook the agent cannot keep its promise and refuses to start.
    pub required: bool,
    pub purpose: &'static str,
}

pub const HOOKS: &[Hook] = &[
    Hook {
        program: programs::TP_SIGNAL_GENERATE,
        category: "signal",
        name: "signal_generate",
        required: true,
        purpose: "every SIGKILL, with its sender",
    },
    Hook {
        program: programs::TP_OOM_MARK_VICTIM,
        category: "oom",
        name: "mark_victim",
        required: true,
        purpose: "OOM killer victims and what they held",
    },
    Hook {
        program: programs::TP_SCHED_PROCESS_EXIT,
        category: "sched",
        name: "sched_process_exit",
        required: true,
        purpose: "death of SIGKILLed processes and their memory cgroup",
    },
    Hook {
        program: programs::TP_MEMCG_RECLAIM_BEGIN,
        category: "vmscan",
        name: "mm_vmscan_memcg_reclaim_begin",
        required: false,
        purpose: "memcg vs global OOM (trigger's last reclaim path)",
    },
    Hook {
        program: programs::TP_SCHED_PROCESS_EXEC,
        category: "sched",
        name: "sched_process_exec",
        required: false,
        purpose: "a restarted kubelet is followed from its first instruction",
    },
    Hook {
        program: programs::TP_MEMCG_RECLAIM_END,
        category: "vmscan",
        name: "mm_vmscan_memcg_reclaim_end",
        required: false,
        purpose: "memcg reclaim counted for the kubelet's and the pods' cgroups",
    },
    Hook {
        program: programs::TP_DIRECT_RECLAIM_BEGIN,
        category: "vmscan",
        name: "mm_vmscan_direct_reclaim_begin",
        required: false,
        purpose: "memcg vs global OOM (trigger's last reclaim path)",
    },
];

/// How OOM kills are seen: the kprobe on `oom_kill_process` (the kernel's OOM control: domain
/// and constraint directly) where kprobes exist, else tracepoints alone (always works).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookTier {
    Auto,
    Kprobe,
    Tracepoint,
}

impl HookTier {
    pub fn as_str(self) -> &'static str {
        match self {
            HookTier::Auto => "auto",
            HookTier::Kprobe => "kprobe",
            HookTier::Tracepoint => "tracepoint",
        }
    }
}

/// The loaded and attached programs.
pub struct Probes {
    /// The tier in use (never `Auto`).
    pub tier: HookTier,
    ebpf: Ebpf,
    /// Hooks that attached, by program name.
    pub attached: Vec<&'static str>,
    /// Optional hooks that did not attach, with the reason.
    pub degraded: Vec<(&'static str, String)>,
    /// The mmap/munmap syscall tracepoints are attached.
    syscalls_attached: bool,
}

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

impl Probes {
    /// Loads the embedded object, writes the configuration and attaches every hook.
    pub fn load(object: &[u8], kubelet_comm: &str, tier: HookTier) -> Result<Probes, ProbeError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(ProbeError::NotRoot(euid));
        }
        let btf = Btf::from_sys_fs()?;
        let config = build_config(std::process::id(), kubelet_comm, &btf)?;
        let nr_cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|t| crate::mem_layout::possible_cpus(&t))
            .unwrap_or(0);
        let layout = crate::mem_layout::mem_layout(&btf, nr_cpus);
        // aya 0.14's EbpfLoader::new() parses the kernel's BTF whatever follows (it is the
        // start-up peak of the agent's memory): free ours first so the two never coexist, and
        // return aya's to the system once it is dropped (the caller trims). No CO-RE
        // relocations are needed: the offsets come from our own reading.
        drop(btf);
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(object)
            .map_err(ProbeError::Load)?;
        {
            let map = ebpf
                .map_mut(maps::CONFIG)
                .ok_or(ProbeError::MissingMap(maps::CONFIG))?;
            let mut arr: Array<_, Config> =
                Array::try_from(map).map_err(|source| ProbeError::Map {
                    name: maps::CONFIG,
                    source,
                })?;
            arr.set(0, config, 0).map_err(|source| ProbeError::Map {
                name: maps::CONFIG,
                source,
            })?;
        }
        {
            let name = probe_common::exact::maps::MEM_LAYOUT;
            let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
            let mut arr: Array<_, probe_common::MemLayout> =
                Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
            arr.set(0, layout, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
        }
        let mut attached = Vec::new();
        let mut degraded = Vec::new();
        match attach_victim_mm(&mut ebpf) {
            Ok(()) => attached.push(probe_common::exact::programs::RAW_TP_SIGNAL_GENERATE),
            Err(e) => {
                tracing::warn!(
                    hook = "raw_tracepoint/signal_generate",
                    error = %e,
                    "optional hook not attached; degraded: a SIGKILL victim's memory is read from /proc (often gone) and group OOM kills are found from the cgroup files"
                );
                degraded.push((
                    probe_common::exact::programs::RAW_TP_SIGNAL_GENERATE,
                    e.to_string(),
                ));
            }
        }
        for hook in HOOKS {
            let prog: &mut TracePoint = ebpf
                .program_mut(hook.program)
                .ok_or(ProbeError::MissingProgram(hook.program))?
                .try_into()
                .map_err(|source| ProbeError::Verifier {
                    program: hook.program,
                    source,
                })?;
            prog.load().map_err(|source| ProbeError::Verifier {
                program: hook.program,
                source,
            })?;
            match prog.attach(hook.category, hook.name) {
                Ok(_) => attached.push(hook.program),
                Err(source) if hook.required => {
                    return Err(ProbeError::Attach {
                        category: hook.category,
                        name: hook.name,
                        source,
                    })
                }
                Err(e) => {
                    tracing::warn!(
                        hook = format!("{}/{}", hook.category, hook.name),
                        error = %e,
                        "optional hook not attached; degraded: {}",
                        hook.purpose
                    );
                    degraded.push((hook.program, e.to_string()));
                }
            }
        }
        for program in [
            programs::UPROBE_ALLOC,
            programs::TP_SYS_ENTER_MMAP,
            programs::TP_SYS_ENTER_MUNMAP,
        ] {
            let prog = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram(program))?;
            let loaded = match prog {
                aya::programs::Program::UProbe(p) => p.load(),
                aya::programs::Program::TracePoint(p) => p.load(),
                _ => Ok(()),
            };
            loaded.map_err(|source| ProbeError::Verifier { program, source })?;
        }
        let tier = match tier {
            HookTier::Tracepoint => HookTier::Tracepoint,
            wanted => match attach_kprobe_tier(&mut ebpf) {
                Ok(()) => {
                    attached.push(programs::KPROBE_OOM_KILL_PROCESS);
                    HookTier::Kprobe
                }
                Err(source) if wanted == HookTier::Kprobe => {
                    return Err(ProbeError::Tier {
                        tier: "kprobe",
                        source,
                    })
                }
                Err(e) => {
                    tracing::info!(reason = %e, "kprobes unavailable: OOM kills seen through tracepoints alone");
                    HookTier::Tracepoint
                }
            },
        };
        tracing::info!(tier = tier.as_str(), "hook tier");
        Ok(Probes {
            tier,
            ebpf,
            attached,
            degraded,
            syscalls_attached: false,
        })
    }

    /// Attaches the syscall tracepoints from the start, so that a kubelet's allocations between
    /// its exec and its first uprobe hit count; a refusal is logged and listed as degraded.
    pub fn count_exec_gap(&mut self) {
        if let Err(e) = self.attach_syscalls() {
            tracing::warn!(error = %e, "mmap/munmap syscall tracepoints unavailable: a kubelet's first allocations after exec are not attributed");
            self.degraded
                .push((programs::TP_SYS_ENTER_MMAP, crate::error_chain(&e)));
        }
    }

    /// Attaches the allocator uprobe at each point of `binary`. `pid`: only that process (a
    /// shared library such as libc); `None`: every process running the binary (the kubelet's
    /// own executable, so a restart is covered without re-attaching).
    pub fn attach_allocator(
        &mut self,
        binary: &Path,
        points: &[ProbePoint],
        pid: Option<u32>,
    ) -> Result<usize, ProbeError> {
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(programs::UPROBE_ALLOC)
            .ok_or(ProbeError::MissingProgram(programs::UPROBE_ALLOC))?
            .try_into()
            .map_err(|source| ProbeError::Verifier {
                program: programs::UPROBE_ALLOC,
                source,
            })?;
        let scope = match pid.and_then(std::num::NonZeroU32::new) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        let mut n = 0;
        for (i, p) in points.iter().enumerate() {
            let Some(reg) = arg_register(p.role) else {
                continue;
            };
            let point = UProbeAttachPoint {
                location: p.offset.into(),
                // Libraries are built without frame pointers: scan for the caller instead.
                cookie: Some(alloc_cookie(i as u16, reg, p.role.in_libc())),
            };
            prog.attach(point, binary, scope)
                .map_err(|source| ProbeError::Uprobe {
                    symbol: p.symbol.clone(),
                    binary: binary.display().to_string(),
                    source: Box::new(source),
                })?;
            n += 1;
        }
        Ok(n)
    }

    /// mmap/munmap syscall tracepoints, filtered in the kernel by the kubelet's tgid: the whole
    /// story for a kubelet whose allocator cannot be resolved, and for every kubelet the gap
    /// between its exec and the first hit of its allocator uprobes (after which the kernel side
    /// stops counting its syscalls). Attached once; later calls do nothing.
    pub fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        if self.syscalls_attached {
            return Ok(());
        }
        for (program, name) in [
            (programs::TP_SYS_ENTER_MMAP, "sys_enter_mmap"),
            (programs::TP_SYS_ENTER_MUNMAP, "sys_enter_munmap"),
        ] {
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram(program))?
                .try_into()
                .map_err(|source| ProbeError::Verifier { program, source })?;
            prog.attach("syscalls", name)
                .map_err(|source| ProbeError::Attach {
                    category: "syscalls",
                    name: if program == programs::TP_SYS_ENTER_MMAP {
                        "sys_enter_mmap"
                    } else {
                        "sys_enter_munmap"
                    },
                    source,
                })?;
        }
        self.syscalls_attached = true;
        Ok(())
    }

    fn tgids(&mut self) -> Result<HashMap<&mut MapData, u32, KubeletText>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::KUBELET_TGIDS)
            .ok_or(ProbeError::MissingMap(maps::KUBELET_TGIDS))?;
        HashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::KUBELET_TGIDS,
            source,
        })
    }

    /// Counts this process's allocations from now on.
    /// Watches a kubelet process; `text` is its executable code's address range (for the
    /// call-site scan of library entry points), zero when unknown.
    pub fn watch_tgid(&mut self, tgid: u32, text: KubeletText) -> Result<(), ProbeError> {
        self.tgids()?
            .insert(tgid, text, 0)
            .map_err(|source| ProbeError::Map {
                name: maps::KUBELET_TGIDS,
                source,
            })
    }

    pub fn unwatch_tgid(&mut self, tgid: u32) {
        if let Ok(mut m) = self.tgids() {
            let _ = m.remove(&tgid);
        }
        if let Some(map) = self.ebpf.map_mut(maps::KUBELET_UPROBED) {
            if let Ok(mut m) = HashMap::<_, u32, u32>::try_from(map) {
                let _ = m.remove(&tgid);
            }
        }
        if let Some(map) = self.ebpf.map_mut(maps::ALLOC_STATS) {
            if let Ok(mut stats) = PerCpuHashMap::<_, AllocKey, AllocVal>::try_from(map) {
                let keys: Vec<AllocKey> =
                    stats.keys().flatten().filter(|k| k.tgid == tgid).collect();
                for k in keys {
                    let _ = stats.remove(&k);
                }
            }
        }
    }

    /// Counts memcg reclaim in the cgroup with this kernfs id (its directory's inode).
    pub fn watch_memcg(&mut self, id: u64) {
        if let Some(map) = self.ebpf.map_mut(maps::WATCHED_MEMCGS) {
            if let Ok(mut m) = HashMap::<_, u64, u32>::try_from(map) {
                let _ = m.insert(id, 1, 0);
            }
        }
    }

    /// Reclaim counted per watched memcg id, summed over CPUs.
    pub fn reclaim_stats(&self) -> Vec<(u64, probe_common::ReclaimStats)> {
        let Some(map) = self.ebpf.map(maps::RECLAIM_STATS) else {
            return Vec::new();
        };
        let Ok(m) = PerCpuHashMap::<_, u64, probe_common::ReclaimStats>::try_from(map) else {
            return Vec::new();
        };
        m.iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let sum = per_cpu
                    .iter()
                    .fold(probe_common::ReclaimStats::default(), |a, v| {
                        probe_common::ReclaimStats {
                            count: a.count + v.count,
                            ns: a.ns + v.ns,
                            pages: a.pages + v.pages,
                        }
                    });
                (k, sum)
            })
            .collect()
    }

    /// Allocator counters summed over CPUs.
    pub fn alloc_stats(&self) -> Vec<(AllocKey, AllocVal)> {
        let Some(map) = self.ebpf.map(maps::ALLOC_STATS) else {
            return Vec::new();
        };
        let Ok(stats) = PerCpuHashMap::<_, AllocKey, AllocVal>::try_from(map) else {
            return Vec::new();
        };
        stats
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let sum = per_cpu.iter().fold(AllocVal::default(), |a, v| AllocVal {
                    bytes: a.bytes + v.bytes,
                    calls: a.calls + v.calls,
                });
                (k, sum)
            })
            .collect()
    }

    /// Instruction pointers of a captured user stack, innermost first.
    pub fn stack(&self, stack_id: i64) -> Vec<u64> {
        let (Some(map), Ok(id)) = (self.ebpf.map(maps::STACKS), u32::try_from(stack_id)) else {
            return Vec::new();
        };
        let Ok(stacks) = StackTraceMap::try_from(map) else {
            return Vec::new();
        };
        stacks
            .get(&id, 0)
            .map(|st| st.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default()
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(ProbeError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::EVENTS,
            source,
        })
    }

    /// Kernel-side counters summed over CPUs.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        let Some(map) = self.ebpf.map(maps::COUNTERS) else {
            return Vec::new();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return Vec::new();
        };
        Counter::ALL
            .iter()
            .filter_map(|&c| {
                arr.get(&(c as u32), 0)
                    .ok()
                    .map(|vals| (c, vals.iter().sum()))
            })
            .collect()
    }
}

/// Register holding the byte count at a probe point (Go register ABI or System V).
pub fn arg_register(role: Role) -> Option<ArgReg> {
    Some(match role {
        Role::GoSysAlloc => ArgReg::Rax,
        Role::GoHeapMap | Role::GoFree | Role::GoUnused => ArgReg::Rbx,
        Role::LibcMmap | Role::LibcMunmap => ArgReg::Rsi,
        Role::LibcSbrk => ArgReg::Rdi,
        Role::LibcBrk => return None,
    })
}

/// The raw tracepoint on `signal_generate` that reads a SIGKILL target's RSS counters and
/// memory cgroup chain (the target `task_struct` is its third argument).
fn attach_victim_mm(ebpf: &mut Ebpf) -> Result<(), aya::programs::ProgramError> {
    let program = probe_common::exact::programs::RAW_TP_SIGNAL_GENERATE;
    let prog: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(program)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?
        .try_into()?;
    prog.load()?;
    prog.attach("signal_generate")?;
    Ok(())
}

fn attach_kprobe_tier(ebpf: &mut Ebpf) -> Result<(), Box<aya::programs::ProgramError>> {
    let prog: &mut aya::programs::KProbe = ebpf
        .program_mut(programs::KPROBE_OOM_KILL_PROCESS)
        .ok_or_else(|| Box::new(aya::programs::ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(Box::new)?;
    prog.load().map_err(Box::new)?;
    prog.attach("oom_kill_process", 0).map_err(Box::new)?;
    Ok(())
}
