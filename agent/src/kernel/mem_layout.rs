//! Where the kernel keeps the figures read for exact kill records, from its BTF: the memory
//! cgroup counters that decide the OOM domain (issue 11), a task's RSS counters (both
//! `mm_struct.rss_stat` layouts: `atomic_long_t count[]` before 6.2, `struct percpu_counter[]`
//! since), and `mem_cgroup.oom_group` (issue 16).
use probe_common::{
    exact::{RSS_LAYOUT_ATOMIC, RSS_LAYOUT_PERCPU},
    MemLayout, OFFSET_ABSENT,
};

use super::btf::Btf;

fn or_absent<E>(r: Result<u32, E>) -> u32 {
    r.unwrap_or(OFFSET_ABSENT)
}

fn index<E>(r: Result<i64, E>) -> u32 {
    r.ok()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(OFFSET_ABSENT)
}

fn add(a: u32, b: u32) -> u32 {
    if a == OFFSET_ABSENT || b == OFFSET_ABSENT {
        return OFFSET_ABSENT;
    }
    a.checked_add(b).unwrap_or(OFFSET_ABSENT)
}

/// Number of possible CPUs from `/sys/devices/system/cpu/possible` text (`0-3`, `0,2-5`...):
/// the highest CPU id plus one, as `nr_cpu_ids`.
pub fn possible_cpus(text: &str) -> Option<u32> {
    let mut max = None;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        max = Some(max.map_or(last, |m: u32| m.max(last)));
    }
    max.and_then(|m| m.checked_add(1))
}

/// The layout on the kernel `btf` describes. What it lacks is `OFFSET_ABSENT`, and the
/// readings that need it are then not made (the record falls back to procfs, the domain to
/// the cgroup files).
pub fn mem_layout(btf: &Btf, nr_cpus: u32) -> MemLayout {
    let mut l = MemLayout::EMPTY;
    l.css_parent = or_absent(btf.member_offset("cgroup_subsys_state", "parent"));
    l.memcg_failcnt = add(
        or_absent(btf.member_offset("mem_cgroup", "memory")),
        or_absent(btf.member_offset("page_counter", "failcnt")),
    );
    let memory = or_absent(btf.member_offset("mem_cgroup", "memory"));
    l.memcg_usage = add(
        memory,
        or_absent(btf.member_offset("page_counter", "usage")),
    );
    l.memcg_max = add(memory, or_absent(btf.member_offset("page_counter", "max")));
    l.memcg_watermark = add(
        memory,
        or_absent(btf.member_offset("page_counter", "watermark")),
    );
    let oom_event = index(btf.enum_value("MEMCG_OOM"));
    l.memcg_oom_local = add(
        or_absent(btf.member_offset("mem_cgroup", "memory_events_local")),
        oom_event.checked_mul(8).unwrap_or(OFFSET_ABSENT),
    );
    l.memcg_oom_group = or_absent(btf.member_offset("mem_cgroup", "oom_group"));
    l.task_mm = or_absent(btf.member_offset("task_struct", "mm"));
    l.mm_rss_stat = or_absent(btf.member_offset("mm_struct", "rss_stat"));
    // Before 6.2: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }.
    if btf.member_offset("mm_rss_stat", "count").is_ok() {
        l.rss_layout = RSS_LAYOUT_ATOMIC;
        l.rss_stride = 8;
        // SPLIT_RSS_COUNTING: each task's unsynced deltas, struct task_rss_stat.
        l.task_rss_stat = or_absent(btf.member_offset("task_struct", "rss_stat"));
    } else if let (Ok(count), Ok(counters), Ok(size)) = (
        btf.member_offset("percpu_counter", "count"),
        btf.member_offset("percpu_counter", "counters"),
        btf.struct_size("percpu_counter"),
    ) {
        l.rss_layout = RSS_LAYOUT_PERCPU;
        l.rss_stride = size;
        l.pcpu_count = count;
        l.pcpu_counters = counters;
    }
    l.mm_file = index(btf.enum_value("MM_FILEPAGES"));
    l.mm_anon = index(btf.enum_value("MM_ANONPAGES"));
    l.mm_shmem = index(btf.enum_value("MM_SHMEMPAGES"));
    l.mm_swap = index(btf.enum_value("MM_SWAPENTS"));
    l.mm_total_vm = or_absent(btf.member_offset("mm_struct", "total_vm"));
    l.mm_pgtables = or_absent(btf.member_offset("mm_struct", "pgtables_bytes"));
    l.bpf_array_pptrs = or_absent(btf.member_offset("bpf_array", "pptrs"));
    l.nr_cpus = nr_cpus;
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpu_lists() {
        assert_eq!(possible_cpus("0-1\n"), Some(2));
        assert_eq!(possible_cpus("0"), Some(1));
        assert_eq!(possible_cpus("0,2-5"), Some(6));
        assert_eq!(possible_cpus(""), None);
        assert_eq!(possible_cpus("x"), None);
    }

    /// This kernel's BTF must give every offset the exact readings need: a kernel whose BTF
    /// lacks one is a finding, not something to pass over.
    #[test]
    fn this_kernels_layout_is_complete() {
        let btf = Btf::from_sys_fs().unwrap_or_else(|e| {
            panic!("kernel BTF unreadable ({e}): the probes cannot load on this machine either")
        });
        let l = mem_layout(&btf, 2);
        for (name, v) in [
            ("css_parent", l.css_parent),
            ("memcg_failcnt", l.memcg_failcnt),
            ("memcg_usage", l.memcg_usage),
            ("memcg_max", l.memcg_max),
            ("memcg_watermark", l.memcg_watermark),
            ("memcg_oom_local", l.memcg_oom_local),
            ("memcg_oom_group", l.memcg_oom_group),
            ("task_mm", l.task_mm),
            ("mm_rss_stat", l.mm_rss_stat),
            ("mm_anon", l.mm_anon),
            ("mm_file", l.mm_file),
            ("mm_shmem", l.mm_shmem),
            ("bpf_array_pptrs", l.bpf_array_pptrs),
        ] {
            assert_ne!(v, OFFSET_ABSENT, "{name} absent from this kernel's BTF");
        }
        // rss_stat became an array of percpu_counter in 6.2.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        let expected = if (major, minor) >= (6, 2) {
            RSS_LAYOUT_PERCPU
        } else {
            RSS_LAYOUT_ATOMIC
        };
        assert_eq!(l.rss_layout, expected, "kernel {release}");
        assert_eq!(l.mm_file, 0);
        assert_eq!(l.mm_anon, 1);
    }
}
