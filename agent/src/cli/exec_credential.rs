//! `oomprobe exec-credential` (hidden): runs a kubeconfig's exec credential plugin (`users[].
//! user.exec`, e.g. `aws eks get-token`) for kube-rs with a time and an output bound.
//!
//! kube-rs runs the plugin itself with `Command::output()`: no time limit (a plugin waiting for
//! a login prompt hung `diagnose` for good) and its whole standard output in memory (`cat
//! /dev/zero` as the plugin grew `diagnose` to 16 GB in 20 s); and a plugin that fails has its
//! standard output, which may hold a token, printed in the error. [`wrap`] points each exec
//! user of a kubeconfig at this verb, which runs the real plugin and forwards its answer only
//! when it succeeded within both bounds.
use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The longest a plugin may take: 60 s (a token fetch over the network; an interactive login
/// takes longer and is no use to an unattended agent).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The most a plugin may print: 1 MiB (an ExecCredential is a token or a certificate and its
/// key, a few KiB).
pub const MAX_OUTPUT: u64 = 1 << 20;

/// The verb's name, as [`wrap`] writes it into the kubeconfig.
pub const VERB: &str = "exec-credential";

#[derive(Debug, Clone, clap::Args)]
pub struct ExecCredentialArgs {
    /// The plugin and its arguments, as the kubeconfig names them.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run the kubeconfig's exec credential plugin {0}")]
    Start(String, #[source] std::io::Error),
    #[error("the kubeconfig's exec credential plugin {0} gave no answer within {1:?}: stopped")]
    Timeout(String, Duration),
    #[error("the kubeconfig's exec credential plugin {0} printed more than {MAX_OUTPUT} bytes: stopped, its output not used")]
    TooLong(String),
    #[error("the kubeconfig's exec credential plugin {0} failed ({1}); its output not shown (it may hold a credential)")]
    Failed(String, ExitStatus),
    #[error("cannot pass on the exec credential")]
    Write(#[source] std::io::Error),
}

/// Runs `args.command` (standard input and error inherited, as kube-rs gives them), writing its
/// standard output to ours only when it exits 0 within [`TIMEOUT`] and [`MAX_OUTPUT`].
pub fn run(args: ExecCredentialArgs) -> Result<(), ExecError> {
    let out = run_bounded(&args.command, TIMEOUT, MAX_OUTPUT)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(ExecError::Write)
}

/// `command` run to its end within `timeout`, its standard output (at most `max` bytes).
pub fn run_bounded(command: &[String], timeout: Duration, max: u64) -> Result<Vec<u8>, ExecError> {
    let name = command.first().cloned().unwrap_or_default();
    let mut child = Command::new(&name)
        .args(command.iter().skip(1))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| ExecError::Start(name.clone(), e))?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(pipe) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let got = pipe.take(max + 1).read_to_end(&mut buf).map(|_| buf);
            let _ = tx.send(got);
        });
    }
    let stop = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let out = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(buf)) if buf.len() as u64 > max => {
            stop(&mut child);
            return Err(ExecError::TooLong(name));
        }
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => {
            stop(&mut child);
            return Err(ExecError::Start(name, e));
        }
        Err(_) => {
            stop(&mut child);
            return Err(ExecError::Timeout(name, timeout));
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(out),
            Ok(Some(status)) => return Err(ExecError::Failed(name, status)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                stop(&mut child);
                return Err(ExecError::Timeout(name, timeout));
            }
            Err(e) => {
                stop(&mut child);
                return Err(ExecError::Start(name, e));
            }
        }
    }
}

/// Points every exec user of `kc` at this binary's [`VERB`], the plugin and its arguments
/// after it; `exe` is this binary. Nothing else changes (the plugin's environment, its API
/// version and interactive mode stay as kube-rs passes them).
pub fn wrap(kc: &mut kube::config::Kubeconfig, exe: &std::path::Path) {
    for exec in kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
        .filter_map(|a| a.exec.as_mut())
    {
        let Some(cmd) = exec.command.take() else {
            continue;
        };
        let mut args = vec![VERB.to_string(), "--".to_string(), cmd];
        args.extend(exec.args.take().unwrap_or_default());
        exec.command = Some(exe.display().to_string());
        exec.args = Some(args);
    }
}

/// This binary, for [`wrap`].
pub fn this_binary() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn a_plugin_is_bounded_in_time_and_output_and_its_failure_not_quoted() {
        let ok = run_bounded(
            &sh("echo '{\"kind\":\"ExecCredential\"}'"),
            TIMEOUT,
            MAX_OUTPUT,
        );
        assert_eq!(ok.unwrap(), b"{\"kind\":\"ExecCredential\"}\n");
        let t = Instant::now();
        let e = run_bounded(&sh("sleep 30"), Duration::from_millis(300), MAX_OUTPUT).unwrap_err();
        assert!(matches!(e, ExecError::Timeout(..)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = run_bounded(
            &["/bin/cat".into(), "/dev/zero".into()],
            TIMEOUT,
            MAX_OUTPUT,
        )
        .unwrap_err();
        assert!(matches!(e, ExecError::TooLong(_)), "{e}");
        let e = run_bounded(&sh("echo s3cret-token; exit 3"), TIMEOUT, MAX_OUTPUT).unwrap_err();
        assert!(!crate::error_chain(&e).contains("s3cret"), "{e}");
        assert!(matches!(e, ExecError::Failed(..)), "{e}");
        let e = run_bounded(&["/nonexistent/plugin".into()], TIMEOUT, MAX_OUTPUT).unwrap_err();
        assert!(matches!(e, ExecError::Start(..)), "{e}");
    }

    #[test]
    fn exec_users_are_pointed_at_the_verb() {
        let mut kc: kube::config::Kubeconfig = serde_json::from_value(serde_json::json!({
            "users": [
                {"name": "e", "user": {"exec": {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": "aws", "args": ["eks", "get-token"]}}},
                {"name": "t", "user": {"token": "x"}}
            ]
        }))
        .unwrap();
        wrap(&mut kc, std::path::Path::new("/usr/bin/oomprobe"));
        let exec = kc.auth_infos[0]
            .auth_info
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(exec.command.as_deref(), Some("/usr/bin/oomprobe"));
        assert_eq!(
            exec.args.as_deref().unwrap(),
            [VERB, "--", "aws", "eks", "get-token"]
        );
        assert!(kc.auth_infos[1].auth_info.as_ref().unwrap().exec.is_none());
    }
}
