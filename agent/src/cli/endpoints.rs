//! The endpoints `run` and `diagnose` both talk to, with their credentials: the kubelet's
//! `/metrics` and the Kubernetes API (in-cluster by default).
use std::path::PathBuf;

use crate::{kubeapi::ApiSource, kubelet::metrics::TlsOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct KubeletMetricsArgs {
    /// The kubelet's metrics endpoint (goroutines, PLEG relist, evictions), http or https,
    /// e.g. https://$NODE_IP:10250/metrics. Failures are reported, never fatal.
    #[arg(long)]
    pub kubelet_metrics: Option<String>,
    /// Bearer token file for --kubelet-metrics.
    #[arg(long)]
    pub kubelet_metrics_token_file: Option<String>,
    /// CA (PEM) of the kubelet's serving certificate.
    #[arg(long)]
    pub kubelet_metrics_ca_file: Option<PathBuf>,
    /// Accept any kubelet serving certificate (as `curl -k` in the field guide).
    #[arg(long)]
    pub kubelet_metrics_insecure: bool,
}

impl KubeletMetricsArgs {
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_file: self.kubelet_metrics_ca_file.clone(),
            insecure: self.kubelet_metrics_insecure,
        }
    }

    /// Scrapes `--kubelet-metrics` every `every` in a task of its own; without it the latest
    /// scrape stays None.
    pub fn spawn_scraper(
        &self,
        every: std::time::Duration,
        errors: prometheus::IntCounterVec,
    ) -> crate::kubelet::metrics::Latest {
        let Some(url) = self.kubelet_metrics.clone() else {
            return Default::default();
        };
        let source = self.clone();
        let token = move || source.token();
        crate::kubelet::metrics::spawn_scraper(url, token, self.tls(), every, errors)
    }

    /// The token, read now (it may be rotated on disk).
    pub fn token(&self) -> Option<String> {
        self.kubelet_metrics_token_file.as_ref().and_then(|f| {
            crate::files::read_to_string(std::path::Path::new(f), crate::files::MAX_BYTES).ok()
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KubeApiArgs {
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// A kubeconfig file (its current context) for the API server and credentials; before
    /// --kube-api and the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes API base URL (default: in-cluster, from KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long)]
    pub kube_api: Option<String>,
    /// Bearer token file for the API (default: the in-cluster service account token); re-read
    /// at least once a minute, so a rotated token is picked up.
    #[arg(long)]
    pub kube_token_file: Option<PathBuf>,
    /// CA (PEM) of the API server (default: the in-cluster service account's ca.crt).
    #[arg(long)]
    pub kube_ca_file: Option<PathBuf>,
}

impl KubeApiArgs {
    /// Where the API server and its credentials come from.
    pub fn source(&self) -> ApiSource {
        ApiSource {
            kubeconfig: self.kubeconfig.clone(),
            api: self.kube_api.clone(),
            token_file: self.kube_token_file.clone(),
            ca_file: self.kube_ca_file.clone(),
        }
    }

    pub fn node(&self) -> String {
        crate::kubeapi::node_name(self.node_name.as_deref())
    }

    /// The API client, or None (logged) when there is no API server or it cannot be set up;
    /// `what` names the feature that needs it.
    pub async fn client(&self, what: &str) -> Option<kube::Client> {
        let source = self.source();
        if !source.available() {
            tracing::error!("{what} needs the API server: not in a cluster and neither --kubeconfig nor --kube-api; disabled");
            return None;
        }
        match source.client().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(api = %source.describe(), error = %crate::error_chain(&e), "{what} disabled: no API client");
                None
            }
        }
    }
}
