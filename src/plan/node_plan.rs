//! One node's share of the plan: what its agents probe, the bursts it
//! initiates, and when it and its targets' nodes are busy. Serialised as
//! JSON into one small object per node, which is all an agent reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::peer::{Identity, Peer};
use crate::schedule::busy::BusyNodes;
use crate::schedule::slots::{partner_bursts, Burst, SlotConfig};

use super::{BandwidthPlan, FanOut};

/// Format version of [`NodePlan`]; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// A burst this node initiates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedBurst {
    /// Slot within the cycle.
    pub slot: u64,
    /// The responder's node.
    pub peer_node: String,
}

/// What the agents of one node need, and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePlan {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The node.
    pub node: String,
    /// Its zone.
    pub zone: String,
    /// The peer nodes it probes, sorted.
    pub target_nodes: Vec<String>,
    /// How many nodes probe it (its in-degree).
    pub probers: usize,
    /// The agents on its own node and on its target nodes, and the
    /// Service targets; each agent drops itself.
    pub peers: Vec<Peer>,
    /// Slot length the schedule was computed for, in milliseconds.
    pub slot_ms: u64,
    /// Length of the bandwidth cycle in slots (0: no bursts).
    pub cycle_slots: u64,
    /// Bursts this node initiates.
    pub bursts: Vec<PlannedBurst>,
    /// Slots within the cycle in which this node and each of its target
    /// nodes take part in a burst (as initiator or responder), sorted.
    pub busy: BTreeMap<String, Vec<u64>>,
    /// The apiserver endpoints (from the `default/kubernetes`
    /// EndpointSlice), probed directly by the agents; absent in plans of
    /// controllers that do not publish them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apiserver: Vec<std::net::SocketAddr>,
}

/// A plan that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanDecodeError {
    /// Not the expected JSON.
    #[error("probe plan is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by an incompatible controller.
    #[error("probe plan format {0} is not supported (expected {FORMAT_VERSION})")]
    Version(u32),
}

impl NodePlan {
    /// The JSON published for the node.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps cannot fail to serialise.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a published plan.
    pub fn from_json(s: &str) -> Result<Self, PlanDecodeError> {
        let plan: Self = serde_json::from_str(s)?;
        if plan.version != FORMAT_VERSION {
            return Err(PlanDecodeError::Version(plan.version));
        }
        Ok(plan)
    }

    /// The responder node of the burst this node initiates in absolute
    /// `slot`, if any.
    pub fn burst_in(&self, slot: u64) -> Option<&str> {
        if self.cycle_slots == 0 {
            return None;
        }
        let s = slot % self.cycle_slots;
        self.bursts
            .iter()
            .find(|b| b.slot == s)
            .map(|b| b.peer_node.as_str())
    }
}

impl BusyNodes for NodePlan {
    /// Known for this node and its target nodes; any other node reads as
    /// not busy (this agent never talks to it).
    fn busy(&self, slot: u64, node: &str) -> bool {
        if self.cycle_slots == 0 {
            return false;
        }
        let s = slot % self.cycle_slots;
        self.busy
            .get(node)
            .is_some_and(|v| v.binary_search(&s).is_ok())
    }
}

/// The bursts `me` initiates in absolute `slot` under the controller's
/// plan: the same-kind agent on the plan's partner node, pod agents in the
/// first half of the slot and host agents in the second, as in
/// [`crate::schedule::slots::my_bursts`].
pub fn plan_bursts(slot: u64, me: &Identity, plan: &NodePlan, cfg: &SlotConfig) -> Vec<Burst> {
    let Some(partner) = plan.burst_in(slot) else {
        return Vec::new();
    };
    partner_bursts(me, &plan.peers, partner, cfg)
}

/// Every node's plan. `agents` are all running agents (their node must be
/// in `fan`); `extra(node)` adds per-node targets such as the Service.
pub fn node_plans(
    fan: &FanOut,
    bw: &BandwidthPlan,
    agents: &[Peer],
    slot: &SlotConfig,
    extra: impl Fn(&str, &[String]) -> Vec<Peer>,
) -> BTreeMap<String, NodePlan> {
    let mut on_node: BTreeMap<&str, Vec<&Peer>> = BTreeMap::new();
    for a in agents.iter().filter(|a| a.path.is_none()) {
        on_node.entry(a.node.as_str()).or_default().push(a);
    }
    for v in on_node.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let indeg = fan.in_degree();
    let busy_all = bw.busy_slots();
    let mut initiated: BTreeMap<&str, Vec<PlannedBurst>> = BTreeMap::new();
    for b in &bw.bursts {
        initiated
            .entry(b.initiator.as_str())
            .or_default()
            .push(PlannedBurst {
                slot: b.slot,
                peer_node: b.responder.clone(),
            });
    }
    let slot_ms = u64::try_from(slot.slot.as_millis()).unwrap_or(u64::MAX);
    fan.targets
        .iter()
        .map(|(node, targets)| {
            let target_nodes: Vec<String> = targets.iter().cloned().collect();
            let mut peers: Vec<Peer> = std::iter::once(node.as_str())
                .chain(targets.iter().map(String::as_str))
                .flat_map(|n| on_node.get(n).into_iter().flatten())
                .map(|p| (*p).clone())
                .collect();
            peers.extend(extra(node, &target_nodes));
            let busy = std::iter::once(node.as_str())
                .chain(targets.iter().map(String::as_str))
                .filter_map(|n| busy_all.get(n).map(|s| (n.to_string(), s.clone())))
                .map(|(n, mut s)| {
                    s.sort_unstable();
                    (n, s)
                })
                .collect();
            let plan = NodePlan {
                version: FORMAT_VERSION,
                node: node.clone(),
                zone: fan.zones.get(node).cloned().unwrap_or_default(),
                target_nodes,
                probers: indeg.get(node.as_str()).copied().unwrap_or(0),
                peers,
                slot_ms,
                cycle_slots: bw.cycle_slots,
                bursts: initiated.remove(node.as_str()).unwrap_or_default(),
                busy,
                apiserver: Vec::new(),
            };
            (node.clone(), plan)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::peer::{targets, ProbePorts};
    use crate::peer::{AgentKind, PathKind};
    use crate::plan::{bandwidth, fanout, PlanConfig, PlanNode};

    fn agents(n: usize) -> Vec<Peer> {
        (0..n)
            .flat_map(|i| {
                [AgentKind::Pod, AgentKind::Host].map(|kind| Peer {
                    name: format!("{kind}-{i}"),
                    address: "127.0.0.1".parse().expect("ip"),
                    node: format!("node-{i:05}"),
                    kind,
                    ports: ProbePorts::default(),
                    path: None,
                })
            })
            .collect()
    }

    fn identity(p: &Peer) -> Identity {
        Identity {
            name: p.name.clone(),
            node: p.node.clone(),
            kind: p.kind,
        }
    }

    fn plans(n: usize, zones: usize) -> (FanOut, BandwidthPlan, BTreeMap<String, NodePlan>) {
        let nodes: Vec<PlanNode> = (0..n)
            .map(|i| PlanNode {
                name: format!("node-{i:05}"),
                zone: format!("zone-{}", i % zones),
            })
            .collect();
        let fan = fanout::fan_out(&nodes, &PlanConfig::default());
        let slot = SlotConfig::default();
        let bw = bandwidth::schedule(&fan, &slot);
        let all = node_plans(&fan, &bw, &agents(n), &slot, |_, _| Vec::new());
        (fan, bw, all)
    }

    #[test]
    fn both_paths_to_every_target_node() {
        let (fan, _, all) = plans(200, 3);
        let p = &all["node-00007"];
        let me = Identity {
            name: "pod-7".into(),
            node: "node-00007".into(),
            kind: AgentKind::Pod,
        };
        let ts = targets(&me, &p.peers);
        for n in &fan.targets["node-00007"] {
            for path in [PathKind::PodCrossNode, PathKind::PodToHost] {
                assert!(
                    ts.iter().any(|t| &t.peer.node == n && t.path == path),
                    "{n}: {path} missing"
                );
            }
        }
        // Own node's host agent too, and nothing else.
        assert!(ts
            .iter()
            .any(|t| t.path == PathKind::PodToHost && t.peer.node == me.node));
        assert_eq!(ts.len(), 2 * fan.targets["node-00007"].len() + 1);
    }

    #[test]
    fn round_trips_and_rejects_other_versions() {
        let (_, _, all) = plans(50, 1);
        let p = &all["node-00003"];
        let back = NodePlan::from_json(&p.to_json()).expect("decode");
        assert_eq!(&back, p);
        let mut other = p.clone();
        other.version = 99;
        assert!(matches!(
            NodePlan::from_json(&other.to_json()),
            Err(PlanDecodeError::Version(99))
        ));
        assert!(NodePlan::from_json("{").is_err());
    }

    #[test]
    fn busy_answers_match_the_cycle_for_self_and_targets() {
        let (fan, bw, all) = plans(300, 3);
        let me = "node-00011";
        let p = &all[me];
        let cycle = bw.cycle_slots;
        assert!(cycle > 0);
        let mut checked = 0;
        for b in &bw.bursts {
            for n in [&b.initiator, &b.responder] {
                if n == me || fan.targets[me].contains(n) {
                    // In this and a later cycle alike.
                    assert!(p.busy(b.slot, n), "{n} in slot {}", b.slot);
                    assert!(p.busy(b.slot + 3 * cycle, n));
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
        // A slot where `me` is idle reads idle.
        let idle = (0..cycle)
            .find(|s| {
                !bw.bursts
                    .iter()
                    .any(|b| b.slot == *s && (b.initiator == me || b.responder == me))
            })
            .expect("an idle slot");
        assert!(!p.busy(idle, me));
        // Its own bursts are exactly the cycle's.
        let mine: Vec<_> = bw.bursts.iter().filter(|b| b.initiator == me).collect();
        assert_eq!(p.bursts.len(), mine.len());
        for b in mine {
            assert_eq!(p.burst_in(b.slot + cycle), Some(b.responder.as_str()));
        }
    }

    #[test]
    fn plan_size_stays_small_at_5000_nodes() {
        let (_, _, all) = plans(5000, 10);
        let max = all.values().map(|p| p.to_json().len()).max().unwrap_or(0);
        eprintln!("largest plan: {max} bytes");
        // Far below the 1 MiB object limit.
        assert!(max < 64 * 1024, "{max} bytes");
    }

    #[test]
    fn plan_bursts_follow_the_controllers_cycle() {
        let cfg = SlotConfig::default();
        let peers = agents(30);
        let nodes: Vec<PlanNode> = (0..30)
            .map(|i| PlanNode {
                name: format!("node-{i:05}"),
                zone: String::new(),
            })
            .collect();
        let fan = fanout::fan_out(&nodes, &PlanConfig::default());
        let bw = bandwidth::schedule(&fan, &cfg);
        let plans = node_plans(&fan, &bw, &peers, &cfg, |_, _| Vec::new());
        let mut seen = 0;
        for b in &bw.bursts {
            for kind in [AgentKind::Pod, AgentKind::Host] {
                let me = peers
                    .iter()
                    .find(|p| p.node == b.initiator && p.kind == kind)
                    .map(identity)
                    .expect("agent");
                // Any later cycle gives the same bursts.
                let slot = b.slot + 2 * bw.cycle_slots;
                let got = plan_bursts(slot, &me, &plans[&b.initiator], &cfg);
                assert_eq!(got.len(), 1, "{} in slot {}", b.initiator, b.slot);
                assert_eq!(got[0].peer.node, b.responder);
                assert_eq!(got[0].peer.kind, kind, "pod to pod, host to host");
                let half = cfg.slot / 2;
                let want = if kind == AgentKind::Pod {
                    Duration::ZERO
                } else {
                    half
                };
                assert_eq!(got[0].offset, want);
                // The responder initiates nothing in that slot.
                let other = peers
                    .iter()
                    .find(|p| p.node == b.responder && p.kind == kind)
                    .map(identity)
                    .expect("agent");
                assert!(plan_bursts(slot, &other, &plans[&b.responder], &cfg).is_empty());
                seen += 1;
            }
        }
        assert!(seen > 0);
    }
}
