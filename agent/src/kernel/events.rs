//! Decoding ring-buffer records into owned, typed events. The header is checked first (kind and
//! length); malformed records are errors the caller counts, never panics.
use std::mem::size_of;

use probe_common::{
    exact::mm_flags, victim_fields, CgroupPath, EventHeader, EventKind, ExitEvent,
    KubeletExecEvent, OomConstraint, OomControlEvent, OomVictimEvent, ReclaimKind, SiCode,
    SignalDelivery, SignalEvent, VictimMmEvent, WireEvent, CGROUP_MAX_DEPTH, CGROUP_PATH_TRUNCATED,
    CGROUP_PATH_UNAVAILABLE,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record kind {kind:?} claims {claimed} bytes, expected {expected}, got {got}")]
    Length {
        kind: EventKind,
        claimed: u32,
        expected: usize,
        got: usize,
    },
    #[error("record kind {kind:?} read as {read_as:?}")]
    KindMismatch { kind: EventKind, read_as: EventKind },
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short(_) => "short",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::Length { .. } => "bad_length",
            DecodeError::KindMismatch { .. } => "kind_mismatch",
        }
    }
}

/// A kernel enum value out of the range this build knows (a newer kernel, or a bad record).
/// The record is kept with the field as `Err(value)`; the caller counts it
/// (`oomprobe_decode_errors_total{field,value}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    /// `record.field`, e.g. `signal.result`.
    pub field: &'static str,
    pub value: i64,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} has the unknown value {}", self.field, self.value)
    }
}

/// A memory cgroup as the kernel probe saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelCgroup {
    /// kernfs id (inode of the cgroup directory).
    pub id: u64,
    /// Path from the hierarchy root, e.g. `/kubepods/pod1`; `None` when unreadable.
    pub path: Option<String>,
    /// Deeper than the probe keeps: `path` holds only the deepest components.
    pub truncated: bool,
}

impl KernelCgroup {
    fn from_raw(raw: &CgroupPath) -> KernelCgroup {
        if raw.flags & CGROUP_PATH_UNAVAILABLE != 0 {
            return KernelCgroup {
                id: raw.id,
                path: None,
                truncated: false,
            };
        }
        let depth = (raw.depth as usize).min(CGROUP_MAX_DEPTH);
        let mut parts: Vec<String> = raw.names[..depth].iter().map(|n| cstr(n)).collect();
        parts.reverse();
        KernelCgroup {
            id: raw.id,
            path: Some(format!("/{}", parts.join("/"))),
            truncated: raw.flags & CGROUP_PATH_TRUNCATED != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRecord {
    pub ktime_ns: u64,
    pub target_pid: u32,
    pub target_comm: String,
    pub code: SiCode,
    pub group: i32,
    /// `enum trace_signal_result`; `Err(value)` when out of range (see [`FieldError`]).
    pub result: Result<SignalDelivery, i32>,
    pub sender_tid: u32,
    pub sender_tgid: u32,
    pub sender_comm: String,
    /// `Err(value)` when out of range (see [`FieldError`]).
    pub sender_reclaim: Result<ReclaimKind, u32>,
    pub sender_reclaim_ktime_ns: u64,
    pub sender_memcg: KernelCgroup,
    /// For a kernel-sent SIGKILL: the sender's memcg chain counters since its reclaim began
    /// (`None` when the kernel kept no baseline for it).
    pub domain_counters: Option<DomainDeltas>,
}

/// Per level of the OOM trigger's memory cgroup chain (leaf first, as the path's components
/// reversed): how much `memory.failcnt` and the memcg's own OOM count
/// (`memory_events_local[MEMCG_OOM]`, v2's `memory.events.local` `oom`) rose since the
/// trigger's memcg reclaim began, read in the kernel at the SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainDeltas {
    pub failcnt: Vec<u32>,
    pub oom: Vec<u32>,
    /// Per level, `page_counter.max` and `.usage` of `mem_cgroup.memory` at the SIGKILL (the
    /// limit as it fired, the charge before the victim's memory is uncharged); empty where
    /// the kernel's BTF lacks them.
    pub counters: Vec<PageCounterReading>,
}

impl DomainDeltas {
    fn from_raw(raw: &probe_common::DomainCounters) -> Option<DomainDeltas> {
        if raw.flags & probe_common::exact::DOMAIN_BASELINE == 0 {
            return None;
        }
        let depth = (raw.depth as usize).min(probe_common::exact::MEMCG_LEVELS);
        let counters = if raw.flags & probe_common::exact::DOMAIN_PAGE_COUNTER != 0 {
            (0..depth)
                .map(|i| PageCounterReading {
                    max_pages: raw.max_pages[i],
                    usage_pages: raw.usage_pages[i],
                    watermark_pages: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(DomainDeltas {
            failcnt: raw.failcnt_delta[..depth].to_vec(),
            oom: raw.oom_delta[..depth].to_vec(),
            counters,
        })
    }
}

/// A SIGKILL target as the kernel had it at `signal_generate` (raw tracepoint): RSS counters
/// in pages, and its memory cgroup chain with the levels that have `memory.oom.group` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VictimMmRecord {
    pub ktime_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    /// `None` when the target had no mm (already exiting) or the layout is unknown.
    pub rss: Option<RssPages>,
    pub total_vm_pages: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    /// The victim's memcg and, per level (leaf = 0), whether `memory.oom.group` is set.
    pub memcg: Option<KernelCgroup>,
    pub oom_group_levels: u32,
}

/// `mm_struct.rss_stat` counters in pages, and how they were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssPages {
    pub file: i64,
    pub anon: i64,
    pub shmem: i64,
    pub swap: i64,
    /// `percpu_counter` (6.2+): `count` plus every CPU's delta (`percpu_counter_sum`).
    pub percpu_summed: bool,
    /// CPUs summed (0 for the atomic layout before 6.2).
    pub cpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VictimRecord {
    pub ktime_ns: u64,
    pub pid: u32,
    pub comm: Option<String>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub uid: Option<u32>,
    pub oom_score_adj: Option<i32>,
    pub trigger_tid: u32,
    pub trigger_tgid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub ktime_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub signaled_pid: u32,
    pub signal_ktime_ns: u64,
    pub exit_code: Option<i32>,
    pub comm: String,
    pub memcg: KernelCgroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletExecRecord {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub comm: String,
}

/// The kernel's OOM control at `oom_kill_process` (kprobe tier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomControlRecord {
    pub ktime_ns: u64,
    pub chosen_pid: u32,
    pub chosen_tgid: u32,
    /// `enum oom_constraint`; `Err(value)` when out of range (see [`FieldError`]).
    pub constraint: Result<OomConstraint, u32>,
    pub totalpages: u64,
    pub chosen_points: i64,
    pub domain: KernelCgroup,
    /// The domain's `page_counter` (`oc->memcg->memory`) read in the kernel at
    /// `oom_kill_process`, before the victim's memory is uncharged; `None` where BTF lacks the
    /// offsets or the read failed.
    pub domain_counter: Option<PageCounterReading>,
}

/// A memory cgroup's `page_counter` in pages, as the kernel held it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCounterReading {
    /// `page_counter.max`: the limit (`PAGE_COUNTER_MAX` when there is none).
    pub max_pages: u64,
    /// `page_counter.usage`: what is charged.
    pub usage_pages: u64,
    /// `page_counter.watermark`: the highest usage since it was last reset.
    pub watermark_pages: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OomControl(OomControlRecord),
    Signal(SignalRecord),
    OomVictim(VictimRecord),
    Exit(ExitRecord),
    KubeletExec(KubeletExecRecord),
    VictimMm(VictimMmRecord),
}

impl Event {
    /// The kernel enum fields of this record that were out of range.
    pub fn field_errors(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        match self {
            Event::Signal(s) => {
                if let Err(v) = s.result {
                    out.push(FieldError {
                        field: "signal.result",
                        value: i64::from(v),
                    });
                }
                if let Err(v) = s.sender_reclaim {
                    out.push(FieldError {
                        field: "signal.sender_reclaim_kind",
                        value: i64::from(v),
                    });
                }
            }
            Event::OomControl(oc) => {
                if let Err(v) = oc.constraint {
                    out.push(FieldError {
                        field: "oom_control.constraint",
                        value: i64::from(v),
                    });
                }
            }
            Event::OomVictim(_) | Event::Exit(_) | Event::KubeletExec(_) | Event::VictimMm(_) => {}
        }
        out
    }
}

/// NUL-terminated bytes to a String.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read<T: Copy>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= size_of::<T>());
    // SAFETY: the caller checked the length; T is a repr(C) POD from probe-common.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// The payload of a `kind` record as `T`, the struct bound to that kind: the header's length
/// must be `T`'s size and the bytes must hold it.
fn payload<T: WireEvent>(
    kind: EventKind,
    hdr: &EventHeader,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if T::KIND != kind {
        return Err(DecodeError::KindMismatch {
            kind,
            read_as: T::KIND,
        });
    }
    let expected = size_of::<T>();
    if hdr.len as usize != expected || bytes.len() < expected {
        return Err(DecodeError::Length {
            kind,
            claimed: hdr.len,
            expected,
            got: bytes.len(),
        });
    }
    Ok(read(bytes))
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let hdr: EventHeader = read(bytes);
    let kind = EventKind::try_from(hdr.kind).map_err(DecodeError::UnknownKind)?;
    match kind {
        EventKind::Signal => {
            let e: SignalEvent = payload(kind, &hdr, bytes)?;
            Ok(Event::Signal(SignalRecord {
                ktime_ns: e.hdr.ktime_ns,
                target_pid: e.target_pid as u32,
                target_comm: cstr(&e.target_comm),
                code: SiCode(e.code),
                group: e.group,
                result: SignalDelivery::try_from(e.result),
                sender_tid: e.sender_tid,
                sender_tgid: e.sender_tgid,
                sender_comm: cstr(&e.sender_comm),
                sender_reclaim: ReclaimKind::try_from(e.sender_reclaim_kind),
                sender_reclaim_ktime_ns: e.sender_reclaim_ktime_ns,
                sender_memcg: KernelCgroup::from_raw(&e.sender_memcg),
                domain_counters: DomainDeltas::from_raw(&e.domain),
            }))
        }
        EventKind::OomVictim => {
            let e: OomVictimEvent = payload(kind, &hdr, bytes)?;
            let has = |bit: u32| e.fields & bit != 0;
            Ok(Event::OomVictim(VictimRecord {
                ktime_ns: e.hdr.ktime_ns,
                pid: e.pid as u32,
                comm: has(victim_fields::COMM).then(|| cstr(&e.comm)),
                total_vm_kb: has(victim_fields::TOTAL_VM).then_some(e.total_vm_kb),
                anon_rss_kb: has(victim_fields::ANON_RSS).then_some(e.anon_rss_kb),
                file_rss_kb: has(victim_fields::FILE_RSS).then_some(e.file_rss_kb),
                shmem_rss_kb: has(victim_fields::SHMEM_RSS).then_some(e.shmem_rss_kb),
                pgtables_kb: has(victim_fields::PGTABLES).then_some(e.pgtables_kb),
                uid: has(victim_fields::UID).then_some(e.uid),
                oom_score_adj: has(victim_fields::OOM_SCORE_ADJ).then_some(e.oom_score_adj),
                trigger_tid: e.trigger_tid,
                trigger_tgid: e.trigger_tgid,
            }))
        }
        EventKind::Exit => {
            let e: ExitEvent = payload(kind, &hdr, bytes)?;
            Ok(Event::Exit(ExitRecord {
                ktime_ns: e.hdr.ktime_ns,
                tid: e.tid,
                tgid: e.tgid,
                signaled_pid: e.signaled_pid,
                signal_ktime_ns: e.signal_ktime_ns,
                exit_code: (e.exit_code >= 0).then_some(e.exit_code),
                comm: cstr(&e.comm),
                memcg: KernelCgroup::from_raw(&e.memcg),
            }))
        }
        EventKind::OomControl => {
            let e: OomControlEvent = payload(kind, &hdr, bytes)?;
            Ok(Event::OomControl(OomControlRecord {
                ktime_ns: e.hdr.ktime_ns,
                chosen_pid: e.chosen_pid,
                chosen_tgid: e.chosen_tgid,
                constraint: OomConstraint::try_from(e.constraint),
                totalpages: e.totalpages,
                chosen_points: e.chosen_points,
                domain: KernelCgroup::from_raw(&e.domain),
                domain_counter: (e.flags & probe_common::OC_DOMAIN_COUNTERS != 0).then(|| {
                    PageCounterReading {
                        max_pages: e.domain_max_pages,
                        usage_pages: e.domain_usage_pages,
                        watermark_pages: (e.flags & probe_common::OC_DOMAIN_WATERMARK != 0)
                            .then_some(e.domain_watermark_pages),
                    }
                }),
            }))
        }
        EventKind::VictimMm => {
            let e: VictimMmEvent = payload(kind, &hdr, bytes)?;
            let has = |bit: u32| e.flags & bit != 0;
            let read_rss = has(mm_flags::MM)
                && (has(mm_flags::ATOMIC)
                    || has(mm_flags::PERCPU_SUMMED)
                    || has(mm_flags::PERCPU_PARTIAL));
            Ok(Event::VictimMm(VictimMmRecord {
                ktime_ns: e.hdr.ktime_ns,
                tid: e.tid,
                tgid: e.tgid,
                rss: read_rss.then_some(RssPages {
                    file: e.file_pages,
                    anon: e.anon_pages,
                    shmem: e.shmem_pages,
                    swap: e.swap_pages,
                    percpu_summed: has(mm_flags::PERCPU_SUMMED),
                    // Marks the percpu layout even when no CPU could be read.
                    cpus: if has(mm_flags::PERCPU_PARTIAL) {
                        e.cpus.max(1)
                    } else {
                        e.cpus
                    },
                }),
                total_vm_pages: has(mm_flags::TOTAL_VM).then_some(e.total_vm_pages),
                pgtables_bytes: has(mm_flags::PGTABLES).then_some(e.pgtables_bytes),
                memcg: has(mm_flags::MEMCG).then(|| KernelCgroup::from_raw(&e.memcg)),
                oom_group_levels: e.oom_group_levels,
            }))
        }
        EventKind::KubeletExec => {
            let e: KubeletExecEvent = payload(kind, &hdr, bytes)?;
            Ok(Event::KubeletExec(KubeletExecRecord {
                ktime_ns: e.hdr.ktime_ns,
                tgid: e.tgid,
                comm: cstr(&e.comm),
            }))
        }
    }
}

/// Raw bytes of a wire struct, for tests that feed the decoder exactly what the kernel writes.
pub fn as_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) POD; reading its bytes is fine.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
}

#[cfg(test)]
mod tests {
    use probe_common::{CGROUP_NAME_LEN, TASK_COMM_LEN};

    use super::*;

    fn name(s: &str) -> [u8; CGROUP_NAME_LEN] {
        let mut n = [0u8; CGROUP_NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    fn comm(s: &str) -> [u8; TASK_COMM_LEN] {
        let mut n = [0u8; TASK_COMM_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    #[test]
    fn decodes_exit_with_cgroup_leaf_first() {
        let mut names = [[0u8; CGROUP_NAME_LEN]; CGROUP_MAX_DEPTH];
        names[0] = name("leaf");
        names[1] = name("mid");
        let ev = ExitEvent {
            hdr: EventHeader {
                kind: EventKind::Exit as u32,
                len: size_of::<ExitEvent>() as u32,
                ktime_ns: 42,
            },
            tid: 7,
            tgid: 7,
            signaled_pid: 7,
            exit_code: 9,
            signal_ktime_ns: 40,
            comm: comm("kubelet"),
            memcg: CgroupPath {
                id: 99,
                depth: 2,
                flags: 0,
                names,
            },
        };
        let Event::Exit(rec) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(rec.memcg.path.as_deref(), Some("/mid/leaf"));
        assert_eq!(rec.memcg.id, 99);
        assert_eq!(rec.comm, "kubelet");
        assert_eq!(rec.exit_code, Some(9));
    }

    #[test]
    fn root_cgroup_is_slash() {
        let raw = CgroupPath {
            id: 1,
            depth: 0,
            flags: 0,
            names: [[0; CGROUP_NAME_LEN]; CGROUP_MAX_DEPTH],
        };
        assert_eq!(KernelCgroup::from_raw(&raw).path.as_deref(), Some("/"));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let hdr = EventHeader {
            kind: 77,
            len: 16,
            ktime_ns: 0,
        };
        assert_eq!(decode(&as_bytes(&hdr)), Err(DecodeError::UnknownKind(77)));
        let hdr = EventHeader {
            kind: EventKind::Signal as u32,
            len: 16,
            ktime_ns: 0,
        };
        assert!(matches!(
            decode(&as_bytes(&hdr)),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn decodes_victim_mm_and_its_absences() {
        let mut names = [[0u8; CGROUP_NAME_LEN]; CGROUP_MAX_DEPTH];
        names[0] = name("ctr");
        names[1] = name("pod");
        let mut ev = VictimMmEvent {
            hdr: EventHeader {
                kind: EventKind::VictimMm as u32,
                len: size_of::<VictimMmEvent>() as u32,
                ktime_ns: 8,
            },
            tid: 12,
            tgid: 11,
            flags: mm_flags::MM | mm_flags::PERCPU_SUMMED | mm_flags::MEMCG | mm_flags::TOTAL_VM,
            cpus: 2,
            file_pages: 10,
            anon_pages: 8192,
            shmem_pages: 1,
            swap_pages: 0,
            total_vm_pages: 9000,
            pgtables_bytes: 4096,
            oom_group_levels: 0b01,
            _pad: 0,
            memcg: CgroupPath {
                id: 5,
                depth: 2,
                flags: 0,
                names,
            },
        };
        let Event::VictimMm(m) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("wrong kind")
        };
        let rss = m.rss.expect("rss read");
        assert_eq!((rss.anon, rss.file, rss.shmem), (8192, 10, 1));
        assert!(rss.percpu_summed);
        assert_eq!(m.total_vm_pages, Some(9000));
        assert_eq!(m.pgtables_bytes, None);
        assert_eq!(m.memcg.unwrap().path.as_deref(), Some("/pod/ctr"));
        assert_eq!(m.oom_group_levels, 1);
        // No mm (an exiting task): no RSS, not zeros.
        ev.flags = mm_flags::MEMCG;
        let Event::VictimMm(m) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(m.rss, None);
    }

    #[test]
    fn victim_fields_absent_on_old_kernels() {
        let ev = OomVictimEvent {
            hdr: EventHeader {
                kind: EventKind::OomVictim as u32,
                len: size_of::<OomVictimEvent>() as u32,
                ktime_ns: 5,
            },
            pid: 100,
            uid: 0,
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            oom_score_adj: 0,
            fields: 0,
            trigger_tid: 3,
            trigger_tgid: 3,
            comm: [0; TASK_COMM_LEN],
        };
        let Event::OomVictim(v) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(v.pid, 100);
        assert_eq!(v.anon_rss_kb, None);
        assert_eq!(v.comm, None);
    }

    fn signal(code: i32, result: i32, reclaim: u32) -> SignalEvent {
        SignalEvent {
            hdr: EventHeader::of::<SignalEvent>(10),
            target_pid: 5,
            sig: 9,
            code,
            group: 1,
            result,
            sender_tid: 6,
            sender_tgid: 6,
            sender_reclaim_kind: reclaim,
            sender_reclaim_ktime_ns: 0,
            target_comm: comm("victim"),
            sender_comm: comm("sender"),
            sender_memcg: CgroupPath {
                id: 1,
                depth: 0,
                flags: 0,
                names: [[0; CGROUP_NAME_LEN]; CGROUP_MAX_DEPTH],
            },
            domain: probe_common::DomainCounters::default(),
        }
    }

    #[test]
    fn kernel_enums_are_typed_at_the_decoder() {
        let ev = decode(&as_bytes(&signal(0x80, 2, 1))).unwrap();
        let Event::Signal(s) = &ev else {
            panic!("not a signal")
        };
        assert_eq!(s.code, SiCode::KERNEL);
        assert_eq!(s.code.name(), Some("SI_KERNEL"));
        assert_eq!(s.result, Ok(SignalDelivery::AlreadyPending));
        assert_eq!(s.sender_reclaim, Ok(ReclaimKind::Memcg));
        assert_eq!(ev.field_errors(), vec![]);
    }

    #[test]
    fn out_of_range_values_are_field_errors_and_the_record_is_kept() {
        let ev = decode(&as_bytes(&signal(77, 9, 5))).unwrap();
        let Event::Signal(s) = &ev else {
            panic!("not a signal")
        };
        assert_eq!(s.code, SiCode(77));
        assert_eq!(s.code.name(), None);
        assert_eq!(s.result, Err(9));
        assert_eq!(s.sender_reclaim, Err(5));
        assert_eq!(
            ev.field_errors(),
            vec![
                FieldError {
                    field: "signal.result",
                    value: 9
                },
                FieldError {
                    field: "signal.sender_reclaim_kind",
                    value: 5
                },
            ]
        );
    }

    #[test]
    fn a_header_names_the_kind_bound_to_its_struct() {
        let hdr = EventHeader::of::<OomControlEvent>(3);
        assert_eq!(hdr.kind, EventKind::OomControl as u32);
        assert_eq!(hdr.len as usize, size_of::<OomControlEvent>());
        // Read as another kind's struct, a record is refused.
        let bytes = as_bytes(&signal(0, 0, 0));
        let hdr: EventHeader = read(&bytes);
        assert_eq!(
            payload::<ExitEvent>(EventKind::Signal, &hdr, &bytes).err(),
            Some(DecodeError::KindMismatch {
                kind: EventKind::Signal,
                read_as: EventKind::Exit
            })
        );
    }
}
