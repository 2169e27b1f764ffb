//! The bearer token file, read as client-go reads it: surrounding whitespace trimmed (a token
//! file written by `echo`, an editor or a Secret edited by hand ends in a
//! newline), re-read when the file changes (a rotated projected service account token, or one
//! rewritten by an operator) and at least once a minute, and the last good token kept when the
//! file is briefly missing or empty (kubernetes/kubernetes#68164).
//!
//! Own code because kube-rs 5's token file (`RefreshableToken::File`) sends the file's bytes
//! untrimmed: a trailing newline makes every request fail locally with "invalid bearer token"
//! before it leaves the agent. It is a tower layer on kube-rs's own client stack (TLS, timeouts,
//! retries stay kube-rs's); the token is never logged.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hyper::http::{header::AUTHORIZATION, HeaderValue, Request};

/// The token is re-read at least this often even when the file looks unchanged (client-go's
/// cached token source and kube-rs use one minute).
pub const REREAD: Duration = Duration::from_secs(60);

/// What identifies one version of the file without reading it: inode, size, mtime. A
/// kubelet-projected token is swapped in through a symlink (a new inode), `kubectl create
/// token > file` rewrites in place (new size or mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.modified().ok(),
    })
}

#[derive(Debug)]
struct State {
    header: Option<HeaderValue>,
    stamp: Option<Stamp>,
    read_at: Option<Instant>,
}

/// A token file shared by every request of one client.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the API token file {0} is empty")]
    Empty(PathBuf),
    #[error("the API token file {0} holds characters a bearer token cannot have")]
    Invalid(PathBuf),
}

impl TokenFile {
    /// Reads the file now. A file that cannot be read or holds no usable token is logged and
    /// requests go without a bearer token (the API server then answers 401 or 403, which is
    /// reported) until the file holds one.
    pub fn new(path: &Path) -> TokenFile {
        let t = TokenFile {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(State {
                header: None,
                stamp: None,
                read_at: None,
            })),
        };
        let first = t.read();
        let mut s = t.lock();
        match first {
            Ok(h) => s.header = Some(h),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "no API token yet: requests go without a bearer token until the file holds one")
            }
        }
        s.stamp = stamp(path);
        s.read_at = Some(Instant::now());
        drop(s);
        t
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (plain
        // assignments): keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's token as an `Authorization` value.
    pub fn read(&self) -> Result<HeaderValue, TokenError> {
        let text = crate::files::read_to_string(&self.path, crate::files::MAX_BYTES)
            .map_err(|e| TokenError::Read(self.path.clone(), e))?;
        // client-go: strings.TrimSpace of the file's content.
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(self.path.clone()));
        }
        let mut v = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| TokenError::Invalid(self.path.clone()))?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// The `Authorization` header for a request now: the file re-read when it changed or after
    /// [`REREAD`]; the last good token when re-reading fails (logged); None when the file never
    /// held a token.
    pub fn header(&self) -> Option<HeaderValue> {
        let now = Instant::now();
        let current = stamp(&self.path);
        let mut s = self.lock();
        let changed = current.is_some() && current != s.stamp;
        let old = s
            .read_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REREAD);
        if changed || old {
            match self.read() {
                Ok(h) => {
                    if changed && s.header.is_some() {
                        tracing::info!(path = %self.path.display(), "API token file changed: using the new token");
                    }
                    s.header = Some(h);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "keeping the last API token");
                }
            }
            s.stamp = current;
            s.read_at = Some(now);
        }
        s.header.clone()
    }

    /// Sets the request's `Authorization` header (replacing any).
    pub fn authorize<B>(&self, mut req: Request<B>) -> Request<B> {
        if let Some(h) = self.header() {
            req.headers_mut().insert(AUTHORIZATION, h);
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oomprobe-token-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn bearer(t: &TokenFile) -> String {
        t.header().unwrap().to_str().unwrap().to_string()
    }

    #[test]
    fn trims_rereads_on_change_and_keeps_the_last_good_token() {
        let d = scratch("rotate");
        let p = d.join("token");
        std::fs::write(&p, "first\n").unwrap();
        let t = TokenFile::new(&p);
        assert_eq!(bearer(&t), "Bearer first");
        assert!(t.header().unwrap().is_sensitive());
        // Rewritten in place (another length): the next request has the new one.
        std::fs::write(&p, "  second-token \r\n").unwrap();
        assert_eq!(bearer(&t), "Bearer second-token");
        // Replaced through a rename (a new inode, as the kubelet's atomic writer does).
        let tmp = d.join("token.new");
        std::fs::write(&tmp, "third-token!\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(bearer(&t), "Bearer third-token!");
        // Briefly empty, then gone: the last good token stays.
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(bearer(&t), "Bearer third-token!");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(bearer(&t), "Bearer third-token!");
        std::fs::write(&p, "fourth").unwrap();
        assert_eq!(bearer(&t), "Bearer fourth");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let d = scratch("bad");
        let p = d.join("token");
        let t = TokenFile::new(&p);
        assert!(matches!(t.read().unwrap_err(), TokenError::Read(..)));
        assert_eq!(t.header(), None);
        std::fs::write(&p, " \n\n").unwrap();
        let e = t.read().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the API token file {} is empty", p.display())
        );
        std::fs::write(&p, "a\nb\n").unwrap();
        assert!(matches!(t.read().unwrap_err(), TokenError::Invalid(..)));
        assert_eq!(t.header(), None);
        // The file appears with a token: the next request carries it.
        std::fs::write(&p, "late\n").unwrap();
        assert_eq!(bearer(&t), "Bearer late");
        let _ = std::fs::remove_dir_all(&d);
    }
}
