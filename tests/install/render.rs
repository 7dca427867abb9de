//! Objects from `helm template` and `kubectl kustomize`.

use std::path::PathBuf;

use serde_yaml::Value;

use crate::tools;

/// Kinds without a namespace.
pub(crate) const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "FlowSchema",
    "PriorityLevelConfiguration",
];

/// The namespaces where the controller's Roles must live whatever the
/// release namespace (the probe namespace aside, which is a value).
pub(crate) const FIXED_NAMESPACES: &[&str] = &["kube-system", "kube-node-lease", "default"];

/// Every non-empty document of a multi-document YAML text.
pub(crate) fn parse(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `charts/kubepulse/ci/*.yaml`, sorted.
pub(crate) fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(tools::chart().join("ci"))
        .expect("charts/kubepulse/ci")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "at least five values files: {files:?}");
    files
}

/// A values file's short name (`hardened` for `hardened-values.yaml`).
pub(crate) fn name(values: &std::path::Path) -> String {
    let stem = values
        .file_stem()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    stem.trim_end_matches("-values").to_string()
}

/// `helm template kubepulse charts/kubepulse -n <namespace> -f <values> <extra>`.
pub(crate) fn helm_template(values: &std::path::Path, namespace: &str, extra: &[&str]) -> String {
    let chart = tools::chart();
    let mut args = vec![
        "template",
        "kubepulse",
        chart.to_str().expect("UTF-8 path"),
        "--namespace",
        namespace,
        "--values",
        values.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    tools::run(&tools::helm(), &args)
}

/// Every directory under deploy/ with a kustomization.yaml, sorted.
pub(crate) fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "kustomization.yaml") {
                out.push(dir.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(&tools::root().join("deploy"), &mut out);
    out.sort();
    out
}

/// `kubectl kustomize <dir>`.
pub(crate) fn kustomize(dir: &std::path::Path) -> String {
    tools::run(
        &tools::kubectl(),
        &["kustomize", dir.to_str().expect("UTF-8 path")],
    )
}

/// `kind name` (or `kind namespace/name`) of an object, for messages.
pub(crate) fn id(o: &Value) -> String {
    let kind = o["kind"].as_str().unwrap_or("?");
    let name = o["metadata"]["name"].as_str().unwrap_or("?");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The objects of `kind`.
pub(crate) fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// The object `kind` named `name`.
pub(crate) fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pod templates' containers of the workloads among `objs`.
pub(crate) fn containers(objs: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for o in objs {
        for c in o["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            out.push((id(o), c));
        }
    }
    out
}
