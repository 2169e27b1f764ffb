//! What the leak classifier reads from the API server, polled read-only: the node's
//! MemoryPressure condition (`get nodes/<node>`) and this node's pending kubelet
//! CertificateSigningRequests (`list certificatesigningrequests`, certificates.k8s.io/v1).
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{certificates::v1::CertificateSigningRequest, core::v1::Node};
use kube::{api::ListParams, Api, Client};

use super::ApiError;

/// The signers of a kubelet's own certificates (serving, and its client certificate).
pub const KUBELET_SIGNERS: &[&str] = &[
    "kubernetes.io/kubelet-serving",
    "kubernetes.io/kube-apiserver-client-kubelet",
];

/// The latest poll: each value None until read, and after a failed read (with the reason).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiInputs {
    /// 1 when the node's MemoryPressure condition is True, 0 when False.
    pub memory_pressure: Option<f64>,
    /// This node's kubelet CSRs with neither an Approved nor a Denied condition.
    pub pending_csrs: Option<f64>,
    /// Why `memory_pressure` is None (an error chain), when it is.
    pub memory_pressure_error: Option<String>,
    /// Why `pending_csrs` is None, when it is.
    pub pending_csrs_error: Option<String>,
}

/// Shared between the poller and the pipeline.
pub type Latest = Arc<std::sync::Mutex<ApiInputs>>;

/// 1/0 for a condition status `True`/`False`; None for `Unknown` or another value.
pub fn condition_value(status: Option<&str>) -> Option<f64> {
    match status {
        Some("True") => Some(1.0),
        Some("False") => Some(0.0),
        _ => None,
    }
}

/// Pending CSRs of `node`'s kubelet: signer one of [`KUBELET_SIGNERS`], requested by
/// `system:node:<node>` (a bootstrap request, made before the node has its own credentials,
/// carries the bootstrap token's user and is not counted), neither Approved nor Denied.
pub fn pending_csrs(csrs: &[CertificateSigningRequest], node: &str) -> usize {
    let user = format!("system:node:{node}");
    csrs.iter()
        .filter(|c| KUBELET_SIGNERS.contains(&c.spec.signer_name.as_str()))
        .filter(|c| c.spec.username.as_deref() == Some(user.as_str()))
        .filter(|c| {
            !c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x.type_ == "Approved" || x.type_ == "Denied")
                })
        })
        .count()
}

async fn read_pressure(client: Client, node: &str) -> Result<Option<f64>, ApiError> {
    let n = Api::<Node>::all(client).get(node).await?;
    let status = n
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "MemoryPressure"))
        .map(|c| c.status);
    Ok(condition_value(status.as_deref()))
}

async fn read_csrs(client: Client, node: &str) -> Result<usize, ApiError> {
    let list = Api::<CertificateSigningRequest>::all(client)
        .list(&ListParams::default())
        .await?;
    Ok(pending_csrs(&list.items, node))
}

/// Polls both every `every` in a task of its own; each failure is counted in `errors`
/// (`oomprobe_kube_api_inputs_errors_total{input}`) and logged (the first, then every 60th).
pub fn spawn_poller(
    client: Client,
    node: String,
    every: Duration,
    errors: prometheus::IntCounterVec,
) -> Latest {
    let latest = Latest::default();
    let out = latest.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut failures = 0u64;
        loop {
            tick.tick().await;
            let mut got = ApiInputs::default();
            match read_pressure(client.clone(), &node).await {
                Ok(v) => {
                    got.memory_pressure = v;
                    if v.is_none() {
                        got.memory_pressure_error = Some(format!(
                            "node {node} has no True/False MemoryPressure condition"
                        ));
                    }
                }
                Err(e) => {
                    errors.with_label_values(&["memory_pressure"]).inc();
                    got.memory_pressure_error = Some(crate::error_chain(&e));
                }
            }
            match read_csrs(client.clone(), &node).await {
                Ok(n) => got.pending_csrs = Some(n as f64),
                Err(e) => {
                    errors.with_label_values(&["pending_csrs"]).inc();
                    got.pending_csrs_error = Some(crate::error_chain(&e));
                }
            }
            if got.memory_pressure_error.is_some() || got.pending_csrs_error.is_some() {
                if failures.is_multiple_of(60) {
                    tracing::warn!(pressure = ?got.memory_pressure_error, csrs = ?got.pending_csrs_error, "API inputs of the leak classifier unavailable");
                }
                failures += 1;
            }
            if let Ok(mut l) = out.lock() {
                *l = got;
            }
        }
    });
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes the API server returns (certificates.k8s.io/v1), as JSON.
    fn csr(signer: &str, user: &str, condition: Option<&str>) -> CertificateSigningRequest {
        let status = match condition {
            Some(c) => serde_json::json!({"conditions": [{"type": c, "status": "True"}]}),
            None => serde_json::json!({}),
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": "csr-x"},
            "spec": {"request": "", "signerName": signer, "username": user, "usages": ["server auth"]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn only_this_nodes_undecided_kubelet_csrs_are_pending() {
        let me = "system:node:n1";
        let all = [
            csr("kubernetes.io/kubelet-serving", me, None),
            csr("kubernetes.io/kube-apiserver-client-kubelet", me, None),
            csr("kubernetes.io/kubelet-serving", me, Some("Approved")),
            csr("kubernetes.io/kubelet-serving", me, Some("Denied")),
            csr("kubernetes.io/kubelet-serving", "system:node:n2", None),
            csr("example.com/other", me, None),
            csr("kubernetes.io/kubelet-serving", me, Some("Failed")),
        ];
        assert_eq!(pending_csrs(&all, "n1"), 3);
        assert_eq!(condition_value(Some("True")), Some(1.0));
        assert_eq!(condition_value(Some("Unknown")), None);
    }
}
