//! Issue 11 part 4: state that follows cgroups and processes goes with them. Pod-like memory
//! cgroups are created under a kubepods root the agent watches (some OOM, so the kernel counts
//! their reclaim), processes exec under the kubelet's name (more than `KUBELET_TGIDS` holds),
//! then everything goes: `oomprobe_map_entries{map}` must return exactly to where it started,
//! and every refusal of a full map is counted in `oomprobe_events_dropped_total`.
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use oomprobe_tests::{cgroup_name, metric, scratch_dir, spawn_in, Agent, ScratchCgroup, MIB};

const PODS: usize = 60;
const CONTAINERS: usize = 2;
/// Pods whose container is OOM-killed (memcg reclaim counted in `RECLAIM_STATS`).
const OOM_PODS: usize = 6;
/// `probe_common::KUBELET_TGIDS_MAX`.
const TGIDS_MAX: usize = 64;

const MAPS: &[&str] = &[
    "KUBELET_TGIDS",
    "KUBELET_UPROBED",
    "WATCHED_MEMCGS",
    "RECLAIM_STATS",
    "ALLOC_STATS",
    "STACKS",
    "agent_memcgs",
    "agent_memcg_notified",
    "agent_memcg_tasks",
    "agent_uprobed_pids",
];

/// Every `oomprobe_map_entries{map}` series, or the names of those not exported yet (before the
/// agent's first sample).
fn entries(agent: &Agent) -> Result<BTreeMap<&'static str, f64>, Vec<&'static str>> {
    let body = agent.scrape();
    let mut missing = Vec::new();
    let mut out = BTreeMap::new();
    for m in MAPS {
        match metric(&body, &format!("oomprobe_map_entries{{map=\"{m}\"}}")) {
            Some(v) => {
                out.insert(*m, v);
            }
            None => missing.push(*m),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

fn dropped(agent: &Agent, reason: &str, kind: &str) -> f64 {
    let series = format!("oomprobe_events_dropped_total{{kind=\"{kind}\",reason=\"{reason}\"}}");
    metric(&agent.scrape(), &series).unwrap_or(0.0)
}

/// Waits until `pred` holds for the agent's map entries; returns them.
fn wait_entries(
    agent: &Agent,
    what: &str,
    pred: impl Fn(&BTreeMap<&'static str, f64>) -> bool,
) -> BTreeMap<&'static str, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = entries(agent);
        if let Ok(e) = &e {
            if pred(e) {
                return e.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes whose comm is `kubelet`: a copy of sleep(1) under that name.
struct Kubelets(Vec<Child>);

impl Kubelets {
    fn start(bin: &std::path::Path, n: usize) -> Kubelets {
        Kubelets(
            (0..n)
                .map(|_| {
                    Command::new(bin)
                        .arg("600")
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("start a process named kubelet")
                })
                .collect(),
        )
    }
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

#[test]
fn map_occupancy_returns_to_baseline_after_cgroup_and_process_churn() {
    let root = ScratchCgroup::create(&cgroup_name("kubepods"), None).expect("kubepods root");
    let dir = scratch_dir("kubelets");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let kubelet = dir.join("kubelet");
    std::fs::copy("/bin/sleep", &kubelet).expect("copy sleep(1) as kubelet");
    let agent = Agent::builder()
        .metrics(19482)
        .args(&[
            "--kubepods-root",
            &root.path,
            "--sample-interval",
            "1",
            "--attribution-interval",
            "1",
        ])
        .start();
    // The root itself is watched (reclaim and notifications) from the first sample.
    let base = wait_entries(&agent, "the first sample", |e| e["agent_memcgs"] == 1.0);
    assert_eq!(base["WATCHED_MEMCGS"], 1.0, "{base:?}");
    assert_eq!(base["KUBELET_TGIDS"], 0.0, "no kubelet runs here: {base:?}");

    for round in 0..2 {
        // Pods with containers, a few of them OOM-killed.
        let pods: Vec<ScratchCgroup> = (0..PODS)
            .map(|i| root.child(&format!("pod{round}-{i}"), None).expect("pod"))
            .collect();
        let containers: Vec<ScratchCgroup> = pods
            .iter()
            .flat_map(|p| {
                (0..CONTAINERS).map(move |c| p.child(&format!("c{c}"), Some(16 * MIB)).unwrap())
            })
            .collect();
        let want = 1.0 + (PODS * (1 + CONTAINERS)) as f64;
        let full = wait_entries(&agent, "every pod cgroup watched", |e| {
            e["WATCHED_MEMCGS"] == want && e["agent_memcg_notified"] == want
        });
        assert_eq!(full["agent_memcgs"], want, "{full:?}");
        // v1: oom_control and two pressure levels per cgroup.
        assert_eq!(full["agent_memcg_tasks"], 3.0 * want, "{full:?}");
        let mut hogs: Vec<_> = containers
            .iter()
            .take(OOM_PODS)
            .map(|c| spawn_in(c, "memhog", &["64"]))
            .collect();
        for h in &mut hogs {
            assert_eq!(h.wait_signal(), Some(9), "memhog OOM-killed");
        }
        // Reclaim counted for exactly the containers that ran out of memory.
        wait_entries(&agent, "reclaim counted", |e| {
            e["RECLAIM_STATS"] == OOM_PODS as f64
        });
        drop(hogs);
        drop(containers);
        drop(pods);
        wait_entries(&agent, "the removed cgroups forgotten", |e| {
            e["WATCHED_MEMCGS"] == base["WATCHED_MEMCGS"]
                && e["RECLAIM_STATS"] == base["RECLAIM_STATS"]
                && e["agent_memcgs"] == base["agent_memcgs"]
                && e["agent_memcg_notified"] == base["agent_memcg_notified"]
                && e["agent_memcg_tasks"] == base["agent_memcg_tasks"]
        });

        // Processes exec'ing under the kubelet's name: followed while they live.
        let n = TGIDS_MAX / 2;
        let ks = Kubelets::start(&kubelet, n);
        wait_entries(&agent, "the kubelet-named processes followed", |e| {
            e["KUBELET_TGIDS"] == n as f64 && e["agent_uprobed_pids"] == n as f64
        });
        drop(ks);
        wait_entries(&agent, "the dead kubelet-named processes forgotten", |e| {
            e["KUBELET_TGIDS"] == 0.0 && e["agent_uprobed_pids"] == 0.0
        });
    }

    // More kubelet-named processes than the kernel's map holds: the rest counted as dropped.
    let before = dropped(&agent, "kubelet_tgids_full", "exec");
    let over = 6;
    let ks = Kubelets::start(&kubelet, TGIDS_MAX + over);
    wait_entries(&agent, "KUBELET_TGIDS full", |e| {
        e["KUBELET_TGIDS"] == TGIDS_MAX as f64
    });
    assert_eq!(
        dropped(&agent, "kubelet_tgids_full", "exec") - before,
        over as f64,
        "every exec the full map refused is counted"
    );
    drop(ks);

    let end = wait_entries(&agent, "every map back at its baseline", |e| *e == base);
    assert_eq!(end, base);
    let _ = std::fs::remove_dir_all(&dir);
}
