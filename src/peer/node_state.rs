//! Where a peer's node stands in its life, as the controller classifies it
//! from the Node object and every layer reads it: the plan carries it, the
//! agent exports it as the `reason` label of `kubepulse_peer_expected_down`
//! and the controller counts nodes by it. Only `ready` nodes are judged by
//! the per-peer network alerts; every other state is "expected down" for
//! them.

use crate::label_enum::label_enum;

label_enum! {
    /// A node's lifecycle state, most final first when several apply
    /// (a node being deleted is usually cordoned and NotReady as well).
    NodeState {
        /// Ready and not on its way out: probed and judged.
        Ready => "ready",
        /// The Ready condition is False or Unknown: its agents are still
        /// probed (the network may still reach it) but one node-level alert
        /// judges it, never one per peer.
        NotReady => "not_ready",
        /// `spec.unschedulable` (cordoned, usually to be drained).
        Cordoned => "cordoned",
        /// Tainted for removal by an autoscaler or a termination handler.
        DeletionTaint => "deletion_taint",
        /// The Node object has a deletionTimestamp.
        Deleting => "deleting",
        /// The Node object is gone while agent pods on it remain.
        Gone => "gone",
        /// A state this version does not know, published by a newer
        /// controller: expected down, as every state but `ready` is.
        Other => "other",
    }
}

impl NodeState {
    /// Whether the per-peer network alerts must leave this node's paths
    /// alone (every state but `ready`).
    pub fn is_expected_down(self) -> bool {
        self != NodeState::Ready
    }

    /// The state named `s`, [`NodeState::Other`] for a name this version
    /// does not know (a newer controller's), so a plan stays readable.
    pub fn from_name(s: &str) -> Self {
        NodeState::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .unwrap_or(NodeState::Other)
    }

    /// The states the controller assigns (all but [`NodeState::Other`]).
    pub const CLASSIFIED: [NodeState; 6] = [
        NodeState::Ready,
        NodeState::NotReady,
        NodeState::Cordoned,
        NodeState::DeletionTaint,
        NodeState::Deleting,
        NodeState::Gone,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_other() {
        for s in NodeState::ALL {
            assert_eq!(NodeState::from_name(s.as_str()), *s);
        }
        assert_eq!(NodeState::from_name("rebooting"), NodeState::Other);
        assert!(NodeState::from_name("rebooting").is_expected_down());
        assert!(!NodeState::Ready.is_expected_down());
        assert_eq!(NodeState::CLASSIFIED.len() + 1, NodeState::ALL.len());
        assert!(!NodeState::CLASSIFIED.contains(&NodeState::Other));
    }
}
