use which::which;

/// Building this crate requires `bpf-linker`. Rebuild when it changes, and say clearly when it
/// is missing (`cargo xtask setup` installs it).
///
/// `bpf_target_arch` (the architecture whose registers the uprobes read) comes from aya-build
/// (`--cfg bpf_target_arch=...`, the agent's target architecture); a host build (clippy, check)
/// gets the host's.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found on PATH ({err}); run `cargo xtask setup`"),
    }
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
    if std::env::var_os("CARGO_CFG_BPF_TARGET_ARCH").is_none() {
        let arch = match std::env::var("CARGO_CFG_TARGET_ARCH") {
            Ok(a) if a != "bpf" => a,
            _ => std::env::var("HOST")
                .ok()
                .and_then(|h| h.split('-').next().map(str::to_string))
                .unwrap_or_default(),
        };
        println!("cargo:rustc-cfg=bpf_target_arch=\"{arch}\"");
    }
}
