//! Peer discovery. Every source (static config, the controller's plan via
//! the Kubernetes API) publishes the current peer set on a `watch` channel; probers only
//! ever see [`PeerSet`] snapshots, so a new source changes nothing downstream.

pub mod kubernetes;
pub mod path;
pub mod static_peers;

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::labels::{AgentKind, PathKind};

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

/// The node's probe plan, when a controller publishes one
/// (`discovery.mode: kubernetes`); `None` in static and local mode.
pub type PlanWatch = Option<Arc<crate::plan::NodePlan>>;

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

/// A source of peer sets. Implementations keep the channel current until the
/// receiver side is dropped.
pub trait Discovery {
    /// The channel on which peer sets are published.
    fn subscribe(&self) -> watch::Receiver<PeerSet>;

    /// Every known agent, not fanned out: the common input of the bandwidth
    /// slot schedule. Sources that do not fan out publish the same set.
    fn subscribe_all(&self) -> watch::Receiver<PeerSet> {
        self.subscribe()
    }

    /// The controller's plan (bandwidth schedule, busy slots). Sources
    /// without a controller publish `None` and the agents compute the
    /// bandwidth schedule from [`Discovery::subscribe_all`].
    fn subscribe_plan(&self) -> watch::Receiver<PlanWatch> {
        watch::channel(None).1
    }
}

/// A shared source is still a source (the agent keeps one handle, the
/// SIGHUP reloader another).
impl<D: Discovery + ?Sized> Discovery for Arc<D> {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        (**self).subscribe()
    }

    fn subscribe_all(&self) -> watch::Receiver<PeerSet> {
        (**self).subscribe_all()
    }

    fn subscribe_plan(&self) -> watch::Receiver<PlanWatch> {
        (**self).subscribe_plan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, node: &str, kind: AgentKind) -> Peer {
        Peer {
            name: name.into(),
            address: "127.0.0.1".parse().expect("ip"),
            node: node.into(),
            kind,
            ports: ProbePorts::default(),
            path: None,
        }
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
