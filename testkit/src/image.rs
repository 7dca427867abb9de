//! The kubepulse image as CI builds it: the static release binary made by
//! `deploy/build-binary.sh` (the very command of `deploy/Dockerfile`'s build
//! stage), under the Dockerfile's `prebuilt` final stage, built with podman
//! (no base image can be pulled here; that stage is `FROM scratch`).
//!
//! The image is tagged by a hash of the binary and the Dockerfile, so a
//! rerun with nothing changed reuses it; cargo decides whether the binary
//! is stale (a no-op build takes well under a second).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The Rust target of the image's binary on this machine.
pub const RUST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Repository of the images this kit builds (in podman's local storage).
pub const REPOSITORY: &str = "localhost/kubepulse-ci";

/// `podman` with the global flags that work on these VMs (hybrid cgroups:
/// runc, not crun; cgroupfs, not systemd).
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd` and returns its output, panicking with a clear message when
/// the tool is missing.
pub(crate) fn run(cmd: &mut Command, tool: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): the install tests need {tool} (.ci/run installs it)")
    })
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; returns stdout.
pub(crate) fn check(cmd: &mut Command, tool: &str) -> String {
    let out = run(cmd, tool);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The static release binary, built (or found fresh) by
/// `deploy/build-binary.sh` once per test process.
pub fn release_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = crate::repo_root();
        let t0 = std::time::Instant::now();
        let mut cmd = Command::new(root.join("deploy/build-binary.sh"));
        cmd.arg(RUST_TARGET)
            .current_dir(&root)
            .stderr(Stdio::inherit());
        // cargo sets these for a test process; build scripts (ring's) rerun
        // when they differ from the last build's, so a build from the shell
        // and one from a test would rebuild each other's dependencies.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k == "OUT_DIR"
                || k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_")
                || k.starts_with("CARGO_CFG_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let out = check(&mut cmd, "cargo");
        let rel = out.trim();
        let bin = root.join(rel);
        assert!(
            bin.is_file(),
            "build-binary.sh named {rel}, which is not a file"
        );
        eprintln!("release binary {rel} ready after {:.1?}", t0.elapsed());
        bin
    })
    .clone()
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its reference in podman's storage, `localhost/kubepulse-ci:<hash>`.
    pub reference: String,
    /// The binary it holds.
    pub binary: PathBuf,
}

/// The image CI builds: `deploy/Dockerfile`'s `prebuilt` stage over
/// [`release_binary`], built once per test process and reused across runs
/// while the binary and the Dockerfile are unchanged.
pub fn image() -> Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let binary = release_binary();
            let dockerfile = crate::repo_root().join("deploy/Dockerfile");
            let tag = content_tag(&[&binary, &dockerfile]);
            let reference = format!("{REPOSITORY}:{tag}");
            let exists = run(podman().args(["image", "exists", &reference]), "podman");
            if !exists.status.success() {
                build(&binary, &dockerfile, &reference);
            }
            Image { reference, binary }
        })
        .clone()
}

/// A hex tag from the contents of `files` (not a security hash: it only
/// tells one build from another).
fn content_tag(files: &[&Path]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        bytes.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// `podman build --target prebuilt` with a build context holding only the
/// binary (the Dockerfile's `BINARY` default, `kubepulse`).
fn build(binary: &Path, dockerfile: &Path, reference: &str) {
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::copy(binary, ctx.path().join("kubepulse")).expect("copy the binary");
    let t0 = std::time::Instant::now();
    check(
        podman()
            .args(["build", "--quiet", "--target", "prebuilt", "-f"])
            .arg(dockerfile)
            .args(["-t", reference])
            .arg(ctx.path()),
        "podman",
    );
    eprintln!("image {reference} built in {:.1?}", t0.elapsed());
}

/// The image's config as `podman image inspect` reports it.
pub fn inspect(reference: &str) -> serde_json::Value {
    let out = check(podman().args(["image", "inspect", reference]), "podman");
    let v: serde_json::Value = serde_json::from_str(&out).expect("podman image inspect JSON");
    v[0].clone()
}
