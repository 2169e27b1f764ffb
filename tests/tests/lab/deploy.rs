//! deploy/ on the lab: every kustomization accepted by the real API server, the DaemonSet
//! running from the image (`cargo xtask image`) with the least-privilege base and with the
//! privileged overlay, and a real Prometheus scraping it with deploy/prometheus's rules.
//!
//! What the lab differs in from a cluster, patched by a kustomization each test writes under the
//! lab's run directory (`lab down` removes it) over the shipped overlay, never in deploy/:
//! - `hostNetwork: true`: the lab's CNI is loopback only, so a pod network cannot start;
//!   the metrics port moves to loopback ([`AGENT_PORT`]) since on the host's network 0.0.0.0
//!   would listen on the machine's interfaces.
//! - `imagePullPolicy: Never`: the image is imported into the lab's containerd; a pull would
//!   leave the machine.
//! - `NODE_IP` is the lab kubelet's 127.0.0.1, not `status.hostIP`: a kubelet refuses a loopback
//!   `--node-ip` as a node address, so the lab's node has none and the downward API's hostIP
//!   fails the container ("host IP unknown"); for the same reason the readiness probe names
//!   its host (a host-network pod's IP is the node's address).
//! - The kubelet's port is the lab's (20250, not 10250); pods live under `/oomprobe-lab/kubepods`
//!   (the kubelet's cgroupRoot); the state hostPath is under the lab's run directory.
//! - Samples and attribution reports every 2 s and `--emit-samples` (the test reads them).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use oomprobe_tests::Agent;
use serde_json::Value;

use super::{lab, memhog_pod, wait_until, Lab, Pod, WAIT};

/// The agent's metrics port on the lab (loopback, host network).
const AGENT_PORT: u16 = 29464;
/// The test Prometheus' port (loopback).
const PROMETHEUS_PORT: u16 = 29090;
/// The DaemonSet's memory limit (deploy/base/daemonset.yaml).
const AGENT_LIMIT: u64 = 128 << 20;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The lab's run directory (removed by `lab down`).
fn run_dir(lab: &Lab) -> PathBuf {
    PathBuf::from(lab.s("kubeconfig")).with_file_name("run")
}

fn containerd_sock(lab: &Lab) -> String {
    lab.s("runtime_endpoint")
        .strip_prefix("unix://")
        .expect("unix socket endpoint")
        .to_string()
}

/// Every kustomization in deploy/ and the plain manifests beside them, as `kubectl apply
/// --dry-run=server` sends them: the API server validates and admits each object (schema,
/// RBAC objects, the DaemonSet's pod template) and stores nothing.
#[test]
fn lab_deploy_manifests_pass_server_dry_run() {
    let lab = lab();
    let root = repo();
    let mut checked = Vec::new();
    for dir in [
        "deploy",
        "deploy/base",
        "deploy/overlays/cgroup-v1",
        "deploy/overlays/privileged",
        "deploy/overlays/cgroup-v1-privileged",
        "deploy/overlays/cordon",
    ] {
        let path = root.join(dir);
        let out = lab.kubectl(&[
            "apply",
            "--dry-run=server",
            "-k",
            path.to_str().unwrap(),
            "-o",
            "name",
        ]);
        let objects: Vec<&str> = out.lines().collect();
        eprintln!("{dir}: {objects:?}");
        assert!(
            objects.contains(&"daemonset.apps/oomprobe")
                && objects.contains(&"clusterrole.rbac.authorization.k8s.io/oomprobe"),
            "{dir}: {objects:?}"
        );
        checked.push(dir);
    }
    // The report RBAC is a plain manifest applied beside any layout.
    let report = root.join("deploy/overlays/report/rbac-report.yaml");
    let out = lab.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        report.to_str().unwrap(),
        "-o",
        "name",
    ]);
    assert!(
        out.contains("clusterrole.rbac.authorization.k8s.io/oomprobe-report"),
        "{out}"
    );
    // Nothing was created.
    let ds = lab.kubectl_out(&["get", "daemonset", "oomprobe", "-n", "kube-system"], None);
    assert!(!ds.status.success(), "a dry run created the DaemonSet");
    // deploy/prometheus is a PrometheusRule, a prometheus-operator CRD the lab does not
    // install: the server refuses the kind, which says the CRD is missing, not that the rule is
    // wrong (`cargo xtask check-deploy` checks its content with promtool).
    let prom = root.join("deploy/prometheus");
    let out = lab.kubectl_out(
        &["apply", "--dry-run=server", "-k", prom.to_str().unwrap()],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PrometheusRule"),
        "deploy/prometheus: {err}"
    );
    eprintln!("server dry run accepted {checked:?} and rbac-report.yaml");
}

/// The image imported into the lab's containerd (namespace k8s.io), removed when dropped.
struct Image<'a> {
    lab: &'a Lab,
    name: String,
}

impl<'a> Image<'a> {
    fn import(lab: &'a Lab) -> Image<'a> {
        let archive = std::env::var_os("OOMPROBE_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/image/oomprobe.tar"));
        assert!(
            archive.exists(),
            "{} not built: `cargo xtask image` (cargo xtask test builds it)",
            archive.display()
        );
        let index = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("index.json")
            .output()
            .expect("tar");
        let index: Value = serde_json::from_slice(&index.stdout).expect("index.json");
        let name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
            .as_str()
            .expect("image name")
            .to_string();
        let image = Image { lab, name };
        image.ctr(&["images", "import", archive.to_str().unwrap()]);
        image
    }
    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .args([
                "--address",
                &containerd_sock(self.lab),
                "--namespace",
                "k8s.io",
            ])
            .args(args)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ctr")
            .args([
                "--address",
                &containerd_sock(self.lab),
                "--namespace",
                "k8s.io",
            ])
            .args(["images", "rm", &self.name])
            .output();
    }
}

/// Which shipped overlay the lab runs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    /// deploy/overlays/cgroup-v1: the least-privilege base with v1's writable memory hierarchy.
    LeastPrivilege,
    /// deploy/overlays/cgroup-v1-privileged: the privileged container with the v1 mounts.
    Privileged,
}

/// The DaemonSet applied with `kubectl apply -k`, its pod Ready; deleted (and waited for) when
/// dropped, with its RBAC and the kustomization written for it.
struct DaemonSet<'a> {
    lab: &'a Lab,
    dir: PathBuf,
    state: PathBuf,
    pod: String,
    pod_uid: String,
    container_id: String,
    /// The container's memory cgroup (v1), from the runtime's spec.
    cgroup: String,
}

fn kustomization(variant: Variant, state: &Path, kubepods_root: &str, kubelet_port: u64) -> String {
    let overlay = match variant {
        Variant::LeastPrivilege => "cgroup-v1",
        Variant::Privileged => "cgroup-v1-privileged",
    };
    // The `test` ops fail the build when the shipped DaemonSet changes under them.
    format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../../deploy/overlays/{overlay}
patches:
  - target: {{kind: DaemonSet, name: oomprobe}}
    patch: |-
      - op: add
        path: /spec/template/spec/hostNetwork
        value: true
      - op: test
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: IfNotPresent
      - op: replace
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      - op: test
        path: /spec/template/spec/containers/0/args/2
        value: --metrics-addr=0.0.0.0:9464
      - op: replace
        path: /spec/template/spec/containers/0/args/2
        value: --metrics-addr=127.0.0.1:{AGENT_PORT}
      - op: test
        path: /spec/template/spec/containers/0/args/4
        value: --kubelet-metrics=https://$(NODE_IP):10250/metrics
      - op: replace
        path: /spec/template/spec/containers/0/args/4
        value: --kubelet-metrics=https://$(NODE_IP):{kubelet_port}/metrics
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --kubepods-root={kubepods_root}
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --emit-samples
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --sample-interval=2
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --attribution-interval=2
      - op: test
        path: /spec/template/spec/containers/0/env/1/name
        value: NODE_IP
      - op: replace
        path: /spec/template/spec/containers/0/env/1
        value: {{name: NODE_IP, value: 127.0.0.1}}
      - op: add
        path: /spec/template/spec/containers/0/readinessProbe/httpGet/host
        value: 127.0.0.1
      - op: replace
        path: /spec/template/spec/containers/0/ports/0
        value: {{name: metrics, containerPort: {AGENT_PORT}}}
      - op: test
        path: /spec/template/spec/volumes/0/name
        value: state
      - op: replace
        path: /spec/template/spec/volumes/0/hostPath/path
        value: {state}
"#,
        state = state.display(),
    )
}

impl<'a> DaemonSet<'a> {
    fn apply(lab: &'a Lab, image: &Image, variant: Variant) -> DaemonSet<'a> {
        let run = run_dir(lab);
        let dir = run.join(format!("deploy-{variant:?}").to_lowercase());
        let state = run.join("oomprobe-state");
        std::fs::create_dir_all(&dir).expect("kustomization dir");
        std::fs::write(
            dir.join("kustomization.yaml"),
            kustomization(
                variant,
                &state,
                lab.s("kubepods_root"),
                lab.env["kubelet_port"].as_u64().expect("kubelet_port"),
            ),
        )
        .expect("write kustomization");
        let mut ds = DaemonSet {
            lab,
            dir,
            state,
            pod: String::new(),
            pod_uid: String::new(),
            container_id: String::new(),
            cgroup: String::new(),
        };
        // The image the kustomization names is the one imported (base's images: newTag).
        let built = lab.kubectl(&["kustomize", ds.dir.to_str().unwrap()]);
        let image_line = built
            .lines()
            .find_map(|l| l.trim().strip_prefix("image: "))
            .expect("image in the DaemonSet");
        assert_eq!(
            format!("docker.io/library/{image_line}"),
            image.name,
            "the DaemonSet's image is not the one `cargo xtask image` built"
        );
        lab.kubectl(&["apply", "-k", ds.dir.to_str().unwrap()]);
        let started = Instant::now();
        let reported = &mut false;
        let pod = wait_until(
            "the DaemonSet's pod Ready",
            Duration::from_secs(120),
            || {
                let list = lab.get_json(&["pods", "-n", "kube-system", "-l", "app=oomprobe"]);
                let p = list["items"].as_array()?.first()?.clone();
                let ready = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if !ready && started.elapsed() > Duration::from_secs(110) && !*reported {
                    *reported = true;
                    eprintln!("not Ready: {}", p["status"]["containerStatuses"]);
                }
                ready.then_some(p)
            },
        );
        eprintln!(
            "{variant:?}: pod Ready {:.1} s after apply",
            started.elapsed().as_secs_f64()
        );
        ds.pod = pod["metadata"]["name"].as_str().unwrap().to_string();
        ds.pod_uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let cid = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .expect("containerID");
        ds.container_id = cid
            .strip_prefix("containerd://")
            .expect("containerd id")
            .to_string();
        let info: Value =
            serde_json::from_str(&lab.crictl(&["inspect", &ds.container_id])).expect("inspect");
        ds.cgroup = info["info"]["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .expect("cgroupsPath")
            .to_string();
        ds
    }

    /// The agent's JSON stream so far: the container's stdout through the runtime (`crictl
    /// logs`, the file `kubectl logs` reads; `kubectl logs` itself goes through the API
    /// server to the kubelet at the node's address, which the lab's node has none of). Log
    /// lines (stderr) are not JSON objects.
    fn records(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn logs(&self) -> String {
        let out = Command::new(self.lab.s("crictl"))
            .arg("--runtime-endpoint")
            .arg(self.lab.s("runtime_endpoint"))
            .args(["logs", &self.container_id])
            .output()
            .expect("crictl logs");
        assert!(
            out.status.success(),
            "crictl logs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    }

    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.records().into_iter().find(&pred) {
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?}: {what} in the DaemonSet agent's output\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The agent's /metrics on the host's loopback.
    fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{AGENT_PORT}/metrics"))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "agent metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container's memory cgroup file (v1 memory hierarchy).
    fn memcg(&self, file: &str) -> u64 {
        let p = Path::new("/sys/fs/cgroup/memory")
            .join(self.cgroup.trim_start_matches('/'))
            .join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("number")
    }
}

impl Drop for DaemonSet<'_> {
    fn drop(&mut self) {
        let _ = self.lab.kubectl_out(
            &[
                "delete",
                "-k",
                self.dir.to_str().unwrap(),
                "--ignore-not-found",
                "--wait=true",
                "--timeout=60s",
            ],
            None,
        );
        // The pod's containers gone (deleting the DaemonSet deletes its pods in the background).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let out = self.lab.kubectl_out(
                &[
                    "get",
                    "pods",
                    "-n",
                    "kube-system",
                    "-l",
                    "app=oomprobe",
                    "-o",
                    "name",
                ],
                None,
            );
            if out.status.success() && out.stdout.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// `name{labels} value` or `name value` samples of a Prometheus text scrape.
fn samples<'t>(text: &'t str, name: &str) -> Vec<(&'t str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            let v: f64 = value.parse().ok()?;
            (bare == name).then_some((series, v))
        })
        .collect()
}

/// The DaemonSet (one variant) on the lab: it adopts the real kubelet, scrapes its metrics with
/// the cluster CA, registers its memory cgroup notifications, and reports a real pod's OOM kill
/// with the fields the runtime and the API give and an agent on the host gives for the same
/// kill. Its memory cgroup's peak (memory.max_usage_in_bytes) stays under the 128Mi limit.
fn daemonset_scenario(variant: Variant) {
    let lab = lab();
    let kubelet_pid = lab.kubelet_pid();
    let image = Image::import(&lab);
    let ds = DaemonSet::apply(&lab, &image, variant);
    // The real kubelet adopted: found by name in the host's /proc (hostPID), its binary opened
    // through /proc/PID/exe.
    let start = ds.wait_for("kubelet_start", WAIT, |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(u64::from(kubelet_pid))
    });
    // The kubelet's binary as /proc/PID/exe names it from inside the pod's mount namespace.
    eprintln!("{variant:?}: {start}");
    assert!(
        start["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/kubelet")),
        "{start}"
    );
    let mode = match variant {
        Variant::LeastPrivilege => "syscalls",
        Variant::Privileged => "uprobes",
    };
    let mem = ds.wait_for("a kubelet_memory report", WAIT, |v| {
        v["event"] == "kubelet_memory" && v["pid"].as_u64() == Some(u64::from(kubelet_pid))
    });
    assert_eq!(mem["mode"], mode, "{variant:?}: {mem}");
    // The kubelet's /metrics through TLS verified with the service account's ca.crt, the token
    // authorized as nodes/metrics.
    let sample = ds.wait_for("a sample with the kubelet's metrics", WAIT, |v| {
        v["event"] == "sample" && v["kubelet_metrics"].is_object()
    });
    assert!(
        sample["kubelet_metrics"]["goroutines"].as_f64() > Some(0.0),
        "{sample}"
    );
    assert_eq!(
        sample["kubelet_cgroup"],
        lab.s("kubelet_cgroup"),
        "{sample}"
    );
    let metrics = ds.metrics();
    let errors: f64 = samples(&metrics, "oomprobe_kubelet_metrics_errors_total")
        .iter()
        .map(|s| s.1)
        .sum();
    assert_eq!(errors, 0.0, "kubelet metrics scrape errors:\n{metrics}");
    let refused: f64 = samples(&metrics, "oomprobe_memcg_registration_failures_total")
        .iter()
        .map(|s| s.1)
        .sum();
    assert_eq!(refused, 0.0, "memcg notifications refused:\n{metrics}");

    // A host agent watching the same kill.
    let host = Agent::builder()
        .args(&["--kubepods-root", lab.s("kubepods_root")])
        .start();
    let name = format!("lab-ds-oom-{}", std::process::id());
    let pod = memhog_pod(&lab, &name, 48, &["200", "--interval-ms", "60"]);
    let uid = wait_until("the pod's uid", WAIT, || {
        let p = lab.get_json(&["pod", &pod.name, "-n", "default"]);
        p["metadata"]["uid"].as_str().map(str::to_string)
    });
    let (crictl_id, crictl_pid) = wait_until("the container running in crictl", WAIT, || {
        let ps: Value = serde_json::from_str(&lab.crictl(&[
            "ps",
            "--label",
            &format!("io.kubernetes.pod.uid={uid}"),
            "-o",
            "json",
        ]))
        .ok()?;
        let c = ps["containers"].as_array()?.first()?.clone();
        let id = c["id"].as_str()?.to_string();
        let info: Value = serde_json::from_str(&lab.crictl(&["inspect", &id])).ok()?;
        let pid = info["info"]["pid"].as_u64().filter(|p| *p > 0)?;
        Some((id, pid))
    });
    let kill = ds.wait_for("the pod's kill record", WAIT, |v| {
        v["event"] == "kill" && v["victim"]["pod"]["pod_uid"] == uid.as_str()
    });
    let host_kill = host.wait_for_kill(WAIT, |v| v["victim"]["pod"]["pod_uid"] == uid.as_str());
    let status = wait_until("the kubelet's terminated state", WAIT, || {
        let p = lab.get_json(&["pod", &pod.name, "-n", "default"]);
        let cs = p["status"]["containerStatuses"][0].clone();
        cs["state"]["terminated"].is_object().then_some(p)
    });
    let cs = &status["status"]["containerStatuses"][0];
    eprintln!("DaemonSet agent: {kill}\nhost agent: {host_kill}\nkubelet: {cs}");
    assert_eq!(cs["state"]["terminated"]["reason"], "OOMKilled", "{cs}");
    assert_eq!(
        cs["containerID"].as_str(),
        Some(format!("containerd://{crictl_id}").as_str())
    );
    let qos = status["status"]["qosClass"]
        .as_str()
        .unwrap()
        .to_lowercase();
    let container_cgroup = format!("{}/{qos}/pod{uid}/{crictl_id}", lab.s("kubepods_root"));
    assert_eq!(kill["kind"], "oom_memcg", "{kill}");
    assert_eq!(kill["victim"]["pid"].as_u64(), Some(crictl_pid), "{kill}");
    assert_eq!(kill["victim"]["comm"], "memhog", "{kill}");
    assert_eq!(kill["victim"]["pod"]["container_id"], crictl_id.as_str());
    assert_eq!(kill["victim"]["pod"]["qos"], qos.as_str(), "{kill}");
    assert_eq!(
        kill["victim"]["cgroup"],
        container_cgroup.as_str(),
        "{kill}"
    );
    // The OOM domain: the container's 48 MiB limit or the pod's, which the kubelet sets to the
    // same sum and which also charges the pause container (the one whose limit is hit first).
    let pod_cgroup = format!("{}/{qos}/pod{uid}", lab.s("kubepods_root"));
    let domain = kill["oom"]["domain"]["path"].as_str().unwrap_or_default();
    assert!(domain == container_cgroup || domain == pod_cgroup, "{kill}");
    assert_eq!(
        kill["oom"]["domain"]["limit_bytes"].as_u64(),
        Some(48 << 20),
        "{kill}"
    );
    // The kubelet's burstable oom_score_adj (pkg/kubelet/qos/policy.go) from the node's capacity.
    let node = lab.get_json(&["node", lab.node()]);
    let cap_ki: u64 = node["status"]["capacity"]["memory"]
        .as_str()
        .and_then(|m| m.strip_suffix("Ki"))
        .and_then(|m| m.parse().ok())
        .expect("capacity in Ki");
    let adj = (1000 - (1000 * (48u64 << 20)) / (cap_ki * 1024)).clamp(3, 999);
    assert_eq!(kill["oom"]["oom_score_adj"].as_u64(), Some(adj), "{kill}");
    // The same fields as the host agent's record of the same kill.
    let mut differ = Vec::new();
    for field in [
        "/kind",
        "/exit_code",
        "/victim/pid",
        "/victim/comm",
        "/victim/cgroup",
        "/victim/pod",
        "/sender",
        "/oom",
        "/memory",
        "/delivery",
        "/extra_sigkills",
    ] {
        if kill.pointer(field) != host_kill.pointer(field) {
            differ.push(field);
        }
    }
    assert!(
        differ.is_empty(),
        "{differ:?} differ: DaemonSet {kill}\nhost {host_kill}"
    );
    drop(host);
    drop(pod);
    // The pod's own kill counted, by pod UID.
    let metrics = ds.metrics();
    let by_pod = samples(&metrics, "oomprobe_pod_kills_total");
    assert!(
        by_pod
            .iter()
            .any(|(s, v)| s.contains(&format!("pod_uid=\"{uid}\"")) && *v == 1.0),
        "{by_pod:?}"
    );
    // Through the uprobes, the kubelet's heap maps by call site. One pod does not always make
    // a warm kubelet map heap (CI saw 60 s of reports with none), so pods are added, five at a
    // time every 10 s, until it does (deleted again, also on failure).
    if variant == Variant::Privileged {
        let has_sites = |v: &Value| {
            v["event"] == "kubelet_memory"
                && v["pid"].as_u64() == Some(u64::from(kubelet_pid))
                && v["top_call_sites"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
        };
        let mut nudges: Vec<Pod> = Vec::new();
        let mem = wait_until("a kubelet_memory report with call sites", WAIT, || {
            if let Some(v) = ds.records().into_iter().find(has_sites) {
                return Some(v);
            }
            if nudges.len() < 20 {
                for _ in 0..5 {
                    let name = format!("lab-ds-nudge-{}-{}", std::process::id(), nudges.len());
                    nudges.push(memhog_pod(&lab, &name, 16, &["1", "--hold"]));
                }
            }
            std::thread::sleep(Duration::from_secs(10));
            None
        });
        eprintln!("{variant:?}: after {} nudge pods: {mem}", nudges.len());
        drop(nudges);
    }
    // The agent's peak memory, charged to its container's memory cgroup, over the adoption of
    // the real kubelet, its reports and the kill; the limit never hit (failcnt 0).
    let peak = ds.memcg("memory.max_usage_in_bytes");
    let failcnt = ds.memcg("memory.failcnt");
    let limit = ds.memcg("memory.limit_in_bytes");
    eprintln!(
        "{variant:?}: agent container {} peak {peak} B ({:.1} MiB, {:.0}% of the {} MiB limit), \
         failcnt {failcnt}, kubelet binary {} B",
        ds.cgroup,
        peak as f64 / 1048576.0,
        100.0 * peak as f64 / AGENT_LIMIT as f64,
        AGENT_LIMIT >> 20,
        std::fs::metadata(lab.s("kubelet")).unwrap().len()
    );
    assert_eq!(limit, AGENT_LIMIT);
    assert_eq!(failcnt, 0, "the agent reached its memory limit");
    assert!(peak < AGENT_LIMIT);
    // Its memory cgroup notifications registered through the writable v1 hierarchy (v1
    // memory.pressure_level events propagate to the pod's cgroup, registered from the
    // agent's 2 s samples on).
    let memcg = ds.wait_for("a memcg event of the OOM-killed pod", WAIT, |v| {
        v["event"] == "memcg"
            && v["cgroup"]
                .as_str()
                .is_some_and(|c| c.contains(&format!("/pod{uid}")))
    });
    eprintln!("{variant:?}: {memcg}");
    drop(ds);
    drop(image);
}

#[test]
fn lab_daemonset_least_privilege_reports_a_pod_oom_kill() {
    daemonset_scenario(Variant::LeastPrivilege);
}

#[test]
fn lab_daemonset_privileged_attributes_and_reports_a_pod_oom_kill() {
    daemonset_scenario(Variant::Privileged);
}

/// Debian's Prometheus on loopback, killed and its data removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: PathBuf, pod: &str, node: &str) -> Prometheus {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // A static target (the pod's host port): Debian's 2.42 is built without
        // kubernetes_sd_configs; the labels are what deploy/prometheus/scrape-config.yml's
        // relabelling sets. 1 s scrapes and evaluations.
        let config = format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: oomprobe
    static_configs:
      - targets: ["127.0.0.1:{AGENT_PORT}"]
        labels: {{node: {node}, pod: {pod}}}
"#,
            rules = repo()
                .join("deploy/prometheus/oomprobe.rules.yml")
                .display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; cargo xtask test installs it)");
        let p = Prometheus { child, dir };
        wait_until("Prometheus ready", WAIT, || p.get("/-/ready").map(|_| ()));
        p
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "-G"])
            .arg(format!("http://127.0.0.1:{PROMETHEUS_PORT}{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "-G"])
            .arg(format!("http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query"))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "query {expr}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(body["status"], "success", "query {expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn alerts(&self) -> Vec<Value> {
        let body: Value = serde_json::from_str(&self.get("/api/v1/alerts").unwrap_or_default())
            .unwrap_or_default();
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The kubelet's memory cgroup limit lowered until the kernel OOM-kills it; the original
/// limit restored at once (before the supervisor's restart) and again when dropped.
struct KubeletLimit {
    dir: PathBuf,
    original: String,
}

impl KubeletLimit {
    fn new(lab: &Lab) -> KubeletLimit {
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(lab.s("kubelet_cgroup").trim_start_matches('/'));
        let original = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .expect("kubelet memory.limit_in_bytes")
            .trim()
            .to_string();
        KubeletLimit { dir, original }
    }
    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
    fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .expect("oom_kill in memory.oom_control")
    }
    fn restore(&self) {
        let _ = std::fs::write(self.dir.join("memory.limit_in_bytes"), &self.original);
    }
    /// Lowers the limit to the kubelet's usage (v1 reclaims what it can and refuses with EBUSY
    /// below that) while `nudge` makes the kubelet allocate, until the cgroup's oom_kill count
    /// grows; then restores the limit. Returns the limit that was set when the kill came.
    fn oom_kill(&self, timeout: Duration, mut nudge: impl FnMut()) -> u64 {
        let before = self.oom_kills();
        let start = Instant::now();
        let mut last_nudge = None::<Instant>;
        let mut limit = 0;
        loop {
            if self.oom_kills() > before {
                self.restore();
                return limit;
            }
            assert!(
                start.elapsed() < timeout,
                "the kubelet was not OOM-killed within {timeout:?} (limit {limit}, usage {})",
                self.read("memory.usage_in_bytes").trim()
            );
            let usage: u64 = self
                .read("memory.usage_in_bytes")
                .trim()
                .parse()
                .unwrap_or(0);
            // A page under the usage forces reclaim of the cache; refused (EBUSY) once only
            // the kubelet's anonymous memory is left, then the usage itself holds it there.
            for target in [usage.saturating_sub(4096), usage] {
                if std::fs::write(self.dir.join("memory.limit_in_bytes"), target.to_string())
                    .is_ok()
                {
                    limit = target;
                    break;
                }
            }
            if last_nudge.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                nudge();
                last_nudge = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KubeletLimit {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Why a dashboard query has no data on the lab, from the agent's exposition; None when it
/// must have data.
fn why_empty(expr: &str, exposed: &str) -> Option<String> {
    let names: Vec<&str> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("oomprobe_") || w.starts_with("kube_"))
        .collect();
    for name in names {
        if name.starts_with("kube_") {
            return Some(format!("{name} is kube-state-metrics', not in the lab"));
        }
        let s = samples(exposed, name);
        if s.is_empty() {
            return Some(format!("the agent exposes no {name} series"));
        }
        if name == "oomprobe_leak_verdict" && !s.iter().any(|(_, v)| *v == 1.0) {
            return Some("no leak verdict is 1".into());
        }
    }
    None
}

/// The dashboard's queries with Grafana's variables filled in as Grafana does for one node.
fn dashboard_queries(node: &str) -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/oomprobe.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$node", node)
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// Debian's Prometheus scraping the DaemonSet agent with deploy/prometheus/oomprobe.rules.yml:
/// a real pod OOM kill and a real kubelet OOM kill (its memory cgroup limit lowered under its
/// usage until the kernel kills it) bring `OomprobeKubeletOomKilled` to `firing`, and the
/// dashboard's queries return data, but for the ones that need what the lab lacks.
#[test]
fn lab_prometheus_fires_on_a_real_kubelet_oom_kill() {
    let lab = lab();
    let image = Image::import(&lab);
    let ds = DaemonSet::apply(&lab, &image, Variant::LeastPrivilege);
    let kubelet_pid = lab.kubelet_pid();
    ds.wait_for("kubelet_start", WAIT, |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(u64::from(kubelet_pid))
    });
    let prom = Prometheus::start(run_dir(&lab).join("prometheus"), &ds.pod, lab.node());
    // Scraped, and the kill counters' zero is in the TSDB before the kills.
    wait_until("the agent scraped with no kubelet OOM yet", WAIT, || {
        let up = prom.query("up{job=\"oomprobe\"}");
        let cycles = prom.query("oomprobe_kubelet_oom_cycles");
        (up.first()?["value"][1] == "1" && cycles.first()?["value"][1] == "0").then_some(())
    });
    // promtool on a real scrape of the DaemonSet's agent.
    let scrape = ds.metrics();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A pod's OOM kill (kills by kind and by pod).
    let name = format!("lab-prom-oom-{}", std::process::id());
    let pod = memhog_pod(&lab, &name, 48, &["200", "--interval-ms", "20"]);
    let uid = wait_until("the pod's uid", WAIT, || {
        let p = lab.get_json(&["pod", &pod.name, "-n", "default"]);
        p["metadata"]["uid"].as_str().map(str::to_string)
    });
    ds.wait_for("the pod's kill record", WAIT, |v| {
        v["event"] == "kill" && v["victim"]["pod"]["pod_uid"] == uid.as_str()
    });
    drop(pod);

    // The real kubelet OOM-killed in its own memory cgroup. Pods created meanwhile make it
    // allocate (deleted again, also on failure).
    let limit = KubeletLimit::new(&lab);
    let mut nudges: Vec<Pod> = Vec::new();
    let set = limit.oom_kill(Duration::from_secs(90), || {
        let n = nudges.len();
        let name = format!("lab-nudge-{}-{n}", std::process::id());
        // `kubectl apply` only talks to the API server; the kubelet allocates for the pod.
        nudges.push(memhog_pod(&lab, &name, 16, &["1", "--hold"]));
    });
    eprintln!(
        "kubelet OOM-killed at a limit of {set} B after {} nudge pods",
        nudges.len()
    );
    let kill = ds.wait_for("the kubelet's OOM kill", WAIT, |v| {
        v["event"] == "kill"
            && v["victim"]["pid"].as_u64() == Some(u64::from(kubelet_pid))
            && v["kind"] == "oom_memcg"
    });
    assert_eq!(kill["victim"]["cgroup"], lab.s("kubelet_cgroup"), "{kill}");
    // The kubelet's cgroup's memory.oom_control notification, registered by the pod.
    let memcg = ds.wait_for("the kubelet cgroup's OOM notification", WAIT, |v| {
        v["event"] == "memcg"
            && v["cgroup"] == lab.s("kubelet_cgroup")
            && v["kind"].as_str().is_some_and(|k| k.starts_with("oom"))
    });
    eprintln!("{memcg}");
    let alert = wait_until("OomprobeKubeletOomKilled firing", WAIT, || {
        prom.alerts().into_iter().find(|a| {
            a["labels"]["alertname"] == "OomprobeKubeletOomKilled" && a["state"] == "firing"
        })
    });
    eprintln!("kubelet kill: {kill}\nalert: {alert}");
    assert_eq!(alert["labels"]["node"], lab.node(), "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    // The new kubelet followed by the agent (after the supervisor's RestartSec).
    let new = wait_until("the supervisor's new kubelet", WAIT, || {
        let p = lab.kubelet_pid();
        (p != kubelet_pid).then_some(p)
    });
    ds.wait_for("the new kubelet followed", WAIT, |v| {
        v["event"] == "kubelet_start" && v["pid"].as_u64() == Some(u64::from(new))
    });
    wait_until("the restart counted in Prometheus", WAIT, || {
        let r = prom.query("oomprobe_kubelet_restarts");
        (r.first()?["value"][1] == "1").then_some(())
    });
    drop(nudges);

    // The dashboard's queries on this Prometheus. A query must return data exactly when what
    // it reads exists: every oomprobe_* metric it names has a sample in the agent's own
    // exposition (counters with a reason or kind label have none until the first event; the
    // forecast and the verdict's `== 1` need a leak verdict), and nothing it names comes from
    // kube-state-metrics (`kube_*`), which the lab does not run.
    let queries = dashboard_queries(lab.node());
    let start = Instant::now();
    let (with_data, empty) = loop {
        let exposed = ds.metrics();
        let mut mismatch = Vec::new();
        let mut with_data = Vec::new();
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let why_empty = why_empty(expr, &exposed);
            let result = prom.query(expr);
            match (&why_empty, result.is_empty()) {
                (None, false) => {
                    with_data.push(format!("{title}: {expr} ({} series)", result.len()))
                }
                (Some(why), true) => empty.push(format!("{title}: {expr}: {why}")),
                (None, true) => mismatch.push(format!("no data: {title}: {expr}")),
                (Some(why), false) => {
                    mismatch.push(format!("data though {why}: {title}: {expr}: {result:?}"))
                }
            }
        }
        if mismatch.is_empty() {
            break (with_data, empty);
        }
        assert!(
            start.elapsed() < WAIT,
            "dashboard queries after {WAIT:?}: {mismatch:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for q in &with_data {
        eprintln!("dashboard data: {q}");
    }
    for q in &empty {
        eprintln!("dashboard empty: {q}");
    }
    assert!(with_data.len() >= queries.len() / 2, "{with_data:#?}");
    wait_until("node Ready again", WAIT, || {
        let s = lab.kubectl(&[
            "get",
            "node",
            lab.node(),
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (s.trim() == "True").then_some(())
    });
    drop(prom);
    drop(ds);
    drop(image);
}
