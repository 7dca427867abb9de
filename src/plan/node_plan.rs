//! One node's share of the plan: what its agents probe, the bursts it
//! initiates, when it and its targets' nodes are busy, and the lifecycle
//! of those nodes and their agents. Serialised as JSON into one small
//! object per node, which is all an agent reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::peer::{Identity, Peer};
use crate::schedule::busy::BusyNodes;
use crate::schedule::slots::{partner_bursts, Burst, SlotConfig};

use super::config_map::{DATA_KEY, LIFECYCLE_KEY};
use super::lifecycle::{ClusterLifecycle, PeerLifecycle};
use super::{BandwidthPlan, FanOut};

/// Format version of [`NodePlan`]; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// A burst this node initiates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBurst {
    /// Slot within the cycle.
    pub slot: u64,
    /// The responder's node.
    pub peer_node: String,
}

/// What the agents of one node need, and nothing more.
///
/// Unknown fields are ignored, so this version reads the plans of a newer
/// controller that added one (a rollout runs both at once); agents before
/// this version rejected them, which is why new facts go under a ConfigMap
/// key of their own ([`NodePlan::to_data`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// This node's and its target nodes' lifecycle: published under its
    /// own key ([`LIFECYCLE_KEY`]), never inside the plan's JSON, which
    /// agents of the previous version read with an unknown-field check.
    #[serde(skip)]
    pub lifecycle: PeerLifecycle,
}

/// A plan that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanDecodeError {
    /// The ConfigMap has no plan under [`DATA_KEY`].
    #[error("probe plan has no {DATA_KEY}")]
    NoPlan,
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

    /// Reads a published plan (without its lifecycle: see
    /// [`NodePlan::to_data`]).
    pub fn from_json(s: &str) -> Result<Self, PlanDecodeError> {
        let plan: Self = serde_json::from_str(s)?;
        if plan.version != FORMAT_VERSION {
            return Err(PlanDecodeError::Version(plan.version));
        }
        Ok(plan)
    }

    /// Reads published ConfigMap data: the plan (required) and its
    /// lifecycle (absent from a previous controller's plans: every peer
    /// ready, none expected down). An unreadable lifecycle leaves the plan
    /// usable: it comes back without one, beside the error.
    pub fn from_data(
        data: &BTreeMap<String, String>,
    ) -> Result<(Self, Option<serde_json::Error>), PlanDecodeError> {
        let mut plan = Self::from_json(data.get(DATA_KEY).ok_or(PlanDecodeError::NoPlan)?)?;
        let mut bad = None;
        if let Some(text) = data.get(LIFECYCLE_KEY) {
            match PeerLifecycle::from_json(text) {
                Ok(l) => plan.lifecycle = l,
                Err(e) => bad = Some(e),
            }
        }
        Ok((plan, bad))
    }

    /// The ConfigMap data published for the node: the plan under
    /// [`DATA_KEY`] in the format agents of the previous version read,
    /// and its lifecycle under [`LIFECYCLE_KEY`] (always written, `{}`
    /// when there is nothing to say, so an apply never leaves a stale one).
    pub fn to_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (DATA_KEY.to_string(), self.to_json()),
            (LIFECYCLE_KEY.to_string(), self.lifecycle.to_json()),
        ])
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

/// Every node's plan. `agents` are the agents to probe (their node must be
/// in `fan`); `lifecycle` holds every node's state and the agents left
/// out, of which each plan gets the share of its own and its target nodes;
/// `extra(node)` adds per-node targets such as the Service.
pub fn node_plans(
    fan: &FanOut,
    bw: &BandwidthPlan,
    agents: &[Peer],
    lifecycle: &ClusterLifecycle<'_>,
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
                lifecycle: lifecycle.share(
                    std::iter::once(node.as_str()).chain(targets.iter().map(String::as_str)),
                ),
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
        let all = node_plans(
            &fan,
            &bw,
            &agents(n),
            &ClusterLifecycle::default(),
            &slot,
            |_, _| Vec::new(),
        );
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

    /// The plan as agents of the previous version read it: these fields,
    /// any other one an error (their `deny_unknown_fields`).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PreviousNodePlan {
        version: u32,
        node: String,
        zone: String,
        target_nodes: Vec<String>,
        probers: usize,
        peers: Vec<Peer>,
        slot_ms: u64,
        cycle_slots: u64,
        bursts: Vec<PreviousBurst>,
        busy: BTreeMap<String, Vec<u64>>,
        #[serde(default)]
        apiserver: Vec<std::net::SocketAddr>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PreviousBurst {
        slot: u64,
        peer_node: String,
    }

    /// What a controller of the previous version published.
    const PREVIOUS_PLAN: &str = r#"{"version":1,"node":"n1","zone":"z1","target_nodes":["n2"],"probers":1,"peers":[{"name":"pod-n1","address":"10.0.0.1","node":"n1","kind":"pod"},{"name":"pod-n2","address":"10.0.0.2","node":"n2","kind":"pod","ports":{"udp_echo":1,"tcp_echo":2,"bandwidth":3,"http":4}}],"slot_ms":5000,"cycle_slots":10,"bursts":[{"slot":3,"peer_node":"n2"}],"busy":{"n1":[3],"n2":[3]},"apiserver":["192.0.2.1:6443"]}"#;

    #[test]
    fn previous_agents_read_plans_with_a_lifecycle() {
        use crate::peer::{AgentKind, NodeState};
        use crate::plan::NotReadyAgent;
        let (_, _, all) = plans(50, 1);
        let mut p = all["node-00003"].clone();
        let down = p.target_nodes[0].clone();
        p.lifecycle.nodes.insert(down.clone(), NodeState::Cordoned);
        p.lifecycle.not_ready.push(NotReadyAgent {
            name: "pod-x".into(),
            node: down.clone(),
            kind: AgentKind::Pod,
        });
        let data = p.to_data();
        let old: PreviousNodePlan =
            serde_json::from_str(&data[DATA_KEY]).expect("the previous format, exactly");
        assert_eq!(
            (
                old.version,
                &old.node,
                &old.zone,
                &old.target_nodes,
                old.probers
            ),
            (p.version, &p.node, &p.zone, &p.target_nodes, p.probers)
        );
        assert_eq!(old.peers, p.peers);
        assert_eq!((old.slot_ms, old.cycle_slots), (p.slot_ms, p.cycle_slots));
        let bursts: Vec<(u64, &str)> = old
            .bursts
            .iter()
            .map(|b| (b.slot, b.peer_node.as_str()))
            .collect();
        let want: Vec<(u64, &str)> = p
            .bursts
            .iter()
            .map(|b| (b.slot, b.peer_node.as_str()))
            .collect();
        assert_eq!(bursts, want);
        assert_eq!((&old.busy, &old.apiserver), (&p.busy, &p.apiserver));
        // This version reads both keys back.
        let (back, bad) = NodePlan::from_data(&data).expect("decode");
        assert!(bad.is_none());
        assert_eq!(back, p);
        assert_eq!(back.lifecycle.nodes[&down], NodeState::Cordoned);
    }

    #[test]
    fn plans_of_a_previous_controller_read_as_all_ready() {
        let old: PreviousNodePlan = serde_json::from_str(PREVIOUS_PLAN).expect("fixture");
        assert_eq!(old.bursts.len(), 1);
        let data = BTreeMap::from([(DATA_KEY.to_string(), PREVIOUS_PLAN.to_string())]);
        let (p, bad) = NodePlan::from_data(&data).expect("decode");
        assert!(bad.is_none());
        assert_eq!(p.node, "n1");
        assert_eq!(p.peers.len(), 2);
        assert_eq!(p.burst_in(13), Some("n2"));
        assert!(
            p.lifecycle.is_empty(),
            "every peer ready, none expected down"
        );
        // A broken lifecycle keeps the plan.
        let mut broken = data.clone();
        broken.insert(LIFECYCLE_KEY.into(), "{".into());
        let (p2, bad) = NodePlan::from_data(&broken).expect("the plan stands");
        assert!(bad.is_some());
        assert_eq!(p2, p);
        // A newer controller's extra plan field is read past.
        let newer = PREVIOUS_PLAN.replacen('{', r#"{"future":[1,2],"#, 1);
        assert_eq!(NodePlan::from_json(&newer).expect("tolerant"), p);
        assert!(matches!(
            NodePlan::from_data(&BTreeMap::new()),
            Err(PlanDecodeError::NoPlan)
        ));
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
        let plans = node_plans(
            &fan,
            &bw,
            &peers,
            &ClusterLifecycle::default(),
            &cfg,
            |_, _| Vec::new(),
        );
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
