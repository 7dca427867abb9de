//! The static manifests: `deploy/` is exactly what `cargo xtask deploy`
//! renders from the chart, every kustomization builds with the real
//! kustomize, the overlays install agents and controller together, and a
//! namespace override leaves the cross-namespace Roles where they must
//! live.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::render::{self, id, of_kind, parse, FIXED_NAMESPACES};
use crate::tools;

#[test]
fn deploy_is_what_the_chart_renders() {
    let problems =
        xtask::deploy::check(&tools::root(), &Default::default()).expect("cargo xtask deploy runs");
    assert!(
        problems.is_empty(),
        "out of date, regenerate with `cargo xtask deploy`:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_kustomization_builds() {
    let dirs = render::kustomizations();
    assert!(dirs.len() >= 10, "{dirs:?}");
    for dir in dirs {
        let objs = parse(&render::kustomize(&dir));
        assert!(!objs.is_empty(), "{}: no objects", dir.display());
    }
}

/// What users apply: agents and controller together, with their
/// monitoring, in one `kubectl apply -k`.
#[test]
fn overlays_install_agents_and_controller_together() {
    for (overlay, monitoring) in [
        ("prometheus-operator", "PrometheusRule"),
        ("plain-prometheus", "ConfigMap"),
    ] {
        let objs = parse(&render::kustomize(
            &tools::root().join("deploy").join(overlay),
        ));
        let names: Vec<String> = objs.iter().map(id).collect();
        for want in [
            "Namespace kubepulse",
            "Namespace kubepulse-probes",
            "DaemonSet kubepulse/kubepulse-agent-pod",
            "DaemonSet kubepulse/kubepulse-agent-host",
            "Deployment kubepulse/kubepulse-controller",
            "ClusterRole kubepulse-controller",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{overlay}: no {want} in {names:?}"
            );
        }
        assert!(!of_kind(&objs, monitoring).is_empty(), "{overlay}");
        assert!(
            of_kind(&objs, "NetworkPolicy").is_empty() && of_kind(&objs, "FlowSchema").is_empty(),
            "{overlay}: the optional parts are opt-in"
        );
    }
}

/// (kind, name) -> namespace of every namespaced object.
fn placement(objs: &[Value]) -> BTreeMap<(String, String), String> {
    objs.iter()
        .filter_map(|o| {
            Some((
                (
                    o["kind"].as_str()?.to_string(),
                    o["metadata"]["name"].as_str()?.to_string(),
                ),
                o["metadata"]["namespace"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn a_namespace_override_keeps_the_cross_namespace_roles_in_place() {
    let ns = xtask::deploy::manifests::EXAMPLE_NAMESPACE;
    let moved = parse(&render::kustomize(
        &tools::root().join("deploy/examples/other-namespace"),
    ));
    let original = parse(&render::kustomize(
        &tools::root().join("deploy/prometheus-operator"),
    ));
    let before = placement(&original);
    let after = placement(&moved);
    let mut stayed = 0;
    for (key, was) in &before {
        let now = after
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} missing from the example"));
        if was == "kubepulse" {
            assert_eq!(now, ns, "{key:?} follows the install namespace");
        } else {
            assert_eq!(now, was, "{key:?} must stay in {was}");
            stayed += 1;
        }
    }
    // The controller's Roles and bindings in kube-system, kube-node-lease,
    // default and the probe namespace, and the probe namespace's quota.
    assert!(
        stayed >= 10,
        "{stayed} objects outside the install namespace"
    );
    for fixed in FIXED_NAMESPACES {
        assert!(after.values().any(|n| n == fixed), "nothing in {fixed}");
    }
    assert!(
        !after.values().any(|n| n == "kubepulse"),
        "nothing left in kubepulse"
    );
    // Every binding names the ServiceAccounts where they now are.
    for o in moved.iter().filter(|o| {
        ["RoleBinding", "ClusterRoleBinding"].contains(&o["kind"].as_str().unwrap_or(""))
    }) {
        for s in o["subjects"].as_sequence().expect("subjects") {
            assert_eq!(s["namespace"], ns, "{}", id(o));
        }
    }
    let fs = &of_kind(&moved, "FlowSchema")[0];
    assert_eq!(
        fs["spec"]["rules"][0]["subjects"][0]["serviceAccount"]["namespace"],
        ns
    );
    let names: Vec<String> = of_kind(&moved, "Namespace")
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n == ns) && names.iter().any(|n| n == "kubepulse-probes"));
}
