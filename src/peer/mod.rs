//! The agents kubepulse measures between, as every layer sees them: who
//! this agent is ([`Identity`]), who it probes ([`Peer`], [`Target`]), on
//! which ports, the path kind between two of them (`path`), and where a
//! peer's node stands in its life ([`NodeState`]). Plain
//! data and pure functions: config, discovery, the plan, the schedule and
//! the probes all build on it, and it depends on none of them.

mod kinds;
mod node_state;
pub(crate) mod path;

pub use kinds::{AgentKind, PathKind};
pub use node_state::NodeState;

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Default port of the UDP echo responder.
pub const DEFAULT_UDP_ECHO_PORT: u16 = 9478;
/// Default port of the TCP request/response echo responder.
pub const DEFAULT_TCP_ECHO_PORT: u16 = 9478;
/// Default port of the TCP bandwidth responder.
pub const DEFAULT_BANDWIDTH_PORT: u16 = 9479;
/// Default port of the HTTP responder.
pub const DEFAULT_HTTP_PORT: u16 = 9480;

/// The ports a peer's responders listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbePorts {
    /// UDP echo.
    pub udp_echo: u16,
    /// TCP request/response echo.
    pub tcp_echo: u16,
    /// TCP bandwidth sink/source.
    pub bandwidth: u16,
    /// HTTP fixed-size body.
    pub http: u16,
}

impl ProbePorts {
    /// Whether these are the default ports.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ProbePorts {
    fn default() -> Self {
        Self {
            udp_echo: DEFAULT_UDP_ECHO_PORT,
            tcp_echo: DEFAULT_TCP_ECHO_PORT,
            bandwidth: DEFAULT_BANDWIDTH_PORT,
            http: DEFAULT_HTTP_PORT,
        }
    }
}

/// Who this agent is: the local end of every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Unique agent name (the pod name in a cluster).
    pub name: String,
    /// Node the agent runs on.
    pub node: String,
    /// Pod network or host network.
    pub kind: AgentKind,
}

/// One peer agent to probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Unique agent name; identifies the peer across updates.
    pub name: String,
    /// Address its responders listen on.
    pub address: IpAddr,
    /// Node it runs on: the `peer_node` label.
    pub node: String,
    /// Pod network or host network.
    pub kind: AgentKind,
    /// Its responder ports (omitted when the defaults, which keeps the
    /// published plans small).
    #[serde(default, skip_serializing_if = "ProbePorts::is_default")]
    pub ports: ProbePorts,
    /// An explicit path kind (Service paths); `None` means classify from
    /// node and kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathKind>,
}

impl Peer {
    /// A peer on loopback with the default ports, for unit tests.
    #[cfg(test)]
    pub(crate) fn on_loopback(name: &str, node: &str, kind: AgentKind) -> Peer {
        Peer {
            name: name.into(),
            address: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            node: node.into(),
            kind,
            ports: ProbePorts::default(),
            path: None,
        }
    }

    /// The path kind of probes from `local` to this peer, or `None` when the
    /// peer is the local agent's own node and kind (nothing to measure).
    pub fn path_from(&self, local: &Identity) -> Option<PathKind> {
        if self.name == local.name {
            return None;
        }
        self.path.or_else(|| {
            path::classify(
                path::Endpoint {
                    node: &local.node,
                    kind: local.kind,
                },
                path::Endpoint {
                    node: &self.node,
                    kind: self.kind,
                },
            )
        })
    }
}

/// An immutable snapshot of the peers to probe.
pub type PeerSet = Arc<Vec<Peer>>;

/// A probe target: a peer and the path kind its probes are labelled with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The peer.
    pub peer: Peer,
    /// Its path kind from this agent.
    pub path: PathKind,
}

/// The targets of `local` among `peers`: itself and same-node host peers of a
/// host agent are dropped.
pub fn targets(local: &Identity, peers: &[Peer]) -> Vec<Target> {
    peers
        .iter()
        .filter_map(|p| {
            p.path_from(local).map(|path| Target {
                peer: p.clone(),
                path,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, node: &str, kind: AgentKind) -> Peer {
        Peer::on_loopback(name, node, kind)
    }

    #[test]
    fn targets_skip_self_and_classify() {
        let me = Identity {
            name: "a-pod".into(),
            node: "a".into(),
            kind: AgentKind::Pod,
        };
        let mut svc = peer("svc", "a", AgentKind::Pod);
        svc.path = Some(PathKind::ServiceClusterip);
        let peers = vec![
            peer("a-pod", "a", AgentKind::Pod),
            peer("a-host", "a", AgentKind::Host),
            peer("b-pod", "b", AgentKind::Pod),
            svc,
        ];
        let got: Vec<_> = targets(&me, &peers)
            .into_iter()
            .map(|t| (t.peer.name, t.path))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a-host".to_string(), PathKind::PodToHost),
                ("b-pod".to_string(), PathKind::PodCrossNode),
                ("svc".to_string(), PathKind::ServiceClusterip),
            ]
        );
    }
}
