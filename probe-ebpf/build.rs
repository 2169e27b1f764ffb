use which::which;

/// Building this crate requires `bpf-linker`. Rebuild when it changes, and say clearly when it
/// is missing (`cargo xtask setup` installs it).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found on PATH ({err}); run `cargo xtask setup`"),
    }
}
