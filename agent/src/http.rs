//! A small HTTP/1.1 client over TCP or TLS (rustls), for the two endpoints the agent talks to:
//! the kubelet's `/metrics` (HTTPS on 10250, often a self-signed certificate) and the API
//! server (in-cluster CA). One request per connection; bounded; with a deadline.
use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA(s) that sign the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (what `curl -k` does in the field guide's quick checks).
    pub insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0} (http:// or https://host[:port]/path)")]
    Url(String),
    #[error("cannot connect to {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("TLS with {0} failed")]
    Tls(String, #[source] std::io::Error),
    #[error("cannot read CA file {0}")]
    Ca(String, #[source] std::io::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("malformed HTTP response from {0}")]
    Malformed(String),
}

pub struct Response {
    pub status: u16,
    pub status_line: String,
    pub body: Vec<u8>,
}

struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(url: &str) -> Option<Url<'_>> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, if tls { 443 } else { 80 }),
    };
    (!host.is_empty()).then_some(Url {
        tls,
        host,
        port,
        path,
    })
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, HttpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls("config".into(), std::io::Error::other(e)))?;
    if opts.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca).map_err(|e| HttpError::Ca(ca.display().to_string(), e))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    // Servers may close without close_notify: keep what arrived.
    let _ = (&mut s).take(MAX_RESPONSE).read_to_end(&mut buf).await;
    Ok(buf)
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// One request; `headers` are extra header lines' (name, value).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let u = parse_url(url).ok_or_else(|| HttpError::Url(url.to_string()))?;
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        u.path,
        u.host,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    let addr = format!("{}:{}", u.host, u.port);
    let io = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| HttpError::Connect(addr.clone(), e))?;
        if u.tls {
            let cfg = client_config(tls)?;
            let name = ServerName::try_from(u.host.to_string())
                .map_err(|_| HttpError::Url(url.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Tls(addr.clone(), e))?;
            exchange(stream, &raw)
                .await
                .map_err(|e| HttpError::Tls(addr.clone(), e))
        } else {
            exchange(tcp, &raw)
                .await
                .map_err(|e| HttpError::Connect(addr.clone(), e))
        }
    };
    let buf = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| HttpError::Timeout(url.to_string(), timeout))??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| HttpError::Malformed(url.to_string()))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut body = buf[split + 4..].to_vec();
    let status_line = head.lines().next().unwrap_or("").to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HttpError::Malformed(url.to_string()))?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    }) {
        body = dechunk(&body).ok_or_else(|| HttpError::Malformed(url.to_string()))?;
    }
    Ok(Response {
        status,
        status_line,
        body,
    })
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://10.0.0.1:10250/metrics").unwrap();
        assert!(u.tls && u.host == "10.0.0.1" && u.port == 10250 && u.path == "/metrics");
        let u = parse_url("http://localhost").unwrap();
        assert!(!u.tls && u.port == 80 && u.path == "/");
        assert!(parse_url("ftp://x").is_none());
        assert!(parse_url("https://:5/").is_none());
    }

    #[test]
    fn chunked() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"zz\r\n").is_none());
    }

    /// A loopback TLS server with a fresh self-signed certificate for 127.0.0.1.
    async fn tls_server(body: &'static str) -> (String, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!("oomprobe-tls-{}-{body}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/metrics",
            l.local_addr().unwrap().port()
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf).await;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        (url, ca)
    }

    #[tokio::test]
    async fn https_with_ca_insecure_and_refused() {
        let (url, ca) = tls_server("kubelet_goroutines 7").await;
        let t = Duration::from_secs(5);
        let with_ca = TlsOptions {
            ca_file: Some(ca.clone()),
            insecure: false,
        };
        let r = request("GET", &url, &[], b"", &with_ca, t).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"kubelet_goroutines 7");
        let insecure = TlsOptions {
            ca_file: None,
            insecure: true,
        };
        assert_eq!(
            request("GET", &url, &[], b"", &insecure, t)
                .await
                .unwrap()
                .status,
            200
        );
        // No CA and not insecure: the self-signed certificate is refused.
        let err = request("GET", &url, &[], b"", &TlsOptions::default(), t)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, HttpError::Tls(..)), "{err}");
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
    }
}
