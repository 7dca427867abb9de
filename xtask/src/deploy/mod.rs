//! `cargo xtask deploy [--check]`: the Helm chart is the one source of
//! what users install. This task
//!
//! 1. copies what the chart needs from where humans edit it
//!    (`alerts/kubepulse-rules.yaml`, `dashboards/*.json`) into
//!    `charts/kubepulse/files/` ([`chart_files`]);
//! 2. renders the chart with `helm template` and
//!    `charts/kubepulse/ci/static-manifests-values.yaml` ([`helm`]);
//! 3. splits the objects into the kustomizations of `deploy/`
//!    ([`manifests`]).
//!
//! `--check` renders the same into memory and names every file that is
//! stale, missing or no longer generated. Options (`--runbook-url-base`,
//! `--job-selector`, `--namespace-selector`, `--with-mixin-duplicates`)
//! set the chart's `prometheusRule` values of the same names
//! (`mixinDuplicates: true` for the last), for a copy of deploy/ made for
//! one installation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Error;

pub mod chart_files;
pub mod helm;
pub mod manifests;

/// The values file deploy/ is rendered with, relative to the root.
pub const STATIC_VALUES: &str = "charts/kubepulse/ci/static-manifests-values.yaml";

/// Overrides of the chart's `prometheusRule` substitutions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// `prometheusRule.runbookUrlBase`.
    pub runbook_url_base: Option<String>,
    /// `prometheusRule.jobSelector`.
    pub job_selector: Option<String>,
    /// `prometheusRule.namespaceSelector`.
    pub namespace_selector: Option<String>,
    /// `prometheusRule.mixinDuplicates`: also the alerts that duplicate
    /// kubernetes-mixin's.
    pub mixin_duplicates: bool,
}

impl Options {
    /// The overrides as a values file (empty when there are none).
    fn values(&self) -> Result<String, Error> {
        let mut rule = serde_yaml::Mapping::new();
        for (key, v) in [
            ("runbookUrlBase", &self.runbook_url_base),
            ("jobSelector", &self.job_selector),
            ("namespaceSelector", &self.namespace_selector),
        ] {
            if let Some(v) = v {
                rule.insert(key.into(), v.as_str().into());
            }
        }
        if self.mixin_duplicates {
            rule.insert("mixinDuplicates".into(), true.into());
        }
        if rule.is_empty() {
            return Ok(String::new());
        }
        let mut top = serde_yaml::Mapping::new();
        top.insert("prometheusRule".into(), rule.into());
        serde_yaml::to_string(&top).map_err(|e| Error::Source {
            path: "options".into(),
            what: e.to_string(),
        })
    }
}

/// Every generated file: path relative to the repository root -> contents.
pub fn generate(root: &Path, opts: &Options) -> Result<BTreeMap<String, String>, Error> {
    let files = chart_files::generate(root)?;
    let rendered = helm::template(
        root,
        chart_files::CHART,
        &files,
        manifests::RELEASE,
        manifests::NAMESPACE,
        &[STATIC_VALUES],
        &opts.values()?,
    )?;
    let docs = manifests::split(&rendered)?;
    let mut out = files;
    for (path, text) in manifests::layout(&docs) {
        out.insert(format!("{}/{path}", manifests::DIR), text);
    }
    Ok(out)
}

/// Whether the generator owns `rel` (a path relative to the root): every
/// file under the chart's `files/`, and every YAML file under `deploy/`
/// (not the Dockerfile).
fn owned(rel: &str) -> bool {
    rel.starts_with(&format!("{}/", chart_files::FILES))
        || (rel.starts_with(&format!("{}/", manifests::DIR))
            && (rel.ends_with(".yaml") || rel.ends_with(".yml")))
}

/// Files under `dir` (recursively), relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The generated files now on disk.
fn existing(root: &Path) -> Result<Vec<String>, Error> {
    let mut all = Vec::new();
    walk(root, &root.join(chart_files::FILES), &mut all)?;
    walk(root, &root.join(manifests::DIR), &mut all)?;
    all.retain(|p| owned(p));
    all.sort();
    Ok(all)
}

/// How the generated files differ from what their sources give (empty when
/// up to date), one entry per file.
pub fn check(root: &Path, opts: &Options) -> Result<Vec<String>, Error> {
    let want = generate(root, opts)?;
    let mut problems = Vec::new();
    for stale in existing(root)?.iter().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("{stale} is not generated any more"));
    }
    for (path, text) in &want {
        match std::fs::read_to_string(root.join(path)) {
            Ok(have) if &have == text => {}
            Ok(_) => problems.push(format!("{path} differs from what its sources give")),
            Err(_) => problems.push(format!("{path} is missing")),
        }
    }
    Ok(problems)
}

/// Regenerates every file (files no longer generated are removed); returns
/// the paths written, relative to the root.
pub fn write(root: &Path, opts: &Options) -> Result<Vec<String>, Error> {
    let want = generate(root, opts)?;
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    for stale in existing(root)?.iter().filter(|p| !want.contains_key(*p)) {
        let path = root.join(stale);
        std::fs::remove_file(&path).map_err(io(path.clone()))?;
    }
    for (rel, text) in &want {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        }
        std::fs::write(&path, text).map_err(io(path.clone()))?;
    }
    Ok(want.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owns_the_copies_and_deploy_yaml_only() {
        assert!(owned("charts/kubepulse/files/dashboards/x.json"));
        assert!(owned("deploy/base/kustomization.yaml"));
        assert!(!owned("deploy/Dockerfile"));
        assert!(!owned("charts/kubepulse/values.yaml"));
    }

    #[test]
    fn options_become_prometheus_rule_values() {
        assert_eq!(Options::default().values().ok(), Some(String::new()));
        let o = Options {
            job_selector: Some(r#"job="a,b""#.into()),
            ..Options::default()
        };
        let v: serde_yaml::Value =
            serde_yaml::from_str(&o.values().unwrap_or_default()).unwrap_or_default();
        assert_eq!(v["prometheusRule"]["jobSelector"], r#"job="a,b""#);
        assert!(v["prometheusRule"]["mixinDuplicates"].is_null());
        let o = Options {
            mixin_duplicates: true,
            ..Options::default()
        };
        let v: serde_yaml::Value =
            serde_yaml::from_str(&o.values().unwrap_or_default()).unwrap_or_default();
        assert_eq!(v["prometheusRule"]["mixinDuplicates"], true);
    }
}
