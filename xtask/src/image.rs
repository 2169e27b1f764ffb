//! `cargo xtask image`: the agent's OCI image as an archive, `target/image/oomprobe.tar`, built
//! without a registry or a container engine, byte for byte reproducible.
//!
//! A multi-architecture image: amd64 and arm64 under one OCI image index, so one name serves a
//! mixed fleet and each node's runtime takes its own. Per architecture one uncompressed layer
//! holding the static agent (`/usr/bin/oomprobe`, glibc `+crt-static`, the build the VM matrix
//! boots on that architecture), `/etc/passwd` and `/etc/group` naming the non-root user 65532 the
//! image runs as by default (`probe-points`, `replay`, `report` need no privilege; `run` needs
//! uid 0 and the capabilities in deploy/README.md, which the DaemonSet sets), and an empty
//! `/var/lib/oomprobe`. No CA bundle: the agent trusts only the CA files it is given
//! (`--kube-ca-file`, `--kubelet-metrics-ca-file`, the service account's `ca.crt`).
//!
//! Reproducible: every entry has the mtime `SOURCE_DATE_EPOCH` (the environment's, else the
//! commit time of `HEAD`), uid/gid 0, fixed modes, no user or group names, a fixed order; the
//! config's `created` is the same instant; the JSON is written with sorted keys. The archive is
//! an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) whose `index.json` names the
//! image index `docker.io/library/oomprobe:<version>` (`io.containerd.image.name`), so `ctr
//! images import` takes it as is (the host's platform unpacked; `--all-platforms` keeps both).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{vm::Arch, workspace_root};

/// The uid and gid the image runs as unless told otherwise (the "nonroot" id of distroless).
pub const NONROOT: u32 = 65532;
/// Where the archive is written.
pub const ARCHIVE: &str = "target/image/oomprobe.tar";
/// Source repository named in the image's annotations.
pub const SOURCE: &str = "https://github.com/oomprobe/oomprobe";

/// What goes into the image besides the binary.
pub struct Meta {
    /// The agent's version (agent/Cargo.toml).
    pub version: String,
    /// The git commit it was built from.
    pub revision: String,
    /// Seconds since the epoch: every mtime and the `created` field.
    pub epoch: u64,
}

fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// A tar builder whose headers carry nothing from the build machine.
struct Tar {
    b: tar::Builder<Vec<u8>>,
    epoch: u64,
}

impl Tar {
    fn new(epoch: u64) -> Tar {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        Tar { b, epoch }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.epoch);
        h.set_size(size);
        h
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .with_context(|| format!("tar entry {path}"))
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.b
            .append_data(&mut h, path, data)
            .with_context(|| format!("tar entry {path}"))
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(self.b.into_inner()?)
    }
}

/// The root filesystem layer: an uncompressed tar, directories before their contents.
pub fn layer(binary: &[u8], epoch: u64) -> Result<Vec<u8>> {
    let mut t = Tar::new(epoch);
    for d in ["etc/", "usr/", "usr/bin/", "var/", "var/lib/"] {
        t.dir(d)?;
    }
    t.file(
        "etc/group",
        0o644,
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n").as_bytes(),
    )?;
    t.file(
        "etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nonroot:x:{NONROOT}:{NONROOT}:nonroot:/var/lib/oomprobe:/sbin/nologin\n"
        )
        .as_bytes(),
    )?;
    t.file("usr/bin/oomprobe", 0o755, binary)?;
    // The state directory: the DaemonSet mounts the host's over it; a bare `docker run` of a
    // read-only verb never writes it.
    let mut h = t.header(tar::EntryType::Directory, 0o755, 0);
    h.set_uid(u64::from(NONROOT));
    h.set_gid(u64::from(NONROOT));
    t.b.append_data(&mut h, "var/lib/oomprobe/", std::io::empty())?;
    t.finish()
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256_hex(data)),
        "size": data.len(),
    })
}

/// RFC 3339 UTC for `epoch` seconds (civil-from-days, Howard Hinnant's algorithm).
fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The OCI platform of an architecture: the `architecture` (and `variant`) Go and the OCI
/// image spec use.
fn platform(arch: Arch) -> Value {
    match arch {
        Arch::X86_64 => json!({"architecture": "amd64", "os": "linux"}),
        Arch::Aarch64 => json!({"architecture": "arm64", "os": "linux", "variant": "v8"}),
    }
}

/// One platform's image: its layer, config and manifest blobs, and the manifest's descriptor
/// (with its platform) for the image index.
fn platform_image(
    arch: Arch,
    binary: &[u8],
    meta: &Meta,
    annotations: &Value,
) -> Result<([Vec<u8>; 3], Value)> {
    let layer = layer(binary, meta.epoch)?;
    let created = rfc3339(meta.epoch);
    let mut config = json!({
        "created": created,
        "os": "linux",
        "config": {
            "User": format!("{NONROOT}:{NONROOT}"),
            "Entrypoint": ["/usr/bin/oomprobe"],
            "Cmd": ["--help"],
            "Env": ["PATH=/usr/bin"],
            "WorkingDir": "/",
            "Labels": annotations,
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    });
    let plat = platform(arch);
    config["architecture"] = plat["architecture"].clone();
    if let Some(v) = plat.get("variant") {
        config["variant"] = v.clone();
    }
    // serde_json's map is a BTreeMap (no preserve_order feature): keys come out sorted.
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        "annotations": annotations,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let mut desc = descriptor(MANIFEST, &manifest);
    desc["platform"] = plat;
    Ok(([layer, config, manifest], desc))
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The whole OCI layout archive: one image per `(architecture, static agent binary)`, under a
/// multi-architecture image index that `index.json` names `docker.io/library/oomprobe:<version>`
/// (the layout `docker buildx --output type=oci` writes: `index.json` -> image index ->
/// per-platform manifests, each descriptor with its `platform`).
pub fn archive(binaries: &[(Arch, &[u8])], meta: &Meta) -> Result<Vec<u8>> {
    if binaries.is_empty() {
        bail!("an image needs at least one architecture's binary");
    }
    let annotations = json!({
        "org.opencontainers.image.created": rfc3339(meta.epoch),
        "org.opencontainers.image.version": meta.version,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.revision": meta.revision,
        "org.opencontainers.image.title": "oomprobe",
        "org.opencontainers.image.description": "eBPF agent for the kubelet's memory and every SIGKILL on a node",
        "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
    });
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut manifests = Vec::new();
    for &(arch, binary) in binaries {
        let (b, desc) = platform_image(arch, binary, meta, &annotations)?;
        blobs.extend(b);
        manifests.push(desc);
    }
    let image_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": manifests,
        "annotations": annotations,
    }))?;
    let mut desc = descriptor(INDEX, &image_index);
    desc["annotations"] = json!({
        "io.containerd.image.name": format!("docker.io/library/oomprobe:{}", meta.version),
        "org.opencontainers.image.ref.name": meta.version,
    });
    blobs.push(image_index);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [desc],
    }))?;

    let mut t = Tar::new(meta.epoch);
    t.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    t.file("index.json", 0o644, &index)?;
    t.dir("blobs/")?;
    t.dir("blobs/sha256/")?;
    // Blobs by digest, sorted and once each, so the order never depends on anything but
    // their contents.
    blobs.sort_by_key(|b| sha256_hex(b));
    blobs.dedup_by_key(|b| sha256_hex(b));
    for b in &blobs {
        t.file(&format!("blobs/sha256/{}", sha256_hex(b)), 0o644, b)?;
    }
    t.finish()
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The agent's version from agent/Cargo.toml.
fn agent_version() -> Result<String> {
    let toml = std::fs::read_to_string(workspace_root().join("agent/Cargo.toml"))?;
    toml.lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
        })
        .map(str::to_string)
        .context("no version in agent/Cargo.toml")
}

/// Version, revision (`-dirty` when the work tree has changes) and the reproducible epoch.
pub fn meta() -> Result<Meta> {
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"))?,
        Err(_) => git(&["log", "-1", "--format=%ct"])?
            .parse()
            .context("git commit time")?,
    };
    let mut revision = git(&["rev-parse", "HEAD"])?;
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        revision.push_str("-dirty");
    }
    Ok(Meta {
        version: agent_version()?,
        revision,
        epoch,
    })
}

/// The architectures every image carries.
pub const ARCHES: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

/// Builds the static agent for every architecture in [`ARCHES`] (the aarch64 one with Debian's
/// cross gcc, as the arm64 VM row does) and writes the archive; returns its path and sha256.
pub fn build() -> Result<(PathBuf, String)> {
    let mut binaries = Vec::new();
    for arch in ARCHES {
        let bins = crate::vm::build_static(arch)?;
        let path = bins.join("oomprobe");
        let binary =
            std::fs::read(&path).with_context(|| format!("the static agent {}", path.display()))?;
        binaries.push((arch, binary));
    }
    let meta = meta()?;
    let refs: Vec<(Arch, &[u8])> = binaries.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    let data = archive(&refs, &meta)?;
    let out = workspace_root().join(ARCHIVE);
    write_atomic(&out, &data)?;
    let sum = sha256_hex(&data);
    eprintln!(
        "image: {} ({} bytes, sha256:{sum}), docker.io/library/oomprobe:{} for {} at {} (epoch {})",
        out.display(),
        data.len(),
        meta.version,
        ARCHES.map(Arch::debian).join(", "),
        meta.revision,
        meta.epoch
    );
    Ok((out, sum))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("archive path has a directory")?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tar.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, u64, u64, u64, u32, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                    data,
                )
            })
            .collect()
    }

    fn meta() -> Meta {
        Meta {
            version: "0.1.0".into(),
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            epoch: 1_795_941_325,
        }
    }

    #[test]
    fn two_builds_are_identical() {
        let bin = b"\x7fELF not really".to_vec();
        let a = archive(&[(Arch::X86_64, &bin)], &meta()).unwrap();
        // A second build, a second later, from a copy of the binary: nothing of the build
        // machine's clock or files may leak in.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = archive(&[(Arch::X86_64, &bin.clone())], &meta()).unwrap();
        assert_eq!(sha256_hex(&a), sha256_hex(&b));
        // A different epoch changes the archive: the mtimes really come from it.
        let c = archive(&[(Arch::X86_64, &bin)], &Meta { epoch: 1, ..meta() }).unwrap();
        assert_ne!(sha256_hex(&a), sha256_hex(&c));
        assert!(archive(&[], &meta()).is_err());
    }

    #[test]
    fn layout_is_a_multi_arch_index_containerd_imports() {
        let amd64 = b"agent amd64".to_vec();
        let arm64 = b"agent arm64".to_vec();
        let a = archive(&[(Arch::X86_64, &amd64), (Arch::Aarch64, &arm64)], &meta()).unwrap();
        let es = entries(&a);
        let names: Vec<&str> = es.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            &names[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        // Per architecture a layer, a config and a manifest; one image index.
        assert_eq!(names.len(), 4 + 2 * 3 + 1, "{names:?}");
        for e in &es {
            assert_eq!((e.1, e.2, e.3), (1_795_941_325, 0, 0), "{}", e.0);
            if let Some(d) = e.0.strip_prefix("blobs/sha256/").filter(|d| !d.is_empty()) {
                assert_eq!(sha256_hex(&e.5), d, "blob named by its digest");
            }
        }
        let blob = |digest: &str| -> Vec<u8> {
            let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
            es.iter().find(|e| e.0 == name).unwrap().5.clone()
        };
        let index: Value = serde_json::from_slice(&es[1].5).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        let top = &index["manifests"][0];
        assert_eq!(top["mediaType"], INDEX);
        assert_eq!(
            top["annotations"]["io.containerd.image.name"],
            "docker.io/library/oomprobe:0.1.0"
        );
        let image_index: Value =
            serde_json::from_slice(&blob(top["digest"].as_str().unwrap())).unwrap();
        assert_eq!(top["size"], blob(top["digest"].as_str().unwrap()).len());
        let platforms: Vec<(String, Value)> = image_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["platform"]["architecture"].as_str().unwrap().to_string(),
                    m.clone(),
                )
            })
            .collect();
        assert_eq!(
            platforms.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            ["amd64", "arm64"]
        );
        for ((arch, m), bin) in platforms.iter().zip([&amd64, &arm64]) {
            assert_eq!(m["mediaType"], MANIFEST);
            assert_eq!(m["platform"]["os"], "linux");
            let manifest: Value =
                serde_json::from_slice(&blob(m["digest"].as_str().unwrap())).unwrap();
            assert_eq!(m["size"], blob(m["digest"].as_str().unwrap()).len());
            for k in ["version", "source", "revision"] {
                assert!(
                    manifest["annotations"][format!("org.opencontainers.image.{k}")].is_string(),
                    "annotation {k}"
                );
            }
            assert_eq!(
                manifest["annotations"]["org.opencontainers.image.revision"],
                meta().revision
            );
            let config: Value =
                serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap()))
                    .unwrap();
            assert_eq!(config["architecture"], arch.as_str());
            assert_eq!(config["variant"], m["platform"]["variant"]);
            assert_eq!(config["config"]["User"], "65532:65532");
            assert_eq!(config["created"], "2026-11-29T08:35:25Z");
            assert_eq!(
                config["config"]["Labels"]["org.opencontainers.image.version"],
                "0.1.0"
            );
            let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
            assert_eq!(
                config["rootfs"]["diff_ids"][0],
                format!("sha256:{}", sha256_hex(&layer))
            );
            let files = entries(&layer);
            let bin_entry = files
                .iter()
                .find(|e| e.0 == "usr/bin/oomprobe")
                .expect("binary in the layer");
            assert_eq!((bin_entry.4, &bin_entry.5), (0o755, bin));
            let state = files.iter().find(|e| e.0 == "var/lib/oomprobe/").unwrap();
            assert_eq!((state.2, state.3), (65532, 65532));
        }
        assert_eq!(platforms[1].1["platform"]["variant"], "v8");
    }

    #[test]
    fn rfc3339_matches_date() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_941_325), "2026-11-29T08:35:25Z");
    }
}
