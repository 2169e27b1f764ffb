//! `cargo xtask vm-test KERNEL...` / `cargo xtask test --kernels`: the Foundation scenarios on
//! other kernels (Debian's cloud kernels, cgroup v2), each booted in QEMU (software emulation;
//! KVM is not usable here) with a minimal initramfs: busybox, the static agent, a static memhog
//! and `tests/vm/scenarios.sh` (which sources `tests/vm/node_oom.sh`: a real global OOM of the
//! guest), whose RESULT lines come back on the second serial port.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{run, setup::apt_install, workspace_root};

/// The kernels of the matrix, by Debian package prefix (the newest build of each is fetched).
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest `linux-image-<series>...-cloud-amd64` package, downloaded and unpacked (cached).
fn fetch_kernel(series: &str, cache: &Path) -> Result<PathBuf> {
    let list = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-.*-cloud-amd64$",
    ]))?;
    let mut names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.contains("dbg") && !n.contains("unsigned"))
        .filter(|n| {
            n.strip_prefix("linux-image-").is_some_and(|v| {
                v.starts_with(&format!("{series}.")) || v.starts_with(&format!("{series}-"))
            })
        })
        .map(str::to_string)
        .collect();
    // Version-aware: compare the numeric parts.
    names.sort_by_key(|n| {
        n.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    let name = names.last().with_context(|| {
        format!("no linux-image-{series}*-cloud-amd64 package in the Debian archive")
    })?;
    let dir = cache.join(name);
    let boot = dir.join("boot");
    if !boot.is_dir() {
        std::fs::create_dir_all(&dir)?;
        // Not `run`: that runs in the workspace root; the .deb belongs in the cache.
        let status = Command::new("apt-get")
            .args(["download", name])
            .current_dir(cache)
            .status()
            .context("apt-get download")?;
        if !status.success() {
            bail!("apt-get download {name} failed");
        }
        let deb = std::fs::read_dir(cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .context("downloaded .deb not found")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        let _ = std::fs::remove_file(deb);
    }
    let vmlinuz = std::fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("vmlinuz"))
        })
        .context("no vmlinuz in the package")?;
    Ok(vmlinuz)
}

/// Static builds of the agent and memhog (glibc, +crt-static).
pub fn build_static() -> Result<PathBuf> {
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "oomprobe",
            "-p",
            "standin",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
            "target/static",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    Ok(workspace_root().join("target/static/x86_64-unknown-linux-gnu/release"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "oomprobe-vm: init started" > /dev/ttyS0
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
/scenarios.sh > /dev/ttyS1 2>&1
sync
poweroff -f
"#;

fn initramfs(bins: &Path, out: &Path) -> Result<()> {
    let root = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    std::fs::copy(bins.join("oomprobe"), root.join("oomprobe"))?;
    std::fs::copy(bins.join("memhog"), root.join("memhog"))?;
    // memhog again under the kubelet's name, for the sampling scenario.
    std::fs::copy(bins.join("memhog"), root.join("kubelet"))?;
    for script in ["scenarios.sh", "node_oom.sh"] {
        std::fs::copy(
            workspace_root().join("tests/vm").join(script),
            root.join(script),
        )?;
    }
    std::fs::write(root.join("init"), INIT)?;
    for f in ["init", "scenarios.sh"] {
        run(Command::new("chmod").arg("+x").arg(root.join(f)))?;
    }
    run(Command::new("mknod")
        .arg(root.join("dev/console"))
        .args(["c", "5", "1"]))?;
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        root.display(),
        out.display()
    )))?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Boots `vmlinuz` with the initramfs; returns the RESULT lines.
/// Whether the last boot in `work` reached our init (its marker on the console).
fn init_started(work: &Path) -> bool {
    std::fs::read_to_string(work.join("console.log"))
        .is_ok_and(|c| c.contains("oomprobe-vm: init started"))
}

fn boot(vmlinuz: &Path, initrd: &Path, work: &Path) -> Result<Vec<(String, bool, String)>> {
    let console = work.join("console.log");
    let results = work.join("results.log");
    // A fresh boot writes fresh logs.
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&results);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "1536",
            "-smp",
            "2",
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .spawn()
        .context("cannot start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let lines: Vec<(String, bool, String)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix("RESULT ")?;
            let mut it = rest.splitn(3, ' ');
            Some((
                it.next()?.to_string(),
                it.next()? == "PASS",
                it.next().unwrap_or("").to_string(),
            ))
        })
        .collect();
    if lines.is_empty() {
        let tail: String = std::fs::read_to_string(&console)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{}: no results (console tail:\n{tail})", vmlinuz.display());
    }
    Ok(lines)
}

pub fn vm_test(kernels: &[String]) -> Result<()> {
    apt_install(&["qemu-system-x86", "busybox-static", "cpio"])?;
    crate::build()?;
    let cache = workspace_root().join("target/vm");
    std::fs::create_dir_all(&cache)?;
    let bins = build_static()?;
    let initrd = cache.join("initrd.cpio.gz");
    initramfs(&bins, &initrd)?;
    let mut failed = 0;
    let mut passed = 0;
    let mut table = Vec::new();
    for k in kernels {
        let vmlinuz = fetch_kernel(k, &cache)?;
        let work = cache.join(format!("run-{k}"));
        std::fs::create_dir_all(&work)?;
        eprintln!(
            "vm-test: booting {} (software emulation)",
            vmlinuz.display()
        );
        let started = Instant::now();
        let mut booted = boot(&vmlinuz, &initrd, &work);
        // A kernel that dies before our init runs (seen once: a panic in enqueue_timer 1.4 s
        // into boot under TCG) has not run a single scenario: boot it once more. A failure
        // after init started is the scenarios' and is reported as is.
        if booted.is_err() && !init_started(&work) {
            eprintln!("vm-test: {k}: the kernel failed before our init ran; booting again");
            booted = boot(&vmlinuz, &initrd, &work);
        }
        let results = match booted {
            Ok(r) => r,
            Err(e) => vec![("boot".to_string(), false, format!("{e:#}"))],
        };
        let name = vmlinuz
            .file_name()
            .map(|f| {
                f.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default();
        for (test, ok, detail) in &results {
            if test == "done" {
                continue;
            }
            println!(
                "{name:<28} cgroup v2  {:<10}  {test:<20} {}  {detail}",
                if test.ends_with("_kprobe") {
                    "kprobe"
                } else if test == "kprobe_tier"
                    || test == "tiers_agree"
                    || test == "all_scenarios_both_tiers"
                    || test.starts_with("node_oom_") && !test.ends_with("_tp")
                {
                    "kprobe+tp"
                } else {
                    "tracepoint"
                },
                if *ok { "PASS" } else { "FAIL" }
            );
            if *ok {
                passed += 1;
            } else {
                failed += 1;
            }
            table.push((name.clone(), test.clone(), *ok));
        }
        if !results.iter().any(|(t, _, _)| t == "done") {
            println!(
                "{name:<28} cgroup v2  {:<10}  {:<20} FAIL  scenarios did not finish",
                "-", "complete"
            );
            failed += 1;
        }
        eprintln!("vm-test: {name} took {:.0?}", started.elapsed());
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} VM scenario(s) failed");
    }
    Ok(())
}
