//! The chart itself: `helm lint --strict`, versions, and what every values
//! file in `charts/kubepulse/ci/` renders: labels and namespaces on every
//! object, resources on every container, the burst key, and the choices
//! each values file makes.

use std::collections::BTreeSet;

use serde_yaml::Value;

use crate::render::{self, find, id, of_kind, parse, CLUSTER_KINDS, FIXED_NAMESPACES};
use crate::tools;

const LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
];

fn values(name: &str) -> std::path::PathBuf {
    tools::chart()
        .join("ci")
        .join(format!("{name}-values.yaml"))
}

fn render(name: &str) -> Vec<Value> {
    parse(&render::helm_template(&values(name), "kubepulse", &[]))
}

#[test]
fn helm_lint_strict_passes_for_every_values_file() {
    let chart = tools::chart();
    for v in render::ci_values() {
        tools::run(
            &tools::helm(),
            &[
                "lint",
                "--strict",
                chart.to_str().expect("UTF-8"),
                "--values",
                v.to_str().expect("UTF-8"),
            ],
        );
    }
}

#[test]
fn chart_versions_follow_the_crate() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(tools::chart().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    // The image tag defaults to the appVersion.
    let objs = render("default");
    let ds = find(&objs, "DaemonSet", "kubepulse-agent-pod");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("ghcr.io/kubepulse/kubepulse:{}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every values file, rendered into another namespace: every object has
/// the install labels and an explicit namespace (the release namespace,
/// but for the Roles that must live in kube-system, kube-node-lease,
/// default and the probe namespace, and the dashboards where a value puts
/// them), and every container has requests and limits.
#[test]
fn every_object_is_labelled_namespaced_and_resourced() {
    let ns = "observability";
    for v in render::ci_values() {
        let name = render::name(&v);
        let objs = parse(&render::helm_template(&v, ns, &[]));
        let vals: Value = serde_yaml::from_str(&std::fs::read_to_string(&v).expect("values"))
            .expect("values parse");
        let probe_ns = vals["controller"]["probeNamespace"]
            .as_str()
            .unwrap_or("kubepulse-probes");
        let dashboards_ns = vals["dashboards"]["namespace"].as_str().unwrap_or(ns);
        assert!(!objs.is_empty(), "{name}: nothing rendered");
        for o in &objs {
            let what = format!("{name}: {}", id(o));
            for l in LABELS {
                assert!(
                    o["metadata"]["labels"][l].is_string(),
                    "{what}: no label {l}"
                );
            }
            let kind = o["kind"].as_str().unwrap_or("");
            let on = o["metadata"]["namespace"].as_str();
            if CLUSTER_KINDS.contains(&kind) {
                assert_eq!(on, None, "{what}");
                continue;
            }
            let on = on.unwrap_or_else(|| panic!("{what}: no namespace"));
            let allowed = if kind.starts_with("Role") {
                on == ns || on == probe_ns || FIXED_NAMESPACES.contains(&on)
            } else if o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("grafana-dashboard-"))
            {
                on == dashboards_ns
            } else {
                on == ns || (on == probe_ns && ["ResourceQuota", "LimitRange"].contains(&kind))
            };
            assert!(allowed, "{what} is in {on}");
        }
        for (owner, c) in render::containers(&objs) {
            for r in ["requests", "limits"] {
                assert!(
                    c["resources"][r]["memory"].is_string(),
                    "{name}: {owner}: no {r}.memory"
                );
            }
        }
        // Labels given as values reach every object.
        if let Some(common) = vals["commonLabels"].as_mapping() {
            for o in &objs {
                for (k, v) in common {
                    assert_eq!(&o["metadata"]["labels"][k], v, "{name}: {}", id(o));
                }
            }
        }
    }
}

/// The per-DaemonSet defaults a cluster admin expects.
#[test]
fn agents_stay_on_linux_nodes_with_a_pod_network() {
    let objs = render("default");
    for ds in of_kind(&objs, "DaemonSet") {
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(
            spec["nodeSelector"]["kubernetes.io/os"],
            "linux",
            "{}",
            id(ds)
        );
        let excluded: BTreeSet<(String, String)> = spec["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchExpressions"]
            .as_sequence()
            .expect("matchExpressions")
            .iter()
            .filter(|e| e["operator"] == "NotIn")
            .flat_map(|e| {
                let key = e["key"].as_str().unwrap_or("").to_string();
                e["values"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(move |v| (key.clone(), v.as_str().unwrap_or("").to_string()))
            })
            .collect();
        for want in [
            ("eks.amazonaws.com/compute-type", "fargate"),
            ("type", "virtual-kubelet"),
        ] {
            assert!(
                excluded.contains(&(want.0.into(), want.1.into())),
                "{}: {excluded:?}",
                id(ds)
            );
        }
        assert!(
            spec.get("priorityClassName").is_none(),
            "no default priority class"
        );
    }
}

/// The chart makes the burst key (64 hex digits, which the agent's own key
/// parser accepts), or mounts an existing Secret; the agents mount it as
/// optional either way.
#[test]
fn burst_key_is_made_or_taken_from_an_existing_secret() {
    let key = |objs: &[Value]| -> String {
        let s = find(objs, "Secret", "kubepulse-burst-key");
        let b64 = s["data"]["burst.key"].as_str().expect("burst.key");
        let out = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64 -d");
        String::from_utf8(out.stdout).expect("UTF-8 key")
    };
    let a = key(&render("default"));
    let b = key(&render("default"));
    assert_eq!(a.trim().len(), 64, "{a:?}");
    kubepulse::auth::KeySet::parse(&a, std::path::Path::new("burst.key"))
        .expect("the agent parses the generated key");
    assert_ne!(
        a, b,
        "random per installation (an install keeps it via lookup)"
    );
    let mount = |objs: &[Value], secret: &str| {
        for ds in of_kind(objs, "DaemonSet") {
            let volumes = ds["spec"]["template"]["spec"]["volumes"]
                .as_sequence()
                .expect("volumes");
            let v = volumes
                .iter()
                .find(|v| v["name"] == "burst-key")
                .expect("burst-key volume");
            assert_eq!(v["secret"]["secretName"], secret, "{}", id(ds));
            assert_eq!(v["secret"]["optional"], true, "{}", id(ds));
        }
    };
    mount(&render("default"), "kubepulse-burst-key");
    let existing = render("plain-prometheus");
    assert!(
        of_kind(&existing, "Secret").is_empty(),
        "existingSecret: none made"
    );
    mount(&existing, "my-burst-key");
}

#[test]
fn hardened_pins_the_image_and_restricts_the_network() {
    let objs = render("hardened");
    for (owner, c) in render::containers(&objs) {
        let image = c["image"].as_str().expect("image");
        assert!(
            image.contains("@sha256:") && image.starts_with("ghcr.io/kubepulse/kubepulse:"),
            "{owner}: {image}"
        );
    }
    for o in of_kind(&objs, "DaemonSet")
        .into_iter()
        .chain(of_kind(&objs, "Deployment"))
    {
        let spec = &o["spec"]["template"]["spec"];
        assert!(spec["priorityClassName"].is_string(), "{}", id(o));
        assert_eq!(spec["imagePullSecrets"][0]["name"], "registry-credentials");
    }
    let egress = find(&objs, "NetworkPolicy", "kubepulse-agent-egress");
    let text = serde_yaml::to_string(egress).expect("yaml");
    assert!(
        text.contains("169.254.20.10/32"),
        "NodeLocal DNSCache: {text}"
    );
    let ingress = find(&objs, "NetworkPolicy", "kubepulse-agent");
    let text = serde_yaml::to_string(ingress).expect("yaml");
    assert!(
        text.contains("2001:db8:20::/64") && text.contains("10.20.0.0/16"),
        "{text}"
    );
    assert!(
        text.contains("observability"),
        "the Prometheus peer from values: {text}"
    );
    assert_eq!(of_kind(&objs, "FlowSchema").len(), 1);
}

#[test]
fn without_the_controller_only_the_agents_render() {
    let objs = render("no-controller");
    for o in &objs {
        assert_ne!(
            o["metadata"]["labels"]["app.kubernetes.io/component"],
            "controller",
            "{}",
            id(o)
        );
    }
    assert!(of_kind(&objs, "ClusterRole").is_empty());
    assert!(of_kind(&objs, "Namespace").is_empty());
    assert_eq!(of_kind(&objs, "DaemonSet").len(), 2);
    assert_eq!(of_kind(&objs, "PodMonitor").len(), 1, "the agents' only");
}

/// kube-prometheus-stack selects PodMonitors and PrometheusRules by its
/// release label; the dashboards go where its Grafana sidecar looks.
#[test]
fn prometheus_operator_values_carry_the_release_label() {
    let objs = render("prometheus-operator");
    let selected: Vec<&Value> = of_kind(&objs, "PodMonitor")
        .into_iter()
        .chain(of_kind(&objs, "PrometheusRule"))
        .collect();
    assert_eq!(selected.len(), 3);
    for o in selected {
        assert_eq!(
            o["metadata"]["labels"]["release"],
            "kube-prometheus-stack",
            "{}",
            id(o)
        );
    }
    for ep in of_kind(&objs, "PodMonitor") {
        assert_eq!(ep["spec"]["podMetricsEndpoints"][0]["interval"], "15s");
    }
    let dashboards: Vec<&Value> = of_kind(&objs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(
        dashboards.len(),
        xtask::deploy::chart_files::dashboard_files(&tools::root())
            .expect("dashboards")
            .len()
    );
    for d in dashboards {
        assert_eq!(d["metadata"]["namespace"], "monitoring", "{}", id(d));
        assert_eq!(d["metadata"]["annotations"]["grafana_folder"], "kubepulse");
    }
    // Scrape annotations off: the PodMonitors scrape.
    let ds = find(&objs, "DaemonSet", "kubepulse-agent-pod");
    assert!(ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"].is_null());
}
