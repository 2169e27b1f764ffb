//! The pure half of the reports: the node conditions' state machine and wording, the Events'
//! wording, and the Event rate limiter (client-go's spam filter). No I/O: the worker in
//! [`super::report`] does the API calls.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    cycle::{Stage, StageEvent},
    detect::{Subject, Verdict},
    forensics::{KillKind, KillRecord},
};

/// Events per involved object before the limiter holds them back (client-go: 25).
pub const OBJECT_BURST: f64 = 25.0;
/// One more Event per object per this long (client-go: 5 minutes).
pub const OBJECT_REFILL: Duration = Duration::from_secs(300);
/// Events across all objects before the global limiter holds them back.
pub const GLOBAL_BURST: f64 = 50.0;
/// Events per second across all objects (client-go's default client QPS).
pub const GLOBAL_PER_SEC: f64 = 5.0;
/// Every condition is re-written this often (new `lastHeartbeatTime`, the latest message), also
/// when nothing changed, as node-problem-detector's heartbeat does: a condition removed by
/// someone, or lost with an API server's storage, comes back. A condition whose status and
/// reason stay the same is not re-written more often than this for a new message alone.
/// `--condition-refresh` sets it.
pub const CONDITION_REFRESH: Duration = Duration::from_secs(300);
/// A condition whose write failed is tried again after this long (or the refresh interval
/// when that is shorter).
pub const CONDITION_RETRY: Duration = Duration::from_secs(10);
/// The Events API limits a note to 1 KiB.
pub const NOTE_MAX: usize = 1024;

/// The condition types the agent owns on its node.
pub const LEAK_CONDITION: &str = "KubeletMemoryLeak";
pub const FLAP_CONDITION: &str = "KubeletOOMFlapping";

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    burst: f64,
    per_sec: f64,
}

impl Bucket {
    pub fn new(burst: f64, per_sec: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
            burst,
            per_sec,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// client-go's spam filter: a bucket per involved object and one for all.
#[derive(Debug)]
pub struct Limiter {
    per_object: HashMap<String, Bucket>,
    global: Bucket,
}

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter {
            per_object: HashMap::new(),
            global: Bucket::new(GLOBAL_BURST, GLOBAL_PER_SEC, now),
        }
    }

    /// Whether an Event on `object` may go now.
    pub fn allow(&mut self, object: &str, now: Instant) -> bool {
        if self.per_object.len() >= 4096 {
            // Objects whose bucket refilled carry no state worth keeping.
            self.per_object.retain(|_, b| !b.full(now));
        }
        let b = self
            .per_object
            .entry(object.to_string())
            .or_insert_with(|| Bucket::new(OBJECT_BURST, 1.0 / OBJECT_REFILL.as_secs_f64(), now));
        // The object's token is spent only when the global bucket lets the Event go too.
        let mut probe = b.clone();
        if !probe.take(now) {
            *b = probe;
            return false;
        }
        if !self.global.take(now) {
            return false;
        }
        *b = probe;
        true
    }
}

/// A node condition as the agent wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// One condition type's state: the condition as the agent wants it, its transition time, when
/// it was last written successfully (None: the last write failed) and last tried.
#[derive(Debug)]
struct Entry {
    want: Condition,
    transition: time::OffsetDateTime,
    sent_at: Option<Instant>,
    tried_at: Instant,
}

/// The conditions' state machine: what to write, and when.
#[derive(Debug)]
pub struct Conditions {
    refresh: Duration,
    entries: HashMap<&'static str, Entry>,
}

impl Default for Conditions {
    fn default() -> Conditions {
        Conditions::new(CONDITION_REFRESH)
    }
}

impl Conditions {
    /// `refresh`: how often every condition is re-written (see [`CONDITION_REFRESH`]).
    pub fn new(refresh: Duration) -> Conditions {
        Conditions {
            refresh,
            entries: HashMap::new(),
        }
    }

    /// How often the worker asks [`Conditions::due`]: a quarter of the shorter of the refresh
    /// and the retry interval, so a refresh is at most that late.
    pub fn tick(&self) -> Duration {
        (self.retry() / 4).max(Duration::from_millis(10))
    }

    fn retry(&self) -> Duration {
        self.refresh.min(CONDITION_RETRY)
    }

    /// A new fact: the condition to write now, with its `lastTransitionTime`, or None when the
    /// one written says the same (same status and reason, and either the same message or one
    /// written less than the refresh interval ago: the new message goes with the next refresh),
    /// or when the last write failed and the status is unchanged (the retry takes the new words).
    pub fn update(
        &mut self,
        c: Condition,
        now: Instant,
        wall: time::OffsetDateTime,
    ) -> Option<(Condition, time::OffsetDateTime)> {
        let refresh = self.refresh;
        if let Some(e) = self.entries.get_mut(c.type_) {
            if e.want.status == c.status {
                let same_reason = e.want.reason == c.reason;
                let hold = match e.sent_at {
                    None => same_reason,
                    Some(at) => {
                        same_reason
                            && (e.want.message == c.message
                                || now.saturating_duration_since(at) < refresh)
                    }
                };
                e.want = c.clone();
                if hold {
                    return None;
                }
                e.tried_at = now;
                return Some((c, e.transition));
            }
        }
        self.entries.insert(
            c.type_,
            Entry {
                want: c.clone(),
                transition: wall,
                sent_at: None,
                tried_at: now,
            },
        );
        Some((c, wall))
    }

    /// The conditions to (re-)write now without a new fact: each one last written at least the
    /// refresh interval ago, and each whose last write failed at least the retry interval ago.
    /// Marks them tried.
    pub fn due(&mut self, now: Instant) -> Vec<(Condition, time::OffsetDateTime)> {
        let (refresh, retry) = (self.refresh, self.retry());
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            let wait = if e.sent_at.is_some() { refresh } else { retry };
            let since = e.sent_at.unwrap_or(e.tried_at);
            if now.saturating_duration_since(since) >= wait
                && now.saturating_duration_since(e.tried_at) >= retry.min(wait)
            {
                e.tried_at = now;
                out.push((e.want.clone(), e.transition));
            }
        }
        out.sort_by_key(|(c, _)| c.type_);
        out
    }

    /// The outcome of a write of `type_` that started at `now`.
    pub fn written(&mut self, type_: &str, ok: bool, now: Instant) {
        if let Some(e) = self.entries.get_mut(type_) {
            e.sent_at = ok.then_some(now);
        }
    }
}

fn hours(seconds: f64) -> String {
    if seconds >= 86400.0 {
        format!("{:.1}d", seconds / 86400.0)
    } else if seconds >= 3600.0 {
        format!("{:.1}h", seconds / 3600.0)
    } else {
        format!("{:.0}m", seconds / 60.0)
    }
}

/// `KubeletMemoryLeak` from a verdict: True when the detectors blame the kubelet.
pub fn leak_condition(v: &Verdict) -> Condition {
    let slope = v
        .slope_bytes_per_day
        .map_or("unknown".into(), |s| format!("{:.0} MB/day", s / 1e6));
    match v.subject {
        Subject::Kubelet => {
            let mut message = format!(
                "kubelet memory leak: cause {}, pod-adjusted baseline slope {slope}",
                v.cause.as_str()
            );
            match &v.forecast {
                Some(f) => message.push_str(&format!(
                    ", time to OOM {} (earliest {}) against {}",
                    hours(f.expected_seconds),
                    hours(f.earliest_seconds),
                    f.against
                )),
                None => message.push_str(", no time to OOM (no limit in reach)"),
            }
            Condition {
                type_: LEAK_CONDITION,
                status: true,
                reason: "KubeletMemoryLeak".into(),
                message,
            }
        }
        Subject::Workload => Condition {
            type_: LEAK_CONDITION,
            status: false,
            reason: "WorkloadMemoryGrowth".into(),
            message: format!(
                "memory grows with the workload (cause {}, {slope}), not in the kubelet",
                v.cause.as_str()
            ),
        },
        Subject::None => Condition {
            type_: LEAK_CONDITION,
            status: false,
            reason: "KubeletMemoryStable".into(),
            message: format!("no kubelet memory leak (slope {slope})"),
        },
        Subject::InsufficientHistory => Condition {
            type_: LEAK_CONDITION,
            status: false,
            reason: "InsufficientHistory".into(),
            message: v
                .supports
                .first()
                .cloned()
                .unwrap_or_else(|| "not enough kubelet memory history yet".into()),
        },
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Steady => "steady",
        Stage::PreOom => "pre_oom",
        Stage::ActiveOom => "active_oom",
        Stage::ReconciliationStorm => "reconciliation_storm",
        Stage::Recovery => "recovery",
        Stage::ReOom => "re_oom",
    }
}

/// `KubeletOOMFlapping` from a stage change: True while flapping, False from recovery on.
/// None for a stage that says nothing new about flapping.
pub fn flap_condition(ev: &StageEvent) -> Option<Condition> {
    if ev.flapping && !matches!(ev.stage, Stage::Recovery | Stage::Steady) {
        let period = ev
            .period_seconds
            .map_or(String::new(), |p| format!(", last period {p:.0} s"));
        return Some(Condition {
            type_: FLAP_CONDITION,
            status: true,
            reason: "KubeletOOMFlapping".into(),
            message: format!(
                "the kubelet was OOM-killed {} times, again within the flap window{period}; stage {}",
                ev.cycles,
                stage_name(ev.stage)
            ),
        });
    }
    matches!(ev.stage, Stage::Recovery | Stage::Steady).then(|| Condition {
        type_: FLAP_CONDITION,
        status: false,
        reason: "KubeletOOMCycleEnded".into(),
        message: format!(
            "no kubelet OOM flapping: stage {} after {} kubelet OOM kills",
            stage_name(ev.stage),
            ev.cycles
        ),
    })
}

/// The initial `KubeletOOMFlapping`: the cycle is not persisted, so a starting agent knows no
/// flapping.
pub fn flap_condition_at_start() -> Condition {
    Condition {
        type_: FLAP_CONDITION,
        status: false,
        reason: "AgentStarted".into(),
        message: "no kubelet OOM flapping seen since the agent started".into(),
    }
}

/// An Event to publish on one object.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

fn truncate(mut s: String) -> String {
    if s.len() > NOTE_MAX {
        let mut cut = NOTE_MAX - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The node's Event for a kubelet OOM kill.
pub fn kubelet_kill_event(rec: &KillRecord) -> Option<EventSpec> {
    matches!(rec.kind, KillKind::OomMemcg | KillKind::OomGlobal).then(|| EventSpec {
        warning: true,
        reason: "KubeletOOMKilled",
        action: "OOMKill",
        note: truncate(format!("kubelet OOM-killed: {}", rec.text())),
    })
}

/// The node's Event for a cycle stage change.
pub fn stage_event(ev: &StageEvent) -> EventSpec {
    let (reason, warning) = match ev.stage {
        Stage::Steady => ("KubeletOOMCycleSteady", false),
        Stage::PreOom => ("KubeletPreOOM", true),
        Stage::ActiveOom => ("KubeletActiveOOM", true),
        Stage::ReconciliationStorm => ("KubeletReconciliationStorm", true),
        Stage::Recovery => ("KubeletOOMCycleRecovery", false),
        Stage::ReOom => ("KubeletReOOM", true),
    };
    let mut note = format!(
        "OOM cycle stage {} (was {}), {} kubelet OOM kills",
        stage_name(ev.stage),
        stage_name(ev.previous),
        ev.cycles
    );
    if ev.flapping {
        note.push_str(", flapping");
    }
    if !ev.detail.is_empty() {
        note.push_str(": ");
        note.push_str(&ev.detail);
    }
    EventSpec {
        warning,
        reason,
        action: "StageChange",
        note: truncate(note),
    }
}

/// The pod's Event for an OOM kill or eviction of one of its containers.
pub fn pod_kill_event(rec: &KillRecord, evicted: bool) -> Option<EventSpec> {
    let container = rec
        .victim
        .pod
        .as_ref()?
        .container_id
        .as_deref()
        .unwrap_or("?")
        .to_string();
    let (reason, action, what) = if matches!(rec.kind, KillKind::OomMemcg | KillKind::OomGlobal) {
        ("ContainerOOMKilled", "OOMKill", "OOM-killed")
    } else if evicted {
        (
            "ContainerEvicted",
            "Kill",
            "killed by the kubelet or runtime",
        )
    } else {
        return None;
    };
    Some(EventSpec {
        warning: true,
        reason,
        action,
        note: truncate(format!(
            "container {container} process {}({}) {what}: {}",
            rec.victim.pid,
            rec.victim.comm,
            rec.text()
        )),
    })
}

/// The strategic merge patch of one condition on `nodes/status`.
pub fn condition_patch(
    c: &Condition,
    transition: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> serde_json::Value {
    let ts = |t: time::OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap_or(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": c.type_,
                "status": if c.status { "True" } else { "False" },
                "reason": c.reason,
                "message": c.message,
                "lastHeartbeatTime": ts(now),
                "lastTransitionTime": ts(transition),
            }]
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        cgroup::PodIdentity,
        detect::{classify::Cause, Forecast},
    };

    fn verdict(subject: Subject, forecast: Option<Forecast>) -> Verdict {
        Verdict {
            time: "t".into(),
            subject,
            cause: Cause::ContainerGc,
            slope_bytes_per_day: Some(250e6),
            slope_interval_bytes_per_day: None,
            forecast,
            supports: vec![],
            contradicts: vec![],
            next_checks: vec![],
            findings: vec![],
            inputs: Default::default(),
            cannot_tell: vec![],
        }
    }

    #[test]
    fn leak_condition_carries_verdict_cause_and_time_to_oom() {
        let f = Forecast {
            against: "kubelet_limit",
            limit_bytes: 1e9,
            earliest_seconds: 3.0 * 3600.0,
            expected_seconds: 2.0 * 86400.0,
            latest_seconds: None,
        };
        let c = leak_condition(&verdict(Subject::Kubelet, Some(f)));
        assert!(c.status);
        assert_eq!(c.type_, "KubeletMemoryLeak");
        assert_eq!(
            c.message,
            "kubelet memory leak: cause container_gc, pod-adjusted baseline slope 250 MB/day, \
             time to OOM 2.0d (earliest 3.0h) against kubelet_limit"
        );
        let c = leak_condition(&verdict(Subject::Workload, None));
        assert!(!c.status);
        assert_eq!(c.reason, "WorkloadMemoryGrowth");
        let c = leak_condition(&verdict(Subject::None, None));
        assert_eq!(
            (c.status, c.reason.as_str()),
            (false, "KubeletMemoryStable")
        );
    }

    fn stage(stage: Stage, previous: Stage, flapping: bool, cycles: u32) -> StageEvent {
        StageEvent {
            ktime_ns: 1,
            stage,
            previous,
            cycles,
            period_seconds: Some(42.0),
            flapping,
            detail: "d".into(),
            storm: None,
            collateral: Default::default(),
            collateral_caused: Default::default(),
            collateral_caused_omitted: 0,
            ending: None,
            seconds_left: None,
            headroom: None,
            recommendations: vec![],
        }
    }

    #[test]
    fn flapping_condition_set_while_flapping_and_cleared_at_recovery() {
        let mut cs = Conditions::default();
        let t0 = Instant::now();
        let wall0 = time::OffsetDateTime::UNIX_EPOCH;
        let wall1 = wall0 + time::Duration::seconds(10);
        // Starting: False.
        let (c, tr) = cs.update(flap_condition_at_start(), t0, wall0).unwrap();
        assert!(!c.status);
        assert_eq!(tr, wall0);
        // A first OOM is not flapping: no change to write.
        assert_eq!(
            flap_condition(&stage(Stage::ActiveOom, Stage::Steady, false, 1)),
            None
        );
        // Re-OOM within the window: True, with a new transition time.
        let c = flap_condition(&stage(Stage::ReOom, Stage::ReconciliationStorm, true, 2)).unwrap();
        assert_eq!(
            c.message,
            "the kubelet was OOM-killed 2 times, again within the flap window, last period 42 s; stage re_oom"
        );
        let (c, tr) = cs.update(c, t0, wall1).unwrap();
        assert!(c.status);
        assert_eq!(tr, wall1);
        // The storm after it, still flapping: a new message, but within the refresh interval.
        let c = flap_condition(&stage(Stage::ReconciliationStorm, Stage::ReOom, true, 2)).unwrap();
        assert_eq!(
            cs.update(c.clone(), t0 + Duration::from_secs(1), wall1),
            None
        );
        // ... written by the refresh, CONDITION_REFRESH after the last write, keeping the
        // transition time.
        cs.written(FLAP_CONDITION, true, t0);
        let later = t0 + CONDITION_REFRESH;
        assert!(cs.due(later - Duration::from_secs(1)).is_empty());
        assert_eq!(cs.due(later), vec![(c, wall1)]);
        cs.written(FLAP_CONDITION, true, later);
        // Recovery clears it.
        let c =
            flap_condition(&stage(Stage::Recovery, Stage::ReconciliationStorm, true, 2)).unwrap();
        let wall2 = wall1 + time::Duration::hours(2);
        let (c, tr) = cs.update(c, later, wall2).unwrap();
        assert!(!c.status);
        assert_eq!(c.reason, "KubeletOOMCycleEnded");
        assert_eq!(tr, wall2);
        // A failed write: the same condition is not sent again by the next fact, but by the
        // retry, CONDITION_RETRY later.
        cs.written(FLAP_CONDITION, false, later);
        let c =
            flap_condition(&stage(Stage::Recovery, Stage::ReconciliationStorm, true, 2)).unwrap();
        assert!(cs.update(c.clone(), later, wall2).is_none());
        assert!(cs.due(later + Duration::from_secs(9)).is_empty());
        let retry = later + CONDITION_RETRY;
        assert_eq!(cs.due(retry), vec![(c, wall2)]);
        assert!(cs.due(retry + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn conditions_are_rewritten_every_refresh_even_unchanged() {
        let refresh = Duration::from_secs(3);
        let mut cs = Conditions::new(refresh);
        assert_eq!(cs.tick(), Duration::from_millis(750));
        let t0 = Instant::now();
        let wall0 = time::OffsetDateTime::UNIX_EPOCH;
        let c = flap_condition_at_start();
        assert!(cs.update(c.clone(), t0, wall0).is_some());
        cs.written(FLAP_CONDITION, true, t0);
        // Nothing new: nothing due before the refresh interval, the same condition (same
        // transition time) at it, then again one interval after that write.
        assert!(cs.due(t0 + Duration::from_secs(2)).is_empty());
        assert!(cs
            .update(c.clone(), t0 + Duration::from_secs(2), wall0)
            .is_none());
        let t1 = t0 + refresh;
        assert_eq!(cs.due(t1), vec![(c.clone(), wall0)]);
        cs.written(FLAP_CONDITION, true, t1);
        assert!(cs.due(t1 + Duration::from_secs(2)).is_empty());
        assert_eq!(cs.due(t1 + refresh), vec![(c.clone(), wall0)]);
        // A new message within the interval waits for the refresh, which carries it.
        cs.written(FLAP_CONDITION, true, t1 + refresh);
        let t2 = t1 + refresh;
        let mut c2 = c.clone();
        c2.message = "other words".into();
        assert!(cs
            .update(c2.clone(), t2 + Duration::from_secs(1), wall0)
            .is_none());
        assert_eq!(cs.due(t2 + refresh), vec![(c2, wall0)]);
        // The default interval is node-problem-detector's heartbeat, 5 minutes.
        assert_eq!(Conditions::default().tick(), CONDITION_RETRY / 4);
        assert_eq!(CONDITION_REFRESH, Duration::from_secs(300));
    }

    #[test]
    fn condition_patch_is_a_strategic_merge_by_type() {
        let c = flap_condition_at_start();
        let t = time::OffsetDateTime::from_unix_timestamp(1_795_824_000).unwrap();
        let p = condition_patch(&c, t, t + time::Duration::seconds(5));
        assert_eq!(
            p.to_string(),
            r#"{"status":{"conditions":[{"lastHeartbeatTime":"2026-11-28T00:00:05Z","lastTransitionTime":"2026-11-28T00:00:00Z","message":"no kubelet OOM flapping seen since the agent started","reason":"AgentStarted","status":"False","type":"KubeletOOMFlapping"}]}}"#
        );
    }

    #[test]
    fn limiter_bounds_a_kill_storm_per_object_and_overall() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        // One pod killed 1000 times at once: its burst goes, the rest is held back.
        let allowed = (0..1000).filter(|_| l.allow("Pod/ns/a", t0)).count();
        assert_eq!(allowed, 25);
        // 1000 other pods at once: the global burst minus what pod a spent.
        let allowed = (0..1000)
            .filter(|i| l.allow(&format!("Pod/ns/p{i}"), t0))
            .count();
        assert_eq!(allowed, 25);
        // One second later: 5 more overall.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..1000)
            .filter(|i| l.allow(&format!("Pod/ns/q{i}"), t1))
            .count();
        assert_eq!(allowed, 5);
        // Pod a refills one Event per 5 minutes.
        let t2 = t0 + OBJECT_REFILL;
        assert!(l.allow("Pod/ns/a", t2));
        assert!(!l.allow("Pod/ns/a", t2));
        // A globally refused Event does not spend the object's token.
        let mut l = Limiter::new(t0);
        for i in 0..50 {
            assert!(l.allow(&format!("o{i}"), t0));
        }
        assert!(!l.allow("x", t0));
        let t3 = t0 + Duration::from_millis(200);
        assert!(l.allow("x", t3));
    }

    pub(crate) fn kill(kind: KillKind, sender: &str) -> KillRecord {
        KillRecord {
            time: "2026-11-29T00:00:00Z".into(),
            ktime_ns: 5,
            kind,
            victim: crate::forensics::record::Victim {
                pid: 42,
                tid: 42,
                comm: "memhog".into(),
                cgroup: Some("/kubepods/burstable/podabc/ctr1".into()),
                pod: Some(PodIdentity {
                    pod_uid: "abc".into(),
                    qos: "burstable".into(),
                    container_id: Some("ctr1".into()),
                }),
            },
            sender: crate::forensics::record::Sender {
                pid: 7,
                tid: 7,
                comm: sender.into(),
                code: "SI_KERNEL".into(),
                cgroup: None,
            },
            memory: crate::forensics::record::Memory {
                anon_rss_kb: None,
                file_rss_kb: None,
                shmem_rss_kb: None,
                total_vm_kb: None,
                pgtables_kb: None,
                source: None,
            },
            oom: None,
            exit_after_ns: Some(1_000_000),
            exit_code: None,
            extra_sigkills: 0,
            delivery: "delivered",
            seen_after_ns: None,
        }
    }

    #[test]
    fn event_messages_carry_the_records_key_facts() {
        let rec = kill(KillKind::OomMemcg, "memhog");
        let e = pod_kill_event(&rec, false).unwrap();
        assert_eq!(e.reason, "ContainerOOMKilled");
        assert_eq!(
            e.note,
            "container ctr1 process 42(memhog) OOM-killed: 2026-11-29T00:00:00Z KILL oom_memcg \
             victim=42(memhog) cgroup=/kubepods/burstable/podabc/ctr1 sender=7(memhog) SI_KERNEL \
             anon=? file=? shmem=? pod=abc died_after=1.000ms"
        );
        let rec = kill(KillKind::Signal, "containerd-shim");
        assert_eq!(
            pod_kill_event(&rec, true).unwrap().reason,
            "ContainerEvicted"
        );
        // A plain kill -9 from some process is neither.
        assert_eq!(pod_kill_event(&rec, false), None);
        assert_eq!(kubelet_kill_event(&rec), None);
        let rec = kill(KillKind::OomMemcg, "kubelet");
        assert!(kubelet_kill_event(&rec)
            .unwrap()
            .note
            .starts_with("kubelet OOM-killed: 2026-11-29T00:00:00Z KILL oom_memcg"));
        let e = stage_event(&stage(Stage::ReOom, Stage::ReconciliationStorm, true, 3));
        assert_eq!(
            (e.reason, e.warning, e.note.as_str()),
            (
                "KubeletReOOM",
                true,
                "OOM cycle stage re_oom (was reconciliation_storm), 3 kubelet OOM kills, flapping: d"
            )
        );
        assert!(truncate("é".repeat(1000)).len() <= NOTE_MAX);
    }
}
