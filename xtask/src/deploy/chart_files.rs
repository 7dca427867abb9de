//! The files the chart copies from where humans edit them: Helm reads only
//! files inside the chart directory, so `alerts/kubepulse-rules.yaml`,
//! `alerts/kubepulse-mixin-duplicates.yaml` and `dashboards/*.json` are
//! copied, byte for byte, into `charts/kubepulse/files/`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{read, Error};

/// The chart, relative to the repository root.
pub const CHART: &str = "charts/kubepulse";
/// The copies, relative to the repository root.
pub const FILES: &str = "charts/kubepulse/files";
/// The rules source, relative to the repository root.
pub const RULES: &str = "alerts/kubepulse-rules.yaml";
/// The alerts that duplicate kubernetes-mixin's, which the chart appends
/// to [`RULES`] only with `prometheusRule.mixinDuplicates`.
pub const MIXIN_DUPLICATES: &str = "alerts/kubepulse-mixin-duplicates.yaml";

/// `dashboards/*.json` file names, sorted.
pub fn dashboard_files(root: &Path) -> Result<Vec<String>, Error> {
    let dir = root.join("dashboards");
    let io = |source| Error::Io {
        path: dir.clone(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let name = entry
            .map_err(io)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".json") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// What `charts/kubepulse/files/` must hold: path (relative to the
/// repository root) -> contents.
pub fn generate(root: &Path) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for source in [RULES, MIXIN_DUPLICATES] {
        let name = source.rsplit('/').next().unwrap_or(source);
        out.insert(format!("{FILES}/{name}"), read(&root.join(source))?);
    }
    for name in dashboard_files(root)? {
        out.insert(
            format!("{FILES}/dashboards/{name}"),
            read(&root.join("dashboards").join(&name))?,
        );
    }
    Ok(out)
}
