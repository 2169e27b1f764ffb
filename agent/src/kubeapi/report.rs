//! Opt-in reports to the Kubernetes API (`--report node-conditions,events`), in the style of
//! node-problem-detector:
//!
//! - custom node conditions on the node's status (`nodes/status`, strategic merge by `type`):
//!   `KubeletMemoryLeak` (True while the detectors blame the kubelet; the verdict, cause, slope
//!   and time to OOM in the message) and `KubeletOOMFlapping` (True while the kubelet's OOM
//!   cycle flaps); set False, not removed, when the state ends (`kubectl describe node` keeps
//!   showing the last word);
//! - Events (events.k8s.io/v1, through kube-runtime's [`Recorder`], which aggregates repeats of
//!   the same reason on the same object into one Event's `series`): on the node for each kubelet
//!   OOM kill and each cycle stage change, on the pod for each OOM kill or eviction of one of its
//!   containers (the pod found by its UID among the pods bound to this node).
//!
//! The same worker classifies kills, with or without `--report`: a kubelet or runtime SIGKILL
//! of a pod whose status then says `Evicted` goes back to the pipeline as a
//! [`KillClassified`] (the stream's `kill_classified` record).
//!
//! The pipeline never waits on the API: it hands facts to [`Reporter::send`], which queues
//! them ([`QUEUE`] deep; a full queue drops and counts) for one worker task that owns the client.
//! Limits, as client-go's event recorder sets them: per involved object a burst of
//! [`super::facts::OBJECT_BURST`] Events refilled at one per [`super::facts::OBJECT_REFILL`]; across all objects a burst of
//! [`super::facts::GLOBAL_BURST`] at [`super::facts::GLOBAL_PER_SEC`] per second (client-go's default client QPS). Every
//! Event or condition write is counted in `oomprobe_kube_reports_total{kind,result}`.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::{
    api::{ListParams, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter as EventSource},
    Api, Client,
};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;

use super::facts::{
    condition_patch, flap_condition, flap_condition_at_start, kubelet_kill_event, leak_condition,
    pod_kill_event, stage_event, Condition, Conditions, EventSpec, Limiter,
};
use crate::{cycle::StageEvent, detect::Verdict, forensics::KillRecord};

/// The agent's follow-up to a kill record once the API confirmed what the kill was
/// (`"kill_classified"` in the stream): today only a kubelet eviction, i.e. a SIGKILL from the
/// kubelet or the container runtime ([`crate::cycle::is_runtime_kill`]) of a container whose
/// pod's status then said `Evicted` (read for up to [`EVICTION_WAIT`] after the kill). Joined to
/// its kill record by `ktime_ns` and `pid`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KillClassified {
    /// The kill record's `time` (the SIGKILL, UTC, RFC 3339 with nanoseconds).
    pub time: String,
    /// The kill record's `ktime_ns` (CLOCK_MONOTONIC ns of the SIGKILL).
    pub ktime_ns: u64,
    /// The victim's pid (its tgid), as in the kill record's `victim.pid`.
    pub pid: u32,
    /// The kill record's sender (the kubelet or the runtime it asked).
    pub sender: ClassifiedSender,
    pub pod: ClassifiedPod,
    /// `evicted`: the kubelet's eviction manager evicted the pod.
    pub reason: &'static str,
    /// What the API said: `pod status reason Evicted: <the pod's status message>`.
    pub evidence: String,
}

/// [`KillClassified::sender`]: the kill record's `sender.pid` and `sender.comm`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClassifiedSender {
    pub pid: u32,
    pub comm: String,
}

/// [`KillClassified::pod`]: the kill record's `victim.pod` UID and container ID, with the
/// namespace and name the API gives that UID.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClassifiedPod {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub container_id: Option<String>,
}

impl KillClassified {
    /// The record for `rec` (whose `victim.pod` names `pod`) evicted with the pod status
    /// `message`.
    pub fn evicted(rec: &KillRecord, pod: &ObjectReference, message: &str) -> KillClassified {
        KillClassified {
            time: rec.time.clone(),
            ktime_ns: rec.ktime_ns,
            pid: rec.victim.pid,
            sender: ClassifiedSender {
                pid: rec.sender.pid,
                comm: rec.sender.comm.clone(),
            },
            pod: ClassifiedPod {
                pod_uid: pod.uid.clone().unwrap_or_default(),
                namespace: pod.namespace.clone().unwrap_or_default(),
                name: pod.name.clone().unwrap_or_default(),
                container_id: rec.victim.pod.as_ref().and_then(|p| p.container_id.clone()),
            },
            reason: "evicted",
            evidence: format!("pod status reason Evicted: {message}"),
        }
    }

    /// The text format's line.
    pub fn text(&self) -> String {
        format!(
            "{} KILL_CLASSIFIED {} victim={} sender={}({}) pod={}/{} container={} {}",
            self.time,
            self.reason,
            self.pid,
            self.sender.pid,
            self.sender.comm,
            self.pod.namespace,
            self.pod.name,
            self.pod.container_id.as_deref().unwrap_or("?"),
            self.evidence
        )
    }
}

/// Facts queued for the API worker.
pub const QUEUE: usize = 256;
/// Pod UIDs remembered (name and namespace, or not found).
const POD_CACHE: usize = 1024;
/// A UID not among the node's pods is looked up again after this long (a pod created since).
const POD_MISS_TTL: Duration = Duration::from_secs(60);
/// The node's pods are listed at most once per this long.
const POD_LIST_EVERY: Duration = Duration::from_secs(5);
/// How long a runtime's SIGKILL waits for its pod's status to say `Evicted`.
const EVICTION_WAIT: Duration = Duration::from_secs(15);
/// How often the pod's status is read meanwhile.
const EVICTION_POLL: Duration = Duration::from_secs(1);

/// What `--report` turns on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportSet {
    pub node_conditions: bool,
    pub events: bool,
}

/// `--report` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportKind {
    /// `KubeletMemoryLeak` and `KubeletOOMFlapping` on the node's status.
    NodeConditions,
    /// Events on the node and on pods.
    Events,
}

impl ReportSet {
    pub fn from_kinds(kinds: &[ReportKind]) -> ReportSet {
        ReportSet {
            node_conditions: kinds.contains(&ReportKind::NodeConditions),
            events: kinds.contains(&ReportKind::Events),
        }
    }

    pub fn any(self) -> bool {
        self.node_conditions || self.events
    }
}

/// One fact for the worker.
#[derive(Debug)]
pub enum Fact {
    Kill {
        rec: Box<KillRecord>,
        is_kubelet: bool,
        /// The sender is the kubelet or the container runtime: an eviction candidate, published
        /// as `ContainerEvicted` (with `--report events`) and classified back to the pipeline
        /// ([`KillClassified`]) only once the pod's status says `Evicted` (see
        /// [`Worker::evicted`]).
        evicted: bool,
    },
    Stage(Box<StageEvent>),
    Verdict(Box<Verdict>),
}

/// The pipeline's handle: never blocks.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Fact>,
    counts: IntCounterVec,
}

impl Reporter {
    /// Starts the worker on `client` for `node`. `counts` is
    /// `oomprobe_kube_reports_total{kind,result}`.
    /// `refresh`: every condition is re-written this often even when unchanged
    /// ([`super::facts::CONDITION_REFRESH`] by default, `--condition-refresh`).
    /// `classified`: where each kill confirmed as an eviction goes (the run loop hands it to
    /// [`crate::pipeline::Pipeline::on_kill_classified`]); with it, runtime SIGKILLs of pods are
    /// looked up (`list pods`) whatever `set` says. A full channel drops the record (counted
    /// `{kind="classification",result="dropped"}`).
    pub fn spawn(
        client: Client,
        node: String,
        set: ReportSet,
        counts: IntCounterVec,
        refresh: Duration,
        classified: Option<mpsc::Sender<KillClassified>>,
    ) -> Reporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut worker = Worker::new(client, node, set, counts.clone(), refresh);
        worker.classified = classified;
        tokio::spawn(worker.run(rx));
        Reporter { tx, counts }
    }

    /// Queues a fact; a full queue (the API server is slower than the kills) drops it and
    /// counts `{kind="queue",result="dropped"}`.
    pub fn send(&self, fact: Fact) {
        if self.tx.try_send(fact).is_err() {
            self.counts.with_label_values(&["queue", "dropped"]).inc();
        }
    }
}

/// The API worker: owns the client, the limiter, the conditions and the pod cache.
struct Worker {
    client: Client,
    node: String,
    set: ReportSet,
    counts: IntCounterVec,
    recorder: Recorder,
    limiter: Limiter,
    conditions: Conditions,
    /// Pod UID -> (namespace, name), or None when the node's pods had no such UID; when.
    pods: HashMap<String, (Option<(String, String)>, Instant)>,
    last_list: Option<Instant>,
    /// Where kills confirmed as evictions go, when the pipeline wants them.
    classified: Option<mpsc::Sender<KillClassified>>,
    /// A 403 on `list pods` was logged (once: the base RBAC lacks it).
    forbidden_logged: bool,
}

impl Worker {
    fn new(
        client: Client,
        node: String,
        set: ReportSet,
        counts: IntCounterVec,
        refresh: Duration,
    ) -> Worker {
        let source = EventSource {
            controller: "oomprobe".into(),
            instance: Some(format!("oomprobe-{node}")),
        };
        Worker {
            recorder: Recorder::new(client.clone(), source),
            client,
            node,
            set,
            counts,
            limiter: Limiter::new(Instant::now()),
            conditions: Conditions::new(refresh),
            pods: HashMap::new(),
            last_list: None,
            classified: None,
            forbidden_logged: false,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Fact>) {
        tracing::info!(node = %self.node, conditions = self.set.node_conditions, events = self.set.events, classify_evictions = self.classified.is_some(), "reporting to the Kubernetes API");
        if self.set.node_conditions {
            self.condition(flap_condition_at_start()).await;
        }
        let mut tick = tokio::time::interval(self.conditions.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let fact = tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
                _ = tick.tick(), if self.set.node_conditions => {
                    for (c, transition) in self.conditions.due(Instant::now()) {
                        self.write_condition(c, transition).await;
                    }
                    continue;
                }
            };
            self.fact(fact).await;
        }
    }

    async fn fact(&mut self, fact: Fact) {
        match fact {
            Fact::Kill {
                rec,
                is_kubelet,
                evicted,
            } => {
                if is_kubelet && self.set.events {
                    if let Some(e) = kubelet_kill_event(&rec) {
                        let node = self.node_ref();
                        self.event(e, node).await;
                    }
                }
                let classify = evicted && self.classified.is_some();
                if !self.set.events && !classify {
                    return;
                }
                let uid = rec.victim.pod.as_ref().map(|p| p.pod_uid.clone());
                let Some(pod) = self.pod_ref(uid.as_deref().unwrap_or("")).await else {
                    return;
                };
                // A runtime's SIGKILL is also how a deleted pod's grace period or a failed
                // liveness probe ends: only the kubelet's own status tells an eviction.
                let message = match evicted {
                    true => self.evicted(&pod).await,
                    false => None,
                };
                if let (Some(m), Some(tx)) = (&message, &self.classified) {
                    if tx.try_send(KillClassified::evicted(&rec, &pod, m)).is_err() {
                        self.count("classification", "dropped");
                    }
                }
                if !self.set.events {
                    return;
                }
                if let Some(e) = pod_kill_event(&rec, message.is_some()) {
                    self.event(e, pod).await;
                }
            }
            Fact::Stage(ev) => {
                if self.set.events {
                    let node = self.node_ref();
                    self.event(stage_event(&ev), node).await;
                }
                if self.set.node_conditions {
                    if let Some(c) = flap_condition(&ev) {
                        self.condition(c).await;
                    }
                }
            }
            Fact::Verdict(v) => {
                if self.set.node_conditions {
                    self.condition(leak_condition(&v)).await;
                }
            }
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.counts.with_label_values(&[kind, result]).inc();
    }

    /// The node as Events name it: the kubelet's own node Events use the node's name as UID,
    /// so `kubectl describe node` finds these with the kubelet's.
    fn node_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.node.clone()),
            uid: Some(self.node.clone()),
            ..Default::default()
        }
    }

    /// The pod with this UID among the pods bound to this node (cached, also when absent).
    async fn pod_ref(&mut self, uid: &str) -> Option<ObjectReference> {
        if uid.is_empty() {
            return None;
        }
        let now = Instant::now();
        let stale = match self.pods.get(uid) {
            None => true,
            Some((None, at)) => now.saturating_duration_since(*at) >= POD_MISS_TTL,
            Some((Some(_), _)) => false,
        };
        let may_list = self
            .last_list
            .is_none_or(|t| now.saturating_duration_since(t) >= POD_LIST_EVERY);
        if stale && may_list {
            self.last_list = Some(now);
            let pods: Api<Pod> = Api::all(self.client.clone());
            let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
            match pods.list_metadata(&lp).await {
                Ok(list) => {
                    if self.pods.len() >= POD_CACHE {
                        self.pods.clear();
                    }
                    for p in list.items {
                        let (Some(u), Some(ns), Some(name)) =
                            (p.metadata.uid, p.metadata.namespace, p.metadata.name)
                        else {
                            continue;
                        };
                        self.pods.insert(u, (Some((ns, name)), now));
                    }
                    let entry = self.pods.entry(uid.to_string()).or_insert((None, now));
                    if entry.0.is_none() {
                        entry.1 = now;
                    }
                }
                Err(e) => {
                    self.count("pod_lookup", "failed");
                    let e = super::ApiError::from(e);
                    let forbidden = matches!(e, super::ApiError::Status { code: 403, .. });
                    if !forbidden {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot list this node's pods");
                    } else if !self.forbidden_logged {
                        self.forbidden_logged = true;
                        tracing::warn!(error = %crate::error_chain(&e), "cannot list this node's pods: Events on pods and the eviction classification of kills need list pods (deploy/overlays/report/rbac-report.yaml); further 403s are counted, not logged");
                    }
                    return None;
                }
            }
        }
        match self.pods.get(uid).and_then(|(p, _)| p.clone()) {
            Some((ns, name)) => Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(ns),
                name: Some(name),
                uid: Some(uid.to_string()),
                ..Default::default()
            }),
            None => {
                self.count("pod_lookup", "not_found");
                None
            }
        }
    }

    /// Whether the kubelet evicted `pod`: its status `reason` is `Evicted` (set by the kubelet's
    /// eviction manager when the kill completes, synced to the API within seconds); then the
    /// status `message` (empty if none). Polled once per [`EVICTION_POLL`] for up to
    /// [`EVICTION_WAIT`]; a pod being deleted (`deletionTimestamp`, an API-initiated delete or
    /// drain) or gone is not a kubelet eviction (None). Uses the report overlay's `list pods`
    /// (a field selector on the name).
    async fn evicted(&mut self, pod: &ObjectReference) -> Option<String> {
        let (Some(ns), Some(name), Some(uid)) = (&pod.namespace, &pod.name, &pod.uid) else {
            return None;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().fields(&format!("metadata.name={name}"));
        let deadline = Instant::now() + EVICTION_WAIT;
        loop {
            match api.list(&lp).await {
                Ok(list) => {
                    // Gone (or another pod of the name): no eviction to tell.
                    let p = list
                        .items
                        .into_iter()
                        .find(|p| p.metadata.uid.as_deref() == Some(uid))?;
                    if p.metadata.deletion_timestamp.is_some() {
                        return None;
                    }
                    if let Some(s) = p.status {
                        if s.reason.as_deref() == Some("Evicted") {
                            return Some(s.message.unwrap_or_default());
                        }
                    }
                }
                Err(e) => {
                    self.count("pod_lookup", "failed");
                    let e = super::ApiError::from(e);
                    tracing::warn!(error = %crate::error_chain(&e), pod = %name, "cannot read the pod's status");
                    return None;
                }
            }
            if Instant::now() + EVICTION_POLL > deadline {
                return None;
            }
            tokio::time::sleep(EVICTION_POLL).await;
        }
    }

    async fn event(&mut self, e: EventSpec, on: ObjectReference) {
        let key = format!(
            "{}/{}/{}",
            on.kind.as_deref().unwrap_or(""),
            on.namespace.as_deref().unwrap_or(""),
            on.name.as_deref().unwrap_or("")
        );
        if !self.limiter.allow(&key, Instant::now()) {
            self.count("event", "rate_limited");
            return;
        }
        let ev = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(e.note),
            action: e.action.into(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &on).await {
            Ok(()) => self.count("event", "sent"),
            Err(err) => {
                self.count("event", "failed");
                let err = super::ApiError::from(err);
                tracing::warn!(reason = e.reason, object = %key, error = %crate::error_chain(&err), "cannot publish an Event");
            }
        }
    }

    async fn condition(&mut self, c: Condition) {
        let wall = time::OffsetDateTime::now_utc();
        if let Some((c, transition)) = self.conditions.update(c, Instant::now(), wall) {
            self.write_condition(c, transition).await;
        }
    }

    /// One condition on the node's status (`lastHeartbeatTime` now), its outcome recorded for
    /// the refresh and retry.
    async fn write_condition(&mut self, c: Condition, transition: time::OffsetDateTime) {
        let wall = time::OffsetDateTime::now_utc();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let pp = PatchParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..Default::default()
        };
        let patch = condition_patch(&c, transition, wall);
        let started = Instant::now();
        let result = nodes
            .patch_status(&self.node, &pp, &Patch::Strategic(patch))
            .await;
        self.conditions.written(c.type_, result.is_ok(), started);
        match result {
            Ok(_) => {
                self.count("condition", "sent");
                tracing::info!(condition = c.type_, status = c.status, reason = %c.reason, "node condition written");
            }
            Err(err) => {
                self.count("condition", "failed");
                let err = super::ApiError::from(err);
                tracing::warn!(condition = c.type_, error = %crate::error_chain(&err), "cannot write the node condition");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{classify::Cause, Subject};

    fn counts() -> IntCounterVec {
        IntCounterVec::new(
            prometheus::Opts::new("oomprobe_kube_reports_total", "test"),
            &["kind", "result"],
        )
        .unwrap()
    }

    fn verdict() -> Fact {
        Fact::Verdict(Box::new(Verdict {
            time: "t".into(),
            subject: Subject::Kubelet,
            cause: Cause::ContainerGc,
            slope_bytes_per_day: Some(250e6),
            slope_interval_bytes_per_day: None,
            forecast: None,
            supports: vec![],
            contradicts: vec![],
            next_checks: vec![],
            findings: vec![],
            inputs: Default::default(),
            cannot_tell: vec![],
        }))
    }

    /// A client for `url` whose calls give up after `timeout`.
    fn client(url: &str, timeout: Duration) -> Client {
        let mut cfg = kube::Config::new(url.parse().unwrap());
        cfg.connect_timeout = Some(timeout);
        cfg.read_timeout = Some(timeout);
        cfg.write_timeout = Some(timeout);
        Client::try_from(cfg).unwrap()
    }

    fn wait_count(c: &IntCounterVec, kind: &str, result: &str, n: u64, within: Duration) {
        let start = Instant::now();
        while c.with_label_values(&[kind, result]).get() < n {
            assert!(
                start.elapsed() < within,
                "{kind}/{result} stayed at {} (want {n}) for {within:?}",
                c.with_label_values(&[kind, result]).get()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An API server port nobody listens on: each write fails at once with a counted, clear
    /// error; the next is tried (the retry) and fails the same way; sending never waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_api_port_fails_fast_is_counted_and_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = counts();
        let set = ReportSet {
            node_conditions: true,
            events: true,
        };
        let r = Reporter::spawn(
            client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)),
            "n1".into(),
            set,
            c.clone(),
            Duration::from_secs(1),
            None,
        );
        let start = Instant::now();
        // The start condition's write, then the retry a second later.
        tokio::task::spawn_blocking({
            let c = c.clone();
            move || wait_count(&c, "condition", "failed", 2, Duration::from_secs(10))
        })
        .await
        .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        r.send(verdict());
        tokio::task::spawn_blocking({
            let c = c.clone();
            move || wait_count(&c, "condition", "failed", 3, Duration::from_secs(10))
        })
        .await
        .unwrap();
        assert_eq!(c.with_label_values(&["condition", "sent"]).get(), 0);
        assert_eq!(c.with_label_values(&["queue", "dropped"]).get(), 0);
        // What the log says: the request failed, and why.
        let err = crate::kubeapi::cordon(
            client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)),
            "n1",
        )
        .await
        .unwrap_err();
        let text = crate::error_chain(&err);
        assert!(
            text.starts_with("API request failed: ") && text.contains("Connection refused"),
            "{text}"
        );
    }

    /// A minimal API server on loopback: answers the node's pod list (metadata) and each
    /// namespace's pod list with `pods` (JSON objects with metadata and status); anything
    /// else 404. Returns its URL and the request lines it was sent.
    fn fake_api(
        pods: Vec<serde_json::Value>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead as _, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (pods, log) = (pods.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = std::io::BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        let _ = r.read_exact(&mut body);
                        let line = line.trim_end().to_string();
                        log.lock().unwrap().push(line.clone());
                        let path = line.split(' ').nth(1).unwrap_or("");
                        let (code, body) = if path.starts_with("/api/v1/pods?") {
                            let items: Vec<serde_json::Value> = pods
                                .iter()
                                .map(|p| serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": p["metadata"]}))
                                .collect();
                            (
                                200,
                                serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items}),
                            )
                        } else if path.starts_with("/api/v1/namespaces/default/pods?") {
                            (
                                200,
                                serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
                            )
                        } else {
                            (
                                404,
                                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not here", "reason": "NotFound", "code": 404}),
                            )
                        };
                        let body = body.to_string();
                        let head = format!(
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if w.write_all(head.as_bytes())
                            .and_then(|_| w.write_all(body.as_bytes()))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    /// Without `--report` (no Events, no conditions), a runtime SIGKILL of a pod whose status
    /// says `Evicted` comes back as exactly one `kill_classified` record with the pod's name and
    /// status message; a deleted pod's (a `deletionTimestamp`) and an OOM kill's come back as
    /// nothing (the worker takes facts in order: nothing arrives between the two evictions);
    /// no Event is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runtime_kill_of_an_evicted_pod_is_classified_without_events() {
        use crate::forensics::KillKind;
        let (url, seen) = fake_api(vec![
            serde_json::json!({
                "metadata": {"name": "p", "namespace": "default", "uid": "abc"},
                "status": {"phase": "Failed", "reason": "Evicted", "message": "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "},
            }),
            serde_json::json!({
                "metadata": {"name": "q", "namespace": "default", "uid": "def", "deletionTimestamp": "2026-11-29T00:00:00Z"},
                "status": {"phase": "Running"},
            }),
        ]);
        let c = counts();
        let (tx, mut rx) = mpsc::channel(4);
        let r = Reporter::spawn(
            client(&url, Duration::from_secs(5)),
            "n1".into(),
            ReportSet::default(),
            c.clone(),
            Duration::from_secs(300),
            Some(tx),
        );
        let kill = |uid: &str, kind: KillKind, ktime_ns: u64| {
            let mut rec = crate::kubeapi::facts::tests::kill(kind, "containerd-shim-runc-v2");
            rec.ktime_ns = ktime_ns;
            rec.victim.pod.as_mut().unwrap().pod_uid = uid.into();
            let evicted = crate::cycle::is_runtime_kill(&rec);
            Fact::Kill {
                rec: Box::new(rec),
                is_kubelet: false,
                evicted,
            }
        };
        r.send(kill("abc", KillKind::Signal, 5));
        r.send(kill("def", KillKind::Signal, 6));
        r.send(kill("abc", KillKind::OomMemcg, 7));
        r.send(kill("abc", KillKind::Signal, 8));
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            r#"{"time":"2026-11-29T00:00:00Z","ktime_ns":5,"pid":42,"sender":{"pid":7,"comm":"containerd-shim-runc-v2"},"pod":{"pod_uid":"abc","namespace":"default","name":"p","container_id":"ctr1"},"reason":"evicted","evidence":"pod status reason Evicted: Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. "}"#
        );
        let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            second,
            KillClassified {
                ktime_ns: 8,
                ..first
            }
        );
        assert_eq!(rx.try_recv().ok(), None);
        // One node list (cached after), one status read per runtime kill, nothing else.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "GET /api/v1/pods?&fieldSelector=spec.nodeName%3Dn1 HTTP/1.1",
                "GET /api/v1/namespaces/default/pods?&fieldSelector=metadata.name%3Dp HTTP/1.1",
                "GET /api/v1/namespaces/default/pods?&fieldSelector=metadata.name%3Dq HTTP/1.1",
                "GET /api/v1/namespaces/default/pods?&fieldSelector=metadata.name%3Dp HTTP/1.1",
            ],
            "{seen:#?}"
        );
        assert_eq!(c.with_label_values(&["event", "sent"]).get(), 0);
    }

    /// An API server that accepts the connection and never answers: the worker waits out its
    /// timeout while the pipeline's sends return at once; what the queue cannot hold is dropped
    /// and counted, exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_api_server_never_blocks_the_sender() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Accepted and held open, never read nor answered.
        let held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let h = held.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                h.lock().unwrap().push(s);
            }
        });
        let c = counts();
        let set = ReportSet {
            node_conditions: true,
            events: false,
        };
        let spawned = Instant::now();
        let r = Reporter::spawn(
            client(&url, Duration::from_secs(2)),
            "n1".into(),
            set,
            c.clone(),
            Duration::from_secs(300),
            None,
        );
        // The worker is inside its first write (the start condition) on the held connection.
        let start = Instant::now();
        while held.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "no connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = Instant::now();
        for _ in 0..QUEUE + 10 {
            r.send(verdict());
        }
        let took = sent.elapsed();
        assert!(took < Duration::from_millis(100), "sending took {took:?}");
        assert_eq!(c.with_label_values(&["queue", "dropped"]).get(), 10);
        // The hung write gives up after its 2 s timeout, failed and counted.
        tokio::task::spawn_blocking({
            let c = c.clone();
            move || wait_count(&c, "condition", "failed", 1, Duration::from_secs(6))
        })
        .await
        .unwrap();
        let waited = spawned.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
