//! Loading and attaching the kernel programs. The hooks are a declarative table: each program
//! with its tracepoint and whether the agent can run without it.
use std::path::Path;

use aya::{
    maps::Array,
    programs::{
        uprobe::{UProbeAttachPoint, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use probe_common::{alloc_cookie, maps, programs, ArgReg, Config};

use super::{
    btf::{Btf, BtfError},
    config::build_config,
    tracefs::TracefsError,
};
use crate::kubelet::symbols::{ProbePoint, Role};

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
    pub(super) ebpf: Ebpf,
    /// Hooks that attached, by program name.
    pub attached: Vec<&'static str>,
    /// Optional hooks that did not attach, with the reason.
    pub degraded: Vec<(&'static str, String)>,
    /// The mmap/munmap syscall tracepoints are attached.
    syscalls_attached: bool,
    /// Allocator uprobes attached for one process only (its libc), detached when it dies.
    pub(super) pid_links: std::collections::HashMap<u32, Vec<aya::programs::uprobe::UProbeLinkId>>,
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
            .and_then(|t| super::mem_layout::possible_cpus(&t))
            .unwrap_or(0);
        let layout = super::mem_layout::mem_layout(&btf, nr_cpus);
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
        // One of two builds of the program: the atomic rss_stat layout (before 6.2) needs no
        // per-CPU sum, and 6.1's verifier refuses the build that has one (E2BIG).
        let victim_mm_program = if layout.rss_layout == probe_common::exact::RSS_LAYOUT_ATOMIC {
            probe_common::exact::programs::RAW_TP_SIGNAL_GENERATE_ATOMIC
        } else {
            probe_common::exact::programs::RAW_TP_SIGNAL_GENERATE
        };
        match attach_victim_mm(&mut ebpf, victim_mm_program) {
            Ok(()) => attached.push(victim_mm_program),
            Err(e) => {
                tracing::warn!(
                    hook = "raw_tracepoint/signal_generate",
                    error = %e,
                    "optional hook not attached; degraded: a SIGKILL victim's memory is read from /proc (often gone) and group OOM kills are found from the cgroup files"
                );
                degraded.push((victim_mm_program, e.to_string()));
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
            pid_links: std::collections::HashMap::new(),
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
            let link = prog
                .attach(point, binary, scope)
                .map_err(|source| ProbeError::Uprobe {
                    symbol: p.symbol.clone(),
                    binary: binary.display().to_string(),
                    source: Box::new(source),
                })?;
            if let Some(pid) = pid {
                self.pid_links.entry(pid).or_default().push(link);
            }
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
}

/// Register holding the byte count at a probe point (Go register ABI or System V).
/// What the run loop ([`crate::pipeline::Pipeline`]) and the kubelet tracker use of the loaded
/// kernel programs and their maps: [`Probes`] on a node; the golden test implements it without a
/// kernel to feed recorded ring records through the real pipeline. Each method is the `Probes`
/// method of the same name (shapes, units and errors there).
pub trait Kernel {
    /// Allocator uprobes on `binary` (all processes, or `pid`); the number attached.
    fn attach_allocator(
        &mut self,
        binary: &Path,
        points: &[ProbePoint],
        pid: Option<u32>,
    ) -> Result<usize, ProbeError>;
    /// The mmap/munmap syscall tracepoints (the allocator fallback).
    fn attach_syscalls(&mut self) -> Result<(), ProbeError>;
    /// Follows kubelet `tgid` in the kernel (its text range for stack filtering).
    fn watch_tgid(&mut self, tgid: u32, text: probe_common::KubeletText) -> Result<(), ProbeError>;
    /// Stops following `tgid`.
    fn unwatch_tgid(&mut self, tgid: u32);
    /// Counts reclaim in memory cgroup `id` (cgroup inode number); false when the kernel's
    /// map refused it (full).
    fn watch_memcg(&mut self, id: u64) -> bool;
    /// Stops counting reclaim in memory cgroup `id` (removed).
    fn unwatch_memcg(&mut self, _id: u64) {}
    /// Entries per kernel map that follows processes and cgroups.
    fn map_entries(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
    /// Removes captured stacks whose counters are gone.
    fn forget_stacks(&mut self, _ids: &[i64]) {}
    /// Per watched memory cgroup id, the reclaim counters.
    fn reclaim_stats(&self) -> Vec<(u64, probe_common::ReclaimStats)>;
    /// Allocator counters per (tgid, point, stack).
    fn alloc_stats(&self) -> Vec<(probe_common::AllocKey, probe_common::AllocVal)>;
    /// Return addresses of stack `stack_id`, innermost first.
    fn stack(&self, stack_id: i64) -> Vec<u64>;
    /// The probes' own counters (drops, ring overflow...).
    fn counters(&self) -> Vec<(probe_common::Counter, u64)>;
}

impl Kernel for Probes {
    fn attach_allocator(
        &mut self,
        binary: &Path,
        points: &[ProbePoint],
        pid: Option<u32>,
    ) -> Result<usize, ProbeError> {
        Probes::attach_allocator(self, binary, points, pid)
    }
    fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        Probes::attach_syscalls(self)
    }
    fn watch_tgid(&mut self, tgid: u32, text: probe_common::KubeletText) -> Result<(), ProbeError> {
        Probes::watch_tgid(self, tgid, text)
    }
    fn unwatch_tgid(&mut self, tgid: u32) {
        Probes::unwatch_tgid(self, tgid)
    }
    fn watch_memcg(&mut self, id: u64) -> bool {
        Probes::watch_memcg(self, id)
    }
    fn unwatch_memcg(&mut self, id: u64) {
        Probes::unwatch_memcg(self, id)
    }
    fn map_entries(&self) -> Vec<(&'static str, usize)> {
        Probes::map_entries(self)
    }
    fn forget_stacks(&mut self, ids: &[i64]) {
        Probes::forget_stacks(self, ids)
    }
    fn reclaim_stats(&self) -> Vec<(u64, probe_common::ReclaimStats)> {
        Probes::reclaim_stats(self)
    }
    fn alloc_stats(&self) -> Vec<(probe_common::AllocKey, probe_common::AllocVal)> {
        Probes::alloc_stats(self)
    }
    fn stack(&self, stack_id: i64) -> Vec<u64> {
        Probes::stack(self, stack_id)
    }
    fn counters(&self) -> Vec<(probe_common::Counter, u64)> {
        Probes::counters(self)
    }
}

pub fn arg_register(role: Role) -> Option<ArgReg> {
    Some(match role {
        Role::GoSysAlloc => ArgReg::GoArg0,
        Role::GoHeapMap | Role::GoFree | Role::GoUnused => ArgReg::GoArg1,
        Role::LibcMmap | Role::LibcMunmap => ArgReg::CArg1,
        Role::LibcSbrk => ArgReg::CArg0,
        Role::LibcBrk => return None,
    })
}

/// The raw tracepoint on `signal_generate` that reads a SIGKILL target's RSS counters and
/// memory cgroup chain (the target `task_struct` is its third argument).
fn attach_victim_mm(ebpf: &mut Ebpf, program: &str) -> Result<(), aya::programs::ProgramError> {
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
