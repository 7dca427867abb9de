//! Pure conversions from Kubernetes objects to peers, used by the
//! controller's plan publisher: which pods count, how ready each one is,
//! what each one tells us (address, node, pod or host network, ports) and
//! the Service targets. No IO, so every rule is unit-tested directly.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::peer::{AgentKind, PathKind};
use crate::peer::{Identity, Peer, ProbePorts};

/// Downward-API variable holding the agent's pod name (`metadata.name`).
pub const ENV_POD_NAME: &str = "KUBEPULSE_POD_NAME";
/// Downward-API variable holding the agent's node name (`spec.nodeName`).
pub const ENV_NODE_NAME: &str = "KUBEPULSE_NODE_NAME";
/// Downward-API variable holding the agent's namespace (`metadata.namespace`).
pub const ENV_NAMESPACE: &str = "KUBEPULSE_NAMESPACE";

/// Container and Service port names of the responders; ports found under
/// these names override the configured defaults.
pub const PORT_NAMES: [&str; 4] = ["udp-echo", "tcp-echo", "bandwidth", "http"];

/// The agent's own identity from the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownwardIdentity {
    /// Pod name.
    pub pod_name: String,
    /// Node name.
    pub node_name: String,
    /// Namespace, if the variable is set.
    pub namespace: Option<String>,
}

/// Reads the downward-API variables from `env`; returns the name of the
/// first required variable that is missing or empty.
pub fn downward_identity(env: &HashMap<String, String>) -> Result<DownwardIdentity, &'static str> {
    let get = |k: &'static str| env.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(DownwardIdentity {
        pod_name: get(ENV_POD_NAME).ok_or(ENV_POD_NAME)?,
        node_name: get(ENV_NODE_NAME).ok_or(ENV_NODE_NAME)?,
        namespace: get(ENV_NAMESPACE),
    })
}

/// How ready an agent pod is, from its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `Ready` is True.
    Ready,
    /// `Ready` is not True but `ContainersReady` is: what the node
    /// lifecycle controller leaves when it marks every pod of a NotReady
    /// node not Ready (it sets `Ready` alone; `ContainersReady` keeps the
    /// kubelet's last word on the agent itself).
    ContainersReady,
    /// Neither: starting, failing its readiness probe, or crash-looping.
    NotReady,
}

impl Readiness {
    /// Whether an agent this ready is probed on a node whose own Ready
    /// condition is `node_ready`: when Ready, or when only its node's
    /// state makes it not Ready (its probes are then what tell whether
    /// the network still reaches that node).
    pub fn probed(self, node_ready: bool) -> bool {
        match self {
            Readiness::Ready => true,
            Readiness::ContainersReady => !node_ready,
            Readiness::NotReady => false,
        }
    }
}

/// The readiness of `pod` from its `Ready` and `ContainersReady`
/// conditions.
pub fn readiness(pod: &Pod) -> Readiness {
    let is_true = |kind: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
            .is_some_and(|c| c.status == "True")
    };
    if is_true("Ready") {
        Readiness::Ready
    } else if is_true("ContainersReady") {
        Readiness::ContainersReady
    } else {
        Readiness::NotReady
    }
}

/// What one agent pod tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// The peer to probe.
    pub peer: Peer,
    /// The node's IP (`status.hostIP`), the NodePort target.
    pub host_ip: Option<IpAddr>,
    /// How ready it is: whether it is probed is for the plan to decide,
    /// knowing its node.
    pub readiness: Readiness,
}

/// Who an agent pod is (name, node, pod or host network), whatever its
/// phase; `None` before it is scheduled.
pub fn agent_identity(pod: &Pod) -> Option<Identity> {
    let spec = pod.spec.as_ref()?;
    Some(Identity {
        name: pod.metadata.name.clone()?,
        node: spec.node_name.clone().filter(|n| !n.is_empty())?,
        kind: if spec.host_network == Some(true) {
            AgentKind::Host
        } else {
            AgentKind::Pod
        },
    })
}

/// The facts of `pod`, or `None` unless it is Running, has an IP and a
/// node, and is not being deleted (a terminating agent is about to go).
pub fn pod_facts(pod: &Pod, default_ports: ProbePorts) -> Option<PodFacts> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let address: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let id = agent_identity(pod)?;
    let mut ports = default_ports;
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Ok(port) = u16::try_from(p.container_port) else {
                continue;
            };
            set_port(&mut ports, p.name.as_deref(), port);
        }
    }
    Some(PodFacts {
        peer: Peer {
            name: id.name,
            address,
            node: id.node,
            kind: id.kind,
            ports,
            path: None,
        },
        host_ip: status.host_ip.as_deref().and_then(|s| s.parse().ok()),
        readiness: readiness(pod),
    })
}

/// Sets the responder port named `name`; returns whether the name is known.
fn set_port(ports: &mut ProbePorts, name: Option<&str>, port: u16) -> bool {
    let slot = match name {
        Some("udp-echo") => &mut ports.udp_echo,
        Some("tcp-echo") => &mut ports.tcp_echo,
        Some("bandwidth") => &mut ports.bandwidth,
        Some("http") => &mut ports.http,
        _ => return false,
    };
    *slot = port;
    true
}

/// The Service targets: its ClusterIP (`peer_node` = the Service name, as
/// kube-proxy picks the endpoint) and its NodePort on the node after ours in
/// sorted order (so the probe crosses nodes when there are several), with
/// `peer_node` = that node.
pub fn service_peers(
    svc: &Service,
    me: &Identity,
    host_ips: &BTreeMap<String, IpAddr>,
    default_ports: ProbePorts,
) -> Vec<Peer> {
    let (Some(name), Some(spec)) = (svc.metadata.name.as_ref(), svc.spec.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cluster_ports = default_ports;
    let mut node_ports = ProbePorts::default();
    let mut node_port_names = 0;
    for p in spec.ports.iter().flatten() {
        if let Ok(port) = u16::try_from(p.port) {
            set_port(&mut cluster_ports, p.name.as_deref(), port);
        }
        if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
            if set_port(&mut node_ports, p.name.as_deref(), np) {
                node_port_names += 1;
            }
        }
    }
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    if let Some(address) = cluster_ip {
        out.push(Peer {
            name: format!("service-clusterip/{name}"),
            address,
            node: name.clone(),
            kind: AgentKind::Pod,
            ports: cluster_ports,
            path: Some(PathKind::ServiceClusterip),
        });
    }
    // A NodePort peer needs every responder port, or probes would hit
    // arbitrary host ports.
    let target = host_ips
        .range::<str, _>((
            std::ops::Bound::Excluded(me.node.as_str()),
            std::ops::Bound::Unbounded,
        ))
        .next()
        .or_else(|| host_ips.iter().next());
    if let (true, Some((node, ip))) = (node_port_names == PORT_NAMES.len(), target) {
        out.push(Peer {
            name: format!("service-nodeport/{name}"),
            address: *ip,
            node: node.clone(),
            kind: AgentKind::Host,
            ports: node_ports,
            path: Some(PathKind::ServiceNodeport),
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn pod(name: &str, node: &str, ip: &str, host: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kp"},
            "spec": {"nodeName": node, "hostNetwork": host, "containers": [{
                "name": "agent",
                "ports": [{"name": "udp-echo", "containerPort": 19478, "protocol": "UDP"},
                          {"name": "metrics", "containerPort": 9477}]
            }]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": "10.0.0.1", "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"}
            ]}
        }))
        .expect("pod json")
    }

    /// `pod` with its `Ready` and `ContainersReady` conditions set.
    pub(crate) fn with_conditions(mut p: Pod, ready: bool, containers_ready: bool) -> Pod {
        let word = |b: bool| if b { "True" } else { "False" };
        let mut v = serde_json::to_value(&p).expect("pod to json");
        v["status"]["conditions"] = json!([
            {"type": "ContainersReady", "status": word(containers_ready)},
            {"type": "Ready", "status": word(ready)}
        ]);
        p = serde_json::from_value(v).expect("pod json");
        p
    }

    fn me(node: &str) -> Identity {
        Identity {
            name: "self".into(),
            node: node.into(),
            kind: AgentKind::Pod,
        }
    }

    #[test]
    fn running_pods_become_peers() {
        let f = pod_facts(&pod("a", "n1", "10.1.0.5", false), ProbePorts::default())
            .expect("running pod");
        assert_eq!(f.peer.kind, AgentKind::Pod);
        assert_eq!(f.peer.node, "n1");
        assert_eq!(f.peer.address, "10.1.0.5".parse::<IpAddr>().expect("ip"));
        assert_eq!(f.peer.ports.udp_echo, 19478, "named container port wins");
        assert_eq!(f.peer.ports.bandwidth, 9479, "default kept");
        let h =
            pod_facts(&pod("h", "n1", "10.0.0.1", true), ProbePorts::default()).expect("host pod");
        assert_eq!(h.peer.kind, AgentKind::Host);
    }

    #[test]
    fn pending_ipless_and_terminating_pods_are_skipped() {
        let mut p = pod("a", "n1", "10.1.0.5", false);
        if let Some(s) = p.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        assert!(pod_facts(&p, ProbePorts::default()).is_none());
        let mut p = pod("a", "n1", "10.1.0.5", false);
        if let Some(s) = p.status.as_mut() {
            s.pod_ip = None;
        }
        assert!(pod_facts(&p, ProbePorts::default()).is_none());
        let mut p = pod("a", "n1", "10.1.0.5", false);
        p.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
        assert!(p.metadata.deletion_timestamp.is_some());
        assert!(pod_facts(&p, ProbePorts::default()).is_none());
    }

    #[test]
    fn readiness_from_conditions_and_who_is_probed() {
        let p = pod("a", "n1", "10.1.0.5", false);
        assert_eq!(readiness(&p), Readiness::Ready);
        let f = pod_facts(&p, ProbePorts::default()).expect("facts");
        assert_eq!(f.readiness, Readiness::Ready);
        // The node lifecycle controller's mark on a NotReady node.
        let marked = with_conditions(p.clone(), false, true);
        assert_eq!(readiness(&marked), Readiness::ContainersReady);
        // The agent's own readiness failing (or starting, or crash-looping).
        let failing = with_conditions(p.clone(), false, false);
        assert_eq!(readiness(&failing), Readiness::NotReady);
        let mut bare = p;
        if let Some(s) = bare.status.as_mut() {
            s.conditions = None;
        }
        assert_eq!(readiness(&bare), Readiness::NotReady, "no conditions yet");
        // Probed: Ready agents anywhere; agents only their node's state
        // makes not Ready, on such a node.
        assert!(Readiness::Ready.probed(true) && Readiness::Ready.probed(false));
        assert!(Readiness::ContainersReady.probed(false));
        assert!(!Readiness::ContainersReady.probed(true));
        assert!(!Readiness::NotReady.probed(false) && !Readiness::NotReady.probed(true));
    }

    #[test]
    fn agent_identity_of_any_scheduled_pod() {
        let mut p = pod("h", "n1", "10.0.0.1", true);
        if let Some(s) = p.status.as_mut() {
            s.phase = Some("Pending".into());
            s.pod_ip = None;
        }
        let id = agent_identity(&p).expect("scheduled");
        assert_eq!(
            (id.name.as_str(), id.node.as_str(), id.kind),
            ("h", "n1", AgentKind::Host)
        );
        if let Some(s) = p.spec.as_mut() {
            s.node_name = None;
        }
        assert!(agent_identity(&p).is_none(), "not scheduled yet");
    }

    #[test]
    fn service_targets() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "kubepulse-agent"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
                {"name": "udp-echo", "port": 9478, "protocol": "UDP", "nodePort": 30001},
                {"name": "tcp-echo", "port": 9478, "protocol": "TCP", "nodePort": 30002},
                {"name": "bandwidth", "port": 9479, "nodePort": 30003},
                {"name": "http", "port": 9480, "nodePort": 30004}
            ]}
        }))
        .expect("svc json");
        let ips = BTreeMap::from([
            ("n1".to_string(), "10.0.0.1".parse().expect("ip")),
            ("n2".to_string(), "10.0.0.2".parse().expect("ip")),
        ]);
        let got = service_peers(&svc, &me("n1"), &ips, ProbePorts::default());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].path, Some(PathKind::ServiceClusterip));
        assert_eq!(got[0].address, "10.96.0.10".parse::<IpAddr>().expect("ip"));
        assert_eq!(got[1].path, Some(PathKind::ServiceNodeport));
        assert_eq!(got[1].node, "n2", "the next node");
        assert_eq!(got[1].ports.tcp_echo, 30002);
        // The last node wraps around to the first.
        let got = service_peers(&svc, &me("n2"), &ips, ProbePorts::default());
        assert_eq!(got[1].node, "n1");
    }

    #[test]
    fn downward_env() {
        let env = HashMap::from([
            (ENV_POD_NAME.to_string(), "p".to_string()),
            (ENV_NODE_NAME.to_string(), "n".to_string()),
        ]);
        let id = downward_identity(&env).expect("identity");
        assert_eq!((id.pod_name.as_str(), id.namespace), ("p", None));
        assert_eq!(downward_identity(&HashMap::new()), Err(ENV_POD_NAME));
    }
}
