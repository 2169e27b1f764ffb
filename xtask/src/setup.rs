//! `cargo xtask setup`: idempotent. Installs what building the kernel programs needs on a fresh
//! machine of this kind, and checks that the nightly rustc and bpf-linker agree on LLVM.
//! Facts behind each step: `shared/TOOLCHAIN.md` beside the repository (outside it, with the
//! machine kind's other shared notes; not part of this repository).
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// LLVM major of the nightly rustc that builds probe-ebpf; bpf-linker must match it.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz for `cargo xtask fuzz` (fuzz/ builds with the pinned nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// The pinned nightly that builds probe-ebpf (rustc 1.97.0-nightly e50aa6fba 2026-05-19, LLVM 22).
/// Pinned because bpf-linker must be on the same LLVM major; `agent/build.rs` uses the same name.
pub const NIGHTLY: &str = "nightly-2026-05-20";
/// Oldest Go that builds the Go stand-ins and the lab's Kubernetes (k8s.io/kubernetes 1.34 needs 1.24).
const GO_MIN_MINOR: u32 = 24;

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// Puts cargo's bin directory on PATH for every command run from here (bpf-linker lives there).
fn path_with_cargo_bin() {
    let bin = cargo_bin();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|p| p == bin) {
        let mut parts = vec![bin];
        parts.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(parts) {
            std::env::set_var("PATH", joined);
        }
    }
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed (are you root, is the package registry reachable?)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("cannot install {}", missing.join(" ")))
}

fn rustc_llvm_major(toolchain: &str) -> Option<u32> {
    let vv = output(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .arg("-vV"),
    )?;
    let line = vv.lines().find(|l| l.starts_with("LLVM version:"))?;
    line.split(':')
        .nth(1)?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// LLVM major that bpf-linker is linked against (dynamic builds: `ldd`; static: assume ours).
fn bpf_linker_llvm_major() -> Option<u32> {
    let path = cargo_bin().join("bpf-linker");
    if !path.exists() {
        return None;
    }
    output(Command::new(&path).arg("--version"))?;
    let ldd = output(Command::new("ldd").arg(&path)).unwrap_or_default();
    match ldd.lines().find(|l| l.contains("libLLVM")) {
        Some(line) => {
            // libLLVM.so.22.1 or libLLVM-22.so
            let digits: String = line
                .split("libLLVM")
                .nth(1)?
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        }
        None => Some(LLVM_MAJOR),
    }
}

/// The machine's Go toolchain (`go` on PATH): at least 1.{GO_MIN_MINOR}.
fn check_go() -> Result<()> {
    let version = output(Command::new("go").arg("version")).context(
        "no `go` on PATH: this machine kind ships Go (/usr/local/go/bin); put it on PATH",
    )?;
    // "go version go1.26.8 linux/amd64"
    let minor = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.strip_prefix("go1."))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= GO_MIN_MINOR => Ok(()),
        _ => bail!(
            "`go version` says {:?}: need go1.{GO_MIN_MINOR} or newer first on PATH \
             (Debian's golang-go is go1.19; the machine's Go is in /usr/local/go/bin)",
            version.trim()
        ),
    }
}

/// Debian packages the arm64 build and VM row need on this (amd64) machine: the cross C
/// toolchain and libc (the static agent's link, the C stand-in), and QEMU's arm64 system emulator.
const AARCH64_APT: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-system-arm",
];

/// What `--arch aarch64` needs: the Rust target for the agent (stable), the cross gcc/libc,
/// qemu-system-aarch64, and arm64 as a dpkg foreign architecture so `apt-get download` can fetch
/// Debian's arm64 kernels and busybox-static for the VM row (downloaded and unpacked into
/// target/vm, never installed on this machine).
pub fn ensure_aarch64() -> Result<()> {
    path_with_cargo_bin();
    if std::env::var_os("OOMPROBE_SKIP_SETUP").is_some() {
        return Ok(());
    }
    let targets = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        "stable",
    ]))
    .unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == AARCH64_TARGET) {
        eprintln!("setup: adding the {AARCH64_TARGET} Rust target");
        run(Command::new("rustup").args([
            "target",
            "add",
            AARCH64_TARGET,
            "--toolchain",
            "stable",
        ]))
        .with_context(|| format!("cannot add the {AARCH64_TARGET} target through rustup"))?;
    }
    let foreign =
        output(Command::new("dpkg").arg("--print-foreign-architectures")).unwrap_or_default();
    if !foreign.lines().any(|l| l.trim() == "arm64") {
        eprintln!(
            "setup: adding arm64 as a dpkg foreign architecture (arm64 kernels for the VM row)"
        );
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        run(Command::new("apt-get").args(["update", "-qq"]))
            .context("apt-get update failed after adding arm64")?;
    }
    apt_install(AARCH64_APT)
}

/// The Rust target of the arm64 agent (glibc, linked statically with +crt-static).
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-gnu";

pub fn ensure() -> Result<()> {
    path_with_cargo_bin();
    if std::env::var_os("OOMPROBE_SKIP_SETUP").is_some() {
        return Ok(());
    }
    // The pinned nightly builds probe-ebpf with -Z build-std=core (hence rust-src).
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        eprintln!("setup: installing the pinned {NIGHTLY} toolchain with rust-src");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .with_context(|| format!("cannot install {NIGHTLY} through rustup"))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to {NIGHTLY}");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    let rustc_llvm = rustc_llvm_major(NIGHTLY)
        .context("cannot read the nightly rustc's LLVM version (`rustc +nightly -vV`)")?;
    if rustc_llvm != LLVM_MAJOR {
        bail!(
            "nightly rustc uses LLVM {rustc_llvm}, but this project's bpf-linker is built against \
             LLVM {LLVM_MAJOR} (the newest LLVM Debian packages here): reinstall {NIGHTLY} \
             (`rustup toolchain uninstall {NIGHTLY}`, then `cargo xtask setup`)"
        );
    }
    // The machine's Go builds the Go stand-in kubelet (never Debian's golang-go, go1.19, which
    // would shadow it); gcc the C one.
    check_go()?;
    // bpftool: the BTF unit test checks the agent's reader against libbpf's.
    apt_install(&[&format!("llvm-{LLVM_MAJOR}-dev"), "gcc", "bpftool"])?;
    match bpf_linker_llvm_major() {
        Some(m) if m == LLVM_MAJOR => {}
        found => {
            match found {
                Some(m) => {
                    eprintln!("setup: bpf-linker is on LLVM {m}; rebuilding on LLVM {LLVM_MAJOR}")
                }
                None => eprintln!(
                    "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}"
                ),
            }
            run(Command::new("cargo")
                .args([
                    "+stable",
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_MAJOR}"),
                ])
                // /usr/bin/llvm-config is LLVM 14 here; without this the link fails (-lLLVM).
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")))
            .context("cannot build bpf-linker")?;
            match bpf_linker_llvm_major() {
                Some(m) if m == LLVM_MAJOR => {}
                other => {
                    bail!("bpf-linker still not on LLVM {LLVM_MAJOR} after install ({other:?})")
                }
            }
        }
    }
    ensure_cargo_fuzz()
}

/// cargo-fuzz at the pinned version, built with `--locked`.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if installed.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run(Command::new("cargo").args([
        "+stable",
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context("cannot install cargo-fuzz")
}
