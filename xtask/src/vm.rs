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
/// The arm64 row of the matrix (`cargo xtask test --kernels`).
pub const AARCH64_KERNELS: &[&str] = &["6.12"];

/// A guest (and build) architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => crate::setup::AARCH64_TARGET,
        }
    }
    /// Debian's architecture name (package suffixes: `-cloud-amd64`, `:arm64`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    pub fn goarch(self) -> &'static str {
        self.debian()
    }
    /// The C compiler for this architecture's binaries (Debian's cross gcc for arm64).
    pub fn cc(self) -> &'static str {
        match self {
            Arch::X86_64 => "gcc",
            Arch::Aarch64 => "aarch64-linux-gnu-gcc",
        }
    }
    /// Where `build_standins_for` puts the stand-in kubelets, relative to the workspace.
    pub fn standin_dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "target/standin",
            Arch::Aarch64 => "target/standin-aarch64",
        }
    }
    pub fn default_kernels(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => DEFAULT_KERNELS,
            Arch::Aarch64 => AARCH64_KERNELS,
        }
    }
    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads Debian package `name` (`pkg` or `pkg:arch`) into `cache` and unpacks it into `dir`.
fn download_unpack(name: &str, cache: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    // Not `run`: that runs in the workspace root; the .deb belongs in the cache.
    let status = Command::new("apt-get")
        .args(["download", name])
        .current_dir(cache)
        .status()
        .context("apt-get download")?;
    if !status.success() {
        bail!("apt-get download {name} failed");
    }
    let base = name.split(':').next().unwrap_or(name);
    let deb = std::fs::read_dir(cache)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|f| {
                let f = f.to_string_lossy();
                f.starts_with(&format!("{base}_")) && f.ends_with(".deb")
            })
        })
        .context("downloaded .deb not found")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
    let _ = std::fs::remove_file(deb);
    Ok(())
}

/// The newest `linux-image-<series>...-cloud-<amd64|arm64>` package, downloaded and unpacked
/// (cached).
fn fetch_kernel(series: &str, cache: &Path, arch: Arch) -> Result<PathBuf> {
    let deb_arch = arch.debian();
    let list = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!("^linux-image-.*-cloud-{deb_arch}$"),
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
        format!("no linux-image-{series}*-cloud-{deb_arch} package in the Debian archive")
    })?;
    let dir = cache.join(name);
    let boot = dir.join("boot");
    if !boot.is_dir() {
        download_unpack(&format!("{name}:{deb_arch}"), cache, &dir)?;
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

/// Static builds of the agent and memhog (glibc, +crt-static) for `arch`; for aarch64 linked by
/// Debian's cross gcc. The agent's build script builds its eBPF object for the same
/// architecture (aya-build passes `--cfg bpf_target_arch`), so each binary embeds the object
/// that reads its own architecture's registers.
pub fn build_static(arch: Arch) -> Result<PathBuf> {
    let target = arch.rust_target();
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--release",
        "-p",
        "oomprobe",
        "-p",
        "standin",
        "--target",
        target,
        "--target-dir",
        "target/static",
    ])
    .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if arch == Arch::Aarch64 {
        cmd.env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
    }
    run(&mut cmd)?;
    Ok(workspace_root().join(format!("target/static/{target}/release")))
}

/// The guest's `/init`; `@CONSOLE@` and `@RESULTS@` are the serial devices of the console and of
/// the RESULT lines (x86: ttyS0 and ttyS1; arm64's `virt` machine has one PL011, ttyAMA0, so
/// both go there and the kernel's console is quietened to emergencies with `dmesg -n 1`).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
@QUIET@
echo "oomprobe-vm: init started" > @CONSOLE@
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
/scenarios.sh > @RESULTS@ 2>&1
sync
poweroff -f
"#;

/// busybox-static for `arch`: this machine's for x86_64, Debian's arm64 build (downloaded and
/// unpacked into the cache) for aarch64.
fn busybox(arch: Arch, cache: &Path) -> Result<PathBuf> {
    match arch {
        Arch::X86_64 => Ok(PathBuf::from("/bin/busybox")),
        Arch::Aarch64 => {
            let dir = cache.join("busybox-static-arm64");
            let bin = dir.join("bin/busybox");
            if !bin.exists() {
                download_unpack("busybox-static:arm64", cache, &dir)?;
            }
            Ok(bin)
        }
    }
}

fn initramfs(bins: &Path, out: &Path, arch: Arch, busybox: &Path) -> Result<()> {
    let root = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).context("busybox-static")?;
    std::fs::copy(bins.join("oomprobe"), root.join("oomprobe"))?;
    std::fs::copy(bins.join("memhog"), root.join("memhog"))?;
    // memhog again under the kubelet's name, for the sampling scenario.
    std::fs::copy(bins.join("memhog"), root.join("kubelet"))?;
    // The stand-in kubelets for the attribution scenario (built for `arch`), and the dynamic
    // loader and libc the C one runs with (the agent probes that libc's mmap).
    let standins = workspace_root().join(arch.standin_dir());
    for kind in ["go", "c"] {
        std::fs::create_dir_all(root.join(kind))?;
        std::fs::copy(
            standins.join(kind).join("kubelet"),
            root.join(kind).join("kubelet"),
        )
        .with_context(|| format!("{} stand-in kubelet ({kind})", arch.label()))?;
    }
    let libs: &[(&str, &str)] = match arch {
        Arch::X86_64 => &[
            ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
            (
                "/lib/x86_64-linux-gnu/libc.so.6",
                "lib/x86_64-linux-gnu/libc.so.6",
            ),
        ],
        Arch::Aarch64 => &[
            (
                "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1",
                "lib/ld-linux-aarch64.so.1",
            ),
            (
                "/usr/aarch64-linux-gnu/lib/libc.so.6",
                "lib/aarch64-linux-gnu/libc.so.6",
            ),
        ],
    };
    for (from, to) in libs {
        let to = root.join(to);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(from, &to)
            .with_context(|| format!("{from} (libc6 / libc6-dev-arm64-cross)"))?;
    }
    for script in ["scenarios.sh", "node_oom.sh"] {
        std::fs::copy(
            workspace_root().join("tests/vm").join(script),
            root.join(script),
        )?;
    }
    let (console, results, quiet) = match arch {
        Arch::X86_64 => ("/dev/ttyS0", "/dev/ttyS1", ""),
        Arch::Aarch64 => ("/dev/ttyAMA0", "/dev/ttyAMA0", "dmesg -n 1"),
    };
    std::fs::write(
        root.join("init"),
        INIT.replace("@CONSOLE@", console)
            .replace("@RESULTS@", results)
            .replace("@QUIET@", quiet),
    )?;
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

fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    work: &Path,
    arch: Arch,
) -> Result<Vec<(String, bool, String)>> {
    let console = work.join("console.log");
    let results = match arch {
        Arch::X86_64 => work.join("results.log"),
        // One serial port: the RESULT lines come on the console.
        Arch::Aarch64 => console.clone(),
    };
    // A fresh boot writes fresh logs.
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&results);
    let mut cmd = Command::new(arch.qemu());
    cmd.args(["-accel", "tcg,thread=multi"]);
    match arch {
        Arch::X86_64 => {
            cmd.args(["-cpu", "max"]);
        }
        Arch::Aarch64 => {
            // pauth-impdef: QEMU's cheap pointer-authentication algorithm (the architected
            // one dominates TCG time on arm64 guests).
            cmd.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]);
        }
    }
    cmd.args(["-m", "1536", "-smp", "2"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd);
    match arch {
        Arch::X86_64 => {
            cmd.args(["-append", "console=ttyS0 panic=-1 quiet"])
                .arg("-serial")
                .arg(format!("file:{}", console.display()))
                .arg("-serial")
                .arg(format!("file:{}", results.display()));
        }
        Arch::Aarch64 => {
            cmd.args(["-append", "console=ttyAMA0 panic=-1 quiet"])
                .arg("-serial")
                .arg(format!("file:{}", console.display()));
        }
    }
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (cargo xtask setup installs it)",
            arch.qemu()
        )
    })?;
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

/// The `RECORD <scenario> <json>` lines of a finished run (the kill records the scenarios print
/// for the cross-architecture comparison).
fn records(work: &Path, arch: Arch) -> Vec<(String, String)> {
    let file = match arch {
        Arch::X86_64 => work.join("results.log"),
        Arch::Aarch64 => work.join("console.log"),
    };
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix("RECORD ")?;
            let (name, json) = rest.split_once(' ')?;
            // Only this file's scenario names (node_oom.sh prints records of its own).
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return None;
            }
            Some((name.to_string(), json.to_string()))
        })
        .collect()
}

/// Fields that legitimately differ between two runs of the same scenario: timestamps and
/// latencies (each run's clock), process ids (the trigger's too), the domain usage each agent
/// reads after the kill, and the sizes of the victim's process image, which is a different
/// binary on each architecture (memhog built for x86-64 or arm64: `total_vm_kb`,
/// `shmem_rss_kb`, `pgtables_kb`, `file_rss_kb`, `anon_rss_kb`; measured 2026-11-29: kill -9
/// victim 4188 vs 4168 kB anon, 5656 vs 5372 kB total_vm).
const RUN_SPECIFIC: &[&str] = &[
    "time",
    "ktime_ns",
    "exit_after_ns",
    "seen_after_ns",
    "pid",
    "tid",
    "chosen_pid",
    "trigger_pid",
    "trigger_tid",
    "usage_bytes",
    "total_vm_kb",
    "shmem_rss_kb",
    "pgtables_kb",
    "file_rss_kb",
    "anon_rss_kb",
];

/// Flattens a JSON record into `path = value` lines, without the [`RUN_SPECIFIC`] fields.
fn flatten(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if RUN_SPECIFIC.contains(&k.as_str()) {
                    continue;
                }
                flatten(v, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, &format!("{path}[{i}]"), out);
            }
        }
        other => out.push(format!("{path} = {other}")),
    }
}

/// The fields in which two kill records of the same scenario differ, timestamps and pids aside
/// (`-` from `a`, `+` from `b`).
pub fn record_diff(a: &str, b: &str) -> Result<Vec<String>> {
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    flatten(&serde_json::from_str(a).context("record a")?, "", &mut fa);
    flatten(&serde_json::from_str(b).context("record b")?, "", &mut fb);
    let mut diff: Vec<String> = fa
        .iter()
        .filter(|f| !fb.contains(f))
        .map(|f| format!("- {f}"))
        .collect();
    diff.extend(
        fb.iter()
            .filter(|f| !fa.contains(f))
            .map(|f| format!("+ {f}")),
    );
    Ok(diff)
}

/// Compares each scenario's record from the amd64 and the arm64 6.12 runs; fails on a field
/// that differs (timestamps and pids aside) or a scenario missing from either.
pub fn compare_arches(series: &str) -> Result<()> {
    let cache = workspace_root().join("target/vm");
    let amd64 = records(&cache.join(format!("run-{series}")), Arch::X86_64);
    let arm64 = records(&cache.join(format!("run-{series}-aarch64")), Arch::Aarch64);
    if amd64.is_empty() || arm64.is_empty() {
        println!(
            "{:<28} {:<32} FAIL  amd64 {} records, arm64 {} records",
            "amd64 vs arm64",
            "records_agree",
            amd64.len(),
            arm64.len()
        );
        bail!("no records to compare from the {series} runs");
    }
    let mut failed = 0;
    for (name, a) in &amd64 {
        let Some((_, b)) = arm64.iter().find(|(n, _)| n == name) else {
            println!(
                "{:<28} records_agree_{name:<18} FAIL  no arm64 record",
                "amd64 vs arm64"
            );
            failed += 1;
            continue;
        };
        let diff = record_diff(a, b)?;
        if diff.is_empty() {
            println!(
                "{:<28} records_agree_{name:<18} PASS  field for field but timestamps, pids, usage read after the kill, image sizes",
                "amd64 vs arm64"
            );
        } else {
            println!(
                "{:<28} records_agree_{name:<18} FAIL  {}",
                "amd64 vs arm64",
                diff.join("; ")
            );
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} record(s) differ between amd64 and arm64");
    }
    Ok(())
}

fn in_matrix() -> bool {
    std::env::var_os("OOMPROBE_VM_MATRIX").is_some()
}

/// `cargo xtask test --kernels`: the amd64 rows (6.1, 6.12) and the arm64 row (6.12), each
/// timed; fails when any row failed.
pub fn matrix() -> Result<()> {
    std::env::set_var("OOMPROBE_VM_MATRIX", "1");
    let started = Instant::now();
    let k: Vec<String> = DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect();
    let amd64 = vm_test(&k, Arch::X86_64);
    let amd64_took = started.elapsed();
    let k: Vec<String> = AARCH64_KERNELS.iter().map(|s| s.to_string()).collect();
    let arm64 = vm_test(&k, Arch::Aarch64);
    eprintln!(
        "vm-test: matrix took {:.0?} (amd64 rows {:.0?}, arm64 row {:.0?})",
        started.elapsed(),
        amd64_took,
        started.elapsed() - amd64_took
    );
    amd64.and(arm64)?;
    compare_arches("6.12")
}

pub fn vm_test(kernels: &[String], arch: Arch) -> Result<()> {
    apt_install(&["qemu-system-x86", "busybox-static", "cpio"])?;
    let cache = workspace_root().join("target/vm");
    std::fs::create_dir_all(&cache)?;
    let bins = match arch {
        Arch::X86_64 => {
            crate::build()?;
            build_static(arch)?
        }
        Arch::Aarch64 => {
            crate::setup::ensure()?;
            crate::setup::ensure_aarch64()?;
            crate::build_standins_for(arch)?;
            build_static(arch)?
        }
    };
    let busybox = busybox(arch, &cache)?;
    let initrd = match arch {
        Arch::X86_64 => cache.join("initrd.cpio.gz"),
        Arch::Aarch64 => cache.join("initrd-aarch64.cpio.gz"),
    };
    initramfs(&bins, &initrd, arch, &busybox)?;
    let mut failed = 0;
    let mut passed = 0;
    let mut table = Vec::new();
    for k in kernels {
        let vmlinuz = fetch_kernel(k, &cache, arch)?;
        let work = match arch {
            Arch::X86_64 => cache.join(format!("run-{k}")),
            Arch::Aarch64 => cache.join(format!("run-{k}-aarch64")),
        };
        std::fs::create_dir_all(&work)?;
        eprintln!(
            "vm-test: booting {} ({}, software emulation)",
            vmlinuz.display(),
            arch.label()
        );
        let started = Instant::now();
        let mut booted = boot(&vmlinuz, &initrd, &work, arch);
        // A kernel that dies before our init runs (seen once: a panic in enqueue_timer 1.4 s
        // into boot under TCG) has not run a single scenario: boot it once more. A failure
        // after init started is the scenarios' and is reported as is.
        if booted.is_err() && !init_started(&work) {
            eprintln!("vm-test: {k}: the kernel failed before our init ran; booting again");
            booted = boot(&vmlinuz, &initrd, &work, arch);
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
    // The cross-architecture comparison, once both architectures' 6.12 runs are in the cache
    // (`--matrix` runs it after both; a single-arch run compares with the other's last run).
    let other = match arch {
        Arch::X86_64 => "run-6.12-aarch64",
        Arch::Aarch64 => "run-6.12",
    };
    if kernels.iter().any(|k| k == "6.12") && cache.join(other).is_dir() && !in_matrix() {
        compare_arches("6.12")?;
    }
    if failed > 0 {
        bail!("{failed} VM scenario(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::record_diff;

    #[test]
    fn records_differing_in_pids_and_times_only_agree() {
        let a = r#"{"event":"kill","time":"2026-11-29T12:00:00Z","victim":{"pid":101,"comm":"memhog","anon_rss_kb":32000},"sender":{"pid":101,"tid":101},"exit_after_ns":1200}"#;
        let b = r#"{"event":"kill","time":"2026-11-29T12:05:00Z","victim":{"pid":977,"comm":"memhog","anon_rss_kb":32000},"sender":{"pid":977,"tid":977},"exit_after_ns":99000}"#;
        assert_eq!(record_diff(a, b).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_field_that_differs_is_named() {
        let a = r#"{"victim":{"pid":1,"comm":"memhog","cgroup":"/t1"}}"#;
        let b = r#"{"victim":{"pid":2,"comm":"memhog","cgroup":"/t2"}}"#;
        assert_eq!(
            record_diff(a, b).unwrap(),
            vec![
                r#"- .victim.cgroup = "/t1""#.to_string(),
                r#"+ .victim.cgroup = "/t2""#.to_string()
            ]
        );
    }
}
