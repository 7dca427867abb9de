//! The controller's Roles and ClusterRole in deploy/ (rendered from the
//! chart's controller-rbac*.yaml templates) grant exactly
//! `kubepulse::controller::rbac::RULES`.

use std::collections::BTreeSet;

use kubepulse::controller::rbac::{grants, Place};
use serde::Deserialize;

fn place(kind: &str, ns: Option<&str>) -> Place {
    match (kind, ns) {
        ("ClusterRole", _) => Place::Cluster,
        ("Role", Some("kubepulse-probes")) => Place::ProbeNamespace,
        ("Role", Some("kubepulse")) => Place::OwnNamespace,
        ("Role", Some("kube-node-lease")) => Place::NodeLease,
        ("Role", Some("kube-system")) => Place::KubeSystem,
        ("Role", Some("default")) => Place::DefaultNamespace,
        other => panic!("unexpected role placement {other:?}"),
    }
}

fn strings(v: &serde_yaml::Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(|x| x.as_sequence())
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rbac_yaml_matches_the_code() {
    let mut text = String::new();
    for file in [
        "deploy/base/controller-rbac.yaml",
        "deploy/cluster/controller-rbac-cluster.yaml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        text += &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        text += "\n---\n";
    }
    let mut granted = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).expect("yaml");
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().expect("kind");
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        let p = place(kind, v["metadata"]["namespace"].as_str());
        for rule in v["rules"].as_sequence().expect("rules") {
            let names = strings(rule, "resourceNames");
            for g in strings(rule, "apiGroups") {
                for r in strings(rule, "resources") {
                    assert!(r != "*" && !r.contains('/'), "wildcard or subresource {r}");
                    for verb in strings(rule, "verbs") {
                        assert_ne!(verb, "*", "wildcard verb");
                        granted.insert((p, g.clone(), r.clone(), names.clone(), verb));
                    }
                }
            }
        }
    }
    let code = grants();
    let extra: Vec<_> = granted.difference(&code).collect();
    let missing: Vec<_> = code.difference(&granted).collect();
    assert!(extra.is_empty(), "granted but unused: {extra:?}");
    assert!(missing.is_empty(), "used but not granted: {missing:?}");
}
