//! Pure: where a node stands in its life, from its Node object alone
//! ([`classify`]). The plan publisher marks every node but a `ready` one as
//! expected down in its probers' plans, so the per-peer network alerts
//! leave a planned departure (or a NotReady node, which gets one
//! node-level alert instead) alone.
//!
//! Planned departures, the most final first when several apply:
//! - `deleting`: the Node has a `deletionTimestamp` (finalizers pending);
//! - `deletion_taint`: one of [`DELETION_TAINTS`], put on by an autoscaler
//!   or a termination handler shortly before the machine goes;
//! - `cordoned`: `spec.unschedulable` (or its `node.kubernetes.io/unschedulable`
//!   taint), which precedes every drain;
//! - `gone` (not from a Node: the plan has agent pods on a node whose Node
//!   object no longer exists, see [`lifecycle`]).
//!
//! Then `not_ready` (the Ready condition is False, Unknown or missing), and
//! `ready`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use crate::peer::NodeState;

/// A taint that announces a node's removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionTaint {
    /// Taint key.
    pub key: &'static str,
    /// The value it must have, when the key alone says less.
    pub value: Option<&'static str>,
    /// Who sets it, and when.
    pub set_by: &'static str,
}

/// Taints that say the node is being removed. The first three are those
/// kubernetes-mixin's `KubeNodeUnreachable` excludes. Left out on purpose:
/// `DeletionCandidateOfClusterAutoscaler` and Karpenter's candidate taint
/// (soft `PreferNoSchedule` marks of a node that may still stay),
/// `aws-node-termination-handler/rebalance-recommendation` (a raised risk
/// of interruption, not a removal; when the handler drains on it, it
/// cordons the node, which is `cordoned`), and the node lifecycle
/// controller's `not-ready` and `unreachable` taints (the Ready condition
/// says the same).
pub const DELETION_TAINTS: &[DeletionTaint] = &[
    DeletionTaint {
        key: "ToBeDeletedByClusterAutoscaler",
        value: None,
        set_by: "cluster-autoscaler, right before it drains and deletes the node",
    },
    DeletionTaint {
        key: "cloud.google.com/impending-node-termination",
        value: None,
        set_by: "GKE graceful node shutdown, when a spot or preemptible VM is reclaimed",
    },
    DeletionTaint {
        key: "aws-node-termination-handler/spot-itn",
        value: None,
        set_by: "aws-node-termination-handler, on an EC2 spot interruption notice",
    },
    DeletionTaint {
        key: "aws-node-termination-handler/scheduled-maintenance",
        value: None,
        set_by: "aws-node-termination-handler, before an EC2 scheduled maintenance event",
    },
    DeletionTaint {
        key: "aws-node-termination-handler/asg-lifecycle-termination",
        value: None,
        set_by: "aws-node-termination-handler, on an Auto Scaling group scale-in",
    },
    DeletionTaint {
        key: "karpenter.sh/disrupted",
        value: None,
        set_by: "Karpenter (v1), on a node it drains and terminates",
    },
    DeletionTaint {
        key: "karpenter.sh/disruption",
        value: Some("disrupting"),
        set_by: "Karpenter (v1beta1, 0.32 to 0.37), on a node it drains and terminates",
    },
    DeletionTaint {
        key: "node.kubernetes.io/out-of-service",
        value: None,
        set_by: "an operator, on a node that is shut down (non-graceful node shutdown)",
    },
];

/// The taint the node lifecycle controller mirrors `spec.unschedulable` as.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What the plan needs to know of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLifecycle {
    /// Its state.
    pub state: NodeState,
    /// Its Ready condition is True (false for a `gone` node). An agent pod
    /// on a node that is not Ready is marked not Ready by the node
    /// lifecycle controller whatever the agent's own state.
    pub ready: bool,
}

/// The lifecycle of `node`.
pub fn classify(node: &Node) -> NodeLifecycle {
    let ready = is_ready(node);
    let state = if node.metadata.deletion_timestamp.is_some() {
        NodeState::Deleting
    } else if has_deletion_taint(node) {
        NodeState::DeletionTaint
    } else if is_cordoned(node) {
        NodeState::Cordoned
    } else if !ready {
        NodeState::NotReady
    } else {
        NodeState::Ready
    };
    NodeLifecycle { state, ready }
}

/// The lifecycle of a node in the plan whose Node object is gone.
pub const GONE: NodeLifecycle = NodeLifecycle {
    state: NodeState::Gone,
    ready: false,
};

/// Each of `names` (the plan's nodes) with its lifecycle: from its Node
/// among `nodes`, or [`GONE`].
pub fn lifecycle<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    names: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, NodeLifecycle> {
    let by_name: BTreeMap<&str, &Node> = nodes
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    names
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                by_name.get(n).map_or(GONE, |node| classify(node)),
            )
        })
        .collect()
}

/// The Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn is_cordoned(node: &Node) -> bool {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.unschedulable).unwrap_or(false)
        || spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == UNSCHEDULABLE_TAINT))
}

fn has_deletion_taint(node: &Node) -> bool {
    let Some(taints) = node.spec.as_ref().and_then(|s| s.taints.as_ref()) else {
        return false;
    };
    taints.iter().any(|t| {
        DELETION_TAINTS
            .iter()
            .any(|d| d.key == t.key && d.value.is_none_or(|v| t.value.as_deref() == Some(v)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A Node from its JSON, the form the API sends.
    fn node(v: Value) -> Node {
        serde_json::from_value(v).expect("node json")
    }

    fn ready_node(extra_spec: Value) -> Value {
        json!({
            "metadata": {"name": "n1"},
            "spec": extra_spec,
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True"}
            ]}
        })
    }

    fn state(v: Value) -> NodeState {
        classify(&node(v)).state
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Value {
        json!({"spec": {"taints": [{"key": key, "value": value, "effect": effect}]}})
    }

    fn with_taint(key: &str, value: Option<&str>) -> Value {
        let mut n = ready_node(json!({}));
        n["spec"] = taint(key, value, "NoSchedule")["spec"].clone();
        n
    }

    #[test]
    fn ready_and_not_ready() {
        assert_eq!(state(ready_node(json!({}))), NodeState::Ready);
        assert!(classify(&node(ready_node(json!({})))).ready);
        for status in ["False", "Unknown"] {
            let mut n = ready_node(json!({}));
            n["status"]["conditions"][1]["status"] = json!(status);
            assert_eq!(state(n.clone()), NodeState::NotReady, "{status}");
            assert!(!classify(&node(n)).ready);
        }
        // Just registered, no conditions yet.
        assert_eq!(
            state(json!({"metadata": {"name": "n1"}})),
            NodeState::NotReady
        );
    }

    #[test]
    fn cordoned_by_spec_or_its_taint() {
        assert_eq!(
            state(ready_node(json!({"unschedulable": true}))),
            NodeState::Cordoned
        );
        assert_eq!(
            state(ready_node(json!({"unschedulable": false}))),
            NodeState::Ready
        );
        assert_eq!(
            state(with_taint("node.kubernetes.io/unschedulable", None)),
            NodeState::Cordoned
        );
    }

    #[test]
    fn every_deletion_taint_is_recognised() {
        for d in DELETION_TAINTS {
            let n = with_taint(d.key, d.value.or(Some("1700000000")));
            assert_eq!(state(n), NodeState::DeletionTaint, "{}", d.key);
        }
        // Karpenter v1beta1's key needs its value.
        assert_eq!(
            state(with_taint("karpenter.sh/disruption", Some("other"))),
            NodeState::Ready
        );
        // Candidates and risks are not departures.
        for key in [
            "DeletionCandidateOfClusterAutoscaler",
            "aws-node-termination-handler/rebalance-recommendation",
            "node.kubernetes.io/not-ready",
            "dedicated",
        ] {
            assert_eq!(state(with_taint(key, None)), NodeState::Ready, "{key}");
        }
    }

    #[test]
    fn the_most_final_state_wins() {
        // Cordoned, tainted by the autoscaler and NotReady: the taint.
        let mut n = with_taint("ToBeDeletedByClusterAutoscaler", Some("1700000000"));
        n["spec"]["unschedulable"] = json!(true);
        n["status"]["conditions"][1]["status"] = json!("Unknown");
        assert_eq!(state(n.clone()), NodeState::DeletionTaint);
        assert!(!classify(&node(n.clone())).ready, "readiness kept apart");
        // ... and once deleted, deleting.
        n["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(state(n), NodeState::Deleting);
        // Cordoned and NotReady: cordoned.
        let mut n = ready_node(json!({"unschedulable": true}));
        n["status"]["conditions"][1]["status"] = json!("False");
        assert_eq!(state(n), NodeState::Cordoned);
    }

    #[test]
    fn nodes_without_an_object_are_gone() {
        let nodes = [node(ready_node(json!({})))];
        let got = lifecycle(nodes.iter(), ["n1", "n2"]);
        assert_eq!(got["n1"].state, NodeState::Ready);
        assert_eq!(got["n2"], GONE);
        assert_eq!(got.len(), 2);
    }
}
