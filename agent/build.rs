use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

/// The pinned nightly (`cargo xtask setup` installs it; keep in step with xtask/src/setup.rs).
const NIGHTLY: &str = "nightly-2026-05-20";

/// Builds the kernel programs (probe-ebpf) with the nightly toolchain for the BPF target and
/// leaves the object in OUT_DIR for `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "probe-ebpf")
        .ok_or_else(|| anyhow!("probe-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
        .as_str();
    // What the eBPF object is built from, and nothing else: an agent-only edit must not re-run
    // the nested eBPF build (aya-build adds probe-ebpf's root directory as well).
    println!("cargo:rerun-if-changed=build.rs");
    let workspace = std::path::Path::new(root_dir)
        .parent()
        .ok_or_else(|| anyhow!("no parent for {root_dir}"))?;
    for input in [
        "probe-ebpf/src",
        "probe-ebpf/build.rs",
        "probe-ebpf/Cargo.toml",
        "probe-common/src",
        "probe-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    let toolchain = std::env::var("OOMPROBE_BPF_TOOLCHAIN").unwrap_or_else(|_| NIGHTLY.into());
    println!("cargo:rerun-if-env-changed=OOMPROBE_BPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: name.as_str(),
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
