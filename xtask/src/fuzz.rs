//! `cargo xtask fuzz [--seconds N]`: every cargo-fuzz target (fuzz/, libFuzzer with
//! AddressSanitizer, debug assertions and overflow checks) for a bounded time each, from seed
//! corpora made of the repository's real data. A crash, a hang (`-timeout`) or an input that
//! makes the target allocate past `-rss_limit_mb` fails the run and names the reproducer.
//!
//! The corpus grows across runs in `target/fuzz/corpus/<target>`; reproducers land in
//! `target/fuzz/artifacts/<target>/`. Every crash found so far is a unit test in the agent
//! (its input under the crate's `testdata/fuzz/`).
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{run, setup, workspace_root};

/// The fuzz targets (fuzz/fuzz_targets/*.rs), in the order they run.
pub const TARGETS: &[&str] = &[
    "ring_events",
    "elf_symbols",
    "cgroup_paths",
    "kubelet_metrics",
    "replay_csv",
    "series_store",
];
/// One input taking longer than this is a hang.
const TIMEOUT_S: u32 = 10;
/// Peak RSS (and, through libFuzzer's default, any single allocation) allowed, MiB.
const RSS_LIMIT_MB: u32 = 2048;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("target/fuzz")
}

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", setup::NIGHTLY))
        .arg("fuzz")
        .current_dir(workspace_root());
    // What `cargo xtask` (cargo run) put in this process's environment is not the fuzz build's:
    // ring's build script tracks CARGO_MANIFEST_DIR, and a changed value rebuilds everything.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key == "CARGO" || key.starts_with("CARGO_MANIFEST") || key.starts_with("CARGO_PKG_") {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

/// Runs every target for `seconds` each.
pub fn run_all(seconds: u32) -> Result<()> {
    setup::ensure()?;
    let out = fuzz_dir();
    run(cargo_fuzz()
        .args(["build", "--fuzz-dir", "fuzz", "--target-dir"])
        .arg(&out))
    .context("building the fuzz targets")?;
    seeds(&out).context("writing the seed corpora")?;
    let mut failed = Vec::new();
    for target in TARGETS {
        let corpus = out.join("corpus").join(target);
        let artifacts = out.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        let before = listing(&artifacts);
        eprintln!("fuzz: {target} for {seconds} s");
        let status = cargo_fuzz()
            .args(["run", "--fuzz-dir", "fuzz", "--target-dir"])
            .arg(&out)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={TIMEOUT_S}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .status()
            .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
        if !status.success() {
            let new: Vec<PathBuf> = listing(&artifacts)
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            failed.push((target, status, new));
        }
    }
    if failed.is_empty() {
        eprintln!(
            "fuzz: {} targets, {seconds} s each: no crash, hang or oversized allocation",
            TARGETS.len()
        );
        return Ok(());
    }
    let mut msg = String::from("fuzzing found failures:");
    for (target, status, new) in &failed {
        msg.push_str(&format!("\n  {target} ({status})"));
        if new.is_empty() {
            msg.push_str(": no reproducer written (see its output above)");
        }
        for p in new {
            msg.push_str(&format!(
                "\n    reproducer {}\n    replay: cargo +{} fuzz run --fuzz-dir fuzz {target} {}",
                p.display(),
                setup::NIGHTLY,
                p.display()
            ));
        }
    }
    bail!("{msg}")
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), data)
        .with_context(|| format!("writing seed {name} in {}", dir.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading seed source {}", path.display()))
}

fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&read(path)?[..])
        .read_to_end(&mut out)
        .with_context(|| format!("gunzip {}", path.display()))?;
    Ok(out)
}

/// The first `n` lines of a text.
fn head(text: &[u8], n: usize) -> Vec<u8> {
    let s = String::from_utf8_lossy(text);
    let mut out: String = s.lines().take(n).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out.into_bytes()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex"))
        .collect()
}

/// A golden ring stream (`<read ns> <hex record>` or `expire <ns>` lines) in the ring_events
/// target's framing: tag 1 + u64 (time), tag 0 + u16 length + record, tag 3 + u64 (expire).
fn frame_ring(stream: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for line in stream
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (what, rest) = line.split_once(' ').context("ring line without a space")?;
        if what == "expire" {
            out.push(3);
            out.extend_from_slice(&rest.trim().parse::<u64>()?.to_le_bytes());
        } else {
            out.push(1);
            out.extend_from_slice(&what.parse::<u64>()?.to_le_bytes());
            let rec = unhex(rest.trim())?;
            out.push(0);
            out.extend_from_slice(&u16::try_from(rec.len())?.to_le_bytes());
            out.extend_from_slice(&rec);
        }
    }
    Ok(out)
}

/// Seed corpora from the repository's real data (rewritten each run; what libFuzzer added to
/// the corpus stays).
fn seeds(out: &Path) -> Result<()> {
    let root = workspace_root();
    let corpus = |t: &str| out.join("corpus").join(t);

    let golden = root.join("agent/tests/data/golden");
    for name in ["ring-recorded.hex", "ring-synth.hex"] {
        let text = String::from_utf8(read(&golden.join(name))?)?;
        write(&corpus("ring_events"), name, &frame_ring(&text)?)?;
    }

    // A real go1.26 binary, stripped as release kubelets are, its .gopclntab alone, and a C
    // binary (the libc path).
    let bins = out.join("seed-bins");
    std::fs::create_dir_all(&bins)?;
    let go_bin = bins.join("go-stripped");
    let status = Command::new("go")
        .args(["build", "-ldflags=-s -w", "-o"])
        .arg(&go_bin)
        .arg(".")
        .current_dir(root.join("fuzz/seeds/go"))
        .env("GOCACHE", root.join("target/gocache"))
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .status()
        .context("cannot run `go` (checked by cargo xtask setup)")?;
    if !status.success() {
        bail!("go build of the fuzz seed binary failed");
    }
    write(&corpus("elf_symbols"), "go-stripped", &read(&go_bin)?)?;
    let pclntab = bins.join("go.gopclntab");
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.gopclntab"])
        .arg(&go_bin)
        .arg(&pclntab))?;
    write(&corpus("elf_symbols"), "go.gopclntab", &read(&pclntab)?)?;
    let c_bin = bins.join("c-kubelet");
    run(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&c_bin)
        .arg(root.join("standin/c/kubelet.c")))?;
    write(&corpus("elf_symbols"), "c-kubelet", &read(&c_bin)?)?;

    // Kubepods paths of every driver and runtime, and this machine's own /proc/self/cgroup.
    write(
        &corpus("cgroup_paths"),
        "kubepods",
        &read(&root.join("fuzz/seeds/cgroup_paths.txt"))?,
    )?;
    write(
        &corpus("cgroup_paths"),
        "proc-self-cgroup",
        &read(Path::new("/proc/self/cgroup"))?,
    )?;

    let metrics = read(&root.join("agent/tests/data/kubelet-v1.34.4-metrics.txt"))?;
    write(&corpus("kubelet_metrics"), "kubelet-v1.34.4", &metrics)?;
    let text = String::from_utf8_lossy(&metrics).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    for (i, chunk) in lines.chunks(40).enumerate() {
        write(
            &corpus("kubelet_metrics"),
            &format!("kubelet-v1.34.4-{i}"),
            chunk.join("\n").as_bytes(),
        )?;
    }

    // Heads of real series (the detectors run at each hour of a seed: whole weeks are slow).
    let csvs = [
        (
            "golden-series",
            read(&root.join("agent/tests/data/golden/series.csv"))?,
        ),
        (
            "episode-series",
            read(&root.join("tests/fixtures/episode/series.csv"))?,
        ),
        (
            "slow-scavenger-return",
            gunzip(&root.join(
                "agent/src/detect/testdata/detector-false-alarms/slow-scavenger-return.csv.gz",
            ))?,
        ),
        (
            "warm-up-after-start",
            gunzip(&root.join(
                "agent/src/detect/testdata/detector-false-alarms/warm-up-after-start.csv.gz",
            ))?,
        ),
    ];
    for (name, data) in &csvs {
        write(&corpus("replay_csv"), name, &head(data, 200))?;
    }

    write(
        &corpus("series_store"),
        "format-1",
        &read(&root.join("agent/src/detect/testdata/store-v1.bin"))?,
    )?;
    write(
        &corpus("series_store"),
        "format-2",
        &read(&root.join("fuzz/seeds/store-v2.bin"))?,
    )?;
    Ok(())
}
