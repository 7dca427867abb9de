//! `helm template` of the chart as it will be once its copied files are
//! written: the chart is copied into a temporary directory with them, so a
//! check renders what a write would, without touching the worktree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The helm binary: `$HELM`, else `helm` on `PATH`.
pub fn helm_bin() -> PathBuf {
    std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if entry.file_type().map_err(io(&src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Renders the chart at `root/chart` with `files` (paths relative to the
/// repository root, under `chart/`) in place of the chart's own, as release
/// `release` in `namespace`, with the values files and the extra values
/// `set` (YAML text, may be empty).
pub fn template(
    root: &Path,
    chart: &str,
    files: &BTreeMap<String, String>,
    release: &str,
    namespace: &str,
    values: &[&str],
    set: &str,
) -> Result<String, Error> {
    let tmp = tempfile::tempdir().map_err(|source| Error::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let copy = tmp.path().join("chart");
    copy_dir(&root.join(chart), &copy)?;
    // The copies are regenerated from scratch: stale ones must not render.
    let files_dir = copy.join("files");
    if files_dir.exists() {
        std::fs::remove_dir_all(&files_dir).map_err(|source| Error::Io {
            path: files_dir.clone(),
            source,
        })?;
    }
    for (path, text) in files {
        let rel = path
            .strip_prefix(&format!("{chart}/"))
            .ok_or_else(|| Error::Source {
                path: PathBuf::from(path),
                what: format!("not inside {chart}"),
            })?;
        let dst = copy.join(rel);
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&dst, text).map_err(|source| Error::Io { path: dst, source })?;
    }
    let mut cmd = Command::new(helm_bin());
    cmd.arg("template")
        .arg(release)
        .arg(&copy)
        .args(["--namespace", namespace]);
    for v in values {
        cmd.arg("--values").arg(root.join(v));
    }
    if !set.is_empty() {
        let extra = tmp.path().join("set.yaml");
        std::fs::write(&extra, set).map_err(|source| Error::Io {
            path: extra.clone(),
            source,
        })?;
        cmd.arg("--values").arg(extra);
    }
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: "helm".into(),
        what: format!(
            "cannot run {} ({e}): install it with .ci/k8s-tools",
            helm_bin().display()
        ),
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "helm".into(),
            what: format!(
                "helm template failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| Error::Tool {
        tool: "helm".into(),
        what: format!("output is not UTF-8: {e}"),
    })
}
