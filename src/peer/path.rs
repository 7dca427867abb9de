//! Path classification: a pure function from discovery facts to the `path`
//! label, so every probe result lands under the path kind the reports compare.

use crate::peer::{AgentKind, PathKind};

/// The facts about one end of a probe that decide its path kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoint<'a> {
    /// Node the agent runs on.
    pub node: &'a str,
    /// Pod network or host network.
    pub kind: AgentKind,
}

/// Classifies a direct (not via a Service) probe from `local` to `peer`.
///
/// Host-to-host on the same node is the agent probing itself and has no path
/// kind (`None`). Pod-to-host and host-to-pod cover both same-node and
/// cross-node pairs; the `peer_node` label tells them apart.
pub(crate) fn classify(local: Endpoint<'_>, peer: Endpoint<'_>) -> Option<PathKind> {
    let same_node = local.node == peer.node;
    match (local.kind, peer.kind) {
        (AgentKind::Pod, AgentKind::Pod) if same_node => Some(PathKind::PodSameNode),
        (AgentKind::Pod, AgentKind::Pod) => Some(PathKind::PodCrossNode),
        (AgentKind::Host, AgentKind::Host) if same_node => None,
        (AgentKind::Host, AgentKind::Host) => Some(PathKind::HostCrossNode),
        (AgentKind::Pod, AgentKind::Host) => Some(PathKind::PodToHost),
        (AgentKind::Host, AgentKind::Pod) => Some(PathKind::HostToPod),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(node: &str, kind: AgentKind) -> Endpoint<'_> {
        Endpoint { node, kind }
    }

    #[test]
    fn every_combination() {
        use AgentKind::{Host, Pod};
        let cases = [
            (ep("a", Pod), ep("a", Pod), Some(PathKind::PodSameNode)),
            (ep("a", Pod), ep("b", Pod), Some(PathKind::PodCrossNode)),
            (ep("a", Host), ep("b", Host), Some(PathKind::HostCrossNode)),
            (ep("a", Host), ep("a", Host), None),
            (ep("a", Pod), ep("a", Host), Some(PathKind::PodToHost)),
            (ep("a", Pod), ep("b", Host), Some(PathKind::PodToHost)),
            (ep("a", Host), ep("a", Pod), Some(PathKind::HostToPod)),
            (ep("a", Host), ep("b", Pod), Some(PathKind::HostToPod)),
        ];
        for (local, peer, want) in cases {
            assert_eq!(classify(local, peer), want, "{local:?} -> {peer:?}");
        }
    }
}
