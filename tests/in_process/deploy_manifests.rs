//! The manifests in `deploy/` agree with the code: every YAML document
//! parses and has a known kind, the kustomizations list every manifest, the
//! Role grants exactly the API calls the agent makes, and images, ports,
//! labels, downward-API variables and the agent config match the code's
//! defaults.

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
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("apps/v1", "DaemonSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
];

/// The manifest directories this test owns (deploy/monitoring and
/// deploy/controller belong to other parts and have their own checks).
const DIRS: &[&str] = &["deploy", "deploy/prometheus-operator"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read deploy dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
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

/// Every object of the base and the prometheus-operator overlay.
fn objects() -> Vec<Value> {
    let mut out = Vec::new();
    for dir in DIRS {
        for f in yaml_files(&root().join(dir)) {
            if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
                continue;
            }
            out.extend(docs(&f));
        }
    }
    out
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
fn every_document_parses_with_a_known_kind() {
    let objs = objects();
    assert!(objs.len() >= 10, "{} objects", objs.len());
    for o in &objs {
        let key = (
            o["apiVersion"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
        );
        assert!(KNOWN_KINDS.contains(&key), "unknown kind {key:?}");
        assert!(o["metadata"]["name"].is_string(), "{key:?} without a name");
        if key.1 != "Namespace" {
            assert_eq!(o["metadata"]["namespace"], "kubepulse", "{key:?}");
        }
    }
}

#[test]
fn kustomizations_list_every_manifest() {
    for dir in DIRS {
        let dir = root().join(dir);
        let k = docs(&dir.join("kustomization.yaml")).remove(0);
        let listed: BTreeSet<String> = str_set(&k["resources"])
            .into_iter()
            .filter(|r| r != "..")
            .collect();
        let files: BTreeSet<String> = yaml_files(&dir)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .filter(|n| n != "kustomization.yaml")
            .collect();
        assert_eq!(listed, files, "{}", dir.display());
    }
}

#[test]
fn rbac_grants_exactly_the_api_calls_the_code_makes() {
    let objs = objects();
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding"),
        "the agent needs no cluster-wide access"
    );
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

fn expected_ports() -> BTreeSet<(String, u64, String)> {
    let d = ProbePorts::default();
    [
        ("metrics", DEFAULT_METRICS_LISTEN.port(), "TCP"),
        ("udp-echo", d.udp_echo, "UDP"),
        ("tcp-echo", d.tcp_echo, "TCP"),
        ("bandwidth", d.bandwidth, "TCP"),
        ("http", d.http, "TCP"),
    ]
    .into_iter()
    .map(|(n, p, proto)| (n.to_string(), u64::from(p), proto.to_string()))
    .collect()
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
    assert_eq!(got, expected_ports());
    for name in facts::PORT_NAMES {
        assert!(got.iter().any(|(n, _, _)| n == name), "{name}");
    }

    // The ConfigMap's config loads with the real loader and selects the
    // DaemonSets' pods.
    let cm = find(&objs, "ConfigMap", "kubepulse-agent");
    let text = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).expect("write");
    let s = config::load_from(Some(&path), Default::default()).expect("config loads");
    assert_eq!(s.discovery.mode, DiscoveryMode::Kubernetes);
    assert_eq!(
        s.discovery.kubernetes.plan_config_map, "",
        "each agent reads its own node's plan"
    );
    for ds in ["kubepulse-agent-pod", "kubepulse-agent-host"] {
        let ds = find(&objs, "DaemonSet", ds);
        let mounted = &ds["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"];
        assert_eq!(mounted, "kubepulse-agent");
        // The burst key Secret is mounted where the config looks for it.
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let key = volumes
            .iter()
            .find(|v| v["secret"]["secretName"] == "kubepulse-burst-key")
            .expect("burst key Secret volume");
        let mount = container(ds)["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == key["name"])
            .expect("burst key mounted");
        let file = s.agent.burst_key_file.as_ref().expect("burst_key_file set");
        assert_eq!(
            file.parent().and_then(|p| p.to_str()),
            mount["mountPath"].as_str()
        );
        assert_eq!(file.file_name().and_then(|f| f.to_str()), Some("burst.key"));
        let e = env(container(ds));
        assert_eq!(e["KUBEPULSE_CONFIG"]["value"], "/etc/kubepulse/config.yaml");
    }
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
    let np = find(&objs, "NetworkPolicy", "kubepulse-agent");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let mut admitted = BTreeSet::new();
    for rule in np["spec"]["ingress"].as_array().expect("ingress") {
        assert!(rule["from"].is_array(), "every rule names its sources");
        for p in rule["ports"].as_array().expect("ports") {
            admitted.insert((
                p["port"].as_u64().expect("port"),
                p["protocol"].as_str().expect("protocol").to_string(),
            ));
        }
    }
    let want: BTreeSet<(u64, String)> = expected_ports()
        .into_iter()
        .map(|(_, p, proto)| (p, proto))
        .collect();
    assert_eq!(admitted, want, "probe ports and metrics, nothing else");
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
    let ports = |rule: &Value| -> BTreeSet<(u64, String)> {
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
    };
    let dns = rules
        .iter()
        .find(|r| r["to"][0]["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns")
        .expect("a rule to the DNS pods");
    let want: BTreeSet<(u64, String)> = [(53, "UDP".into()), (53, "TCP".into())].into();
    assert_eq!(ports(dns), want);
    assert!(
        rules.iter().any(|r| {
            let p = ports(r);
            p.contains(&(443, "TCP".into())) && p.contains(&(6443, "TCP".into()))
        }),
        "a rule to the apiserver ports"
    );
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
