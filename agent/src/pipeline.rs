//! The run loop as a type: what `oomprobe run` does with each input, one method per stage, in
//! data-flow order (the README's diagram):
//!
//! ring batch (decode, correlate) -> kill records, kubelet execs -> periodic kubelet report ->
//! sample (node, kubelet, memcg events, series store) -> detect (verdicts) -> expire (kills whose
//! death never came, kernel counters) -> settle (each kill to the tracker, the cycle and the
//! stream; cycle stages to the action; one flush).
//!
//! `cli/run.rs` owns the timers and the `select!`; every arm calls one method here.
use std::{path::PathBuf, sync::Arc};

use crate::{
    act::{ActionEvent, Cordon, CordonConfig, Decision},
    cgroup::Hierarchy,
    clock::{monotonic_ns, Clock},
    cycle::{Cycle, CycleConfig, KubeletNow, Party, StageEvent},
    detect::{classify::Cause, store::Store, Engine, Sample, Subject},
    forensics::{Correlator, KillRecord, LiveNode, Node},
    kernel::{
        events::Event,
        probes::{Kernel, Probes},
        ring,
    },
    kubeapi::{
        report::{Fact, Reporter},
        ApiError,
    },
    kubelet::{
        metrics::{KubeletMetrics, Latest},
        tracker::{Target, Tracker},
    },
    memcg_events::{MemcgEvent, Watcher},
    metrics::Metrics,
    output::{Output, OutputFormat, Sink},
    sampler::SampleEvent,
};

/// What the pipeline needs from the command line.
pub struct PipelineConfig {
    pub format: OutputFormat,
    /// The kubelet to follow.
    pub target: Target,
    /// Cgroup paths (memory hierarchy) under which pods live.
    pub kubepods_roots: Vec<String>,
    /// Also write each sample to the JSON stream.
    pub emit_samples: bool,
    /// Where the sampled series persists (`series.bin` in the state directory).
    pub state_dir: PathBuf,
    pub cycle: CycleConfig,
    /// The opt-in cordon on a flap, when armed.
    pub cordon: Option<CordonConfig>,
    /// The opt-in node conditions and Events (`--report`), when on.
    pub report: Option<Reporter>,
    /// Where the cordon PATCH's result goes (the run loop hands it to
    /// [`Pipeline::on_cordon_result`]). Kills the report worker classifies come back the same
    /// way, through the channel given to [`Reporter::spawn`], to
    /// [`Pipeline::on_kill_classified`].
    pub cordon_done: tokio::sync::mpsc::Sender<Result<(), ApiError>>,
    /// The classifier's API inputs (MemoryPressure, pending CSRs) as last polled, when an API
    /// server is reachable ([`crate::kubeapi::inputs::spawn_poller`]).
    pub api_inputs: Option<crate::kubeapi::inputs::Latest>,
}

/// The sampled series: persisted when the store opened, else in memory (bounded).
enum Series {
    Stored(Store),
    Memory(Vec<Sample>),
}

impl Series {
    /// Opens the store; records it dropped as invalid count in `oomprobe_events_dropped_total`
    /// (`reason="store_invalid_record"`).
    fn open(state_dir: &std::path::Path, metrics: &Metrics) -> Series {
        let path = state_dir.join("series.bin");
        match Store::open(&path) {
            Ok(s) => {
                tracing::info!(path = %path.display(), samples = s.samples().len(), "series store loaded");
                metrics
                    .dropped
                    .with_label_values(&["store_invalid_record", "sample"])
                    .inc_by(s.invalid_records());
                Series::Stored(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "series store unavailable: leak detection starts from scratch and will not persist");
                Series::Memory(Vec::new())
            }
        }
    }

    fn samples(&self) -> &[Sample] {
        match self {
            Series::Stored(s) => s.samples(),
            Series::Memory(m) => m,
        }
    }
}

/// Everything the agent runs, between the ring buffer and stdout. On a node `K` is the loaded
/// [`Probes`] and `N` the [`LiveNode`]; the golden test runs it without a kernel (its own
/// [`Kernel`] and [`Node`], a capturing [`Sink`]).
pub struct Pipeline<K: Kernel = Probes, N: Node = LiveNode> {
    kubepods_roots: Vec<String>,
    emit_samples: bool,
    probes: K,
    correlator: Correlator<N>,
    tracker: Tracker,
    hierarchy: Option<Hierarchy>,
    memcg: Option<Watcher>,
    /// The kubelet's own /metrics, as the scraper last read them.
    kubelet_metrics: Latest,
    /// What the live inputs keep between samples (pod churn, PLEG relist windows) and the
    /// API's inputs.
    live: LiveInputs,
    series: Series,
    engine: Engine,
    last_verdict: Option<(Subject, Cause)>,
    cycle: Cycle,
    /// The kubelet's memory cgroup as last sampled (for kills of a cgroup containing it).
    kubelet_cgroup: Option<String>,
    cordon: Option<Cordon>,
    /// Where the cordon PATCH's task sends its result.
    cordon_done: tokio::sync::mpsc::Sender<Result<(), ApiError>>,
    report: Option<Reporter>,
    metrics: Arc<Metrics>,
    out: Sink,
    /// Work a stage left for [`Pipeline::settle`], in the order it is done there.
    records: Vec<KillRecord>,
    kubelet_execs: Vec<(u32, u64)>,
    memcg_events: Vec<MemcgEvent>,
    /// The kubelet thrashing at its cgroup's limit (no kill coming), from each sample.
    thrash: crate::memcg_events::KubeletThrash,
    stage_events: Vec<StageEvent>,
    kills: u64,
    /// A sample's blocking task is running, since (CLOCK_MONOTONIC ns).
    sampling: Option<u64>,
    sample_tx: tokio::sync::mpsc::UnboundedSender<Sampled>,
    sample_rx: Option<tokio::sync::mpsc::UnboundedReceiver<Sampled>>,
}

/// What a sample's blocking task read: the sample, the kubelet followed then, and the memory
/// cgroups under the watched trees.
pub struct Sampled {
    s: Sample,
    ev: SampleEvent,
    pid: Option<u32>,
    trees: Vec<crate::memcg_events::TreeEntry>,
}

impl Pipeline {
    /// Builds the stages around loaded probes; finds the kubelet if it runs already.
    pub fn new(
        cfg: PipelineConfig,
        probes: Probes,
        metrics: Arc<Metrics>,
        kubelet_metrics: Latest,
    ) -> Pipeline {
        let out = Sink::new(cfg.format);
        let node = (LiveNode::detect(), Clock::new());
        Pipeline::with_parts(cfg, probes, node, out, metrics, kubelet_metrics)
    }
}

impl<K: Kernel, N: Node> Pipeline<K, N> {
    /// Builds the stages around any kernel access, node view (with the clock that dates kill
    /// records) and sink: what [`Pipeline::new`] does on a node, and what a replay without a
    /// kernel uses.
    pub fn with_parts(
        cfg: PipelineConfig,
        mut probes: K,
        (node, clock): (N, Clock),
        mut out: Sink,
        metrics: Arc<Metrics>,
        kubelet_metrics: Latest,
    ) -> Pipeline<K, N> {
        let hierarchy = Hierarchy::detect();
        let mut tracker = Tracker::new(cfg.target.clone());
        tracker.probe_target_binary(&mut probes);
        for start in tracker.scan(&mut probes) {
            out.push(Output::KubeletStart(start));
        }
        out.flush();
        let (sample_tx, sample_rx) = tokio::sync::mpsc::unbounded_channel();
        if tracker.pids().is_empty() {
            tracing::info!(name = %cfg.target.name, "no kubelet running yet; it will be followed when it starts");
        }
        Pipeline {
            kubepods_roots: cfg.kubepods_roots,
            emit_samples: cfg.emit_samples,
            correlator: Correlator::new(node, clock),
            tracker,
            memcg: hierarchy.clone().map(Watcher::new),
            hierarchy,
            kubelet_metrics,
            live: LiveInputs {
                api: cfg.api_inputs,
                ..Default::default()
            },
            series: Series::open(&cfg.state_dir, &metrics),
            engine: Engine::default(),
            last_verdict: None,
            cycle: Cycle::new(cfg.cycle),
            kubelet_cgroup: None,
            cordon: cfg.cordon.map(Cordon::new),
            cordon_done: cfg.cordon_done,
            report: cfg.report,
            probes,
            metrics,
            out,
            records: Vec::new(),
            kubelet_execs: Vec::new(),
            memcg_events: Vec::new(),
            thrash: Default::default(),
            stage_events: Vec::new(),
            kills: 0,
            sampling: None,
            sample_tx,
            sample_rx: Some(sample_rx),
        }
    }

    pub fn probes(&self) -> &K {
        &self.probes
    }

    /// The lines written so far, with a capturing sink ([`Sink::capturing`]).
    pub fn take_output(&mut self) -> Vec<String> {
        self.out.take_captured()
    }

    /// Kill records written so far.
    pub fn kills(&self) -> u64 {
        self.kills
    }

    /// Decoded ring-buffer records, as the readers handed them over: kill events to the
    /// correlator, kubelet execs to the tracker, malformed records counted.
    pub async fn on_ring_batch(&mut self, batch: impl Iterator<Item = ring::Item>) {
        for item in batch {
            let (decoded, seen) = match item {
                ring::Item::Record(decoded, seen) => (*decoded, seen),
                ring::Item::Quiet(ktime_ns) => {
                    self.correlator.on_quiet(ktime_ns);
                    continue;
                }
            };
            match decoded {
                Ok(Event::KubeletExec(e)) => self.kubelet_execs.push((e.tgid, e.ktime_ns)),
                Ok(ev) => {
                    for e in ev.field_errors() {
                        let labels = [e.field, &e.value.to_string()];
                        self.metrics.decode_errors.with_label_values(&labels).inc();
                        tracing::debug!(error = %e, "kernel enum value out of range");
                    }
                    if let Event::Signal(s) = &ev {
                        let delivery = crate::forensics::delivery_name(s.result);
                        self.metrics.sigkills.with_label_values(&[delivery]).inc();
                    }
                    self.records
                        .extend(self.correlator.on_event_at(ev, Some(seen)));
                }
                Err(e) => {
                    let labels = ["decode_error", e.reason()];
                    self.metrics.dropped.with_label_values(&labels).inc();
                    tracing::debug!(error = %e, "malformed record");
                }
            }
        }
        self.settle().await;
    }

    /// The periodic kubelet attribution report; kubelets started since are picked up.
    pub async fn on_report(&mut self) {
        let reps = self.tracker.report(&mut self.probes);
        self.metrics.observe_kubelets(&reps);
        for rep in reps {
            self.out.push(Output::KubeletMemory(rep));
        }
        for start in self.tracker.scan(&mut self.probes) {
            self.out.push(Output::KubeletStart(start));
        }
        self.metrics
            .kubelet_restarts
            .set(self.tracker.restarts as i64);
        self.settle().await;
    }

    /// The sample tick: reading the kubelet's and the node's memory and walking the pod trees
    /// (cgroupfs, /proc: blocking reads, thousands of directories on a busy node) runs in a
    /// blocking task, off this loop; its result comes back through [`Pipeline::sample_done`].
    /// A tick while the previous walk still runs is skipped (for at most a minute: a walk
    /// that never reported does not stop sampling).
    pub fn on_sample(&mut self) {
        let now_mono = monotonic_ns();
        if self
            .sampling
            .is_some_and(|at| now_mono.saturating_sub(at) < 60_000_000_000)
        {
            return;
        }
        self.sampling = Some(now_mono);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let pid = self.tracker.pids().last().copied();
        let hierarchy = self.hierarchy.clone();
        let roots = self.kubepods_roots.clone();
        let restarts = self.tracker.restarts;
        let watch = self.memcg.is_some();
        let done = self.sample_tx.clone();
        tokio::task::spawn_blocking(move || {
            let (s, ev) = crate::sampler::sample(hierarchy.as_ref(), &roots, pid, restarts, now);
            let mut trees = Vec::new();
            if let (Some(h), true) = (hierarchy.as_ref(), watch) {
                let mut tops: Vec<String> = roots
                    .iter()
                    .filter(|r| h.dir(r).is_dir())
                    .cloned()
                    .collect();
                tops.extend(ev.kubelet_cgroup.clone());
                for top in tops {
                    trees.extend(crate::memcg_events::list_tree(h, &top));
                }
            }
            let _ = done.send(Sampled { s, ev, pid, trees });
        });
    }

    /// Where the finished samples of [`Pipeline::on_sample`]'s blocking tasks arrive (taken
    /// once by the run loop, which hands each to [`Pipeline::on_sampled`]).
    pub fn take_samples(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Sampled>> {
        self.sample_rx.take()
    }

    /// A sample of the kubelet and the node, read off the loop: metrics, memcg watches and
    /// events, the cycle, the series the detectors read.
    pub async fn on_sampled(&mut self, done: Sampled) {
        self.sampling = None;
        let Sampled { s, ev, pid, trees } = done;
        let latest = self.kubelet_metrics.lock().ok().and_then(|l| l.clone());
        let (s, ev) = self.live.complete(s, ev, latest);
        self.metrics.observe_sample(&ev);
        self.watch_memcgs(&trees);
        if ev.kubelet_cgroup.is_some() {
            self.kubelet_cgroup = ev.kubelet_cgroup.clone();
        }
        if let Some(pid) = pid {
            let now = kubelet_now(pid, Some(&ev), &self.tracker, &self.probes);
            let ktime = monotonic_ns();
            if let (Some(cgroup), Some(faults)) = (ev.kubelet_cgroup.as_deref(), major_faults(pid))
            {
                self.memcg_events.extend(self.thrash.observe(
                    cgroup,
                    pid,
                    ktime,
                    faults,
                    ev.kubelet_cgroup_bytes,
                    ev.kubelet_limit_bytes,
                ));
            }
            self.stage_events.extend(self.cycle.on_sample(ktime, now));
        }
        if self.emit_samples {
            self.out.push(Output::Sample(ev));
        }
        match &mut self.series {
            Series::Stored(st) => {
                if let Err(e) = st.append(s) {
                    let labels = ["store_write", "sample"];
                    self.metrics.dropped.with_label_values(&labels).inc();
                    tracing::warn!(error = %e, "cannot persist a sample");
                }
            }
            Series::Memory(m) => {
                m.push(s);
                crate::detect::store::bound(m);
            }
        }
        self.observe_state();
        self.settle().await;
    }

    /// Keeps the memcg watcher on the pod trees and the kubelet's cgroup as listed now:
    /// new cgroups watched, removed ones forgotten (in the kernel's maps too); polls events.
    fn watch_memcgs(&mut self, listed: &[crate::memcg_events::TreeEntry]) {
        let Some(w) = self.memcg.as_mut() else {
            return;
        };
        // The kernel's reclaim counts first: a cgroup removed since the last sample still has
        // its last counts reported before it is forgotten.
        self.memcg_events
            .extend(w.reclaim(&self.probes.reclaim_stats()));
        for id in w.prune(listed) {
            self.probes.unwatch_memcg(id);
        }
        for id in w.watch_listed(listed, true) {
            if !self.probes.watch_memcg(id) {
                self.metrics
                    .dropped
                    .with_label_values(&["watched_memcgs_full", "memcg"])
                    .inc();
            }
        }
        let full = w.take_full();
        if full > 0 {
            self.metrics
                .dropped
                .with_label_values(&["watched_memcgs_full", "memcg"])
                .inc_by(full);
        }
        self.memcg_events.extend(w.poll_v2());
        self.memcg_events.extend(w.poll_psi());
        for kind in w.take_registration_failures() {
            self.metrics
                .memcg_registration_failures
                .with_label_values(&[kind])
                .inc();
        }
    }

    /// `oomprobe_map_entries{map}`: the kernel maps' occupancy and the agent's own per-cgroup
    /// and per-process state.
    fn observe_state(&self) {
        let g = &self.metrics.map_entries;
        for (map, n) in self.probes.map_entries() {
            g.with_label_values(&[map]).set(n as i64);
        }
        if let Some(w) = &self.memcg {
            let (ids, notified, tasks) = w.sizes();
            g.with_label_values(&["agent_memcgs"]).set(ids as i64);
            g.with_label_values(&["agent_memcg_notified"])
                .set(notified as i64);
            g.with_label_values(&["agent_memcg_tasks"])
                .set(tasks as i64);
        }
        g.with_label_values(&["agent_pending_kills"])
            .set(self.correlator.pending_len() as i64);
        let series = match &self.series {
            Series::Stored(st) => st.samples().len(),
            Series::Memory(m) => m.len(),
        };
        let tasks =
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        let more = [
            ("agent_series_samples", series),
            ("agent_tokio_tasks", tasks),
        ];
        let all = self
            .tracker
            .state_sizes()
            .into_iter()
            .chain(self.correlator.state_sizes())
            .chain(self.cycle.state_sizes())
            .chain(self.memcg.iter().flat_map(|w| w.more_sizes()))
            .chain(more);
        for (map, n) in all {
            g.with_label_values(&[map])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        #[cfg(feature = "heap-count")]
        self.metrics.observe_heap();
    }

    /// The next notification (cgroup, kind) of a watched memory cgroup; never, without one.
    pub async fn memcg_notification(&mut self) -> Option<(String, String)> {
        match self.memcg.as_mut() {
            Some(w) => w.rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// A watched memory cgroup notified (OOM, limit, pressure).
    pub async fn on_memcg_notification(&mut self, cgroup: String, kind: String) {
        if let Some(w) = self.memcg.as_mut() {
            self.memcg_events.extend(w.describe(&cgroup, &kind));
        }
        self.settle().await;
    }

    /// The leak detectors over the series; a verdict is written when it changes.
    pub async fn on_detect(&mut self) {
        let v = self.engine.evaluate(self.series.samples());
        self.cycle.known_cause = matches!(v.subject, Subject::Kubelet | Subject::Workload)
            .then(|| v.cause.as_str().to_string());
        self.metrics.observe_verdict(&v);
        if let Some(r) = &self.report {
            r.send(Fact::Verdict(Box::new(v.clone())));
        }
        let key = (v.subject, v.cause);
        if self.last_verdict != Some(key) {
            self.last_verdict = Some(key);
            self.out.push(Output::Verdict(v));
        }
        self.settle().await;
    }

    /// The fast tick: kills whose death never came (or came without `mark_victim`), the
    /// kernel's counters, the correlator's backlog and orphans.
    pub async fn on_expire(&mut self) {
        self.on_expire_at(monotonic_ns()).await;
    }

    /// [`Pipeline::on_expire`] with the wall clock at CLOCK_MONOTONIC `now_ns` (a replay's
    /// own clock). Kills expire against the event stream's clock (the newest kernel timestamp
    /// or quiet mark fed), the wall clock only [`crate::forensics::correlator::STALL_BACKSTOP_NS`] behind as a backstop.
    pub async fn on_expire_at(&mut self, now_ns: u64) {
        self.records.extend(self.correlator.expire_at_wall(now_ns));
        self.metrics.observe_kernel(&self.probes.counters());
        self.metrics
            .pending_kills
            .set(self.correlator.pending_len() as i64);
        let orphans = self.correlator.stats.orphans;
        let seen = self.metrics.dropped.with_label_values(&["orphan", "exit"]);
        if orphans > seen.get() {
            seen.inc_by(orphans - seen.get());
        }
        let cleared = self.correlator.cache_cleared;
        let seen = self
            .metrics
            .dropped
            .with_label_values(&["correlator_cache_full", "oom"]);
        if cleared > seen.get() {
            seen.inc_by(cleared - seen.get());
        }
        self.settle().await;
    }

    /// The report worker confirmed what a kill was (a kubelet eviction): the follow-up record
    /// to the stream, counted in `oomprobe_kills_classified_total{reason}`.
    pub fn on_kill_classified(&mut self, c: crate::kubeapi::report::KillClassified) {
        self.metrics
            .kills_classified
            .with_label_values(&[c.reason])
            .inc();
        self.out.push(Output::KillClassified(Box::new(c)));
        self.out.flush();
    }

    /// The cordon PATCH answered: the action to the stream.
    pub fn on_cordon_result(&mut self, result: Result<(), ApiError>) {
        if let Some(c) = self.cordon.as_mut() {
            let action = c.on_result(result);
            self.out.push(Output::Action(action));
            self.out.flush();
        }
    }

    /// A stage change to the cordon: a dry run is written now, a PATCH goes out in a task.
    fn cordon_on_stage(&mut self, ev: &StageEvent) -> Option<ActionEvent> {
        let c = self.cordon.as_mut()?;
        match c.on_stage(ev)? {
            Decision::DryRun(action) => Some(action),
            Decision::Send => {
                let done = self.cordon_done.clone();
                crate::act::spawn_cordon(c.client(), c.node().to_string(), done);
                None
            }
        }
    }

    /// One kill record to the metrics, the tracker, the cycle, the reports and the stream.
    fn on_kill_record(&mut self, rec: KillRecord) {
        self.metrics.observe_kill(&rec);
        self.tracker.on_kill(&rec);
        let party = Party::of(
            &rec,
            |pid, comm| self.tracker.is_kubelet(pid, comm),
            self.kubelet_cgroup.as_deref(),
        );
        self.stage_events.extend(self.cycle.on_kill(&rec, party));
        let dropped = self.cycle.take_dropped();
        if dropped > 0 {
            self.metrics
                .dropped
                .with_label_values(&["collateral_full", "kill"])
                .inc_by(dropped);
        }
        if let Some(r) = &self.report {
            r.send(Fact::Kill {
                evicted: crate::cycle::is_runtime_kill(&rec),
                rec: Box::new(rec.clone()),
                is_kubelet: party == Party::Kubelet,
            });
        }
        self.out.push(Output::Kill(Box::new(rec)));
        self.out.flush();
        self.kills += 1;
    }

    /// A kubelet exec to the tracker (adoption: its symbols read and probes attached) and, when
    /// adopted, to the stream and the cycle.
    fn on_kubelet_exec(&mut self, tgid: u32, exec_ktime: u64) {
        // The symbol read of a new binary runs here, on the loop: a slow one is logged
        // (the soak reports the longest).
        let began = std::time::Instant::now();
        let adopted = self.tracker.on_exec(tgid, &mut self.probes);
        let took = began.elapsed();
        if took >= std::time::Duration::from_millis(20) {
            tracing::info!(
                pid = tgid,
                adoption_ms = took.as_millis() as u64,
                "kubelet adoption held the event loop"
            );
        }
        if let Some(start) = adopted {
            let now = kubelet_now(start.pid, None, &self.tracker, &self.probes);
            self.out.push(Output::KubeletStart(start));
            self.stage_events
                .extend(self.cycle.on_kubelet_start(exec_ktime, now));
        }
    }

    /// What every stage ends with: each kill to the metrics, the tracker, the cycle and the
    /// stream (written at once), and to the reports; kubelet execs to the tracker and the cycle;
    /// memcg events; stage changes to the metrics, the action and the reports; then one flush.
    /// Nothing here waits on the API server: the cordon and the reports run in tasks.
    async fn settle(&mut self) {
        // Kills and kubelet execs in the kernel's order: a new kubelet is adopted before a
        // later kill in the batch that it sent (collateral of its storm), and a kubelet's kill
        // before the next one's exec puts the cycle in the stage that exec's storm needs.
        // Records come in their own order (the correlator's), execs between them.
        let mut execs = std::mem::take(&mut self.kubelet_execs);
        execs.sort_by_key(|&(_, ktime)| ktime);
        let mut execs = execs.into_iter().peekable();
        for rec in std::mem::take(&mut self.records) {
            while let Some((tgid, exec_ktime)) = execs.next_if(|&(_, ktime)| ktime < rec.ktime_ns) {
                self.on_kubelet_exec(tgid, exec_ktime);
            }
            self.on_kill_record(rec);
        }
        for (tgid, exec_ktime) in execs {
            self.on_kubelet_exec(tgid, exec_ktime);
        }
        for (why, n) in self.tracker.rejected() {
            let c = self
                .metrics
                .kubelet_rejected
                .with_label_values(&[why.as_str()]);
            if n > c.get() {
                c.inc_by(n - c.get());
            }
        }
        for ev in std::mem::take(&mut self.memcg_events) {
            self.metrics
                .memcg_events
                .with_label_values(&[ev.kind.as_str()])
                .inc_by(ev.count.max(1));
            self.out.push(Output::Memcg(ev));
        }
        for ev in std::mem::take(&mut self.stage_events) {
            self.metrics.observe_stage(&ev);
            if let Some(action) = self.cordon_on_stage(&ev) {
                self.out.push(Output::Action(action));
            }
            if let Some(r) = &self.report {
                r.send(Fact::Stage(Box::new(ev.clone())));
            }
            self.out.push(Output::Stage(ev));
        }
        self.out.flush();
    }
}

/// The live sampling path's state between samples: what turns the sampler's walk, the
/// kubelet's latest scrape and the API's latest poll into the classifier's inputs.
#[derive(Debug, Default)]
pub struct LiveInputs {
    /// Pod cgroups created and removed between the sampler's walks.
    pub churn: crate::sampler::PodChurn,
    /// The PLEG histogram's buckets at the previous sample.
    pub pleg: crate::sampler::PlegWindow,
    /// MemoryPressure and pending CSRs, when an API server is reachable.
    pub api: Option<crate::kubeapi::inputs::Latest>,
}

impl LiveInputs {
    /// The sample with what the live sources add: pod churn from the walk (no I/O), the
    /// kubelet's own /metrics (goroutines, PLEG relists since the previous sample, evictions,
    /// containers, feature gates), the API's MemoryPressure and pending CSRs.
    pub fn complete(
        &mut self,
        mut s: Sample,
        mut ev: SampleEvent,
        latest: Option<KubeletMetrics>,
    ) -> (Sample, SampleEvent) {
        s.pod_churn_per_hour = self.churn.observe(s.t, &ev.pod_cgroups);
        if let Some(m) = latest {
            s.goroutines = m.goroutines;
            if let Some(r) = self.pleg.observe(&m.pleg_relist_buckets) {
                s.pleg_relists = Some(r.relists);
                s.pleg_relists_slower_1s = r.slower_1s;
                s.pleg_relists_slower_5s = r.slower_5s;
                s.pleg_relists_slower_10s = r.slower_10s;
                s.pleg_relist_p99_seconds = r.p99_seconds;
            }
            // The real kubelet serves no kubelet_evictions series until it has evicted: a
            // scrape without one is zero evictions.
            s.evictions_memory_total = Some(m.evictions_memory_total.unwrap_or(0.0));
            s.cgroup_version = m.cgroup_version.or(s.cgroup_version);
            s.exited_containers = m.exited_containers.or(s.exited_containers);
            s.containers = m.running_containers.or(s.containers);
            s.gate_evented_pleg = m.gate_evented_pleg;
            s.gate_pod_certificate_request = m.gate_pod_certificate_request;
            ev.exited_containers = s.exited_containers;
            ev.containers = s.containers;
            ev.kubelet_metrics = Some(m);
        }
        if let Some(api) = self
            .api
            .as_ref()
            .and_then(|a| a.lock().ok().map(|l| l.clone()))
        {
            s.memory_pressure = api.memory_pressure;
            s.pending_csrs = api.pending_csrs;
        }
        (s, ev)
    }
}

/// `/proc/<pid>/stat` majflt: the process's major page faults since it started.
fn major_faults(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|p| p.stat())
        .ok()?;
    Some(stat.majflt)
}

/// What the cycle stage machine needs of the kubelet now.
fn kubelet_now(
    pid: u32,
    sample: Option<&SampleEvent>,
    tracker: &Tracker,
    probes: &impl Kernel,
) -> KubeletNow {
    let mem = crate::sampler::kubelet_memory(pid);
    let cpu = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map(|s| s.utime.saturating_add(s.stime) as f64 / procfs::ticks_per_second() as f64)
        .unwrap_or(0.0);
    KubeletNow {
        pid,
        rss_bytes: mem.map_or(0, |m| m.rss_bytes),
        usage_bytes: sample.and_then(|s| s.kubelet_cgroup_bytes),
        limit_bytes: sample.and_then(|s| s.kubelet_limit_bytes),
        mapped_bytes: tracker.mapped_bytes(pid, probes),
        cpu_seconds: cpu,
        node_available_bytes: sample.and_then(|s| s.node_mem_available_bytes),
        node_total_bytes: sample.and_then(|s| s.node_mem_total_bytes),
    }
}

#[cfg(test)]
#[path = "pipeline_live_tests.rs"]
mod live_tests;
