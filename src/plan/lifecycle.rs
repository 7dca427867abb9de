//! The lifecycle share of a node's plan: which of its peer nodes (itself
//! and its target nodes) are not `ready` and why, and which agents on them
//! are left out of the plan's peers because they are not Ready. The
//! controller writes it next to the plan, under its own ConfigMap key
//! ([`super::config_map::LIFECYCLE_KEY`]): agents of the previous version
//! read only the plan's key, whose format (with its unknown-field check)
//! is unchanged, and an agent of this version reading a previous
//! controller's plan finds no lifecycle and takes every peer as ready.
//!
//! [`agent_lifecycle`] is what one agent makes of it: how many of the peers
//! it would probe are not Ready, and which peer nodes of its targets the
//! per-peer network alerts must leave alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};

use crate::peer::path::{classify, Endpoint};
use crate::peer::{AgentKind, Identity, NodeState, PathKind, Peer, Target};

/// An agent pod the plan leaves out of its peers: not Ready (starting,
/// failing its readiness probe, crash-looping), not running, without an
/// address yet, or terminating.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NotReadyAgent {
    /// Pod name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Pod network or host network.
    pub kind: AgentKind,
}

/// The lifecycle of a plan's nodes and agents. Unknown fields are ignored
/// (a newer controller may add some; an incompatible change takes a new
/// ConfigMap key instead), and unknown states read as
/// [`NodeState::Other`], which is expected down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerLifecycle {
    /// Nodes that are not `ready`, with their state.
    #[serde(
        deserialize_with = "states",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub nodes: BTreeMap<String, NodeState>,
    /// Agents left out of the peers, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<NotReadyAgent>,
}

fn states<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, NodeState>, D::Error> {
    let names: BTreeMap<String, String> = BTreeMap::deserialize(d)?;
    Ok(names
        .into_iter()
        .map(|(node, s)| (node, NodeState::from_name(&s)))
        .collect())
}

impl PeerLifecycle {
    /// The JSON published under the lifecycle key.
    pub fn to_json(&self) -> String {
        // Strings and maps of strings cannot fail to serialise.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a published lifecycle.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// Whether nothing is to be said: every node ready, every agent probed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.not_ready.is_empty()
    }
}

/// The whole cluster's lifecycle, indexed by node, from which each node's
/// plan takes the share of its own and its target nodes.
#[derive(Debug, Default)]
pub struct ClusterLifecycle<'a> {
    states: BTreeMap<&'a str, NodeState>,
    not_ready: BTreeMap<&'a str, Vec<&'a NotReadyAgent>>,
}

impl<'a> ClusterLifecycle<'a> {
    /// Indexes `states` (only those not `ready` are kept) and `not_ready`.
    pub fn new(
        states: impl IntoIterator<Item = (&'a str, NodeState)>,
        not_ready: &'a [NotReadyAgent],
    ) -> Self {
        let mut by_node: BTreeMap<&str, Vec<&NotReadyAgent>> = BTreeMap::new();
        for a in not_ready {
            by_node.entry(a.node.as_str()).or_default().push(a);
        }
        Self {
            states: states
                .into_iter()
                .filter(|(_, s)| s.is_expected_down())
                .collect(),
            not_ready: by_node,
        }
    }

    /// The share of `nodes`.
    pub fn share<'n>(&self, nodes: impl IntoIterator<Item = &'n str>) -> PeerLifecycle {
        let mut out = PeerLifecycle::default();
        for n in nodes {
            if let Some(s) = self.states.get(n) {
                out.nodes.insert(n.to_string(), *s);
            }
            for a in self.not_ready.get(n).into_iter().flatten() {
                out.not_ready.push((*a).clone());
            }
        }
        out.not_ready.sort();
        out.not_ready.dedup();
        out
    }
}

/// What one agent makes of its plan's lifecycle, and exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentLifecycle {
    /// Agents (by node and kind) this agent would probe, were they Ready,
    /// that have no Ready agent of the same kind beside them: paths not
    /// measured now.
    pub peers_not_ready: usize,
    /// The peer nodes of `targets` that are expected down, and why.
    pub expected_down: BTreeMap<String, NodeState>,
}

/// The lifecycle view of agent `me`, probing `targets` (what the series
/// budget kept) under a plan with `peers` and `lifecycle`.
pub fn agent_lifecycle(
    me: &Identity,
    targets: &[Target],
    peers: &[Peer],
    lifecycle: &PeerLifecycle,
) -> AgentLifecycle {
    let here = Endpoint {
        node: &me.node,
        kind: me.kind,
    };
    // A slot with a Ready agent other than this one is measured.
    let probed: BTreeSet<(&str, AgentKind)> = peers
        .iter()
        .filter(|p| p.path.is_none() && p.name != me.name)
        .map(|p| (p.node.as_str(), p.kind))
        .collect();
    let unmeasured: BTreeSet<(&str, AgentKind)> = lifecycle
        .not_ready
        .iter()
        .filter(|a| a.name != me.name)
        .map(|a| (a.node.as_str(), a.kind))
        .filter(|slot| !probed.contains(slot))
        .filter(|(node, kind)| classify(here, Endpoint { node, kind: *kind }).is_some())
        .collect();
    let expected_down = targets
        .iter()
        // The ClusterIP target's `peer_node` is the Service, not a node.
        .filter(|t| t.path != PathKind::ServiceClusterip)
        .filter_map(|t| {
            let s = lifecycle.nodes.get(&t.peer.node)?;
            s.is_expected_down().then(|| (t.peer.node.clone(), *s))
        })
        .collect();
    AgentLifecycle {
        peers_not_ready: unmeasured.len(),
        expected_down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::targets;

    fn agent(name: &str, node: &str, kind: AgentKind) -> NotReadyAgent {
        NotReadyAgent {
            name: name.into(),
            node: node.into(),
            kind,
        }
    }

    fn me() -> Identity {
        Identity {
            name: "pod-a".into(),
            node: "a".into(),
            kind: AgentKind::Pod,
        }
    }

    #[test]
    fn shares_hold_only_their_nodes() {
        let not_ready = vec![
            agent("pod-b", "b", AgentKind::Pod),
            agent("pod-c", "c", AgentKind::Pod),
        ];
        let c = ClusterLifecycle::new(
            [
                ("a", NodeState::Ready),
                ("b", NodeState::Cordoned),
                ("c", NodeState::Gone),
            ],
            &not_ready,
        );
        let s = c.share(["a", "b"]);
        assert_eq!(
            s.nodes,
            BTreeMap::from([("b".to_string(), NodeState::Cordoned)])
        );
        assert_eq!(s.not_ready, vec![not_ready[0].clone()]);
        assert!(c.share(["a"]).is_empty(), "ready nodes are not listed");
    }

    #[test]
    fn not_ready_counts_unmeasured_slots_this_agent_would_probe() {
        let peers = vec![
            Peer::on_loopback("pod-a", "a", AgentKind::Pod),
            Peer::on_loopback("host-a", "a", AgentKind::Host),
            // b's old pod agent is still Ready while its new one starts.
            Peer::on_loopback("pod-b-old", "b", AgentKind::Pod),
            Peer::on_loopback("host-b", "b", AgentKind::Host),
        ];
        let lifecycle = PeerLifecycle {
            nodes: BTreeMap::new(),
            not_ready: vec![
                // Measured by its Ready sibling: not counted.
                agent("pod-b-new", "b", AgentKind::Pod),
                // c's pod agent, and its host agent terminating while its
                // replacement starts: two slots, not three.
                agent("pod-c", "c", AgentKind::Pod),
                agent("host-c", "c", AgentKind::Host),
                agent("host-c-2", "c", AgentKind::Host),
                // This agent itself, not Ready yet: not its own peer.
                agent("pod-a", "a", AgentKind::Pod),
            ],
        };
        let ts = targets(&me(), &peers);
        let v = agent_lifecycle(&me(), &ts, &peers, &lifecycle);
        assert_eq!(v.peers_not_ready, 2, "c's pod and host slots");
        // A host agent never probes another host agent on its own node.
        let host_a = Identity {
            name: "host-a".into(),
            node: "a".into(),
            kind: AgentKind::Host,
        };
        let mut l = lifecycle.clone();
        l.not_ready = vec![agent("host-a-new", "a", AgentKind::Host)];
        let ts = targets(&host_a, &peers);
        assert_eq!(agent_lifecycle(&host_a, &ts, &peers, &l).peers_not_ready, 0);
        // ... but a pod agent on that node does.
        let ts = targets(&me(), &peers);
        let mut peers_without_host_a = peers.clone();
        peers_without_host_a.retain(|p| p.name != "host-a");
        assert_eq!(
            agent_lifecycle(&me(), &ts, &peers_without_host_a, &l).peers_not_ready,
            1
        );
    }

    #[test]
    fn expected_down_covers_the_targets_nodes_only() {
        let mut svc = Peer::on_loopback("service-clusterip/kp", "kp", AgentKind::Pod);
        svc.path = Some(PathKind::ServiceClusterip);
        let mut nodeport = Peer::on_loopback("service-nodeport/kp", "c", AgentKind::Host);
        nodeport.path = Some(PathKind::ServiceNodeport);
        let peers = vec![
            Peer::on_loopback("pod-a", "a", AgentKind::Pod),
            Peer::on_loopback("pod-b", "b", AgentKind::Pod),
            svc,
            nodeport,
        ];
        let lifecycle = PeerLifecycle {
            nodes: BTreeMap::from([
                ("b".to_string(), NodeState::DeletionTaint),
                ("c".to_string(), NodeState::NotReady),
                // A node this agent has no target on.
                ("z".to_string(), NodeState::Gone),
                // Named like the Service: the ClusterIP path is no node's.
                ("kp".to_string(), NodeState::Cordoned),
            ]),
            not_ready: vec![],
        };
        let ts = targets(&me(), &peers);
        let v = agent_lifecycle(&me(), &ts, &peers, &lifecycle);
        assert_eq!(
            v.expected_down,
            BTreeMap::from([
                ("b".to_string(), NodeState::DeletionTaint),
                ("c".to_string(), NodeState::NotReady),
            ])
        );
        assert_eq!(v.peers_not_ready, 0);
    }

    #[test]
    fn json_is_tolerant_of_newer_controllers() {
        let l = PeerLifecycle::from_json(
            r#"{"nodes": {"b": "cordoned", "c": "rebooting"},
                "not_ready": [{"name": "pod-c", "node": "c", "kind": "pod", "since": 3}],
                "future_field": true}"#,
        )
        .expect("tolerant");
        assert_eq!(l.nodes["b"], NodeState::Cordoned);
        assert_eq!(l.nodes["c"], NodeState::Other);
        assert_eq!(l.not_ready, vec![agent("pod-c", "c", AgentKind::Pod)]);
        assert_eq!(
            PeerLifecycle::from_json("{}").expect("empty"),
            PeerLifecycle::default()
        );
        assert_eq!(PeerLifecycle::default().to_json(), "{}");
        let back = PeerLifecycle::from_json(&l.to_json()).expect("round trip");
        assert_eq!(back, l);
        assert!(PeerLifecycle::from_json("[").is_err());
    }
}
