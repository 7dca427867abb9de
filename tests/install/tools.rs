//! Finding and running the installation tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tool: `$<ENV>`, else the first `name` on `PATH` or in /usr/local/bin.
/// Panics, naming the tool and how to install it, when there is none.
pub(crate) fn tool(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (looked at ${env}, $PATH and /usr/local/bin): run .ci/k8s-tools"
            )
        })
}

pub(crate) fn helm() -> PathBuf {
    tool("helm", "HELM")
}

pub(crate) fn kubectl() -> PathBuf {
    tool("kubectl", "KUBECTL")
}

pub(crate) fn kubernetes_validate() -> PathBuf {
    tool("kubernetes-validate", "KUBERNETES_VALIDATE")
}

pub(crate) fn promtool() -> PathBuf {
    tool("promtool", "PROMTOOL")
}

/// The repository root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart directory.
pub(crate) fn chart() -> PathBuf {
    root().join("charts/kubepulse")
}

/// Runs `program args`, returning its output whatever the exit status.
pub(crate) fn output(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

/// Runs `program args` and returns its stdout; panics with its stderr when
/// it fails.
pub(crate) fn run(program: &Path, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "{} {} failed:\n{}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
