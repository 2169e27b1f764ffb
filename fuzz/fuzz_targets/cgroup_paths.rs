//! Cgroup paths and `/proc/PID/cgroup` text: pod UID, QoS class and container id from kubepods
//! paths (systemd and cgroupfs drivers), ancestors, the memory controller's line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomprobe::cgroup::{ancestors, pod_identity, Hierarchy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let _ = pod_identity(line);
        let _ = ancestors(line);
    }
    let _ = pod_identity(text);
    let v1 = Hierarchy::V1("/sys/fs/cgroup/memory".into());
    let v2 = Hierarchy::V2("/sys/fs/cgroup".into());
    for h in [v1, v2] {
        if let Some(p) = h.parse_proc_cgroup(text) {
            let _ = pod_identity(&p);
            let _ = h.dir(&p);
        }
    }
});
