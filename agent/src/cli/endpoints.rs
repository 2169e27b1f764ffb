//! The endpoints `run` and `diagnose` both talk to, with their credentials: the kubelet's
//! `/metrics` and the Kubernetes API (in-cluster by default).
use std::path::PathBuf;

use crate::{
    kubeapi::{ApiError, ApiSource},
    kubelet::metrics::{MetricsError, TlsOptions},
};

#[derive(Debug, Clone, clap::Args)]
pub struct KubeletMetricsArgs {
    /// The kubelet's metrics endpoint (goroutines, PLEG relist, evictions), http or https,
    /// e.g. https://$NODE_IP:10250/metrics. Failures are reported, never fatal.
    #[arg(long, value_parser = super::UrlParser)]
    pub kubelet_metrics: Option<String>,
    /// Bearer token file for --kubelet-metrics (a regular file of at most 4 MiB, not empty;
    /// re-read before each scrape).
    #[arg(long)]
    pub kubelet_metrics_token_file: Option<PathBuf>,
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

    /// The token, read now (it may be rotated on disk); None without a token file.
    /// Errors ([`MetricsError::Token`], naming the file): the file is missing, not a regular
    /// file, larger than [`crate::files::MAX_BYTES`], not UTF-8, or holds only whitespace.
    pub fn token(&self) -> Result<Option<String>, MetricsError> {
        let Some(f) = &self.kubelet_metrics_token_file else {
            return Ok(None);
        };
        let bad = |e| MetricsError::Token(f.display().to_string(), e);
        let text = crate::files::read_to_string(f, crate::files::MAX_BYTES).map_err(bad)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(bad(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "empty: no token",
            )));
        }
        Ok(Some(token.to_string()))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KubeApiArgs {
    /// This node's name (default: the hostname): a Kubernetes node name, not empty.
    #[arg(long, value_parser = super::parse_node_name)]
    pub node_name: Option<String>,
    /// A kubeconfig file (its current context) for the API server and credentials; before
    /// --kube-api and the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes API base URL (default: in-cluster, from KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long, value_parser = super::UrlParser)]
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

    /// The files given by name, checked as the client will read them: the kubeconfig (and
    /// the files it names), `--kube-token-file` and `--kube-ca-file`. A bad one is input like
    /// any other, refused naming the file, not a feature quietly disabled later.
    /// Errors: [`ApiError::BadFile`] (missing, not a regular file, too large),
    /// [`ApiError::Missing`], or the kubeconfig's own ([`ApiSource::config`]).
    pub async fn check_files(&self) -> Result<(), ApiError> {
        let source = self.source();
        if source.kubeconfig.is_some() {
            source.config().await?;
        }
        if let Some(t) = &self.kube_token_file {
            crate::kubeapi::check_file("token", t)?;
        }
        if let Some(ca) = &self.kube_ca_file {
            crate::kubeapi::check_file("CA", ca)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(file: Option<&str>) -> KubeletMetricsArgs {
        KubeletMetricsArgs {
            kubelet_metrics: Some("http://127.0.0.1:1/metrics".into()),
            kubelet_metrics_token_file: file.map(PathBuf::from),
            kubelet_metrics_ca_file: None,
            kubelet_metrics_insecure: false,
        }
    }

    /// Every bad token file is an error naming the file and what is wrong, never a request
    /// without the token.
    #[test]
    fn a_bad_token_file_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("oomprobe-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("blank");
        std::fs::write(&empty, " \n").unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 5 << 20]).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let good = dir.join("good");
        std::fs::write(&good, "s3cret\n").unwrap();
        let missing = dir.join("missing");
        let name = |p: &std::path::Path| p.to_str().unwrap().to_string();
        for (file, why) in [
            (
                name(&missing),
                "No such file or directory (os error 2)".into(),
            ),
            (name(&dir), "not a regular file".to_string()),
            (name(&fifo), "not a regular file".into()),
            ("/dev/zero".into(), "not a regular file".into()),
            (name(&empty), "empty: no token".into()),
            (
                name(&big),
                "5242880 bytes, more than the 4194304 read".into(),
            ),
        ] {
            let e = with_token(Some(&file)).token().unwrap_err();
            assert_eq!(e.reason(), "token", "{file}");
            assert_eq!(
                crate::error_chain(&e),
                format!("cannot read bearer token file {file}: {why}")
            );
        }
        assert_eq!(
            with_token(Some(&name(&good))).token().unwrap(),
            Some("s3cret".into())
        );
        assert_eq!(with_token(None).token().unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
