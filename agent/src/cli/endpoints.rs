//! The endpoints `run` and `diagnose` both talk to, with their credentials: the kubelet's
//! `/metrics` and the Kubernetes API (in-cluster by default).
use std::path::PathBuf;

use crate::http::TlsOptions;

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

    /// The token, read now (it may be rotated on disk).
    pub fn token(&self) -> Option<String> {
        self.kubelet_metrics_token_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KubeApiArgs {
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Kubernetes API base URL (default: in-cluster, from KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long)]
    pub kube_api: Option<String>,
    /// Bearer token file for the API (default: the in-cluster service account token).
    #[arg(long)]
    pub kube_token_file: Option<String>,
    /// CA (PEM) of the API server (default: the in-cluster service account's ca.crt).
    #[arg(long)]
    pub kube_ca_file: Option<PathBuf>,
}

impl KubeApiArgs {
    /// The API base URL, or None outside a cluster without --kube-api.
    pub fn api(&self) -> Option<String> {
        self.kube_api.clone().or_else(|| {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            Some(format!("https://{host}:{port}"))
        })
    }

    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        })
    }

    pub fn token_file(&self) -> String {
        self.kube_token_file
            .clone()
            .unwrap_or_else(|| crate::act::TOKEN_FILE.into())
    }

    /// The cordon's configuration (`--act cordon`), or None (logged) without an API server.
    pub fn cordon(&self, confirm: bool) -> Option<crate::act::CordonConfig> {
        let Some(api) = self.api() else {
            tracing::error!("--act cordon needs the API server: not in a cluster and no --kube-api; action disabled");
            return None;
        };
        let node = self.node();
        tracing::info!(%api, %node, confirm, "cordon action armed for flaps");
        Some(crate::act::CordonConfig {
            api,
            node,
            token_file: Some(self.token_file()),
            tls: self.tls(),
            confirm,
        })
    }

    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_file: Some(
                self.kube_ca_file
                    .clone()
                    .unwrap_or_else(|| crate::act::CA_FILE.into()),
            ),
            insecure: false,
        }
    }
}
