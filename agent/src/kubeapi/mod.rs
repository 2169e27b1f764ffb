//! The Kubernetes API through kube-rs: the client (a kubeconfig, the in-cluster service account,
//! or the `--kube-*` flags), the node reads and writes the agent makes (the cordon, the node's
//! conditions) and the opt-in reports (custom node conditions and Events, [`report`]).
//!
//! Credentials: the bearer token file is re-read by kube-rs at least once a minute, so a rotated
//! service account token (kubelet-projected, rotated hourly) is picked up without a restart; the
//! CA file (`root_cert_file`) is re-read the same way.
pub mod facts;
pub mod report;

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config,
};

/// The in-cluster service account's token (projected, rotated by the kubelet).
pub const TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The in-cluster service account's CA bundle.
pub const CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The field manager the agent's writes are recorded under (`kubectl get node -o yaml
/// --show-managed-fields`).
pub const FIELD_MANAGER: &str = "oomprobe";
/// Strategic merge patch that marks the node unschedulable (what `kubectl cordon` sends).
pub const CORDON_BODY: &str = r#"{"spec":{"unschedulable":true}}"#;

/// Where the API server and its credentials come from, in this order: `kubeconfig` (its
/// current context), else `api` (a base URL), else the in-cluster environment
/// (`KUBERNETES_SERVICE_HOST`/`PORT`). `token_file` and `ca_file` override what the source
/// gives; unset, the in-cluster files are used when they exist.
#[derive(Debug, Clone, Default)]
pub struct ApiSource {
    pub kubeconfig: Option<PathBuf>,
    pub api: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no API server: not in a cluster and neither --kubeconfig nor --kube-api given")]
    NoApiServer,
    #[error("bad API server URL {0:?}")]
    Url(String, #[source] hyper::http::uri::InvalidUri),
    #[error("cannot read kubeconfig {0}")]
    Kubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    #[error("in-cluster configuration")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("{what} file {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("cannot build the API client")]
    Client(#[source] kube::Error),
    #[error("API server answered {code} {reason}: {message}")]
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("API request failed")]
    Request(#[source] kube::Error),
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> ApiError {
        match e {
            kube::Error::Api(s) => ApiError::Status {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => ApiError::Request(other),
        }
    }
}

impl ApiSource {
    /// Whether any source is configured or the in-cluster environment is present.
    pub fn available(&self) -> bool {
        self.kubeconfig.is_some()
            || self.api.is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    }

    /// A short description for logs: the kubeconfig path or the URL.
    pub fn describe(&self) -> String {
        match (&self.kubeconfig, &self.api) {
            (Some(k), _) => format!("kubeconfig {}", k.display()),
            (None, Some(a)) => a.clone(),
            (None, None) => "in-cluster".into(),
        }
    }

    /// The kube-rs configuration.
    pub async fn config(&self) -> Result<Config, ApiError> {
        let mut cfg = if let Some(path) = &self.kubeconfig {
            let kc =
                Kubeconfig::read_from(path).map_err(|e| ApiError::Kubeconfig(path.clone(), e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| ApiError::Kubeconfig(path.clone(), e))?
        } else if let Some(url) = &self.api {
            let uri = url.parse().map_err(|e| ApiError::Url(url.clone(), e))?;
            let mut cfg = Config::new(uri);
            cfg.auth_info.token_file = existing(TOKEN_FILE);
            cfg.root_cert_file = existing(CA_FILE).map(PathBuf::from);
            cfg
        } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            Config::incluster().map_err(ApiError::InCluster)?
        } else {
            return Err(ApiError::NoApiServer);
        };
        if let Some(t) = &self.token_file {
            if let Err(e) = std::fs::read(t) {
                // The request still goes out, unauthenticated (what the API server then
                // answers, 401 or 403, is reported), as before kube-rs.
                tracing::warn!(path = %t.display(), error = %e, "cannot read the API token file: requests go without a bearer token");
                cfg.auth_info.token_file = None;
            } else {
                cfg.auth_info.token = None;
                cfg.auth_info.token_file = Some(t.display().to_string());
            }
        }
        if let Some(ca) = &self.ca_file {
            if !ca.exists() {
                return Err(ApiError::Missing {
                    what: "CA",
                    path: ca.clone(),
                });
            }
            cfg.root_cert_file = Some(ca.clone());
        }
        // Agent calls are small; a hung API server must not hold a worker forever.
        cfg.read_timeout = Some(std::time::Duration::from_secs(15));
        cfg.reset_reader_on_write = true;
        Ok(cfg)
    }

    /// A client for this source.
    pub async fn client(&self) -> Result<Client, ApiError> {
        Client::try_from(self.config().await?).map_err(ApiError::Client)
    }
}

fn existing(path: &str) -> Option<String> {
    Path::new(path).exists().then(|| path.to_string())
}

/// This node's name: `--node-name`, else the hostname (what the kubelet registers by default).
pub fn node_name(flag: Option<&str>) -> String {
    flag.map(str::to_string).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

/// Cordons `node` (`spec.unschedulable: true`, as `kubectl cordon`), a strategic merge patch.
pub async fn cordon(client: Client, node: &str) -> Result<(), ApiError> {
    let nodes: Api<Node> = Api::all(client);
    let body: serde_json::Value =
        serde_json::from_str(CORDON_BODY).expect("the cordon body is valid JSON");
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    nodes.patch(node, &pp, &Patch::Strategic(body)).await?;
    Ok(())
}

/// The status (`True`, `False`, `Unknown`) of the node's condition `type_`, or None when the
/// node has no such condition.
pub async fn node_condition(
    client: Client,
    node: &str,
    type_: &str,
) -> Result<Option<String>, ApiError> {
    let nodes: Api<Node> = Api::all(client);
    let n = nodes.get(node).await?;
    Ok(n.status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == type_))
        .map(|c| c.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oomprobe-kubeapi-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn flags_kubeconfig_and_their_overrides() {
        let d = scratch("cfg");
        let token = d.join("token");
        std::fs::write(&token, "s3cret").unwrap();
        // --kube-api with a token file.
        let src = ApiSource {
            api: Some("http://127.0.0.1:6443".into()),
            token_file: Some(token.clone()),
            ..Default::default()
        };
        let cfg = src.config().await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "http://127.0.0.1:6443/");
        assert_eq!(cfg.auth_info.token_file.as_deref(), token.to_str());
        assert_eq!(cfg.read_timeout, Some(std::time::Duration::from_secs(15)));
        // A named CA file that does not exist is an error, not an unverified connection.
        let src = ApiSource {
            ca_file: Some(d.join("missing.crt")),
            ..src
        };
        assert!(matches!(
            src.config().await.unwrap_err(),
            ApiError::Missing { what: "CA", .. }
        ));
        // A kubeconfig's current context comes first; the token file flag overrides its user.
        let kc = d.join("kubeconfig");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\ncurrent-context: lab\n\
             clusters:\n- name: lab\n  cluster:\n    server: https://10.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             users:\n- name: admin\n  user:\n    token: inline\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\n",
        )
        .unwrap();
        let src = ApiSource {
            kubeconfig: Some(kc.clone()),
            api: Some("http://ignored:1".into()),
            ..Default::default()
        };
        let cfg = src.config().await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://10.0.0.1:6443/");
        assert!(cfg.accept_invalid_certs);
        let src = ApiSource {
            token_file: Some(token.clone()),
            ..src
        };
        let cfg = src.config().await.unwrap();
        assert_eq!(cfg.auth_info.token_file.as_deref(), token.to_str());
        assert!(cfg.auth_info.token.is_none());
        assert_eq!(src.describe(), format!("kubeconfig {}", kc.display()));
        // A token file that cannot be read (missing, a directory) leaves the token out.
        let src = ApiSource {
            api: Some("http://127.0.0.1:6443".into()),
            token_file: Some(d.clone()),
            ..Default::default()
        };
        let cfg = src.config().await.unwrap();
        assert_eq!(cfg.auth_info.token_file, None);
        assert!(src.client().await.is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
