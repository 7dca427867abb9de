//! The static manifests in `deploy/` (rendered from the Helm chart by
//! `cargo xtask deploy`; tests/install checks they are up to date and
//! validates them) agree with the code: every object has a known kind, the
//! install labels and an explicit namespace, the kustomizations list every
//! manifest, the agent Role grants exactly the API calls the agent makes,
//! and images, ports, labels, downward-API variables, the agent config and
//! the burst key mount match the code's defaults. The Dockerfile is checked
//! here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kubepulse::config::{self, DiscoveryMode, PlanSettings, DEFAULT_METRICS_LISTEN};
use kubepulse::discovery::kubernetes::{facts, API_ACCESS};
use kubepulse::peer::ProbePorts;
use serde_json::Value;

const KNOWN_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ResourceQuota"),
    ("v1", "LimitRange"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("flowcontrol.apiserver.k8s.io/v1", "FlowSchema"),
    (
        "flowcontrol.apiserver.k8s.io/v1",
        "PriorityLevelConfiguration",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

/// Kinds without a namespace.
const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "FlowSchema",
    "PriorityLevelConfiguration",
];

/// The only namespaces objects may be in: the install namespace, the probe
/// namespace, and where the controller's cross-namespace Roles must live.
const NAMESPACES: &[&str] = &[
    "kubepulse",
    "kubepulse-probes",
    "kube-system",
    "kube-node-lease",
    "default",
];

const LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `*.yaml` files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read deploy dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(v).expect("yaml to json")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn is_kustomization(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// Every object under deploy/ (each once: the overlays only combine
/// directories).
fn objects() -> Vec<Value> {
    yaml_files(&root().join("deploy"))
        .iter()
        .filter(|p| !is_kustomization(p))
        .flat_map(|p| docs(p))
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn every_object_has_a_known_kind_labels_and_a_namespace() {
    let objs = objects();
    assert!(objs.len() >= 40, "{} objects", objs.len());
    for o in &objs {
        let key = (
            o["apiVersion"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
        );
        assert!(KNOWN_KINDS.contains(&key), "unknown kind {key:?}");
        let name = o["metadata"]["name"].as_str().expect("a name");
        for l in LABELS {
            assert!(
                o["metadata"]["labels"][l].is_string(),
                "{key:?} {name}: no label {l}"
            );
        }
        let ns = o["metadata"]["namespace"].as_str();
        if CLUSTER_KINDS.contains(&key.1) {
            assert_eq!(ns, None, "{key:?} {name} is cluster-wide");
        } else {
            let ns = ns.unwrap_or_else(|| panic!("{key:?} {name}: no namespace"));
            assert!(NAMESPACES.contains(&ns), "{key:?} {name} in {ns}");
        }
    }
}

#[test]
fn kustomizations_list_every_manifest() {
    for k in yaml_files(&root().join("deploy"))
        .into_iter()
        .filter(|p| is_kustomization(p))
    {
        let dir = k.parent().expect("a directory");
        let listed: BTreeSet<String> = str_set(&docs(&k).remove(0)["resources"])
            .into_iter()
            .filter(|r| r.ends_with(".yaml"))
            .collect();
        let files: BTreeSet<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        assert_eq!(listed, files, "{}", dir.display());
    }
}

#[test]
fn rbac_grants_exactly_the_api_calls_the_agent_makes() {
    let objs = objects();
    let role = find(&objs, "Role", "kubepulse-agent");
    let mut granted = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("resourceNames").is_none());
        for g in str_set(&rule["apiGroups"]) {
            for r in str_set(&rule["resources"]) {
                let verbs: &mut BTreeSet<String> = granted.entry((g.clone(), r)).or_default();
                verbs.extend(str_set(&rule["verbs"]));
            }
        }
    }
    let wanted: BTreeMap<(String, String), BTreeSet<String>> = API_ACCESS
        .iter()
        .map(|a| {
            (
                (a.api_group.to_string(), a.resource.to_string()),
                a.verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(granted, wanted);
    let binding = find(&objs, "RoleBinding", "kubepulse-agent");
    assert_eq!(binding["roleRef"]["name"], "kubepulse-agent");
    assert_eq!(binding["subjects"][0]["name"], "kubepulse-agent");
    // Nothing cluster-wide is bound to the agents.
    for o in objs.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        for s in o["subjects"].as_array().expect("subjects") {
            assert_ne!(s["name"], "kubepulse-agent");
        }
    }
}

fn container(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]["containers"][0]
}

fn ports(c: &Value) -> BTreeSet<(String, u64, String)> {
    c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name").to_string(),
                p["containerPort"].as_u64().expect("port"),
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
            )
        })
        .collect()
}

/// The probe ports (what the Service and other agents reach).
fn probe_ports() -> BTreeSet<(String, u64, String)> {
    let d = ProbePorts::default();
    [
        ("udp-echo", d.udp_echo, "UDP"),
        ("tcp-echo", d.tcp_echo, "TCP"),
        ("bandwidth", d.bandwidth, "TCP"),
        ("http", d.http, "TCP"),
    ]
    .into_iter()
    .map(|(n, p, proto)| (n.to_string(), u64::from(p), proto.to_string()))
    .collect()
}

/// The probe ports and metrics: every port an agent listens on.
fn expected_ports() -> BTreeSet<(String, u64, String)> {
    let mut all = probe_ports();
    all.insert((
        "metrics".into(),
        u64::from(DEFAULT_METRICS_LISTEN.port()),
        "TCP".into(),
    ));
    all
}

fn env(c: &Value) -> BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("env name").to_string(), e.clone()))
        .collect()
}

/// `k=v,k=v` as a map.
fn selector(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).expect("labels")
}

#[test]
fn daemonsets_agree_with_the_code() {
    let objs = objects();
    let want_labels = selector(&PlanSettings::default().label_selector);
    for network in ["pod", "host"] {
        let ds = find(&objs, "DaemonSet", &format!("kubepulse-agent-{network}"));
        let spec = &ds["spec"]["template"]["spec"];
        let c = container(ds);
        let image = c["image"].as_str().expect("image");
        assert_eq!(
            image,
            format!("ghcr.io/kubepulse/kubepulse:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(ports(c), expected_ports(), "{network}");
        let pod_labels = labels(&ds["spec"]["template"]["metadata"]["labels"]);
        for (k, v) in &want_labels {
            assert_eq!(pod_labels.get(k), Some(v), "{network}: discovery selector");
        }
        assert_eq!(pod_labels["kubepulse.io/network"], network);
        assert_eq!(spec["serviceAccountName"], "kubepulse-agent");
        // Linux nodes only, off virtual-kubelet and Fargate, NoSchedule
        // taints tolerated.
        assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
        let affinity = spec["affinity"].to_string();
        assert!(
            affinity.contains("virtual-kubelet") && affinity.contains("fargate"),
            "{network}: {affinity}"
        );
        assert!(spec["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t["effect"] == "NoSchedule"));
        // Downward API identity.
        let e = env(c);
        for (var, path) in [
            (facts::ENV_POD_NAME, "metadata.name"),
            (facts::ENV_NODE_NAME, "spec.nodeName"),
            (facts::ENV_NAMESPACE, "metadata.namespace"),
        ] {
            assert_eq!(
                e[var]["valueFrom"]["fieldRef"]["fieldPath"], path,
                "{network}: {var}"
            );
        }
        // Restricted securityContext (hostNetwork aside).
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(sc["capabilities"].get("add").is_none());
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for r in ["requests", "limits"] {
            assert!(c["resources"][r]["memory"].is_string(), "{network}: {r}");
            assert!(c["resources"][r]["cpu"].is_string(), "{network}: {r}");
        }
        let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(
            annotations["prometheus.io/port"],
            DEFAULT_METRICS_LISTEN.port().to_string()
        );
        let sysctls = &spec["securityContext"]["sysctls"];
        if network == "host" {
            assert_eq!(spec["hostNetwork"], true);
            assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
            assert_eq!(e["KUBEPULSE__AGENT__KIND"]["value"], "host");
            assert!(
                sysctls.is_null(),
                "pod sysctls are refused with hostNetwork"
            );
        } else {
            assert!(spec["hostNetwork"].is_null() || spec["hostNetwork"] == false);
            assert!(
                !e.contains_key("KUBEPULSE__AGENT__KIND"),
                "pod is the default"
            );
            assert_eq!(sysctls[0]["name"], "net.ipv4.ping_group_range");
        }
    }
}

#[test]
fn the_controller_is_scraped_and_kept_available() {
    let objs = objects();
    let d = find(&objs, "Deployment", "kubepulse-controller");
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        config::DEFAULT_CONTROLLER_METRICS_LISTEN.port().to_string()
    );
    let c = container(d);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let e = env(c);
    assert_eq!(
        e["KUBEPULSE__CONTROLLER__POD_STARTUP__IMAGE"]["value"],
        config::DEFAULT_PROBE_IMAGE
    );
    assert_eq!(
        e["KUBEPULSE__CONTROLLER__PROBE_NAMESPACE"]["value"],
        config::ControllerSettings::default().probe_namespace
    );
    let pdb = find(&objs, "PodDisruptionBudget", "kubepulse-controller");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert!(d["spec"]["replicas"].as_u64().unwrap_or(0) >= 2);
}

#[test]
fn service_and_config_agree_with_the_code() {
    let objs = objects();
    // The controller's plan publisher finds the agents and their Service.
    let defaults = PlanSettings::default();
    let svc = find(&objs, "Service", &defaults.service_name);
    assert_eq!(svc["spec"]["type"], "NodePort");
    let sel = labels(&svc["spec"]["selector"]);
    assert_eq!(
        sel["kubepulse.io/network"], "pod",
        "pod-network agents only"
    );
    let got: BTreeSet<(String, u64, String)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            assert_eq!(p["targetPort"], p["name"], "target by name");
            (
                p["name"].as_str().expect("name").to_string(),
                p["port"].as_u64().expect("port"),
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
            )
        })
        .collect();
    assert_eq!(got, probe_ports(), "probe ports only, never metrics");
    for name in facts::PORT_NAMES {
        assert!(got.iter().any(|(n, _, _)| n == name), "{name}");
    }

    // Each DaemonSet's config loads with the real loader, is mounted where
    // KUBEPULSE_CONFIG points, and finds the burst key where the (optional)
    // Secret is mounted.
    let cm = find(&objs, "ConfigMap", "kubepulse-agent");
    let dir = tempfile::tempdir().expect("tempdir");
    for network in ["pod", "host"] {
        let key = format!("{network}.yaml");
        let text = cm["data"][&key].as_str().expect("config per DaemonSet");
        let path = dir.path().join(&key);
        std::fs::write(&path, text).expect("write");
        let s = config::load_from(Some(&path), Default::default()).expect("config loads");
        assert_eq!(s.discovery.mode, DiscoveryMode::Kubernetes);
        assert_eq!(
            s.discovery.kubernetes.plan_config_map, "",
            "each agent reads its own node's plan"
        );
        let ds = find(&objs, "DaemonSet", &format!("kubepulse-agent-{network}"));
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let config = volumes
            .iter()
            .find(|v| v["configMap"]["name"] == "kubepulse-agent")
            .expect("config volume");
        assert_eq!(
            config["configMap"]["items"],
            serde_json::json!([{"key": key, "path": "config.yaml"}])
        );
        let mounts = container(ds)["volumeMounts"].as_array().expect("mounts");
        let mount_of = |volume: &Value| {
            mounts
                .iter()
                .find(|m| m["name"] == volume["name"])
                .expect("volume mounted")["mountPath"]
                .as_str()
                .expect("mountPath")
                .to_string()
        };
        let e = env(container(ds));
        assert_eq!(
            e["KUBEPULSE_CONFIG"]["value"],
            format!("{}/config.yaml", mount_of(config))
        );
        let secret = volumes
            .iter()
            .find(|v| v["secret"]["secretName"] == "kubepulse-burst-key")
            .expect("burst key Secret volume");
        assert_eq!(
            secret["secret"]["optional"], true,
            "pods start without the Secret"
        );
        let file = s.agent.burst_key_file.as_ref().expect("burst_key_file set");
        assert_eq!(
            file.parent().and_then(|p| p.to_str()),
            Some(mount_of(secret).as_str())
        );
        assert_eq!(file.file_name().and_then(|f| f.to_str()), Some("burst.key"));
    }
    assert!(
        !objs.iter().any(|o| o["kind"] == "Secret"),
        "no key is shipped: each cluster makes its own"
    );
}

/// A NetworkPolicy rule's (port, protocol) pairs; empty: every protocol.
fn rule_ports(rule: &Value) -> BTreeSet<(u64, String)> {
    rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["port"].as_u64().expect("port"),
                p["protocol"].as_str().expect("protocol").to_string(),
            )
        })
        .collect()
}

fn has_v4_and_v6_blocks(peers: &Value) -> bool {
    let cidrs: Vec<&str> = peers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["ipBlock"]["cidr"].as_str())
        .collect();
    cidrs.iter().any(|c| c.contains('.')) && cidrs.iter().any(|c| c.contains(':'))
}

#[test]
fn scraping_and_network_policy() {
    let objs = objects();
    let pm = find(&objs, "PodMonitor", "kubepulse-agent");
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "metrics");
    let relabel = ep["relabelings"].as_array().expect("relabelings");
    assert!(relabel.iter().any(|r| {
        r["sourceLabels"] == serde_json::json!(["__meta_kubernetes_pod_node_name"])
            && r["targetLabel"] == "node"
    }));
    assert!(
        pm["spec"].get("namespaceSelector").is_none(),
        "its own namespace, whatever it is"
    );
    let np = find(&objs, "NetworkPolicy", "kubepulse-agent");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = np["spec"]["ingress"].as_array().expect("ingress");
    assert!(
        rules.iter().all(|r| r["from"].is_array()),
        "every rule names its sources"
    );
    // Probes from the other agents and from node addresses: no ports, so
    // ICMP and ICMPv6 echo are admitted too.
    let agents = rules
        .iter()
        .find(|r| {
            r["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "agent"
        })
        .expect("a rule from the agents");
    assert!(rule_ports(agents).is_empty(), "{agents}");
    let nodes = rules
        .iter()
        .find(|r| r["from"][0]["ipBlock"].is_object())
        .expect("a rule from node addresses");
    assert!(rule_ports(nodes).is_empty(), "{nodes}");
    assert!(has_v4_and_v6_blocks(&nodes["from"]), "{nodes}");
    // Everything else: the metrics port only.
    let metrics: BTreeSet<(u64, String)> =
        [(u64::from(DEFAULT_METRICS_LISTEN.port()), "TCP".into())].into();
    for r in rules {
        if !std::ptr::eq(r, agents) && !std::ptr::eq(r, nodes) {
            assert_eq!(rule_ports(r), metrics, "{r}");
        }
    }
}

/// The pod agents may reach cluster DNS (port 53, UDP and TCP, on the DNS
/// pods) and the apiserver (443 and 6443): the cluster reachability probes
/// must not fail on the agent's own policy.
#[test]
fn egress_policy_admits_dns_and_the_apiserver() {
    let objs = objects();
    let np = find(&objs, "NetworkPolicy", "kubepulse-agent-egress");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    let rules = np["spec"]["egress"].as_array().expect("egress");
    let dns = rules
        .iter()
        .find(|r| r["to"][0]["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns")
        .expect("a rule to the DNS pods");
    let want: BTreeSet<(u64, String)> = [(53, "UDP".into()), (53, "TCP".into())].into();
    assert_eq!(rule_ports(dns), want);
    let api = rules
        .iter()
        .find(|r| {
            let p = rule_ports(r);
            p.contains(&(443, "TCP".into())) && p.contains(&(6443, "TCP".into()))
        })
        .expect("a rule to the apiserver ports");
    assert!(has_v4_and_v6_blocks(&api["to"]), "{api}");
    // Every rule names its destinations (no rule admits everything).
    assert!(rules.iter().all(|r| r["to"].is_array()));
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    // The final stages build on an empty image: the static binary alone.
    assert!(froms.contains(&"FROM scratch AS runtime"), "{froms:?}");
    let last = froms.last().copied().unwrap_or_default();
    assert!(last.starts_with("FROM runtime "), "{last}");
    assert!(text.contains("USER 65532:65532"));
    for p in expected_ports() {
        let proto = p.2.to_lowercase();
        assert!(text.contains(&format!("{}/{proto}", p.1)), "EXPOSE {p:?}");
    }
}
