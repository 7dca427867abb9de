//! Who answers the sample guard's "is this node in a burst?" on an agent:
//! the controller's plan while the agent has one, the slot schedule it
//! computes itself ([`ComputedSchedule`]) otherwise.

use tokio::sync::watch;

use super::PlanWatch;
use crate::schedule::busy::BusyNodes;
use crate::schedule::computed::ComputedSchedule;

/// Whoever decides this agent's bursts: the controller's plan while the
/// agent has one (the bursts then follow the plan's cycle), the schedule it
/// computes itself otherwise. The sample guard asks this one.
pub struct PlanOrComputed {
    plan: watch::Receiver<PlanWatch>,
    computed: ComputedSchedule,
}

impl PlanOrComputed {
    /// Follows `plan`, falling back to `computed`.
    pub fn new(plan: watch::Receiver<PlanWatch>, computed: ComputedSchedule) -> Self {
        Self { plan, computed }
    }
}

impl BusyNodes for PlanOrComputed {
    fn busy(&self, slot: u64, node: &str) -> bool {
        if let Some(plan) = self.plan.borrow().as_ref() {
            return plan.busy(slot, node);
        }
        self.computed.busy(slot, node)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::peer::{AgentKind, Identity, Peer, PeerSet};
    use crate::plan::node_plan::FORMAT_VERSION;
    use crate::plan::NodePlan;
    use crate::schedule::slots::SlotConfig;

    fn peer(node: &str) -> Peer {
        Peer::on_loopback(&format!("host-{node}"), node, AgentKind::Host)
    }

    #[test]
    fn the_plan_answers_while_there_is_one() {
        let me = Identity {
            name: "host-a".into(),
            node: "a".into(),
            kind: AgentKind::Host,
        };
        // Alone, the agent-computed schedule has no pair: nobody is busy.
        let (_peers_tx, peers) = watch::channel::<PeerSet>(Arc::new(Vec::new()));
        let computed = ComputedSchedule::new(me, peers, SlotConfig::default());
        let plan = NodePlan {
            version: FORMAT_VERSION,
            node: "a".into(),
            zone: String::new(),
            target_nodes: vec!["b".into()],
            probers: 1,
            peers: vec![peer("b")],
            slot_ms: 5000,
            cycle_slots: 100,
            bursts: vec![],
            busy: [("b".to_string(), vec![7])].into_iter().collect(),
            apiserver: vec![],
            lifecycle: Default::default(),
        };
        let (tx, rx) = watch::channel::<PlanWatch>(Some(Arc::new(plan)));
        let busy = PlanOrComputed::new(rx, computed);
        assert!(busy.busy(107, "b"), "the plan's cycle repeats");
        assert!(!busy.busy(108, "b"));
        tx.send_replace(None);
        assert!(
            !busy.busy(107, "b"),
            "without a plan, the computed schedule"
        );
    }
}
