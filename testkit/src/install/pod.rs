//! Pure translation of a pod's fields into what the lab kubelet does:
//! environment (downward API, service links), DNS, security settings,
//! resources, probes and volumes. A value the lab cannot honour becomes a
//! [`Refusal`] naming the field, never a silent default.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

use crate::container::ContainerSpec;

/// A field the lab kubelet cannot honour, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field's path, e.g. `spec.containers[0].livenessProbe.exec`.
    pub field: String,
    /// Why.
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

fn refuse(field: impl Into<String>, why: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        why: why.into(),
    }
}

/// The cluster domain of the lab.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Where a pod is, for its downward API and DNS.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Node name.
    pub node: String,
    /// The pod's address (the node's for hostNetwork pods).
    pub pod_ip: Ipv4Addr,
    /// The node's address.
    pub host_ip: Ipv4Addr,
}

/// The value of a downward-API `fieldRef`.
pub fn field_ref(pod: &Value, path: &str, at: &Placement) -> Result<String, String> {
    let meta = &pod["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    Ok(match path {
        "metadata.name" => s(&meta["name"]),
        "metadata.namespace" => s(&meta["namespace"]),
        "metadata.uid" => s(&meta["uid"]),
        "spec.nodeName" => at.node.clone(),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.podIP" => at.pod_ip.to_string(),
        "status.hostIP" => at.host_ip.to_string(),
        other => {
            let label = other
                .strip_prefix("metadata.labels['")
                .or_else(|| other.strip_prefix("metadata.annotations['"))
                .and_then(|r| r.strip_suffix("']"));
            match label {
                Some(k) if other.starts_with("metadata.labels") => s(&meta["labels"][k]),
                Some(k) => s(&meta["annotations"][k]),
                None => return Err(format!("fieldPath {other} is not modelled")),
            }
        }
    })
}

/// The environment variables a kubelet derives from the Services of the
/// pod's namespace when `enableServiceLinks` is on (the default), plus
/// the `kubernetes` Service's, which every pod gets.
pub fn service_env(services: &[Value], kubernetes: (Ipv4Addr, u16)) -> Vec<(String, String)> {
    let mut env = BTreeMap::new();
    for svc in services {
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_uppercase()
            .replace('-', "_");
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let port = |p: &Value| p["port"].as_u64().unwrap_or(0);
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        env.insert(format!("{name}_SERVICE_HOST"), ip.to_string());
        env.insert(format!("{name}_SERVICE_PORT"), port(first).to_string());
        env.insert(
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), port(first)),
        );
        for p in &ports {
            let (n, pr) = (port(p), proto(p));
            if let Some(pn) = p["name"].as_str() {
                env.insert(
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    n.to_string(),
                );
            }
            let base = format!("{name}_PORT_{n}_{pr}");
            env.insert(base.clone(), format!("{}://{ip}:{n}", pr.to_lowercase()));
            env.insert(format!("{base}_PROTO"), pr.to_lowercase());
            env.insert(format!("{base}_PORT"), n.to_string());
            env.insert(format!("{base}_ADDR"), ip.to_string());
        }
    }
    let (kip, kport) = kubernetes;
    env.insert("KUBERNETES_SERVICE_HOST".into(), kip.to_string());
    env.insert("KUBERNETES_SERVICE_PORT".into(), kport.to_string());
    env.into_iter().collect()
}

/// What the pod's resolv.conf holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Nameservers.
    pub nameservers: Vec<Ipv4Addr>,
    /// Search domains.
    pub search: Vec<String>,
    /// Options.
    pub options: Vec<String>,
}

impl Dns {
    /// Writes it into a container's spec.
    pub fn apply(&self, c: &mut ContainerSpec) {
        c.dns_servers = self.nameservers.iter().map(|n| n.to_string()).collect();
        c.dns_search = self.search.clone();
        c.dns_options = self.options.clone();
    }
}

/// The resolv.conf of a pod: `ClusterFirst` (the default; for a
/// hostNetwork pod it means the node's resolver) and
/// `ClusterFirstWithHostNet` ask cluster DNS with the namespace's search
/// path; `Default` uses the node's resolver.
pub fn dns(
    spec: &Value,
    namespace: &str,
    cluster_dns: Ipv4Addr,
    node_dns: Ipv4Addr,
) -> Result<Dns, Refusal> {
    let host = spec["hostNetwork"] == true;
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let cluster = match (policy, host) {
        ("ClusterFirst", false) | ("ClusterFirstWithHostNet", _) => true,
        ("ClusterFirst", true) | ("Default", _) => false,
        (other, _) => return Err(refuse("spec.dnsPolicy", format!("{other} is not modelled"))),
    };
    Ok(if cluster {
        Dns {
            nameservers: vec![cluster_dns],
            search: vec![
                format!("{namespace}.svc.{CLUSTER_DOMAIN}"),
                format!("svc.{CLUSTER_DOMAIN}"),
                CLUSTER_DOMAIN.to_string(),
            ],
            options: vec!["ndots:5".into()],
        }
    } else {
        Dns {
            nameservers: vec![node_dns],
            search: Vec::new(),
            options: Vec::new(),
        }
    })
}

/// Applies the pod's and container `i`'s security settings to `c`.
/// `image_user` is the image's numeric `USER` (for `runAsNonRoot`
/// without `runAsUser`).
pub fn security(
    spec: &Value,
    i: usize,
    image_user: Option<u32>,
    c: &mut ContainerSpec,
) -> Result<(), Vec<Refusal>> {
    let pod = &spec["securityContext"];
    let ctr = &spec["containers"][i]["securityContext"];
    let field = |f: &str| format!("spec.containers[{i}].securityContext.{f}");
    let mut refusals = Vec::new();
    let pick = |k: &str| if ctr[k].is_null() { &pod[k] } else { &ctr[k] };
    let uid = |v: &Value| v.as_u64().and_then(|u| u32::try_from(u).ok());
    c.user = uid(pick("runAsUser"));
    c.group = uid(pick("runAsGroup"));
    if pick("runAsNonRoot") == true {
        // The kubelet refuses to start a container that would run as root.
        match c.user.or(image_user) {
            Some(0) | None => refusals.push(refuse(
                field("runAsNonRoot"),
                "the container would run as root (or as a user that is not numeric)",
            )),
            Some(_) => {}
        }
    }
    if let Some(g) = uid(&pod["fsGroup"]) {
        c.groups.push(g);
    }
    for g in pod["supplementalGroups"].as_array().into_iter().flatten() {
        if let Some(g) = uid(g) {
            c.groups.push(g);
        }
    }
    c.read_only = ctr["readOnlyRootFilesystem"] == true;
    c.privileged = ctr["privileged"] == true;
    // The kubelet's default is to allow escalation (unless privileged).
    c.no_new_privileges = ctr["allowPrivilegeEscalation"] == false;
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| s.trim_start_matches("CAP_").to_string())
            .collect()
    };
    c.cap_drop = names(&ctr["capabilities"]["drop"]);
    c.cap_add = names(&ctr["capabilities"]["add"]);
    let seccomp = pick("seccompProfile");
    match seccomp["type"].as_str() {
        // podman applies its default profile, as containerd and CRI-O do
        // for RuntimeDefault; the kubelet's own default is Unconfined.
        Some("RuntimeDefault") => {}
        None | Some("Unconfined") => c.seccomp_unconfined = true,
        Some(other) => refusals.push(refuse(
            if ctr["seccompProfile"].is_null() {
                "spec.securityContext.seccompProfile.type".to_string()
            } else {
                field("seccompProfile.type")
            },
            format!("{other} profiles are not modelled"),
        )),
    }
    for (j, s) in pod["sysctls"].as_array().into_iter().flatten().enumerate() {
        let name = s["name"].as_str().unwrap_or("");
        // Pod sysctls are refused for hostNetwork pods (they would change
        // the node's namespace), as the kubelet does.
        if spec["hostNetwork"] == true && name.starts_with("net.") {
            refusals.push(refuse(
                format!("spec.securityContext.sysctls[{j}]"),
                "a net.* sysctl on a hostNetwork pod is rejected by the kubelet",
            ));
            continue;
        }
        c.sysctls.push((
            name.to_string(),
            s["value"].as_str().unwrap_or("").to_string(),
        ));
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

/// CPU in millicores from a quantity (`1`, `0.5`, `250m`).
pub fn cpu_millis(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>().ok().map(|c| (c * 1000.0).round() as u64)
}

/// Bytes from a memory quantity (`64Mi`, `1G`, `1000`).
pub fn memory_bytes(q: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mul) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().ok().map(|n| n * mul);
        }
    }
    q.parse().ok()
}

/// Applies container `i`'s resources: limits as podman's memory and CPU
/// limits, the CPU request as CPU shares (the kubelet's formula).
pub fn resources(spec: &Value, i: usize, c: &mut ContainerSpec) -> Result<(), Refusal> {
    let r = &spec["containers"][i]["resources"];
    let bad = |f: &str, q: &str| {
        refuse(
            format!("spec.containers[{i}].resources.{f}"),
            format!("cannot read quantity {q:?}"),
        )
    };
    if let Some(q) = r["limits"]["memory"].as_str() {
        c.memory_bytes = Some(memory_bytes(q).ok_or_else(|| bad("limits.memory", q))?);
    }
    if let Some(q) = r["limits"]["cpu"].as_str() {
        c.cpu_millis = Some(cpu_millis(q).ok_or_else(|| bad("limits.cpu", q))?);
    }
    if let Some(q) = r["requests"]["cpu"].as_str() {
        let m = cpu_millis(q).ok_or_else(|| bad("requests.cpu", q))?;
        c.cpu_shares = Some((m * 1024 / 1000).max(2));
    }
    if let Some(q) = r["requests"]["memory"].as_str() {
        memory_bytes(q).ok_or_else(|| bad("requests.memory", q))?;
    }
    Ok(())
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `httpGet`: a 2xx or 3xx answer to GET `path` on `port`.
    Http {
        /// The port number (named ports resolved).
        port: u16,
        /// Path and query.
        path: String,
    },
    /// `tcpSocket`: a connection accepted on `port`.
    Tcp {
        /// The port number.
        port: u16,
    },
}

/// A readiness, liveness or startup probe with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The check.
    pub check: Check,
    /// `initialDelaySeconds`.
    pub initial_delay: u64,
    /// `periodSeconds` (default 10).
    pub period: u64,
    /// `timeoutSeconds` (default 1).
    pub timeout: u64,
    /// `successThreshold` (default 1).
    pub success: u32,
    /// `failureThreshold` (default 3).
    pub failure: u32,
}

/// Container `i`'s probe `which` (`readinessProbe`, ...), if declared.
pub fn probe(spec: &Value, i: usize, which: &str) -> Result<Option<Probe>, Refusal> {
    let c = &spec["containers"][i];
    let p = &c[which];
    if p.is_null() {
        return Ok(None);
    }
    let field = |f: &str| format!("spec.containers[{i}].{which}.{f}");
    let port = |v: &Value, f: &str| -> Result<u16, Refusal> {
        if let Some(n) = v.as_u64() {
            return u16::try_from(n).map_err(|_| refuse(field(f), "port out of range"));
        }
        let name = v.as_str().unwrap_or("");
        c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| refuse(field(f), format!("no container port named {name:?}")))
    };
    let known = [
        "httpGet",
        "tcpSocket",
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
    ];
    if let Some(m) = p.as_object() {
        if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(refuse(field(k), "not modelled (exec, grpc and the rest)"));
        }
    }
    let check = if !p["httpGet"].is_null() {
        let h = &p["httpGet"];
        if let Some(m) = h.as_object() {
            if let Some(k) = m
                .keys()
                .find(|k| !["path", "port", "scheme"].contains(&k.as_str()))
            {
                return Err(refuse(field(&format!("httpGet.{k}")), "not modelled"));
            }
        }
        if h["scheme"].as_str().is_some_and(|s| s != "HTTP") {
            return Err(refuse(field("httpGet.scheme"), "only HTTP is modelled"));
        }
        Check::Http {
            port: port(&h["port"], "httpGet.port")?,
            path: h["path"].as_str().unwrap_or("/").to_string(),
        }
    } else if !p["tcpSocket"].is_null() {
        Check::Tcp {
            port: port(&p["tcpSocket"]["port"], "tcpSocket.port")?,
        }
    } else {
        return Err(refuse(field(""), "a probe without httpGet or tcpSocket"));
    };
    let n = |k: &str, d: u64| p[k].as_u64().unwrap_or(d);
    Ok(Some(Probe {
        check,
        initial_delay: n("initialDelaySeconds", 0),
        period: n("periodSeconds", 10).max(1),
        timeout: n("timeoutSeconds", 1).max(1),
        success: n("successThreshold", 1).max(1) as u32,
        failure: n("failureThreshold", 3).max(1) as u32,
    }))
}

/// Where one volume's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A ConfigMap's keys.
    ConfigMap {
        /// Its name.
        name: String,
        /// Missing is fine (an empty volume).
        optional: bool,
        /// `items` (key → path), all keys when empty.
        items: Vec<(String, String, Option<u32>)>,
        /// `defaultMode`.
        mode: u32,
    },
    /// A Secret's keys.
    Secret {
        /// Its name.
        name: String,
        /// Missing is fine (an empty volume).
        optional: bool,
        /// `items` (key → path), all keys when empty.
        items: Vec<(String, String, Option<u32>)>,
        /// `defaultMode`.
        mode: u32,
    },
    /// An empty writable directory.
    EmptyDir,
}

/// The pod's volumes by name.
pub fn volumes(spec: &Value) -> Result<BTreeMap<String, Source>, Refusal> {
    let mut out = BTreeMap::new();
    for (j, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let items = |src: &Value| -> Vec<(String, String, Option<u32>)> {
            src["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|it| {
                    (
                        it["key"].as_str().unwrap_or("").to_string(),
                        it["path"].as_str().unwrap_or("").to_string(),
                        it["mode"].as_u64().map(|m| m as u32),
                    )
                })
                .collect()
        };
        let mode = |src: &Value| src["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
        let source = if let Some(cm) = v.get("configMap") {
            Source::ConfigMap {
                name: cm["name"].as_str().unwrap_or("").to_string(),
                optional: cm["optional"] == true,
                items: items(cm),
                mode: mode(cm),
            }
        } else if let Some(s) = v.get("secret") {
            Source::Secret {
                name: s["secretName"].as_str().unwrap_or("").to_string(),
                optional: s["optional"] == true,
                items: items(s),
                mode: mode(s),
            }
        } else if v.get("emptyDir").is_some() {
            if v["emptyDir"]["medium"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
            {
                return Err(refuse(
                    format!("spec.volumes[{j}].emptyDir.medium"),
                    "only the node's disk is modelled",
                ));
            }
            Source::EmptyDir
        } else {
            return Err(refuse(
                format!("spec.volumes[{j}]"),
                "only configMap, secret and emptyDir volumes are modelled",
            ));
        };
        out.insert(name, source);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> Placement {
        Placement {
            node: "node1".into(),
            pod_ip: Ipv4Addr::new(10, 244, 1, 100),
            host_ip: Ipv4Addr::new(10, 200, 0, 2),
        }
    }

    #[test]
    fn downward_api_fields_resolve() {
        let pod = json!({"metadata": {"name": "p-abcde", "namespace": "kubepulse", "labels": {"a": "b"}}});
        let f = |p: &str| field_ref(&pod, p, &at());
        assert_eq!(f("metadata.name").as_deref(), Ok("p-abcde"));
        assert_eq!(f("metadata.namespace").as_deref(), Ok("kubepulse"));
        assert_eq!(f("spec.nodeName").as_deref(), Ok("node1"));
        assert_eq!(f("status.podIP").as_deref(), Ok("10.244.1.100"));
        assert_eq!(f("status.hostIP").as_deref(), Ok("10.200.0.2"));
        assert_eq!(f("metadata.labels['a']").as_deref(), Ok("b"));
        assert!(f("status.podIPs").is_err());
    }

    #[test]
    fn service_links_follow_the_kubelet_naming() {
        let svc = json!({"metadata": {"name": "kubepulse-agent"}, "spec": {"clusterIP": "10.96.0.100",
            "ports": [{"name": "udp-echo", "port": 9478, "protocol": "UDP"}, {"name": "metrics", "port": 9477, "protocol": "TCP"}]}});
        let env: BTreeMap<_, _> = service_env(&[svc], (Ipv4Addr::new(10, 96, 0, 1), 443))
            .into_iter()
            .collect();
        assert_eq!(env["KUBEPULSE_AGENT_SERVICE_HOST"], "10.96.0.100");
        assert_eq!(env["KUBEPULSE_AGENT_SERVICE_PORT"], "9478");
        assert_eq!(env["KUBEPULSE_AGENT_SERVICE_PORT_UDP_ECHO"], "9478");
        assert_eq!(env["KUBEPULSE_AGENT_PORT"], "udp://10.96.0.100:9478");
        assert_eq!(env["KUBEPULSE_AGENT_PORT_9477_TCP_ADDR"], "10.96.0.100");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    }

    #[test]
    fn dns_policies() {
        let cdns = Ipv4Addr::new(10, 96, 0, 10);
        let ndns = Ipv4Addr::new(10, 200, 0, 1);
        let pod = dns(&json!({}), "kubepulse", cdns, ndns).expect("dns");
        assert_eq!(pod.nameservers, vec![cdns]);
        assert_eq!(pod.search[0], "kubepulse.svc.cluster.local");
        let host = dns(&json!({"hostNetwork": true}), "x", cdns, ndns).expect("dns");
        assert_eq!(host.nameservers, vec![ndns]);
        let host_cf = dns(
            &json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
            "x",
            cdns,
            ndns,
        );
        assert_eq!(host_cf.expect("dns").nameservers, vec![cdns]);
        assert!(dns(&json!({"dnsPolicy": "None"}), "x", cdns, ndns).is_err());
    }

    #[test]
    fn restricted_security_context_and_refusals() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
                "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 2147483647"}]},
            "containers": [{"securityContext": {"allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]
        });
        let mut c = ContainerSpec::default();
        security(&spec, 0, Some(65532), &mut c).expect("honoured");
        assert_eq!((c.user, c.group), (Some(65532), Some(65532)));
        assert!(c.read_only && c.no_new_privileges && !c.seccomp_unconfined);
        assert_eq!(c.cap_drop, vec!["ALL"]);
        assert_eq!(c.sysctls.len(), 1);
        let root =
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0}, "containers": [{}]});
        let e = security(&root, 0, None, &mut ContainerSpec::default()).expect_err("root");
        assert_eq!(
            e[0].field,
            "spec.containers[0].securityContext.runAsNonRoot"
        );
        let host = json!({"hostNetwork": true, "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]}, "containers": [{}]});
        let e = security(&host, 0, None, &mut ContainerSpec::default()).expect_err("host sysctl");
        assert_eq!(e[0].field, "spec.securityContext.sysctls[0]");
    }

    #[test]
    fn quantities_and_probes() {
        assert_eq!(cpu_millis("50m"), Some(50));
        assert_eq!(cpu_millis("1"), Some(1000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(memory_bytes("64Mi"), Some(64 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        let spec = json!({"containers": [{"ports": [{"name": "metrics", "containerPort": 9477}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
            "livenessProbe": {"exec": {"command": ["true"]}}}]});
        let r = probe(&spec, 0, "readinessProbe")
            .expect("ok")
            .expect("declared");
        assert_eq!(
            r.check,
            Check::Http {
                port: 9477,
                path: "/readyz".into()
            }
        );
        assert_eq!((r.period, r.failure, r.timeout), (5, 3, 1));
        assert_eq!(probe(&spec, 0, "startupProbe"), Ok(None));
        let e = probe(&spec, 0, "livenessProbe").expect_err("exec");
        assert_eq!(e.field, "spec.containers[0].livenessProbe.exec");
    }

    #[test]
    fn volumes_by_name() {
        let spec = json!({"volumes": [
            {"name": "config", "configMap": {"name": "kubepulse-agent"}},
            {"name": "key", "secret": {"secretName": "k", "items": [{"key": "a", "path": "b"}], "defaultMode": 256}},
            {"name": "host", "hostPath": {"path": "/"}}]});
        let e = volumes(&spec).expect_err("hostPath");
        assert_eq!(e.field, "spec.volumes[2]");
        let spec = json!({"volumes": [{"name": "key", "secret": {"secretName": "k", "items": [{"key": "a", "path": "b"}], "defaultMode": 256}}]});
        let v = volumes(&spec).expect("ok");
        assert_eq!(
            v["key"],
            Source::Secret {
                name: "k".into(),
                optional: false,
                items: vec![("a".into(), "b".into(), None)],
                mode: 256
            }
        );
    }
}
