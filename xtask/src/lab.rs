//! `cargo xtask lab up|down|status`: a single-node Kubernetes cluster on this machine from real
//! components, for the tests that prove oomprobe against a real kubelet.
//!
//! - kubelet, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl are built from
//!   the published `k8s.io/kubernetes` module at [`K8S_VERSION`] (`lab/go/k8s`, one `replace` per
//!   staging module), etcd from `go.etcd.io/etcd/server/v3` at [`ETCD_VERSION`] (`lab/go/etcd`)
//!   and crictl from `sigs.k8s.io/cri-tools` (`lab/go/crictl`), all `-trimpath -ldflags "-s -w"`
//!   like release builds, cached under `target/lab/bin/<name>-<version>/` (a warm `lab up`
//!   builds nothing), all by the machine's Go (`GOTOOLCHAIN=local`). Two more kubelets
//!   ([`Kubelet`]): [`LEAK_KUBELET`] (a second release, same Go) and [`OTHER_GO_KUBELET`] (the
//!   same release, a second Go toolchain). containerd, runc and the CNI plugins are Debian's.
//! - Everything listens on 127.0.0.1 only; certificates come from rcgen (`run/pki`); state lives
//!   under `target/lab/run/` (removed by `lab down`); the admin kubeconfig is
//!   `target/lab/kubeconfig`.
//! - The kubelet (cgroupfs driver, cgroup v1: `failCgroupV1: false`, the default of 1.34, the
//!   last release whose kubelet starts on v1 by default) runs under a supervisor that restarts it
//!   like systemd's `Restart=always` with `RestartSec=`[`RESTART_SEC`], inside its own cgroup
//!   `/oomprobe-lab/kubelet` which the kubelet itself limits to its kube-reserved (like
//!   `kubelet.slice`); its pods live under `cgroupRoot: /oomprobe-lab`.
//! - Pods are host-network only: the CNI configuration holds just the `loopback` plugin, so no
//!   bridge, veth or address is ever created; a pod asking for its own network fails to start.
//! - Images are built here into OCI archives (Kubernetes' own `pause.c`, the project's static
//!   memhog) and imported with `ctr`; there is no registry.
//! - A kubelet with `protectKernelDefaults: false` rewrites vm.overcommit_memory,
//!   vm.panic_on_oom, kernel.panic, kernel.panic_on_oops and kernel.keys.root_max*: `lab up`
//!   records them first (`target/lab/sysctl.saved`) and `lab down` restores them.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{run, workspace_root};

/// The pinned Kubernetes release (kubelet, control plane, kubectl).
pub const K8S_VERSION: &str = "v1.34.4";
/// etcd at the release kubeadm 1.34 deploys (3.6.5).
pub const ETCD_VERSION: &str = "v3.6.5";
/// crictl from cri-tools, the release matching Kubernetes 1.34.
pub const CRICTL_VERSION: &str = "v1.34.0";
/// The node's name (and the kubelet's `--hostname-override`).
pub const NODE: &str = "oomprobe-lab";
/// The lab's cgroup (every v1 controller): the kubelet's `cgroupRoot`; the kubelet itself runs in
/// `CGROUP/kubelet`.
pub const CGROUP: &str = "oomprobe-lab";
/// The supervisor's RestartSec.
pub const RESTART_SEC: u64 = 2;
/// The kubelet's kube-reserved memory, enforced on its own cgroup.
pub const KUBE_RESERVED_MEMORY: &str = "1Gi";

const ETCD_PORT: u16 = 23790;
const ETCD_PEER_PORT: u16 = 23800;
const APISERVER_PORT: u16 = 26443;
const KUBELET_PORT: u16 = 20250;
const KUBELET_HEALTHZ_PORT: u16 = 20248;
const KCM_PORT: u16 = 20257;
const SCHEDULER_PORT: u16 = 20259;
/// cgroup v1 controllers the kubelet checks for a cgroup's existence (`cgroupV1impl.Validate`).
const CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "systemd"];
/// Sysctls the kubelet's `setupKernelTunables` rewrites.
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
pub const PAUSE_IMAGE: &str = "oomprobe.lab/pause:3.10";
/// The project's memhog (standin/src/bin/memhog.rs); the tag names its archive under
/// target/lab/images, so a new tag rebuilds it.
pub const MEMHOG_IMAGE: &str = "oomprobe.lab/memhog:3";

/// The lab's paths.
pub struct Lab {
    pub root: PathBuf,
    pub run: PathBuf,
}

impl Lab {
    pub fn new() -> Lab {
        let root = workspace_root().join("target/lab");
        Lab {
            run: root.join("run"),
            root,
        }
    }
    pub fn k8s_bin(&self, name: &str) -> PathBuf {
        self.root.join(format!("bin/k8s-{K8S_VERSION}")).join(name)
    }
    fn etcd_bin(&self) -> PathBuf {
        self.root.join(format!("bin/etcd-{ETCD_VERSION}/etcd"))
    }
    fn crictl_bin(&self) -> PathBuf {
        self.root
            .join(format!("bin/crictl-{CRICTL_VERSION}/crictl"))
    }
    fn pki(&self, name: &str) -> PathBuf {
        self.run.join("pki").join(name)
    }
    fn containerd_sock(&self) -> PathBuf {
        self.run.join("containerd/containerd.sock")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    fn pidfile(&self, name: &str) -> PathBuf {
        self.run.join("pids").join(format!("{name}.pid"))
    }
    fn log(&self, name: &str) -> PathBuf {
        self.run.join("logs").join(format!("{name}.log"))
    }
}

/// The environment of the lab's go commands; `toolchain` is their `GOTOOLCHAIN` (`local`: the
/// machine's Go).
fn go_env<'a>(cmd: &'a mut Command, toolchain: &str) -> &'a mut Command {
    cmd.env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", toolchain)
        // Release kubelets are built with cgo (hack/lib/golang.sh leaves it out of
        // KUBE_STATIC_BINARIES); one cgo build for all five keeps the build single.
        .env("CGO_ENABLED", "1")
}

/// `-s -w` plus the version stamps Kubernetes' own build sets (hack/lib/version.sh).
fn k8s_ldflags(version: &str) -> String {
    let minor = version.split('.').nth(1).unwrap_or("0");
    let mut ld = String::from("-s -w");
    for pkg in [
        "k8s.io/client-go/pkg/version",
        "k8s.io/component-base/version",
    ] {
        ld.push_str(&format!(
            " -X {pkg}.gitVersion={version} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} \
             -X {pkg}.gitTreeState=clean -X {pkg}.buildDate=1970-01-01T00:00:00Z"
        ));
    }
    ld
}

/// A kubelet the lab builds beside its own five binaries: `k8s.io/kubernetes/cmd/kubelet` of the
/// module `lab/go/<module>` (whose go.mod pins `version`), by the Go toolchain `toolchain`,
/// `-trimpath -ldflags "-s -w"` with the version stamps, like the lab's own.
pub struct Kubelet {
    /// The directory under `lab/go/` whose go.mod pins the release.
    pub module: &'static str,
    /// The Kubernetes release (`gitVersion`).
    pub version: &'static str,
    /// `GOTOOLCHAIN` of its build: `local` (the machine's Go, as every other lab binary) or a Go
    /// release such as `go1.27.3`, which the go command fetches from the Go module proxy like a
    /// module the first time (into the module cache), whatever the module's go.mod says.
    pub toolchain: &'static str,
}

/// The second kubelet of the lab (`lab/go/k8s-1.36`): a release inside the range of
/// kubernetes#139823 (1.36.0-1.36.2: `startPodSync` makes a child context of the pod worker's
/// on every sync and never cancels the one it replaces, so each sync leaks one), for the upgrade
/// test and `cargo xtask lab record --second-kubelet leak`. Fixed in v1.36.3.
pub const LEAK_KUBELET: Kubelet = Kubelet {
    module: "k8s-1.36",
    version: "v1.36.1",
    toolchain: "local",
};

/// The third kubelet: the lab's own release ([`K8S_VERSION`], the same module `lab/go/k8s`)
/// built by a second Go toolchain, so the probe-point test covers two releases with one
/// toolchain and two toolchains with one source. go1.27.3 is the one other Go this machine kind
/// may fetch (from the Go module proxy, about 76 MB).
pub const OTHER_GO_KUBELET: Kubelet = Kubelet {
    module: "k8s",
    version: K8S_VERSION,
    toolchain: "go1.27.3",
};

impl Kubelet {
    /// Where it is cached: `target/lab/bin/kubelet-<version>/kubelet`, with `-<toolchain>`
    /// after the version unless built by the machine's Go.
    pub fn path(&self) -> PathBuf {
        let dir = match self.toolchain {
            "local" => format!("kubelet-{}", self.version),
            t => format!("kubelet-{}-{t}", self.version),
        };
        Lab::new().root.join("bin").join(dir).join("kubelet")
    }

    /// Builds it unless cached; its path.
    pub fn ensure(&self) -> Result<PathBuf> {
        let path = self.path();
        go_build(
            self.module,
            &["k8s.io/kubernetes/cmd/kubelet"],
            &["kubelet"],
            path.parent().expect("versioned dir"),
            &k8s_ldflags(self.version),
            self.toolchain,
        )?;
        Ok(path)
    }

    /// The Go release that builds it (`go env GOVERSION` under its `GOTOOLCHAIN`: `go1.26.8`).
    pub fn go_version(&self) -> Result<String> {
        go_version(self.module, self.toolchain)
    }
}

/// `go env GOVERSION` in `lab/go/<module>` under `GOTOOLCHAIN=toolchain` (e.g. `go1.26.8`).
fn go_version(module: &str, toolchain: &str) -> Result<String> {
    let out = go_env(&mut Command::new("go"), toolchain)
        .args(["env", "GOVERSION"])
        .current_dir(workspace_root().join("lab/go").join(module))
        .output()
        .context("cannot run `go` (the machine's Go, checked by cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "go env GOVERSION (GOTOOLCHAIN={toolchain}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds one Go module's commands into `out` unless all are there (a versioned directory, so a
/// warm `lab up` builds nothing). Builds into a temporary directory, then renames.
fn go_build(
    module: &str,
    packages: &[&str],
    names: &[&str],
    out: &Path,
    ldflags: &str,
    toolchain: &str,
) -> Result<()> {
    if names.iter().all(|n| out.join(n).exists()) {
        return Ok(());
    }
    let tmp = out.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    eprintln!(
        "lab: building {} ({module}, GOTOOLCHAIN={toolchain}), cold this takes long",
        names.join(" ")
    );
    let mut out_arg = tmp.clone().into_os_string();
    out_arg.push("/");
    let status = go_env(
        Command::new("go").args(["build", "-trimpath", "-ldflags", ldflags, "-o"]),
        toolchain,
    )
    .arg(out_arg)
    .args(packages)
    .current_dir(workspace_root().join("lab/go").join(module))
    .status()
    .context("cannot run `go` (the machine's Go, checked by cargo xtask setup)")?;
    if !status.success() {
        bail!("go build in lab/go/{module} (GOTOOLCHAIN={toolchain}) failed ({status})");
    }
    let _ = fs::remove_dir_all(out);
    fs::rename(&tmp, out)?;
    eprintln!(
        "lab: built {} in {:.0} s",
        names.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Debian packages the lab needs, and every binary and image (cached).
pub fn ensure_built() -> Result<()> {
    crate::setup::apt_install(&[
        "containerd",
        "runc",
        "containernetworking-plugins",
        "iproute2",
        "mount",
        "tar",
        "gcc",
        "libc6-dev",
        "curl",
    ])?;
    let lab = Lab::new();
    let k8s = [
        "kubelet",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ];
    let pkgs: Vec<String> = k8s
        .iter()
        .map(|n| format!("k8s.io/kubernetes/cmd/{n}"))
        .collect();
    let pkgs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
    go_build(
        "k8s",
        &pkgs,
        &k8s,
        lab.k8s_bin("kubelet").parent().expect("versioned dir"),
        &k8s_ldflags(K8S_VERSION),
        "local",
    )?;
    LEAK_KUBELET.ensure()?;
    OTHER_GO_KUBELET.ensure()?;
    go_build(
        "etcd",
        &["."],
        &["etcd"],
        lab.etcd_bin().parent().expect("versioned dir"),
        "-s -w",
        "local",
    )?;
    go_build(
        "crictl",
        &["sigs.k8s.io/cri-tools/cmd/crictl"],
        &["crictl"],
        lab.crictl_bin().parent().expect("versioned dir"),
        "-s -w",
        "local",
    )?;
    build_images(&lab)
}

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-layer OCI image layout archive (`ctr images import` reads it): `files` are (source,
/// path in the image), the entrypoint first.
fn oci_archive(
    name: &str,
    files: &[(PathBuf, &str)],
    entrypoint: &[&str],
    out: &Path,
) -> Result<()> {
    let work = out.with_extension("d");
    let _ = fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    for (src, dest) in files {
        let d = rootfs.join(dest.trim_start_matches('/'));
        fs::create_dir_all(d.parent().expect("file in a directory"))?;
        fs::copy(src, &d).with_context(|| format!("copy {}", src.display()))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
    }
    let layer_path = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_path)
        .arg("."))?;
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let h = sha256_hex(data);
        fs::write(blobs.join(&h), data)?;
        Ok((format!("sha256:{h}"), data.len()))
    };
    let layer = fs::read(&layer_path)?;
    let (layer_digest, layer_size) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(serde_json::to_vec(&config)?.as_slice())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(serde_json::to_vec(&manifest)?.as_slice())?;
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    run(Command::new("tar")
        .args(["--mtime=@0", "--owner=0", "--group=0", "-C"])
        .arg(&layout)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"]))?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// The pause image from Kubernetes' own `build/pause/linux/pause.c` (in the module cache of the
/// pinned release), and the project's memhog, both static.
/// memhog's image archive, named by its tag (`memhog-2.tar`).
fn memhog_archive() -> String {
    format!(
        "memhog-{}.tar",
        MEMHOG_IMAGE.rsplit(':').next().unwrap_or("latest")
    )
}

fn build_images(lab: &Lab) -> Result<()> {
    let dir = lab.root.join("images");
    fs::create_dir_all(&dir)?;
    let pause_tar = dir.join("pause.tar");
    if !pause_tar.exists() {
        let out = go_env(&mut Command::new("go"), "local")
            .args(["list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"])
            .current_dir(workspace_root().join("lab/go/k8s"))
            .output()?;
        let src = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            .join("build/pause/linux/pause.c");
        let bin = dir.join("pause");
        run(Command::new("gcc")
            .args(["-Os", "-static", "-s", "-DVERSION=oomprobe-lab", "-o"])
            .arg(&bin)
            .arg(&src))
        .with_context(|| format!("building {}", src.display()))?;
        oci_archive(PAUSE_IMAGE, &[(bin, "/pause")], &["/pause"], &pause_tar)?;
    }
    let memhog_tar = dir.join(memhog_archive());
    if !memhog_tar.exists() {
        run(Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "standin",
                "--bin",
                "memhog",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                "target/static",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
        let bin = workspace_root().join("target/static/x86_64-unknown-linux-gnu/release/memhog");
        oci_archive(MEMHOG_IMAGE, &[(bin, "/memhog")], &["/memhog"], &memhog_tar)?;
    }
    Ok(())
}

struct Pem {
    cert: String,
    key: String,
}

fn write_pem(lab: &Lab, name: &str, p: &Pem) -> Result<()> {
    fs::write(lab.pki(&format!("{name}.crt")), &p.cert)?;
    fs::write(lab.pki(&format!("{name}.key")), &p.key)?;
    Ok(())
}

/// The lab's CA and every certificate (ECDSA P-256, rcgen).
fn make_pki(lab: &Lab) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    fs::create_dir_all(lab.run.join("pki"))?;
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "oomprobe-lab-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key)?;
    write_pem(
        lab,
        "ca",
        &Pem {
            cert: ca.pem(),
            key: ca_key.serialize_pem(),
        },
    )?;
    let leaf = |cn: &str, org: Option<&str>, sans: &[&str]| -> Result<Pem> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    };
    write_pem(
        lab,
        "apiserver",
        &leaf(
            "kube-apiserver",
            None,
            &[
                "localhost",
                "127.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?,
    )?;
    write_pem(
        lab,
        "apiserver-kubelet-client",
        &leaf("kube-apiserver-kubelet-client", Some("system:masters"), &[])?,
    )?;
    write_pem(
        lab,
        "admin",
        &leaf("oomprobe-lab-admin", Some("system:masters"), &[])?,
    )?;
    write_pem(
        lab,
        "controller-manager",
        &leaf("system:kube-controller-manager", None, &[])?,
    )?;
    write_pem(lab, "scheduler", &leaf("system:kube-scheduler", None, &[])?)?;
    write_pem(
        lab,
        "kubelet-client",
        &leaf(&format!("system:node:{NODE}"), Some("system:nodes"), &[])?,
    )?;
    write_pem(
        lab,
        "kubelet-serving",
        &leaf(NODE, None, &[NODE, "localhost", "127.0.0.1"])?,
    )?;
    // Service account token signing key.
    let sa = KeyPair::generate()?;
    fs::write(lab.pki("sa.key"), sa.serialize_pem())?;
    fs::write(lab.pki("sa.pub"), sa.public_key_pem())?;
    Ok(())
}

fn kubeconfig(lab: &Lab, user: &str, cert: &str) -> String {
    let pki = lab.run.join("pki");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {NODE}
  cluster:
    server: https://127.0.0.1:{APISERVER_PORT}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {pki}/{cert}.crt
    client-key: {pki}/{cert}.key
contexts:
- name: {NODE}
  context: {{cluster: {NODE}, user: {user}}}
current-context: {NODE}
",
        ca = lab.pki("ca.crt").display(),
        pki = pki.display(),
    )
}

fn containerd_config(lab: &Lab) -> String {
    let c = lab.run.join("containerd");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# The opt plugin would create /opt/containerd.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE on this machine kind: nothing may lower an oom_score_adj below its own
  # (runc's "failed to update /proc/self/oom_score_adj: Permission denied" for the sandbox's
  # -998); with this, sandboxes and guaranteed pods get containerd's own 0 instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = c.join("root").display(),
        state = c.join("state").display(),
        sock = lab.containerd_sock().display(),
        runc_root = c.join("runc").display(),
        cni = lab.run.join("cni").display(),
    )
}

fn kubelet_config(lab: &Lab) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {KUBELET_HEALTHZ_PORT}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
tlsCertFile: {pki}/kubelet-serving.crt
tlsPrivateKeyFile: {pki}/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP}
cgroupsPerQOS: true
failCgroupV1: false
kubeReservedCgroup: /{CGROUP}/kubelet
kubeReserved:
  memory: {KUBE_RESERVED_MEMORY}
enforceNodeAllocatable: ["pods", "kube-reserved"]
protectKernelDefaults: false
makeIPTablesUtilChains: false
podLogsDirectory: {logs}
volumePluginDir: {plugins}
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "2Gi"
  imagefs.available: "2Gi"
  nodefs.inodesFree: "5%"
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
failSwapOn: true
maxPods: 110
resolvConf: /etc/resolv.conf
"#,
        ca = lab.pki("ca.crt").display(),
        pki = lab.run.join("pki").display(),
        sock = lab.containerd_sock().display(),
        logs = lab.run.join("pod-logs").display(),
        plugins = lab.run.join("kubelet/volume-plugins").display(),
    )
}

/// Starts a detached lab process (own session), stdout and stderr to its log, its pid recorded.
fn spawn(lab: &Lab, name: &str, program: &Path, args: &[String]) -> Result<u32> {
    let log = fs::File::create(lab.log(name))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(&lab.run);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id();
    fs::write(lab.pidfile(name), pid.to_string())?;
    // Reaped by init once we exit; the lab outlives this command.
    std::mem::forget(child);
    Ok(pid)
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn read_pid(lab: &Lab, name: &str) -> Option<u32> {
    fs::read_to_string(lab.pidfile(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits for `check` with a deadline, failing with the component's log tail.
fn wait_for(
    what: &str,
    deadline: Duration,
    log: Option<&Path>,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tail = log
        .and_then(|l| fs::read_to_string(l).ok())
        .map(|s| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        })
        .unwrap_or_default();
    bail!("{what} not within {deadline:?}\n{tail}")
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// `kubectl --kubeconfig target/lab/kubeconfig ARGS`, its stdout.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let lab = Lab::new();
    let out = Command::new(lab.k8s_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(args)
        .output()
        .context("cannot run kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cgroup_dir(controller: &str, rel: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(controller).join(rel)
}

/// `/oomprobe-lab` and `/oomprobe-lab/kubelet` in every v1 controller the kubelet checks.
fn make_cgroups() -> Result<()> {
    if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        bail!(
            "the lab's kubelet runs on cgroup v1 (this machine kind); no v1 memory controller here"
        );
    }
    for c in CONTROLLERS {
        for rel in [CGROUP.to_string(), format!("{CGROUP}/kubelet")] {
            let dir = cgroup_dir(c, &rel);
            if !dir.exists() {
                fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            }
            if *c == "cpuset" {
                // v1 cpuset children start empty; a task cannot join until cpus and mems are set.
                let parent = dir.parent().expect("has a parent");
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = fs::read_to_string(parent.join(f))?;
                    fs::write(dir.join(f), v.trim())?;
                }
            }
        }
    }
    Ok(())
}

fn save_sysctls(lab: &Lab) -> Result<()> {
    let saved = lab.root.join("sysctl.saved");
    if saved.exists() {
        // A previous lab up's record is the host's original state: keep it.
        return Ok(());
    }
    let mut text = String::new();
    for s in SYSCTLS {
        let v = fs::read_to_string(Path::new("/proc/sys").join(s))?;
        text.push_str(&format!("{s}={}\n", v.trim()));
    }
    fs::write(saved, text)?;
    Ok(())
}

fn restore_sysctls(lab: &Lab) -> Result<()> {
    let saved = lab.root.join("sysctl.saved");
    let Ok(text) = fs::read_to_string(&saved) else {
        return Ok(());
    };
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let path = Path::new("/proc/sys").join(k);
            let now = fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != v {
                eprintln!("lab: restoring {k} {} -> {v}", now.trim());
                fs::write(&path, v).with_context(|| format!("restore {k}"))?;
            }
        }
    }
    fs::remove_file(saved)?;
    Ok(())
}

/// Paths outside target/lab that components create when missing; `lab down` removes the ones
/// that did not exist before `lab up`.
const HOST_PATHS: &[&str] = &[
    "/run/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    // The kubelet's device manager socket is hardcoded in /var/lib/kubelet/device-plugins.
    "/var/lib/kubelet",
    "/usr/libexec/kubernetes",
];

fn record_host_paths(lab: &Lab) -> Result<()> {
    let f = lab.root.join("host-paths.created");
    if f.exists() {
        return Ok(());
    }
    let absent: Vec<&str> = HOST_PATHS
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    fs::write(f, absent.join("\n"))?;
    Ok(())
}

pub fn up() -> Result<()> {
    let t0 = Instant::now();
    let lab = Lab::new();
    ensure_built()?;
    let t_built = t0.elapsed();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lab up runs containerd and a kubelet: run as root");
    }
    // Whatever a crashed or earlier lab left.
    down_inner(&lab, false)?;
    save_sysctls(&lab)?;
    record_host_paths(&lab)?;
    for d in [
        "pids",
        "logs",
        "containerd",
        "cni",
        "pod-logs",
        "kubelet",
        "apiserver",
        "etcd",
    ] {
        fs::create_dir_all(lab.run.join(d))?;
    }
    fs::set_permissions(lab.run.join("etcd"), fs::Permissions::from_mode(0o700))?;
    make_pki(&lab)?;
    fs::write(lab.kubeconfig(), kubeconfig(&lab, "admin", "admin"))?;
    for (file, user, cert) in [
        (
            "controller-manager.kubeconfig",
            "system:kube-controller-manager",
            "controller-manager",
        ),
        ("scheduler.kubeconfig", "system:kube-scheduler", "scheduler"),
        (
            "kubelet.kubeconfig",
            &format!("system:node:{NODE}"),
            "kubelet-client",
        ),
    ] {
        fs::write(lab.run.join(file), kubeconfig(&lab, user, cert))?;
    }
    // Only the loopback plugin: pods must use the host's network (no bridge, veth or address is
    // ever created); containerd reports the network ready once a configuration loads.
    fs::write(
        lab.run.join("cni/10-loopback.conflist"),
        r#"{"cniVersion":"0.4.0","name":"oomprobe-lab-loopback","plugins":[{"type":"loopback"}]}"#,
    )?;
    fs::write(
        lab.run.join("containerd/config.toml"),
        containerd_config(&lab),
    )?;
    fs::write(lab.run.join("kubelet/config.yaml"), kubelet_config(&lab))?;
    let p = |s: &Path| s.display().to_string();

    let etcd_url = format!("http://127.0.0.1:{ETCD_PORT}");
    let peer_url = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
    spawn(
        &lab,
        "etcd",
        &lab.etcd_bin(),
        &[
            "--name=lab".into(),
            format!("--data-dir={}", p(&lab.run.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=lab={peer_url}"),
            "--log-level=warn".into(),
        ],
    )?;
    spawn(
        &lab,
        "containerd",
        Path::new("/usr/bin/containerd"),
        &[format!(
            "--config={}",
            p(&lab.run.join("containerd/config.toml"))
        )],
    )?;
    wait_for(
        "etcd healthy",
        Duration::from_secs(30),
        Some(&lab.log("etcd")),
        || http_ok(ETCD_PORT, "/health"),
    )?;
    let pki = |n: &str| p(&lab.pki(n));
    spawn(
        &lab,
        "kube-apiserver",
        &lab.k8s_bin("kube-apiserver"),
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={APISERVER_PORT}"),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", p(&lab.run.join("apiserver"))),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!(
                "--kubelet-client-certificate={}",
                pki("apiserver-kubelet-client.crt")
            ),
            format!(
                "--kubelet-client-key={}",
                pki("apiserver-kubelet-client.key")
            ),
            format!("--kubelet-certificate-authority={}", pki("ca.crt")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--service-account-issuer=https://127.0.0.1:{APISERVER_PORT}"),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            // Allocated in etcd only: there is no kube-proxy, nothing routes to it.
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
        ],
    )?;
    wait_for(
        "kube-apiserver ready",
        Duration::from_secs(90),
        Some(&lab.log("kube-apiserver")),
        || kubectl(&["get", "--raw", "/readyz"]).is_ok(),
    )?;
    spawn(
        &lab,
        "kube-controller-manager",
        &lab.k8s_bin("kube-controller-manager"),
        &[
            format!(
                "--kubeconfig={}",
                p(&lab.run.join("controller-manager.kubeconfig"))
            ),
            format!(
                "--authentication-kubeconfig={}",
                p(&lab.run.join("controller-manager.kubeconfig"))
            ),
            format!(
                "--authorization-kubeconfig={}",
                p(&lab.run.join("controller-manager.kubeconfig"))
            ),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={KCM_PORT}"),
            format!("--service-account-private-key-file={}", pki("sa.key")),
            format!("--root-ca-file={}", pki("ca.crt")),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--allocate-node-cidrs=false".into(),
        ],
    )?;
    spawn(
        &lab,
        "kube-scheduler",
        &lab.k8s_bin("kube-scheduler"),
        &[
            format!("--kubeconfig={}", p(&lab.run.join("scheduler.kubeconfig"))),
            format!(
                "--authentication-kubeconfig={}",
                p(&lab.run.join("scheduler.kubeconfig"))
            ),
            format!(
                "--authorization-kubeconfig={}",
                p(&lab.run.join("scheduler.kubeconfig"))
            ),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={SCHEDULER_PORT}"),
            "--leader-elect=false".into(),
        ],
    )?;
    let sock = lab.containerd_sock();
    wait_for(
        "containerd socket",
        Duration::from_secs(30),
        Some(&lab.log("containerd")),
        || sock.exists(),
    )?;
    for image in ["pause.tar".to_string(), memhog_archive()] {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(lab.root.join("images").join(image)))?;
    }
    make_cgroups()?;
    // A copy of this very binary (/proc/self/exe: `cargo build --workspace` may replace
    // target/debug/xtask while the lab runs).
    let me = lab.run.join("supervisor");
    fs::copy("/proc/self/exe", &me).context("copy the xtask binary for the supervisor")?;
    spawn(&lab, "supervisor", &me, &["lab".into(), "supervise".into()])?;
    wait_for(
        &format!("node {NODE} Ready"),
        Duration::from_secs(120),
        Some(&lab.log("kubelet")),
        || {
            kubectl(&[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|s| s.trim() == "True")
        },
    )?;
    wait_for(
        "the default service account",
        Duration::from_secs(60),
        Some(&lab.log("kube-controller-manager")),
        || kubectl(&["get", "serviceaccount", "default", "-n", "default"]).is_ok(),
    )?;
    // What the tests need to find the lab (tests/tests/lab.rs).
    let env = serde_json::json!({
        "k8s_version": K8S_VERSION,
        "node": NODE,
        "kubeconfig": lab.kubeconfig(),
        "kubectl": lab.k8s_bin("kubectl"),
        "kubelet": lab.k8s_bin("kubelet"),
        // Another release's kubelet for the upgrade test (a new binary at the same path), and
        // where the lab's own build waits meanwhile (`lab down` puts it back).
        "kubelet_second": LEAK_KUBELET.path(),
        "kubelet_second_version": LEAK_KUBELET.version,
        // The Go releases that build them: the lab's own binaries and the second kubelet the
        // machine's Go, the third kubelet (the lab's release) a second toolchain.
        "go_version": go_version("k8s", "local")?,
        "kubelet_second_go_version": LEAK_KUBELET.go_version()?,
        "kubelet_third": OTHER_GO_KUBELET.path(),
        "kubelet_third_version": OTHER_GO_KUBELET.version,
        "kubelet_third_go_version": OTHER_GO_KUBELET.go_version()?,
        "kubelet_saved": saved_kubelet(&lab),
        "crictl": lab.crictl_bin(),
        "runtime_endpoint": format!("unix://{}", sock.display()),
        "ca": lab.pki("ca.crt"),
        "kubelet_port": KUBELET_PORT,
        "api": format!("https://127.0.0.1:{APISERVER_PORT}"),
        "kubelet_pidfile": lab.pidfile("kubelet"),
        "supervisor_log": lab.log("supervisor"),
        "kubelet_cgroup": format!("/{CGROUP}/kubelet"),
        "kubelet_config": lab.run.join("kubelet/config.yaml"),
        "kube_reserved_memory": KUBE_RESERVED_MEMORY,
        "memhog_image": MEMHOG_IMAGE,
        "kubepods_root": format!("/{CGROUP}/kubepods"),
        "restart_sec": RESTART_SEC,
    });
    fs::write(lab.run.join("env.json"), serde_json::to_vec_pretty(&env)?)?;
    eprintln!(
        "lab: up in {:.1} s (builds {:.1} s); kubeconfig {}",
        t0.elapsed().as_secs_f64(),
        t_built.as_secs_f64(),
        lab.kubeconfig().display()
    );
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The kubelet's supervisor: `Restart=always`, `RestartSec=RESTART_SEC`; each kubelet joins
/// `/oomprobe-lab/kubelet` in every controller before it execs. SIGTERM stops the kubelet
/// (SIGTERM, then SIGKILL after 10 s) and the supervisor.
pub fn supervise() -> Result<()> {
    let lab = Lab::new();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let procs: Vec<std::ffi::CString> = CONTROLLERS
        .iter()
        .map(|c| {
            std::ffi::CString::new(
                cgroup_dir(c, &format!("{CGROUP}/kubelet"))
                    .join("cgroup.procs")
                    .to_string_lossy()
                    .into_owned(),
            )
            .expect("no NUL in a path")
        })
        .collect();
    let p = |s: &Path| s.display().to_string();
    let mut starts = 0u64;
    while !STOP.load(Ordering::SeqCst) {
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lab.log("kubelet"))?;
        // Page cache is charged to the memory cgroup of the task that brings a page in. On a
        // node the kubelet's binary was written by whatever installed it and its log goes to
        // journald, both outside kubelet.slice; here, without these two, the kubelet's own
        // cgroup held its text pages and its log file's cache (seen: 3 MiB mapped_file under a
        // limit a few MiB above anon+kmem), and under the OOM cycle test's tight limit the
        // kubelet faulted its own text back in over and over (stalled 6 min, never OOM-killed)
        // instead of growing into the limit. So the supervisor reads the binary (its pages
        // charged to the supervisor's cgroup) and writes the log from a pipe, as journald does.
        let kubelet_bin = lab.k8s_bin("kubelet");
        if let Err(e) = fs::File::open(&kubelet_bin)
            .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()))
        {
            eprintln!("supervisor: cannot read {}: {e}", kubelet_bin.display());
        }
        let (mut reader, writer) = std::io::pipe()?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut log);
        });
        let mut cmd = Command::new(&kubelet_bin);
        cmd.args([
            format!("--config={}", p(&lab.run.join("kubelet/config.yaml"))),
            format!("--kubeconfig={}", p(&lab.run.join("kubelet.kubeconfig"))),
            format!("--root-dir={}", p(&lab.run.join("kubelet"))),
            format!("--cert-dir={}", p(&lab.run.join("kubelet/pki"))),
            format!("--hostname-override={NODE}"),
            "--node-ip=127.0.0.1".into(),
            "--v=1".into(),
        ])
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
        let procs = procs.clone();
        // SAFETY: open/write/close are async-signal-safe; the paths were built before fork.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("supervisor: cannot start the kubelet: {e}");
                std::thread::sleep(Duration::from_secs(RESTART_SEC));
                continue;
            }
        };
        // The pipe's write ends are the kubelet's alone now: the log's reader ends with it.
        drop(cmd);
        starts += 1;
        eprintln!(
            "supervisor: kubelet pid {} started (start {starts})",
            child.id()
        );
        fs::write(lab.pidfile("kubelet"), child.id().to_string())?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if STOP.load(Ordering::SeqCst) {
                // SAFETY: plain kill of our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(10) {
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(s) = status {
            eprintln!("supervisor: kubelet exited ({s}); restarting in {RESTART_SEC} s");
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(RESTART_SEC) && !STOP.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Ok(())
}

/// Where [`swap_kubelet`] keeps the lab's own kubelet while another build runs at its path.
fn saved_kubelet(lab: &Lab) -> PathBuf {
    lab.k8s_bin("kubelet").with_extension("lab-saved")
}

/// Replaces the kubelet binary at its path (the one the supervisor execs) with `other`, as an
/// upgrade does: the running kubelet keeps its old inode, the supervisor's next start execs the
/// new one. The lab's own build is kept aside and put back by [`restore_kubelet`] (`lab down`).
pub fn swap_kubelet(lab: &Lab, other: &Path) -> Result<()> {
    let bin = lab.k8s_bin("kubelet");
    let saved = saved_kubelet(lab);
    if !saved.exists() {
        fs::rename(&bin, &saved).with_context(|| format!("cannot set {} aside", bin.display()))?;
    }
    let tmp = bin.with_extension("swap-partial");
    fs::copy(other, &tmp).with_context(|| format!("cannot copy {}", other.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &bin)?;
    Ok(())
}

/// Puts the lab's own kubelet build back at its path after [`swap_kubelet`] (also after a crash
/// of the command that swapped it: `lab down` and `lab up` call this).
pub fn restore_kubelet(lab: &Lab) -> Result<()> {
    let saved = saved_kubelet(lab);
    if saved.exists() {
        fs::rename(&saved, lab.k8s_bin("kubelet"))
            .with_context(|| format!("cannot restore {}", saved.display()))?;
    }
    Ok(())
}

/// Processes of the lab: the recorded pids and anything whose command line names the lab's run
/// directory (containerd's shims carry its socket path, the supervisor runs from the xtask).
fn lab_processes(lab: &Lab) -> Vec<u32> {
    let needle = lab.run.display().to_string();
    let me = std::process::id();
    let mut pids = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle)
                || cmdline.contains(" lab supervise") && cmdline.contains("xtask")
            {
                pids.push(pid);
            }
        }
    }
    pids
}

fn stop_pid(pid: u32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    // SAFETY: signals to processes the lab started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < grace && alive(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) && alive(pid) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn stop_named(lab: &Lab, name: &str, grace: Duration) {
    if let Some(pid) = read_pid(lab, name) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Only if the pid is still ours (a recycled pid names something else).
        let ours = String::from_utf8_lossy(&cmdline).contains(&lab.run.display().to_string())
            || String::from_utf8_lossy(&cmdline).contains("supervise");
        if ours {
            stop_pid(pid, grace);
        }
    }
}

/// Every cgroup directory under `/CGROUP` in each v1 hierarchy, deepest first.
fn lab_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let d = e.path().join(CGROUP);
            if d.is_dir() {
                walk(&d, &mut out);
            }
        }
    }
    out
}

fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    for _ in 0..5 {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(|s| s.replace("\\040", " ")))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in points {
            let c = std::ffi::CString::new(m).expect("no NUL");
            // SAFETY: a valid C string; MNT_DETACH on a mount the lab made.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

pub fn down() -> Result<()> {
    let t0 = Instant::now();
    let lab = Lab::new();
    down_inner(&lab, true)?;
    eprintln!("lab: down in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn down_inner(lab: &Lab, report: bool) -> Result<()> {
    // The supervisor first, so nothing restarts the kubelet.
    stop_named(lab, "supervisor", Duration::from_secs(15));
    stop_named(lab, "kubelet", Duration::from_secs(10));
    restore_kubelet(lab)?;
    // Pods: stop and remove every sandbox through the runtime (shims exit, rootfs unmounted,
    // container cgroups removed by runc).
    let sock = lab.containerd_sock();
    if sock.exists() && lab.crictl_bin().exists() {
        let _ = Command::new(lab.crictl_bin())
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", sock.display()))
            .args(["--timeout", "20s", "rmp", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for name in [
        "containerd",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ] {
        stop_named(lab, name, Duration::from_secs(10));
    }
    // Whatever is left (shims of a crashed run...).
    for pid in lab_processes(lab) {
        stop_pid(pid, Duration::from_secs(3));
    }
    // Processes still in the lab's cgroups (containers of a crashed run): only ours live there.
    let cgroups = lab_cgroups();
    for dir in &cgroups {
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: a process in the lab's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    unmount_under(&lab.run);
    let mut left = Vec::new();
    for dir in &cgroups {
        let mut removed = false;
        for _ in 0..50 {
            if fs::remove_dir(dir).is_ok() || !dir.exists() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !removed {
            left.push(dir.display().to_string());
        }
    }
    restore_sysctls(lab)?;
    // Container log symlinks the kubelet made in /var/log/containers point into our pod logs.
    if let Ok(rd) = fs::read_dir("/var/log/containers") {
        for e in rd.flatten() {
            if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&lab.run)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let created = lab.root.join("host-paths.created");
    if let Ok(text) = fs::read_to_string(&created) {
        for p in text.lines().filter(|l| !l.is_empty()) {
            // Removed only when empty of anything but what the lab left.
            let path = Path::new(p);
            if path.exists() {
                if let Err(e) = fs::remove_dir_all(path) {
                    left.push(format!("{p}: {e}"));
                }
            }
        }
        fs::remove_file(created)?;
    }
    if lab.run.exists() {
        fs::remove_dir_all(&lab.run).with_context(|| format!("remove {}", lab.run.display()))?;
    }
    let _ = fs::remove_file(lab.kubeconfig());
    if !left.is_empty() {
        bail!("lab down left: {}", left.join(", "));
    }
    if report {
        let procs = lab_processes(lab);
        if !procs.is_empty() {
            bail!("lab down left processes {procs:?}");
        }
    }
    Ok(())
}

pub fn status() -> Result<()> {
    let lab = Lab::new();
    let mut ok = true;
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "containerd",
        "supervisor",
        "kubelet",
    ] {
        let state = match read_pid(&lab, name) {
            Some(pid) if alive(pid) => format!("running, pid {pid}"),
            Some(pid) => {
                ok = false;
                format!("not running (pid {pid} recorded)")
            }
            None => {
                ok = false;
                "not started".into()
            }
        };
        println!("{name:<24} {state}");
    }
    let ready = kubectl(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
    .map(|s| s.trim() == "True")
    .unwrap_or(false);
    println!(
        "node {NODE:<19} {}",
        if ready { "Ready" } else { "not Ready" }
    );
    println!("kubeconfig               {}", lab.kubeconfig().display());
    if !(ok && ready) {
        bail!("the lab is not up (`cargo xtask lab up`)");
    }
    Ok(())
}
