//! Bad input and refusals: one clear line naming the problem, a non-zero exit, no panic.
use std::{os::unix::process::CommandExt as _, process::Command};

use oomprobe_tests::{bin, require_root, scratch_dir};

/// Runs `oomprobe run` and returns (exit code, stderr lines).
fn run_agent(configure: impl FnOnce(&mut Command)) -> (Option<i32>, Vec<String>) {
    let state = scratch_dir("refusal");
    let mut cmd = Command::new(bin("oomprobe"));
    cmd.args(["run", "--no-metrics", "--duration", "5", "--state-dir"]);
    cmd.arg(&state);
    configure(&mut cmd);
    let out = cmd.output().expect("run oomprobe");
    let _ = std::fs::remove_dir_all(&state);
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.code(), stderr)
}

fn assert_one_clear_line(code: Option<i32>, stderr: &[String], needle: &str) {
    assert_eq!(code, Some(1), "exit code; stderr: {stderr:?}");
    let errors: Vec<&String> = stderr
        .iter()
        .filter(|l| l.starts_with("oomprobe: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr:?}");
    assert!(
        errors[0].contains(needle),
        "{:?} should mention {needle:?}",
        errors[0]
    );
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
}

#[test]
fn not_root_is_one_clear_line() {
    require_root();
    let (code, stderr) = run_agent(|c| {
        c.uid(65534).gid(65534);
    });
    assert_one_clear_line(code, &stderr, "must run as root");
}

#[test]
fn missing_btf_is_one_clear_line() {
    require_root();
    let (code, stderr) = run_agent(|c| {
        c.env("OOMPROBE_BTF", "/nonexistent/vmlinux");
    });
    assert_one_clear_line(code, &stderr, "kernel BTF");
    assert!(stderr.iter().any(|l| l.contains("/nonexistent/vmlinux")));
}

#[test]
fn garbage_btf_is_one_clear_line() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oomprobe-test-btf-{}", std::process::id()));
    std::fs::write(&dir, b"this is not BTF").unwrap();
    let (code, stderr) = run_agent(|c| {
        c.env("OOMPROBE_BTF", &dir);
    });
    let _ = std::fs::remove_file(&dir);
    assert_one_clear_line(code, &stderr, "malformed");
}

#[test]
fn missing_tracepoint_is_one_clear_line() {
    require_root();
    // A tracefs with no events at all, as on a kernel built without the tracepoints.
    let dir = std::env::temp_dir().join(format!("oomprobe-test-tracefs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("events")).unwrap();
    let (code, stderr) = run_agent(|c| {
        c.env("OOMPROBE_TRACEFS", &dir);
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_one_clear_line(
        code,
        &stderr,
        "tracepoint signal/signal_generate does not exist",
    );
}

#[test]
fn metrics_port_in_use_is_one_clear_line() {
    require_root();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (code, stderr) = {
        let mut cmd = Command::new(bin("oomprobe"));
        cmd.args([
            "run",
            "--duration",
            "5",
            "--metrics-addr",
            &addr,
            "--state-dir",
        ]);
        cmd.arg(scratch_dir("port"));
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )
    };
    assert_one_clear_line(code, &stderr, &format!("cannot serve metrics on {addr}"));
    drop(listener);
}

#[test]
fn forced_kprobe_tier_works_or_is_one_clear_line() {
    require_root();
    // Which branch this kernel must take, from its own build configuration (not from what the
    // agent probes): CONFIG_KPROBES in /proc/config.gz or /boot/config-<release>. The kprobe
    // PMU in sysfs must agree with it.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let config = Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .or_else(|| std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok())
        .expect("this kernel's configuration (/proc/config.gz or /boot/config-<release>) is needed to know which branch it must take");
    let has_kprobes = config.lines().any(|l| l == "CONFIG_KPROBES=y");
    assert!(
        has_kprobes || config.lines().any(|l| l == "# CONFIG_KPROBES is not set"),
        "CONFIG_KPROBES neither set nor unset in the kernel configuration"
    );
    assert_eq!(
        std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
        has_kprobes,
        "the kprobe PMU in sysfs disagrees with CONFIG_KPROBES"
    );
    let (code, stderr) = run_agent(|c| {
        c.args(["--hook-tier", "kprobe"]);
    });
    if has_kprobes {
        assert_eq!(code, Some(0), "{stderr:?}");
        assert!(
            stderr.iter().any(|l| l.contains("tier=\"kprobe\"")),
            "{stderr:?}"
        );
    } else {
        // This machine's kernel is built without kprobes (CONFIG_KPROBES off).
        assert_one_clear_line(
            code,
            &stderr,
            "the kprobe hook tier is unavailable on this kernel",
        );
    }
    // `auto` falls back to tracepoints and runs.
    let (code, stderr) = run_agent(|c| {
        c.args(["--hook-tier", "auto"]);
    });
    assert_eq!(code, Some(0), "{stderr:?}");
}
