//! Every cause the classifier can name, named from the live sampling path: the sampler's walk
//! of a kubepods tree, the recorded v1.34.4 kubelet scrape (its families changed only where a
//! cause needs it), the API's poll, through [`LiveInputs::complete`] into the engine.
use std::path::PathBuf;

use super::*;
use crate::{
    detect::classify::Cause,
    kubeapi::inputs::{self, ApiInputs},
    kubelet::metrics::parse,
};

/// Recorded from a real kubelet v1.34.4 (`cargo xtask lab up`); see the file's header.
const RECORDED: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/kubelet-v1.34.4-metrics.txt"
));

/// The recorded scrape with lines replaced (`from` must be in it, verbatim).
fn scrape(replace: &[(&str, String)]) -> String {
    let mut s = RECORDED.to_string();
    for (from, to) in replace {
        assert!(s.contains(from), "not in the recorded scrape: {from}");
        s = s.replace(from, to);
    }
    s
}

/// The recorded PLEG histogram's bucket lines, `le` from 0.005 to +Inf.
const LES: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];
const RECORDED_PLEG: [u64; 12] = [3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4];

/// Replacements for the PLEG histogram: the recorded counts plus `fast` relists of 0.05-0.1 s
/// and `slow` of 5-10 s each (cumulative, as the kubelet counts).
fn pleg(fast: u64, slow: u64) -> Vec<(&'static str, String)> {
    LES.iter()
        .zip(RECORDED_PLEG)
        .map(|(le, n)| {
            let from: &'static str = Box::leak(
                format!("kubelet_pleg_relist_duration_seconds_bucket{{le=\"{le}\"}} {n}\n")
                    .into_boxed_str(),
            );
            let add = match *le {
                "0.005" | "0.01" | "0.025" | "0.05" => 0,
                "0.1" | "0.25" | "0.5" | "1" | "2.5" | "5" => fast,
                _ => fast + slow,
            };
            (
                from,
                format!(
                    "kubelet_pleg_relist_duration_seconds_bucket{{le=\"{le}\"}} {}\n",
                    n + add
                ),
            )
        })
        .collect()
}

/// A node: a cgroup v1 memory hierarchy in a scratch directory with a kubepods tree, the live
/// inputs' state, the API's latest poll, the series.
struct Node {
    root: PathBuf,
    h: Hierarchy,
    live: LiveInputs,
    api: inputs::Latest,
    series: Vec<Sample>,
    next_pod: u64,
}

impl Node {
    fn new(tag: &str, pods: u64) -> Node {
        let root = std::env::temp_dir().join(format!("oomprobe-live-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("kubepods/burstable")).unwrap();
        let api = inputs::Latest::default();
        let mut n = Node {
            h: Hierarchy::V1(root.clone()),
            root,
            live: LiveInputs {
                api: Some(api.clone()),
                ..Default::default()
            },
            api,
            series: Vec::new(),
            next_pod: 0,
        };
        for _ in 0..pods {
            n.add_pod(100 << 20);
        }
        n
    }

    fn pod_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.root.join("kubepods/burstable"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    fn add_pod(&mut self, usage: u64) {
        let dir = self.root.join(format!(
            "kubepods/burstable/pod{:08x}-0000-0000-0000-000000000000",
            self.next_pod
        ));
        self.next_pod += 1;
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.usage_in_bytes"), usage.to_string()).unwrap();
    }

    /// Replaces the oldest pod by a new one.
    fn churn_one(&mut self) {
        let oldest = self.pod_dirs().remove(0);
        std::fs::remove_dir_all(oldest).unwrap();
        self.add_pod(100 << 20);
    }

    fn set_usage(&self, usage: u64) {
        for d in self.pod_dirs() {
            std::fs::write(d.join("memory.usage_in_bytes"), usage.to_string()).unwrap();
        }
    }

    /// One sample at `t` through the live path: the sampler's walk, the scrape (None: the
    /// kubelet's /metrics unavailable), the API's poll as `api` left it. The kubelet's RSS is
    /// `rss` (the sampler reads it from /proc, not an input of any cause).
    fn sample(&mut self, t: i64, rss: f64, text: Option<&str>, api: ApiInputs) {
        *self.api.lock().unwrap() = api;
        let roots = vec!["/kubepods".to_string()];
        let (mut s, ev) = crate::sampler::sample(Some(&self.h), &roots, None, 0, t);
        s.kubelet_rss_bytes = rss;
        s.node_mem_available_bytes = Some(4e9);
        let (s, _) = self.live.complete(s, ev, text.map(|t| parse(t).unwrap()));
        self.series.push(s);
    }

    fn verdict(&self) -> crate::detect::Verdict {
        Engine::default().evaluate(&self.series)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// 48 h every 10 minutes with the kubelet leaking 100 MB/day; `each(node, i)` sets the step's
/// scrape and API inputs.
fn leaking(n: &mut Node, each: impl Fn(&mut Node, i64) -> (Option<String>, ApiInputs)) {
    for i in 0..288 {
        let (text, api) = each(n, i);
        let h = i as f64 / 6.0;
        n.sample(i * 600, 400e6 + 100e6 * h / 24.0, text.as_deref(), api);
    }
}

fn api(pressure: f64, csrs: f64) -> ApiInputs {
    ApiInputs {
        memory_pressure: Some(pressure),
        pending_csrs: Some(csrs),
        ..Default::default()
    }
}

const EXITED: &str = "kubelet_running_containers{container_state=\"exited\"} 2\n";
const GOROUTINES: &str = "go_goroutines 145\n";
const GATE_PCR: &str =
    "kubernetes_feature_enabled{name=\"PodCertificateRequest\",stage=\"ALPHA\"} 0\n";
const GATE_EPLEG: &str = "kubernetes_feature_enabled{name=\"EventedPLEG\",stage=\"ALPHA\"} 0\n";

#[test]
fn the_recorded_kubelet_scrape_gives_every_metrics_input() {
    let mut n = Node::new("recorded", 3);
    n.sample(0, 400e6, Some(RECORDED), ApiInputs::default());
    n.sample(10, 400e6, Some(&scrape(&pleg(7, 2))), api(0.0, 0.0));
    let first = &n.series[0];
    // The first walk and the first scrape have nothing to difference against.
    assert_eq!((first.pod_churn_per_hour, first.pleg_relists), (None, None));
    // The API had not answered yet.
    assert_eq!((first.memory_pressure, first.pending_csrs), (None, None));
    let s = &n.series[1];
    assert_eq!(s.goroutines, Some(145.0));
    assert_eq!(s.exited_containers, Some(2.0));
    assert_eq!(s.containers, Some(1.0));
    assert_eq!(s.cgroup_version, Some(1.0));
    assert_eq!(s.gate_evented_pleg, Some(0.0));
    assert_eq!(s.gate_pod_certificate_request, Some(0.0));
    // The recorded kubelet had evicted nothing: no kubelet_evictions series, zero evictions.
    assert_eq!(s.evictions_memory_total, Some(0.0));
    assert_eq!(s.pleg_relists, Some(9.0));
    assert_eq!(s.pleg_relists_slower_1s, Some(2.0));
    assert_eq!(s.pleg_relists_slower_5s, Some(2.0));
    assert_eq!(s.pleg_relists_slower_10s, Some(0.0));
    assert_eq!(s.pod_churn_per_hour, Some(0.0));
    assert_eq!((s.memory_pressure, s.pending_csrs), (Some(0.0), Some(0.0)));
    // A kubelet restart (counters back to the recorded ones): counted from zero.
    n.sample(20, 400e6, Some(RECORDED), api(0.0, 0.0));
    assert_eq!(n.series[2].pleg_relists, Some(4.0));
    // The same scrape read twice: no relists in between.
    n.sample(30, 400e6, Some(RECORDED), api(0.0, 0.0));
    assert_eq!(n.series[3].pleg_relists, Some(0.0));
    assert_eq!(n.series[3].pleg_relist_p99_seconds, None);
}

#[test]
fn container_gc_from_the_kubelets_exited_containers() {
    let mut n = Node::new("gc", 3);
    leaking(&mut n, |_, i| {
        let exited = format!(
            "kubelet_running_containers{{container_state=\"exited\"}} {}\n",
            2 + i
        );
        (Some(scrape(&[(EXITED, exited)])), api(0.0, 0.0))
    });
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Kubelet, Cause::ContainerGc),
        "{v:?}"
    );
    assert_eq!(v.inputs["container_gc"]["exited_containers"], "observed");
    assert!(v.cannot_tell.is_empty(), "{:?}", v.cannot_tell);
}

#[test]
fn pod_certs_manager_from_the_gate_and_the_apis_pending_csrs() {
    let mut n = Node::new("pcr", 3);
    leaking(&mut n, |_, i| {
        let on = GATE_PCR.replace("} 0", "} 1");
        (Some(scrape(&[(GATE_PCR, on)])), api(0.0, (i / 6) as f64))
    });
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Kubelet, Cause::PodCertsManager),
        "{v:?}"
    );
    assert_eq!(v.inputs["pod_certs_manager"]["pending_csrs"], "observed");
}

#[test]
fn evented_pleg_from_goroutines_the_gate_and_slow_relists() {
    let mut n = Node::new("epleg", 3);
    leaking(&mut n, |_, i| {
        let i = i as u64;
        let mut r = pleg(600 * i, 12 * i);
        r.push((GOROUTINES, format!("go_goroutines {}\n", 145 + 5 * i)));
        r.push((GATE_EPLEG, GATE_EPLEG.replace("} 0", "} 1")));
        (Some(scrape(&r)), api(1.0, 0.0))
    });
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Kubelet, Cause::EventedPleg),
        "{v:?}"
    );
    assert!(
        v.supports[0].contains("2.0% of 22644 PLEG relists in 6 h slower than 5 s")
            && v.supports[0].ends_with("EventedPLEG gate on"),
        "{:?}",
        v.supports
    );
    // 612 relists per 10 minutes (37 samples in 6 h), 12 of them above 5 s, none above 10 s:
    // not the 10 s alarm.
    let f = v
        .findings
        .iter()
        .find(|f| f.detector == "pleg_relist")
        .unwrap();
    assert!(!f.firing, "{f:?}");
}

#[test]
fn pod_churn_from_pod_cgroups_created_and_removed() {
    let mut n = Node::new("churn", 5);
    leaking(&mut n, |n, _| {
        // Two pods replaced every 10 minutes: 4 changes, 24 per hour.
        n.churn_one();
        n.churn_one();
        (Some(RECORDED.to_string()), api(0.0, 0.0))
    });
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Kubelet, Cause::PodChurn),
        "{v:?}"
    );
    // The leak and the churn start together: the change point puts the onset a few hours in
    // (it needs 6 h before a start), too few to tell a flat baseline before it.
    assert_eq!(
        v.supports,
        ["24 pod creations+deletions per hour since the leak's onset, less than 12 h of baseline before the onset in the 72 h window to compare with"]
    );
}

#[test]
fn cgroup_v1_on_5_15_from_the_kubelets_cgroup_version() {
    let mut n = Node::new("v1", 3);
    leaking(&mut n, |_, _| (Some(RECORDED.to_string()), api(0.0, 0.0)));
    // The running kernel is the one input a test cannot give the sampler: it reads
    // /proc/sys/kernel/osrelease. The cgroup version is the recorded kubelet's (v1).
    for s in &mut n.series {
        s.kernel = Some(5.15);
    }
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Kubelet, Cause::CgroupV1Kernel515),
        "{v:?}"
    );
}

#[test]
fn oversubscription_from_evictions_and_the_nodes_memory_pressure() {
    let mut n = Node::new("evict", 3);
    for i in 0..48 {
        let ev = format!(
            "# TYPE kubelet_evictions counter\nkubelet_evictions{{eviction_signal=\"memory.available\"}} {i}\n"
        );
        let text = format!("{RECORDED}{ev}");
        n.sample(i * 600, 400e6, Some(&text), api(1.0, 0.0));
    }
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Workload, Cause::Oversubscription),
        "{v:?}"
    );
    assert_eq!(v.supports[1], "MemoryPressure true 100% of the last 6 h");
}

#[test]
fn workload_leak_from_the_pods_working_sets() {
    let mut n = Node::new("workload", 3);
    for i in 0..216 {
        let h = i as f64 / 6.0;
        // Flat for 24 h, then 500 MB/day across the 3 pods.
        let usage = 700e6 + 500e6 / 3.0 / 24.0 * (h - 24.0).max(0.0);
        n.set_usage(usage as u64);
        n.sample(i * 600, 400e6, Some(RECORDED), api(0.0, 0.0));
    }
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Workload, Cause::WorkloadLeak),
        "{v:?}"
    );
}

#[test]
fn without_the_kubelets_metrics_or_an_api_server_the_causes_are_cannot_tell() {
    let mut n = Node::new("blind", 3);
    n.live.api = None;
    leaking(&mut n, |_, _| (None, ApiInputs::default()));
    let v = n.verdict();
    assert_eq!(
        (v.subject, v.cause),
        (Subject::Kubelet, Cause::Unknown),
        "{v:?}"
    );
    // Pod churn and the cgroup are the agent's own: observed.
    assert_eq!(v.inputs["pod_churn"]["pod_churn_per_hour"], "observed");
    assert_eq!(
        v.inputs["cgroup_v1_kernel_5_15"]["cgroup_version"],
        "observed"
    );
    let missing: Vec<&str> = v
        .cannot_tell
        .iter()
        .map(|c| c.split(" (from").next().unwrap())
        .collect();
    assert_eq!(
        missing,
        [
            "container_gc: cannot tell, missing exited_containers",
            "pod_certs_manager: cannot tell, missing gate_pod_certificate_request",
            "evented_pleg: cannot tell, missing goroutines",
            "oversubscription: cannot tell, missing evictions_memory_total",
            "oversubscription: cannot tell, missing memory_pressure",
        ]
    );
    assert!(v.inputs["pod_certs_manager"]["pending_csrs"].starts_with(
        "missing: no sample of the last 72 h has it; from certificatesigningrequests from the API server"
    ));
}
