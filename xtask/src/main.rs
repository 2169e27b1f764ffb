//! Build, set-up, demo and test orchestration: `cargo xtask <command>`.
mod bench;
mod demo;
mod fuzz;
mod lab;
mod record;
mod deploy;
mod image;
mod setup;
mod soak;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "oomprobe's build, set-up, demo and test tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install and check the toolchain: the pinned nightly with rust-src (rustup), llvm-22-dev,
    /// gcc and bpftool (apt), bpf-linker on LLVM 22 and cargo-fuzz (cargo install), the arm64
    /// cross-build (the rustup target, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
    /// qemu-system-arm, arm64 as a dpkg foreign architecture); checks the machine's Go (1.24 or
    /// newer on PATH).
    Setup {
        /// Also what the Kubernetes lab needs: Debian's containerd, runc and CNI plugins, and
        /// the lab's Kubernetes, etcd and crictl builds and images (`lab up` does the same),
        /// among them a kubelet built by go1.27.3 (`GOTOOLCHAIN` on that build only: the go
        /// command fetches it from the Go module proxy once).
        #[arg(long)]
        lab: bool,
    },
    /// A single-node Kubernetes cluster from real components (kubelet, kube-apiserver,
    /// kube-controller-manager, kube-scheduler, etcd, containerd), state under target/lab.
    Lab {
        #[command(subcommand)]
        action: LabCmd,
    },
    /// Build the agent, its kernel programs and the stand-ins. With `--arch aarch64`: the static
    /// arm64 agent (target/static/aarch64-unknown-linux-gnu/release/oomprobe, its eBPF object
    /// built for arm64's registers), memhog and the arm64 stand-ins (target/standin-aarch64).
    Build {
        /// Target architecture: x86_64 (this machine) or aarch64 (cross-built).
        #[arg(long, value_enum, default_value_t = vm::Arch::X86_64)]
        arch: vm::Arch,
    },
    /// The field guide's story in about 20 s (after the build): the Go stand-in kubelet leaks in a memory
    /// cgroup, restarted by the demo as systemd would; the agent attributes the growth, warns
    /// before the limit, records the kills, the storm, the re-OOM and the flapping, and the
    /// picture is written at the end (root; cgroups and processes removed, also on Ctrl-C).
    Demo {
        /// Memory limit of the demo cgroup, MiB.
        #[arg(long, default_value_t = 64)]
        limit_mib: u64,
        /// The first stand-in kubelet's leak rate, MiB/s (the restarted one leaks 4x as fast).
        #[arg(long, default_value_t = 6)]
        leak_mib_per_sec: u64,
        /// Do not build first (the binaries in target/ are used as they are).
        #[arg(long)]
        no_build: bool,
        /// Directory for the event log, the agent's state and the picture (default target/demo).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Benchmarks: kill-to-record latency and coverage against bpftrace and a kmsg reader.
    Bench {
        /// Only one part: `kills`, `alloc`, `sampling`, `detect` or `soak` (the soak runs only
        /// when named).
        #[arg(long)]
        only: Option<String>,
        /// How long the soak runs, in minutes (default: `OOMPROBE_SOAK_MINUTES`, else 30).
        #[arg(long)]
        minutes: Option<u64>,
        /// OOM kills one at a time.
        #[arg(long, default_value_t = 30)]
        sequential: usize,
        /// OOM kills started at once.
        #[arg(long, default_value_t = 100)]
        burst: usize,
    },
    /// The Foundation scenarios on other kernels in QEMU (default: Debian's 6.1 and 6.12 cloud
    /// kernels, cgroup v2).
    VmTest {
        /// Kernel series, e.g. 6.1 6.12.
        kernels: Vec<String>,
        /// The guest's architecture: x86_64 (qemu-system-x86_64) or aarch64
        /// (qemu-system-aarch64, `-machine virt`, Debian's cloud-arm64 kernels).
        #[arg(long, value_enum, default_value_t = vm::Arch::X86_64)]
        arch: vm::Arch,
        /// The whole matrix, as `cargo xtask test --kernels` runs it: amd64 6.1 and 6.12, arm64
        /// 6.12, and the amd64/arm64 record comparison.
        #[arg(long, conflicts_with_all = ["kernels", "arch"])]
        matrix: bool,
        /// Only compare the cached amd64 and arm64 6.12 runs' records.
        #[arg(long, conflicts_with_all = ["kernels", "arch", "matrix"])]
        compare: bool,
    },
    /// The golden test's data (agent/tests/data/golden/README.md): record the real ring stream
    /// on this kernel (root, take the privileged lock), write the synthesised one, or re-write
    /// the expected outputs from what the current code produces.
    Golden {
        /// Record `ring-recorded.hex` (+ `.kernel`): real OOM kills and a kill -9 in scratch
        /// memory cgroups, read by `oomprobe run --record-ring`.
        #[arg(long)]
        record: bool,
        /// Write `ring-synth.hex` from probe-common's wire structs (the corner cases).
        #[arg(long)]
        synth: bool,
        /// Re-write every `*.expected.*` file from the current code's outputs.
        #[arg(long)]
        bless: bool,
    },
    /// The agent's OCI image archive, target/image/oomprobe.tar (static binary, reproducible,
    /// no registry): `ctr images import` takes it.
    Image,
    /// Regenerates deploy/prometheus/prometheusrule.yaml from oomprobe.rules.yml.
    PrometheusRule,
    /// Checks deploy/ (part of `test`): kustomize builds, promtool check/test rules, the
    /// PrometheusRule is current, the dashboard's model and queries.
    CheckDeploy,
    /// Every fuzz target (fuzz/: the ring decoder, ELF/pclntab symbols, cgroup paths, the
    /// kubelet metrics parser, the replay CSV reader, the series store) for a bounded time each;
    /// a crash, hang or oversized allocation fails and names the reproducer.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Everything: formatting, lints, unit tests, fuzzing (20 s per target), then the
    /// privileged tests on this kernel.
    Test {
        /// Only the privileged integration tests.
        #[arg(long)]
        integration_only: bool,
        /// Also run the Foundation scenarios on the VM kernel matrix.
        #[arg(long)]
        kernels: bool,
        /// Extra arguments for the integration test binary (a test name filter...).
        #[arg(last = true)]
        filter: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build (cached) and start the lab; the node Ready, the kubeconfig at target/lab/kubeconfig.
    Up,
    /// Stop everything and remove every process, mount, cgroup and file the lab made; restore
    /// the sysctls the kubelet rewrote.
    Down,
    /// Each component's process and the node's Ready condition (exit 1 unless all up).
    Status,
    /// The kubelet's supervisor (started by `lab up`).
    #[command(hide = true)]
    Supervise,
    /// Record the real kubelet through the agent's own store while the lab idles, churns pods,
    /// kills (-9) and restarts (SIGTERM) the kubelet; optionally then replaces the kubelet by
    /// another build at the same path. Brings the lab up and down itself.
    Record(record::Record),
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn build() -> Result<()> {
    setup::ensure()?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    build_standins()
}

/// `cargo xtask build --arch aarch64`: the static agent and memhog for arm64 (the eBPF object
/// inside built for arm64's registers) and the arm64 stand-ins.
fn build_cross(arch: vm::Arch) -> Result<()> {
    setup::ensure()?;
    setup::ensure_aarch64()?;
    let bins = vm::build_static(arch)?;
    eprintln!(
        "xtask: static {} agent at {}",
        arch.rust_target(),
        bins.join("oomprobe").display()
    );
    build_standins_for(arch)
}

fn build_standins() -> Result<()> {
    build_standins_for(vm::Arch::X86_64)
}

/// The Go stand-in kubelet (unstripped and stripped like release kubelets) and the C one, each
/// in its own directory so the binary is named `kubelet`: target/standin (this machine's
/// architecture) or target/standin-aarch64 (GOARCH=arm64, aarch64-linux-gnu-gcc).
pub fn build_standins_for(arch: vm::Arch) -> Result<()> {
    let root = workspace_root();
    let out = root.join(arch.standin_dir());
    let rel = arch.standin_dir();
    for dir in ["go", "go-stripped", "c", "static", "pressure"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    let go = |args: &[&str], dest: &str| -> Result<()> {
        let mut cmd = Command::new("go");
        cmd.arg("build")
            .args(args)
            .arg("-o")
            .arg(out.join(dest))
            .arg(".")
            .current_dir(root.join("standin/go"))
            .env("GOCACHE", root.join("target/gocache"))
            .env("GOPATH", root.join("target/gopath"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOARCH", arch.goarch())
            .env("CGO_ENABLED", "0");
        let status = cmd
            .status()
            .context("cannot run `go` (the machine's Go, checked by cargo xtask setup)")?;
        if !status.success() {
            bail!("go build of the stand-in kubelet failed");
        }
        Ok(())
    };
    go(&[], "go/kubelet")?;
    go(&["-ldflags=-s -w"], "go-stripped/kubelet")?;
    run(Command::new(arch.cc()).args([
        "-O2",
        "-fno-omit-frame-pointer",
        "-o",
        &format!("{rel}/c/kubelet"),
        "standin/c/kubelet.c",
    ]))?;
    let static_stripped = |dest: &str, source: &str| {
        run(Command::new(arch.cc()).args(["-O2", "-static", "-s", "-o", dest, source]))
    };
    // Static and stripped: neither Go nor a libc to probe (the syscall fallback's case).
    static_stripped(&format!("{rel}/static/kubelet"), "standin/c/kubelet.c")?;
    // Pressures without a leak: thrashing at a limit, implausible munmap lengths.
    static_stripped(&format!("{rel}/pressure/kubelet"), "standin/c/pressure.c")
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u32 = 20;

fn test(integration_only: bool, filter: &[String]) -> Result<()> {
    setup::ensure()?;
    if !integration_only {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
            .context("formatting: run `cargo fmt --all`")?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // Unprivileged tier: decoders, parsers, detectors.
        run(cargo().args(["test", "--workspace", "--exclude", "oomprobe-tests"]))?;
        // What deploy/ ships: kustomizations, Prometheus rules and their tests, the dashboard.
        deploy::check()?;
        // Every parser of outside input, fuzzed for a bounded time (6 targets x 20 s).
        fuzz::run_all(FUZZ_SECONDS_IN_TEST)?;
    }
    build()?;
    // What the privileged tests drive for real, from Debian's packages: containerd and runc
    // (the image test), chromium (the report test), promtool (a real scrape checked).
    setup::apt_install(&["containerd", "runc", "chromium", "prometheus"])?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the integration tests load eBPF programs and create memory cgroups: run as root \
             (they cannot be skipped without losing what they prove)"
        );
    }
    // Privileged tier: one at a time, since they reconcile against node-wide kernel counters.
    // First everything but the lab's tests (no real kubelet may run then: the agent finds
    // kubelets by name), then the lab's against a real cluster brought up for them.
    // Test-binary flags (`--nocapture`...) go to both runs and name no test.
    let flag = |f: &String| f.starts_with('-');
    let names: Vec<&String> = filter.iter().filter(|f| !flag(f)).collect();
    let lab_only = !names.is_empty() && names.iter().all(|f| f.starts_with("lab"));
    let with_lab = names.is_empty() || names.iter().any(|f| f.starts_with("lab"));
    if !lab_only {
        let mut cmd = cargo();
        cmd.args([
            "test",
            "-p",
            "oomprobe-tests",
            "--",
            "--test-threads=1",
            "--skip",
            "lab_",
        ]);
        cmd.args(filter.iter().filter(|f| flag(f) || !f.starts_with("lab")));
        cmd.env("OOMPROBE_BIN_DIR", workspace_root().join("target/debug"));
        // The image the deploy tests import into a containerd of their own.
        let (image, _) = image::build()?;
        cmd.env("OOMPROBE_IMAGE", image);
        run(&mut cmd)?;
    }
    if with_lab {
        // The image the DaemonSet tests import into the lab's containerd, built before the
        // lab is up.
        let (image, _) = image::build()?;
        let started = std::time::Instant::now();
        if let Err(e) = lab::up() {
            let _ = lab::down();
            return Err(e.context("the lab's tests need `cargo xtask lab up`, which failed"));
        }
        let mut cmd = cargo();
        cmd.args([
            "test",
            "-p",
            "oomprobe-tests",
            "--test",
            "lab",
            "--",
            "--test-threads=1",
        ]);
        cmd.args(filter.iter().filter(|f| flag(f) || f.starts_with("lab")));
        cmd.env("OOMPROBE_BIN_DIR", workspace_root().join("target/debug"));
        cmd.env("OOMPROBE_IMAGE", image);
        let result = run(&mut cmd);
        let down = lab::down();
        eprintln!(
            "xtask: lab up, tests and down in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        result?;
        down?;
    }
    Ok(())
}

fn golden(record: bool, synth: bool, bless: bool) -> Result<()> {
    if !(record || synth || bless) {
        bail!("nothing to do: give --record, --synth and/or --bless");
    }
    let dir = workspace_root().join("agent/tests/data/golden");
    if record {
        build()?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("recording loads eBPF programs and creates memory cgroups: run as root");
        }
        let mut cmd = cargo();
        cmd.args([
            "run",
            "-p",
            "oomprobe-tests",
            "--example",
            "record_golden",
            "--",
        ])
        .arg(dir.join("ring-recorded.hex"))
        .env("OOMPROBE_BIN_DIR", workspace_root().join("target/debug"));
        run(&mut cmd)?;
    }
    if synth {
        run(cargo()
            .args(["run", "-p", "oomprobe", "--example", "golden_synth", "--"])
            .arg(dir.join("ring-synth.hex")))?;
    }
    if bless {
        run(cargo()
            .args(["test", "-p", "oomprobe", "--test", "golden"])
            .env("OOMPROBE_GOLDEN_WRITE", "1"))?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result =
        match cli.command {
            Cmd::Setup { lab } => setup::ensure()
                .and_then(|()| setup::ensure_aarch64())
                .and_then(|()| if lab { lab::ensure_built() } else { Ok(()) }),
            Cmd::Lab { action } => match action {
                LabCmd::Up => setup::ensure().and_then(|()| lab::up()),
                LabCmd::Down => lab::down(),
                LabCmd::Status => lab::status(),
                LabCmd::Supervise => lab::supervise(),
                LabCmd::Record(args) => setup::ensure().and_then(|()| record::record(&args)),
            },
            Cmd::Build { arch } => match arch {
                vm::Arch::X86_64 => build(),
                vm::Arch::Aarch64 => build_cross(arch),
            },
            Cmd::Golden {
                record,
                synth,
                bless,
            } => golden(record, synth, bless),
            Cmd::Demo {
                limit_mib,
                leak_mib_per_sec,
                no_build,
                out,
            } => demo::run(demo::Demo {
                limit_mib,
                leak_mib_per_sec,
                no_build,
                out,
            }),
            Cmd::Bench {
                only,
                sequential,
                burst,
                minutes,
            } => match only.as_deref() {
                Some("soak") => soak::minutes(minutes).and_then(soak::run),
                Some("kills") => bench::run(sequential, burst),
                Some("alloc") => bench::run_alloc(),
                Some("sampling") => bench::run_sampling(),
                Some("detect") => bench::run_detect(),
                None => bench::run(sequential, burst)
                    .and_then(|()| bench::run_alloc())
                    .and_then(|()| bench::run_sampling())
                    .and_then(|()| bench::run_detect()),
                Some(other) => Err(anyhow::anyhow!(
                    "unknown bench part {other}: kills, alloc, sampling, detect or soak"
                )),
            },
            Cmd::Image => image::build().map(|_| ()),
            Cmd::Fuzz { seconds } => fuzz::run_all(seconds),
            Cmd::PrometheusRule => deploy::write_prometheus_rule(),
            Cmd::CheckDeploy => deploy::check(),
            Cmd::VmTest { matrix: true, .. } => vm::matrix(),
            Cmd::VmTest { compare: true, .. } => vm::compare_arches("6.12"),
            Cmd::VmTest { kernels, arch, .. } => {
                let k: Vec<String> = if kernels.is_empty() {
                    arch.default_kernels()
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                } else {
                    kernels
                };
                vm::vm_test(&k, arch)
            }
            Cmd::Test {
                integration_only,
                kernels,
                filter,
            } => test(integration_only, &filter).and_then(|()| {
                if kernels {
                    vm::matrix()
                } else {
                    Ok(())
                }
            }),
        };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
