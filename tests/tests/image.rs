//! The agent's OCI image (`cargo xtask image`) imported into a real containerd and run by runc:
//! the archive is what `ctr images import` takes, the image runs as the non-root user 65532 by
//! default, and the agent inside reads a kubelet binary exactly as the host's agent does.
use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use oomprobe_tests::{bin, containerd::Containerd, require_root, standin_kubelet};
use serde_json::Value;

fn image_archive() -> PathBuf {
    let p = std::env::var_os("OOMPROBE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/oomprobe.tar")
        });
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask image` (cargo xtask test builds it)",
        p.display()
    );
    p
}

/// A member of the archive, read with tar(1).
fn member(archive: &PathBuf, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .expect("tar");
    assert!(out.status.success(), "no {name} in {}", archive.display());
    out.stdout
}

/// A scratch copy of the Go stand-in with the given mode, to bind-mount into the container.
struct Copy(PathBuf);
impl Copy {
    fn new(mode: u32) -> Copy {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../target/image-test-{}-{mode:o}",
            std::process::id()
        ));
        std::fs::copy(standin_kubelet("go-stripped"), &p).expect("copy the stand-in");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        Copy(p)
    }
    fn mount(&self) -> String {
        format!(
            "type=bind,src={},dst=/kubelet,options=rbind:ro",
            self.0.canonicalize().unwrap().display()
        )
    }
}
impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn image_imports_into_containerd_and_runs_as_nonroot() {
    require_root();
    let archive = image_archive();
    let index: Value = serde_json::from_slice(&member(&archive, "index.json")).unwrap();
    let desc = &index["manifests"][0];
    let name = desc["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = desc["digest"].as_str().unwrap().to_string();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(name, format!("docker.io/library/oomprobe:{version}"));

    let c = Containerd::start("image");
    c.ctr_ok(&["images", "import", archive.to_str().unwrap()]);
    let list = c.ctr_ok(&["images", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not listed after import:\n{list}"));
    assert!(
        row.contains(&digest),
        "imported digest differs: {row} vs {digest}"
    );

    // The entrypoint's version is the workspace's.
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        &name,
        "version",
        "/usr/bin/oomprobe",
        "--version",
    ]);
    assert_eq!(out.trim(), format!("oomprobe {version}"));

    // Non-root by default: a kubelet binary only root may read is refused inside the
    // container (the DaemonSet runs it as uid 0; ctr 1.6's `run` has no flag to test that).
    let private = Copy::new(0o700);
    let refused = c.ctr(&[
        "run",
        "--rm",
        "--mount",
        &private.mount(),
        &name,
        "nonroot",
        "/usr/bin/oomprobe",
        "probe-points",
        "/kubelet",
    ]);
    assert!(
        !refused.status.success(),
        "uid 65532 read a mode-700 root file"
    );
    let stderr = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Inside the container, the probe points of the stand-in are exactly the host agent's.
    let host = Command::new(bin("oomprobe"))
        .args(["probe-points", "--format", "json"])
        .arg(standin_kubelet("go-stripped"))
        .output()
        .unwrap();
    assert!(host.status.success());
    let shared = Copy::new(0o755);
    let inside = c.ctr_ok(&[
        "run",
        "--rm",
        "--mount",
        &shared.mount(),
        &name,
        "points",
        "/usr/bin/oomprobe",
        "probe-points",
        "--format",
        "json",
        "/kubelet",
    ]);
    let strip = |s: &str| -> Vec<Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (inside, host) = (
        strip(&inside),
        strip(&String::from_utf8_lossy(&host.stdout)),
    );
    assert!(!host.is_empty());
    assert_eq!(inside, host);
}

/// The archive is one multi-architecture image: an OCI image index with an amd64 and an arm64
/// manifest, each layer holding that architecture's static agent, byte for byte the binary
/// `cargo xtask build --arch` made (the one the VM matrix boots on that architecture), an ELF
/// for that machine (`e_machine` 62, x86-64; 183, AArch64).
#[test]
fn image_index_carries_each_architectures_agent() {
    let archive = image_archive();
    let json = |name: &str| -> Value { serde_json::from_slice(&member(&archive, name)).unwrap() };
    let blob = |digest: &Value| -> Vec<u8> {
        let d = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        member(&archive, &format!("blobs/sha256/{d}"))
    };
    let index = json("index.json");
    let top = &index["manifests"][0];
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    let image_index: Value = serde_json::from_slice(&blob(&top["digest"])).unwrap();
    let manifests = image_index["manifests"].as_array().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = Vec::new();
    for m in manifests {
        let (arch, target, machine) = match m["platform"]["architecture"].as_str().unwrap() {
            "amd64" => ("amd64", "x86_64-unknown-linux-gnu", 62u16),
            "arm64" => ("arm64", "aarch64-unknown-linux-gnu", 183),
            other => panic!("unexpected platform {other}"),
        };
        seen.push(arch);
        let manifest: Value = serde_json::from_slice(&blob(&m["digest"])).unwrap();
        let config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(config["architecture"], arch);
        // The layer's /usr/bin/oomprobe, read with tar(1) from the layer blob.
        let layer = tempfile_with(&blob(&manifest["layers"][0]["digest"]));
        let binary = member(&layer.0, "usr/bin/oomprobe");
        let built = std::fs::read(root.join(format!("target/static/{target}/release/oomprobe")))
            .unwrap_or_else(|e| {
                panic!("the static {arch} agent (cargo xtask image builds it): {e}")
            });
        assert!(
            binary == built,
            "{arch}: the layer's agent is not the static build"
        );
        assert_eq!(&binary[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([binary[18], binary[19]]),
            machine,
            "{arch}"
        );
    }
    assert_eq!(seen, ["amd64", "arm64"]);
}

/// A file holding `data`, removed on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
fn tempfile_with(data: &[u8]) -> Scratch {
    let p = std::env::temp_dir().join(format!("oomprobe-image-layer-{}.tar", std::process::id()));
    std::fs::write(&p, data).unwrap();
    Scratch(p)
}
