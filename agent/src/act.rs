//! The one action the agent may take, opt-in: cordon the node through the Kubernetes API when it
//! flaps. Dry-run unless confirmed, logged, once per flap episode, never retried in a tight
//! loop. The agent never kills or restarts the kubelet.
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cycle::{Stage, StageEvent};

pub const TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Strategic merge patch that marks the node unschedulable (what `kubectl cordon` sends).
pub const CORDON_BODY: &str = r#"{"spec":{"unschedulable":true}}"#;

#[derive(Debug, Clone)]
pub struct CordonConfig {
    /// API server base URL, e.g. `https://10.0.0.1:443` (in-cluster) or a loopback test server.
    pub api: String,
    pub node: String,
    pub token_file: Option<String>,
    /// CA of the API server (in-cluster: the service account's ca.crt).
    pub tls: crate::http::TlsOptions,
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

pub struct Cordon {
    cfg: CordonConfig,
    /// Done (or dry-run logged) for the current flap episode.
    done: bool,
    attempts: u32,
    next_try: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("cannot reach the API server")]
    Http(#[source] crate::http::HttpError),
    #[error("API server answered {0}")]
    Status(String),
}

/// Sends one PATCH; returns the status line on 2xx.
pub async fn patch_node(
    api: &str,
    node: &str,
    token: Option<&str>,
    tls: &crate::http::TlsOptions,
) -> Result<String, ActError> {
    let url = format!("{}/api/v1/nodes/{node}", api.trim_end_matches('/'));
    let mut headers = vec![(
        "Content-Type",
        "application/strategic-merge-patch+json".to_string(),
    )];
    if let Some(t) = token {
        headers.push(("Authorization", format!("Bearer {}", t.trim())));
    }
    let r = crate::http::request(
        "PATCH",
        &url,
        &headers,
        CORDON_BODY.as_bytes(),
        tls,
        Duration::from_secs(10),
    )
    .await
    .map_err(ActError::Http)?;
    if (200..300).contains(&r.status) {
        Ok(r.status_line)
    } else {
        Err(ActError::Status(r.status_line))
    }
}

impl Cordon {
    pub fn new(cfg: CordonConfig) -> Cordon {
        Cordon {
            cfg,
            done: false,
            attempts: 0,
            next_try: None,
        }
    }

    /// Reacts to a stage change: cordons once per flap episode; Recovery ends the episode.
    pub async fn on_stage(&mut self, ev: &StageEvent) -> Option<ActionEvent> {
        if ev.stage == Stage::Recovery || ev.stage == Stage::Steady {
            self.done = false;
            self.attempts = 0;
            self.next_try = None;
            return None;
        }
        if !ev.flapping || self.done {
            return None;
        }
        if self.next_try.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if !self.cfg.confirm {
            self.done = true;
            tracing::warn!(node = %self.cfg.node, "flapping: would cordon the node (dry run; confirm with --act-confirm)");
            return Some(ActionEvent {
                action: "cordon",
                node: self.cfg.node.clone(),
                dry_run: true,
                ok: true,
                detail: format!("would PATCH /api/v1/nodes/{} {CORDON_BODY}", self.cfg.node),
            });
        }
        let token = self
            .cfg
            .token_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok());
        self.attempts += 1;
        let result = patch_node(
            &self.cfg.api,
            &self.cfg.node,
            token.as_deref(),
            &self.cfg.tls,
        )
        .await;
        let (ok, detail) = match result {
            Ok(status) => {
                self.done = true;
                tracing::warn!(node = %self.cfg.node, %status, "flapping: cordoned the node");
                (true, status)
            }
            Err(e) => {
                // Back off: 5 minutes, then 10, ... and give up for this episode after 3.
                let wait = Duration::from_secs(300 * u64::from(self.attempts));
                self.next_try = Some(Instant::now() + wait);
                if self.attempts >= 3 {
                    self.done = true;
                }
                let why = crate::error_chain(&e);
                tracing::error!(node = %self.cfg.node, error = %why, retry_in_s = wait.as_secs(), "cordon failed");
                (false, why)
            }
        };
        Some(ActionEvent {
            action: "cordon",
            node: self.cfg.node.clone(),
            dry_run: false,
            ok,
            detail,
        })
    }
}
