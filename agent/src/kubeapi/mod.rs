//! The Kubernetes API through kube-rs: the client (a kubeconfig, the in-cluster service account,
//! or the `--kube-*` flags), the node reads and writes the agent makes (the cordon, the node's
//! conditions) and the opt-in reports (custom node conditions and Events, [`report`]).
//!
//! Credentials: the bearer token file is read by [`token::TokenFile`] (trimmed as client-go
//! trims it, re-read when it changes and at least once a minute), so a rotated service account
//! token (kubelet-projected, rotated hourly) is picked up by the next request without a restart.
pub mod facts;
pub mod inputs;
pub mod report;
pub mod token;

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
/// How long one API call may wait to connect.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one API call may wait on a read or a write of its connection.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The largest answer body read from the API server: 64 MiB (a node object is tens of KiB; the
/// cluster's CSR list, a few KiB each, stays far below). kube-rs reads a body whole into memory
/// without a bound, and the read timeout restarts with every chunk: a server (or a proxy in
/// between) streaming without end grew `diagnose` to 1.9 GB in its 5 s and `run` without bound.
pub const MAX_BODY_BYTES: usize = 64 << 20;
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
    /// The file is not a kubeconfig's YAML. The parser's own message quotes the file's
    /// lines, which may hold a token: only the position is kept.
    #[error("{path} is not a kubeconfig: its YAML does not parse{at} (contents not shown: a kubeconfig may hold credentials)")]
    NotKubeconfig { path: PathBuf, at: String },
    #[error("in-cluster configuration")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("{what} file {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    /// A device, a FIFO, a directory, or a file larger than [`crate::files::MAX_BYTES`].
    #[error("cannot use {what} file {path}")]
    BadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("the API server's answer is larger than {MAX_BODY_BYTES} bytes: not read further")]
    TooLarge,
}

/// Whether `e` or an error it wraps is the body bound of [`MAX_BODY_BYTES`].
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> ApiError {
        match e {
            kube::Error::Api(s) => ApiError::Status {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other if is_length_limit(&other) => ApiError::TooLarge,
            other => ApiError::Request(other),
        }
    }
}

/// A file the client will read (`what`: "CA", "token"), checked first so that a bad one is
/// refused naming it. Errors: [`ApiError::Missing`] when it does not exist, [`ApiError::BadFile`]
/// when it is not a regular file or is larger than [`crate::files::MAX_BYTES`].
pub fn check_file(what: &'static str, path: &std::path::Path) -> Result<(), ApiError> {
    if !path.exists() {
        return Err(ApiError::Missing {
            what,
            path: path.to_path_buf(),
        });
    }
    crate::files::check(path, crate::files::MAX_BYTES).map_err(|source| ApiError::BadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
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
            (None, Some(a)) => crate::redact_url(a),
            (None, None) => "in-cluster".into(),
        }
    }

    /// The kube-rs configuration.
    pub async fn config(&self) -> Result<Config, ApiError> {
        let mut cfg = if let Some(path) = &self.kubeconfig {
            crate::files::check(path, crate::files::MAX_BYTES).map_err(|source| {
                ApiError::BadFile {
                    what: "kubeconfig",
                    path: path.clone(),
                    source,
                }
            })?;
            let mut kc = Kubeconfig::read_from(path).map_err(|e| match e {
                kube::config::KubeconfigError::Parse(p) => ApiError::NotKubeconfig {
                    path: path.clone(),
                    at: p.location().map_or(String::new(), |l| {
                        format!(" at line {}, column {}", l.line(), l.column())
                    }),
                },
                e => ApiError::Kubeconfig(path.clone(), e),
            })?;
            // Files the kubeconfig names (made absolute by kube-rs) are read by kube-rs
            // without a bound: each must be a regular file of at most MAX_BYTES first.
            let named = kc
                .clusters
                .iter()
                .filter_map(|c| c.cluster.as_ref())
                .filter_map(|c| c.certificate_authority.as_deref().map(|p| ("CA", p)))
                .chain(
                    kc.auth_infos
                        .iter()
                        .filter_map(|a| a.auth_info.as_ref())
                        .flat_map(|a| {
                            [
                                ("client certificate", a.client_certificate.as_deref()),
                                ("client key", a.client_key.as_deref()),
                                ("token", a.token_file.as_deref()),
                            ]
                        })
                        .filter_map(|(what, p)| p.map(|p| (what, p))),
                );
            for (what, file) in named {
                let file = PathBuf::from(file);
                crate::files::check(&file, crate::files::MAX_BYTES).map_err(|source| {
                    ApiError::BadFile {
                        what,
                        path: file.clone(),
                        source,
                    }
                })?;
            }
            // Exec credential plugins run through this binary's bounded runner (time and
            // output), not kube-rs's unbounded one; from a test binary, which has no such
            // verb, they are left as they are.
            if let Ok(exe) = crate::cli::exec_credential::this_binary() {
                if exe.file_name().is_some_and(|n| n == "oomprobe") {
                    crate::cli::exec_credential::wrap(&mut kc, &exe);
                }
            }
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
            // Read (and re-read) by the client's own layer, see `client`.
            cfg.auth_info.token = None;
            cfg.auth_info.token_file = Some(t.display().to_string());
        }
        if let Some(ca) = &self.ca_file {
            check_file("CA", ca)?;
            cfg.root_cert_file = Some(ca.clone());
        }
        // Agent calls are small; an API server that hangs or drops packets must not hold a
        // worker for minutes (kube-rs's defaults: 30 s to connect, 295 s to read and write).
        cfg.connect_timeout = Some(CONNECT_TIMEOUT);
        cfg.read_timeout = Some(READ_TIMEOUT);
        cfg.write_timeout = Some(READ_TIMEOUT);
        cfg.reset_reader_on_write = true;
        Ok(cfg)
    }

    /// A client for this source: kube-rs's stack (TLS, timeouts), with the bearer token file
    /// (the source's or `--kube-token-file`) read by [`token::TokenFile`] instead of kube-rs
    /// (which sends a trailing newline along and so fails every request).
    pub async fn client(&self) -> Result<Client, ApiError> {
        let mut cfg = self.config().await?;
        let token = match (&cfg.auth_info.token, cfg.auth_info.token_file.take()) {
            // An inline token has precedence over a token file, as in client-go.
            (Some(_), _) | (None, None) => None,
            (None, Some(path)) => Some(token::TokenFile::new(Path::new(&path))),
        };
        let builder = kube::client::ClientBuilder::try_from(cfg)
            .map_err(ApiError::Client)?
            .with_layer(&tower::util::MapResponseLayer::new(
                |r: hyper::http::Response<Box<kube::client::DynBody>>| {
                    r.map(|b| http_body_util::Limited::new(b, MAX_BODY_BYTES))
                },
            ));
        Ok(match token {
            Some(t) => builder
                .with_layer(&tower::util::MapRequestLayer::new(
                    move |req: hyper::http::Request<kube::client::Body>| t.authorize(req),
                ))
                .build(),
            None => builder.build(),
        })
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
        // A token file that cannot be read (missing, a directory): the client still builds, its
        // requests go without a token until the file holds one.
        let src = ApiSource {
            api: Some("http://127.0.0.1:6443".into()),
            token_file: Some(d.clone()),
            ..Default::default()
        };
        assert!(src.client().await.is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A loopback API server answering every request with an empty Node; the Authorization
    /// header of each request it got.
    fn recording_server() -> (
        String,
        std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    ) {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>> = Default::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut auth = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((n, v)) = h.split_once(':') {
                        if n.eq_ignore_ascii_case("authorization") {
                            auth = Some(v.trim().to_string());
                        }
                    }
                }
                s.lock().unwrap().push(auth);
                let body = r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"n1"}}"#;
                let mut c = conn;
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        (url, seen)
    }

    /// An API server streaming an answer without end is cut at [`MAX_BODY_BYTES`] and named
    /// (kube-rs read it whole: `diagnose` grew to 1.9 GB in its 5 s, `run` without bound, as
    /// the read timeout restarts with every chunk).
    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_body_bound() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = sent.clone();
        std::thread::spawn(move || {
            let Some(mut c) = listener.incoming().flatten().next() else {
                return;
            };
            let mut req = [0u8; 4096];
            let _ = c.read(&mut req);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n");
            let chunk = vec![b' '; 1 << 20];
            // Twice the bound at most, so a client without one ends too (and fails the test).
            for _ in 0..2 * (MAX_BODY_BYTES >> 20) {
                if c.write_all(&chunk).is_err() {
                    break;
                }
                counted.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        let src = ApiSource {
            api: Some(url),
            ..Default::default()
        };
        let e = node_condition(src.client().await.unwrap(), "n1", "MemoryPressure")
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::TooLarge), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the API server's answer is larger than {MAX_BODY_BYTES} bytes: not read further"
            )
        );
        assert!(sent.load(std::sync::atomic::Ordering::Relaxed) < 2 * MAX_BODY_BYTES);
    }

    /// Regression: kube-rs 5 sent a token file's trailing newline along (every request failed
    /// with "invalid bearer token"); the agent trims it, and a rewritten file is used by the
    /// next request.
    #[tokio::test]
    async fn a_token_file_ending_in_a_newline_is_trimmed_and_reread() {
        let d = scratch("newline");
        let token = d.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let (url, seen) = recording_server();
        let src = ApiSource {
            api: Some(url),
            token_file: Some(token.clone()),
            ..Default::default()
        };
        let client = src.client().await.unwrap();
        assert_eq!(
            node_condition(client.clone(), "n1", "Ready").await.unwrap(),
            None
        );
        std::fs::write(&token, "rotated-token\r\n").unwrap();
        assert_eq!(
            node_condition(client.clone(), "n1", "Ready").await.unwrap(),
            None
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                Some("Bearer s3cret".to_string()),
                Some("Bearer rotated-token".to_string())
            ]
        );
        // A kubeconfig's `tokenFile` goes through the same reader.
        let kc = d.join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 clusters:\n- name: c\n  cluster:\n    server: {}\n\
                 users:\n- name: u\n  user:\n    tokenFile: {}\n\
                 contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n",
                src.api.as_deref().unwrap(),
                token.display()
            ),
        )
        .unwrap();
        let src = ApiSource {
            kubeconfig: Some(kc),
            ..Default::default()
        };
        node_condition(src.client().await.unwrap(), "n1", "Ready")
            .await
            .unwrap();
        assert_eq!(
            seen.lock().unwrap().last().unwrap().as_deref(),
            Some("Bearer rotated-token")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A file that is not a kubeconfig (a bare token, broken YAML) is refused naming the
    /// position only: the parser's message would quote the token.
    #[tokio::test]
    async fn a_file_that_is_not_a_kubeconfig_is_never_quoted() {
        let d = scratch("notkc");
        let kc = d.join("kubeconfig");
        for (text, at) in [
            ("eyJhbGciOiJSUzI1NiJ9.s3cret\n", "line 1, column 1"),
            (
                "apiVersion: v1\nusers:\n- s3cret-token\n  bad: [\n",
                "line 3, column 3",
            ),
        ] {
            std::fs::write(&kc, text).unwrap();
            let src = ApiSource {
                kubeconfig: Some(kc.clone()),
                ..Default::default()
            };
            let e = crate::error_chain(&src.config().await.unwrap_err());
            assert_eq!(
                e,
                format!(
                    "{} is not a kubeconfig: its YAML does not parse at {at} (contents not shown: a kubeconfig may hold credentials)",
                    kc.display()
                )
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A kubeconfig that names /dev/zero as its CA or a FIFO as its token file is refused
    /// before kube-rs reads either (it read /dev/zero until the OOM killer came).
    #[tokio::test]
    async fn files_a_kubeconfig_names_are_bounded() {
        let d = scratch("kcfiles");
        let kc = d.join("kubeconfig");
        let fifo = d.join("token-fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a plain mkfifo on a path in this test's scratch directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (cluster, user, what, path) in [
            (
                "certificate-authority: /dev/zero",
                "token: x",
                "CA",
                "/dev/zero".to_string(),
            ),
            (
                "insecure-skip-tls-verify: true",
                &*format!("tokenFile: {}", fifo.display()),
                "token",
                fifo.display().to_string(),
            ),
        ] {
            std::fs::write(
                &kc,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    {cluster}\nusers:\n- name: u\n  user:\n    {user}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
                ),
            )
            .unwrap();
            let src = ApiSource {
                kubeconfig: Some(kc.clone()),
                ..Default::default()
            };
            let e = crate::error_chain(&src.config().await.unwrap_err());
            assert_eq!(
                e,
                format!("cannot use {what} file {path}: not a regular file")
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
