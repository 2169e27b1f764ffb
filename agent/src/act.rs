//! The one action the agent may take, opt-in: cordon the node through the Kubernetes API when it
//! flaps. Dry-run unless confirmed, logged, once per flap episode, never retried in a tight
//! loop. The agent never kills or restarts the kubelet.
//!
//! The decision is made here, on the pipeline's loop; the PATCH runs in a task of its own
//! ([`spawn_cordon`]) and its result comes back through a channel ([`Cordon::on_result`]), so
//! a slow API server never holds up kill records.
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    cycle::{Stage, StageEvent},
    kubeapi::CORDON_BODY,
};

#[derive(Clone)]
pub struct CordonConfig {
    /// The API client (kubeconfig, in-cluster or `--kube-api`).
    pub client: kube::Client,
    pub node: String,
    /// Without it the action is logged as a dry run and nothing is sent.
    pub confirm: bool,
}

/// An action taken or logged (`Output::Action` in the JSON stream).
#[derive(Debug, Clone, Serialize)]
pub struct ActionEvent {
    pub action: &'static str,
    pub node: String,
    pub dry_run: bool,
    pub ok: bool,
    pub detail: String,
}

/// What [`Cordon::on_stage`] decided.
#[derive(Debug)]
pub enum Decision {
    /// Logged only (no `--act-confirm`).
    DryRun(ActionEvent),
    /// Send the PATCH now ([`spawn_cordon`]); report its result to [`Cordon::on_result`].
    Send,
}

pub struct Cordon {
    cfg: CordonConfig,
    /// Done (or dry-run logged) for the current flap episode.
    done: bool,
    /// A PATCH is on its way.
    in_flight: bool,
    attempts: u32,
    next_try: Option<Instant>,
}

impl Cordon {
    pub fn new(cfg: CordonConfig) -> Cordon {
        Cordon {
            cfg,
            done: false,
            in_flight: false,
            attempts: 0,
            next_try: None,
        }
    }

    pub fn client(&self) -> kube::Client {
        self.cfg.client.clone()
    }

    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    /// Reacts to a stage change: cordons once per flap episode. An episode is a run of kubelet
    /// OOM kills each within the flap window of the one before: a `recovery` between two of them
    /// (a storm that settled before the next kill) does not end it; a kill outside the window
    /// (`active_oom`/`re_oom` not flapping) or `steady` starts a new one. Nothing is sent on
    /// `recovery` or `steady`.
    pub fn on_stage(&mut self, ev: &StageEvent) -> Option<Decision> {
        let kill = matches!(ev.stage, Stage::ActiveOom | Stage::ReOom);
        if (kill && !ev.flapping) || ev.stage == Stage::Steady {
            self.done = false;
            self.attempts = 0;
            self.next_try = None;
        }
        if matches!(ev.stage, Stage::Recovery | Stage::Steady) {
            return None;
        }
        if !ev.flapping || self.done || self.in_flight {
            return None;
        }
        if self.next_try.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if !self.cfg.confirm {
            self.done = true;
            tracing::warn!(node = %self.cfg.node, "flapping: would cordon the node (dry run; confirm with --act-confirm)");
            return Some(Decision::DryRun(ActionEvent {
                action: "cordon",
                node: self.cfg.node.clone(),
                dry_run: true,
                ok: true,
                detail: format!("would PATCH /api/v1/nodes/{} {CORDON_BODY}", self.cfg.node),
            }));
        }
        self.attempts = self.attempts.saturating_add(1);
        self.in_flight = true;
        Some(Decision::Send)
    }

    /// The PATCH's result: the action event for the stream; on failure a backoff of 5 minutes,
    /// then 10, and the episode is given up after 3 attempts.
    pub fn on_result(&mut self, result: Result<(), crate::kubeapi::ApiError>) -> ActionEvent {
        self.in_flight = false;
        let (ok, detail) = match result {
            Ok(()) => {
                self.done = true;
                tracing::warn!(node = %self.cfg.node, "flapping: cordoned the node");
                (
                    true,
                    format!("PATCH /api/v1/nodes/{} {CORDON_BODY}", self.cfg.node),
                )
            }
            Err(e) => {
                let wait = Duration::from_secs(300u64.saturating_mul(u64::from(self.attempts)));
                self.next_try = Some(Instant::now() + wait);
                if self.attempts >= 3 {
                    self.done = true;
                }
                let why = crate::error_chain(&e);
                tracing::error!(node = %self.cfg.node, error = %why, retry_in_s = wait.as_secs(), "cordon failed");
                (false, why)
            }
        };
        ActionEvent {
            action: "cordon",
            node: self.cfg.node.clone(),
            dry_run: false,
            ok,
            detail,
        }
    }
}

/// Sends the cordon PATCH in a task; its result goes to `done`.
pub fn spawn_cordon(
    client: kube::Client,
    node: String,
    done: mpsc::Sender<Result<(), crate::kubeapi::ApiError>>,
) {
    tokio::spawn(async move {
        let r = crate::kubeapi::cordon(client, &node).await;
        let _ = done.send(r).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(stage: Stage, flapping: bool) -> StageEvent {
        StageEvent {
            ktime_ns: 0,
            stage,
            previous: Stage::Steady,
            cycles: 1,
            period_seconds: None,
            flapping,
            detail: String::new(),
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

    fn cordon(confirm: bool) -> Cordon {
        let cfg = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        Cordon::new(CordonConfig {
            client: kube::Client::try_from(cfg).unwrap(),
            node: "n".into(),
            confirm,
        })
    }

    fn sends(c: &mut Cordon, ev: StageEvent) -> bool {
        match c.on_stage(&ev) {
            Some(Decision::Send) => {
                c.on_result(Ok(()));
                true
            }
            Some(Decision::DryRun(_)) => true,
            None => false,
        }
    }

    /// Seen on the real kubelet under CPU load: a restarted kubelet's storm settled (`recovery`)
    /// 5-14 s before the kernel killed it again within the flap window. One episode, one cordon.
    #[tokio::test]
    async fn a_recovery_between_flapping_kills_does_not_start_a_new_episode() {
        for confirm in [true, false] {
            let mut c = cordon(confirm);
            assert!(!sends(&mut c, stage(Stage::ActiveOom, false)));
            assert!(!sends(&mut c, stage(Stage::ReconciliationStorm, false)));
            assert!(sends(&mut c, stage(Stage::ReOom, true)));
            assert!(!sends(&mut c, stage(Stage::ReconciliationStorm, true)));
            assert!(!sends(&mut c, stage(Stage::Recovery, true)));
            assert!(!sends(&mut c, stage(Stage::ReOom, true)));
            assert!(!sends(&mut c, stage(Stage::ReconciliationStorm, true)));
            assert!(!sends(&mut c, stage(Stage::Recovery, true)));
            // A kill outside the flap window: a new episode, which cordons at its flapping kill.
            assert!(!sends(&mut c, stage(Stage::ReOom, false)));
            assert!(sends(&mut c, stage(Stage::ReOom, true)));
            // Headroom back (`steady`) ends an episode too.
            assert!(!sends(&mut c, stage(Stage::Steady, false)));
            assert!(sends(&mut c, stage(Stage::ReOom, true)));
        }
    }

    #[tokio::test]
    async fn a_failed_cordon_is_not_retried_within_its_backoff() {
        let mut c = cordon(true);
        assert!(matches!(
            c.on_stage(&stage(Stage::ReOom, true)),
            Some(Decision::Send)
        ));
        // In flight: nothing more is sent.
        assert!(c
            .on_stage(&stage(Stage::ReconciliationStorm, true))
            .is_none());
        let ev = c.on_result(Err(crate::kubeapi::ApiError::NoApiServer));
        assert!(!ev.ok);
        // Within the 5-minute backoff: nothing sent.
        assert!(c.on_stage(&stage(Stage::ReOom, true)).is_none());
    }
}
