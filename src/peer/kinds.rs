//! The two facts that classify a probe's path: which network an agent is
//! in, and the path kind between two agents. Both are also label values.

use crate::label_enum::label_enum;

label_enum! {
    /// Whether an agent runs in the pod network or with hostNetwork.
    AgentKind {
        /// In the pod network.
        Pod => "pod",
        /// With hostNetwork: true.
        Host => "host",
    }
}

label_enum! {
    /// The `path` label: what kind of network path a probe crosses.
    PathKind {
        /// Pod to pod on the same node (bridge/veth only).
        PodSameNode => "pod_same_node",
        /// Pod to pod on different nodes (the CNI data path).
        PodCrossNode => "pod_cross_node",
        /// Host network to host network on different nodes: the baseline.
        HostCrossNode => "host_cross_node",
        /// Pod network to a host-network agent.
        PodToHost => "pod_to_host",
        /// Host-network agent to a pod-network agent.
        HostToPod => "host_to_pod",
        /// Through the agents' Service ClusterIP (kube-proxy).
        ServiceClusterip => "service_clusterip",
        /// Through the agents' Service NodePort.
        ServiceNodeport => "service_nodeport",
    }
}

impl PathKind {
    /// Whether this path goes through a Service address (kube-proxy or its
    /// replacement) rather than straight to an agent.
    pub const fn is_service(self) -> bool {
        matches!(self, PathKind::ServiceClusterip | PathKind::ServiceNodeport)
    }

    /// Whether ICMP echo measures this path. Not the Service paths: an echo
    /// to a Service address never reaches a backend. Under kube-proxy's
    /// iptables and nftables modes nothing answers a ClusterIP (every echo
    /// reads as lost), under IPVS the node answers for every backend, and a
    /// NodePort's node address is answered by the node itself; so the
    /// Service paths are measured with UDP, TCP and HTTP only.
    pub const fn probed_with_icmp(self) -> bool {
        !self.is_service()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_probes_agents_and_never_a_service_address() {
        for p in PathKind::ALL {
            let want = !matches!(p, PathKind::ServiceClusterip | PathKind::ServiceNodeport);
            assert_eq!(p.probed_with_icmp(), want, "{p}");
            assert_eq!(p.is_service(), !want, "{p}");
        }
    }

    #[test]
    fn serde_names_match_label_values() {
        for p in PathKind::ALL {
            let json = serde_json::to_string(p).expect("serialize");
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        let k: AgentKind = serde_json::from_str("\"host\"").expect("parse");
        assert_eq!(k, AgentKind::Host);
    }
}
