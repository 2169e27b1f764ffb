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
        /// as `ContainerEvicted` only once the pod's status says `Evicted` (see
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
    pub fn spawn(
        client: Client,
        node: String,
        set: ReportSet,
        counts: IntCounterVec,
        refresh: Duration,
    ) -> Reporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker::new(client, node, set, counts.clone(), refresh);
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
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Fact>) {
        tracing::info!(node = %self.node, conditions = self.set.node_conditions, events = self.set.events, "reporting to the Kubernetes API");
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
                if !self.set.events {
                    return;
                }
                if is_kubelet {
                    if let Some(e) = kubelet_kill_event(&rec) {
                        let node = self.node_ref();
                        self.event(e, node).await;
                    }
                }
                let uid = rec.victim.pod.as_ref().map(|p| p.pod_uid.clone());
                let Some(pod) = self.pod_ref(uid.as_deref().unwrap_or("")).await else {
                    return;
                };
                // A runtime's SIGKILL is also how a deleted pod's grace period or a failed
                // liveness probe ends: only the kubelet's own status tells an eviction.
                let evicted = evicted && self.evicted(&pod).await;
                if let Some(e) = pod_kill_event(&rec, evicted) {
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
                    tracing::warn!(error = %crate::error_chain(&e), "cannot list this node's pods");
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
    /// eviction manager when the kill completes, synced to the API within seconds). Polled once
    /// per [`EVICTION_POLL`] for up to [`EVICTION_WAIT`]; a pod being deleted
    /// (`deletionTimestamp`, an API-initiated delete or drain) or gone is not a kubelet
    /// eviction. Uses the report overlay's `list pods` (a field selector on the name).
    async fn evicted(&mut self, pod: &ObjectReference) -> bool {
        let (Some(ns), Some(name), Some(uid)) = (&pod.namespace, &pod.name, &pod.uid) else {
            return false;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().fields(&format!("metadata.name={name}"));
        let deadline = Instant::now() + EVICTION_WAIT;
        loop {
            match api.list(&lp).await {
                Ok(list) => {
                    let Some(p) = list
                        .items
                        .into_iter()
                        .find(|p| p.metadata.uid.as_deref() == Some(uid))
                    else {
                        return false;
                    };
                    if p.metadata.deletion_timestamp.is_some() {
                        return false;
                    }
                    if p.status.and_then(|s| s.reason).as_deref() == Some("Evicted") {
                        return true;
                    }
                }
                Err(e) => {
                    self.count("pod_lookup", "failed");
                    let e = super::ApiError::from(e);
                    tracing::warn!(error = %crate::error_chain(&e), pod = %name, "cannot read the pod's status");
                    return false;
                }
            }
            if Instant::now() + EVICTION_POLL > deadline {
                return false;
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
            slope_bytes_per_day: 250e6,
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
