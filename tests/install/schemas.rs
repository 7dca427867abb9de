//! Every object of every way to install validates strictly: the built-in
//! kinds against the Kubernetes 1.29 and 1.34 schemas
//! (`kubernetes-validate --strict`), PodMonitors and PrometheusRules
//! against prometheus-operator's CRD schema (`validate_crds.py`).

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::render::{self, id, parse};
use crate::tools;

/// The Kubernetes versions every object must validate against (the
/// oldest the chart supports and a current one; kubernetes-validate 1.37
/// ships both schemas).
const KUBERNETES: &[&str] = &["1.29.0", "1.34.0"];

fn is_crd(o: &Value) -> bool {
    o["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

/// Every way to install: (name, rendered objects).
fn renderings() -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for v in render::ci_values() {
        out.push((
            format!("helm -f {}", render::name(&v)),
            parse(&render::helm_template(&v, "kubepulse", &[])),
        ));
    }
    for dir in render::kustomizations() {
        let rel = dir
            .strip_prefix(tools::root())
            .unwrap_or(&dir)
            .display()
            .to_string();
        out.push((format!("kustomize {rel}"), parse(&render::kustomize(&dir))));
    }
    out
}

/// Writes the objects (all, or the CRD ones) of each rendering to a file
/// in `dir`; returns (file, rendering name, objects written).
fn write(
    dir: &Path,
    renderings: &[(String, Vec<Value>)],
    crd: bool,
) -> Vec<(PathBuf, String, Vec<String>)> {
    let mut out = Vec::new();
    for (i, (name, objs)) in renderings.iter().enumerate() {
        let picked: Vec<&Value> = objs.iter().filter(|o| is_crd(o) == crd).collect();
        if picked.is_empty() {
            continue;
        }
        let text: String = picked
            .iter()
            .map(|o| format!("---\n{}", serde_yaml::to_string(o).expect("yaml")))
            .collect();
        let path = dir.join(format!("{i}.yaml"));
        std::fs::write(&path, text).expect("write rendering");
        out.push((path, name.clone(), picked.iter().map(|o| id(o)).collect()));
    }
    out
}

/// The object counts of every rendering, printed for the record (run with
/// --nocapture): how many objects each values file and kustomization
/// installs.
#[test]
fn builtin_kinds_validate_strictly_against_kubernetes_1_29_and_1_34() {
    let all = renderings();
    for (name, objs) in &all {
        println!("{name}: {} objects", objs.len());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write(dir.path(), &all, false);
    for version in KUBERNETES {
        let mut args = vec!["--strict", "-k", version];
        args.extend(files.iter().map(|(p, _, _)| p.to_str().expect("UTF-8")));
        let out = tools::output(&tools::kubernetes_validate(), &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("INFO ") && !l.trim().is_empty())
            .collect();
        assert!(
            out.status.success() && problems.is_empty(),
            "kubernetes {version}:\n{}",
            problems.join("\n")
        );
        // Every object was validated, none skipped.
        for (path, name, objs) in &files {
            let passed = text
                .lines()
                .filter(|l| l.starts_with(&format!("INFO {} passed for resource", path.display())))
                .count();
            assert_eq!(passed, objs.len(), "kubernetes {version}: {name}: {objs:?}");
        }
    }
}

#[test]
fn monitoring_objects_validate_against_the_prometheus_operator_crds() {
    let all = renderings();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write(dir.path(), &all, true);
    assert!(
        files.len() >= 4,
        "PodMonitors and PrometheusRules rendered: {}",
        files.len()
    );
    let script = tools::root().join("tests/install/validate_crds.py");
    let mut args = vec![script.to_str().expect("UTF-8")];
    args.extend(files.iter().map(|(p, _, _)| p.to_str().expect("UTF-8")));
    let out = tools::output(Path::new("python3"), &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for (path, name, objs) in &files {
        let passed = text
            .lines()
            .filter(|l| l.starts_with(&format!("PASS {} ", path.display())))
            .count();
        assert_eq!(passed, objs.len(), "{name}: {objs:?}\n{text}");
    }
}

/// The validators can fail: a misspelt field is refused by both.
#[test]
fn the_validators_refuse_a_misspelt_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = dir.path().join("core.yaml");
    std::fs::write(
        &core,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: y\ndatta: {}\n",
    )
    .expect("write");
    for version in KUBERNETES {
        let out = tools::output(
            &tools::kubernetes_validate(),
            &["--strict", "-k", version, core.to_str().expect("UTF-8")],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains("datta"),
            "{version}: {text}"
        );
    }
    let crd = dir.path().join("crd.yaml");
    std::fs::write(
        &crd,
        "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata:\n  name: x\nspec:\n  selector: {}\n  podMetricsEndpoints:\n    - port: metrics\n      intervall: 30s\n",
    )
    .expect("write");
    let script = tools::root().join("tests/install/validate_crds.py");
    let out = tools::output(
        Path::new("python3"),
        &[
            script.to_str().expect("UTF-8"),
            crd.to_str().expect("UTF-8"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("intervall"),
        "{text}"
    );
}
