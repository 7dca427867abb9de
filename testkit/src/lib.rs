//! kubepulse's test kit, shared by every integration test binary: the
//! Kubernetes API test server and a simulated kubelet, the network namespace
//! lab, the kubepulse process runner, one HTTP client and one view of a
//! `/metrics` scrape, and the anchors of docs/runbooks.md the alerts link
//! to. Dev-only: nothing here ships.

use std::path::PathBuf;

pub mod apiserver;
pub mod container;
pub mod http;
pub mod image;
pub mod install;
pub mod kubelet;
pub mod lab;
pub mod process;
pub mod runbooks;
pub mod scrape;

/// The repository root (where `docs/`, `deploy/` and `alerts/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The directory of the running test executable (`target/<profile>/deps`).
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .map(PathBuf::from)
        .expect("test executable has a directory")
}

/// The `kubepulse` binary cargo built next to the test executable
/// (`target/<profile>/kubepulse`); `KUBEPULSE_BIN` overrides it, to run the
/// tests against another build.
pub fn kubepulse_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBEPULSE_BIN") {
        return PathBuf::from(p);
    }
    let dir = deps_dir();
    let profile = dir.parent().map(PathBuf::from).unwrap_or(dir);
    let bin = profile.join("kubepulse");
    assert!(
        bin.is_file(),
        "{} not found: run the tests with `cargo test` (it builds the binary first)",
        bin.display()
    );
    bin
}

/// A scratch directory for test files under the target directory
/// (`target/tmp`, what cargo's `CARGO_TARGET_TMPDIR` names).
pub fn target_tmpdir() -> PathBuf {
    let dir = deps_dir();
    let target = dir
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(dir);
    let tmp = target.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create target/tmp");
    tmp
}
