//! The probe plan: who probes whom, and when bandwidth bursts run.
//!
//! Pure logic, computed once by the leader-elected controller (its plan
//! publisher) and handed to each node as a small
//! [`NodePlan`], so no agent ever lists or watches the other agents
//! (Pingmesh's pinglists; gardener network-problem-detector's ConfigMap).
//!
//! - `fanout`: topology-aware, bounded fan-out with a guaranteed
//!   in-degree, stable under churn (hashed rings per zone).
//! - `bandwidth`: the bandwidth slot schedule over the plan's pairs only.
//! - [`node_plan`]: one node's share of both, serialised for publication,
//!   and the [`crate::schedule::busy::BusyNodes`] answer for its targets.
//! - [`config_map`]: the ConfigMap that carries a node's plan from the
//!   controller to the node's agents.
//! - [`lifecycle`]: which of a plan's nodes are expected down and why, and
//!   which agents it leaves out because not Ready; what an agent makes of
//!   it.
//! - `agent_busy`: on an agent, the plan's busy answer while it has a
//!   plan, its own slot schedule's otherwise (the one piece here that
//!   follows a channel).

pub(crate) mod agent_busy;
pub(crate) mod bandwidth;
pub mod config_map;
pub(crate) mod fanout;
pub mod lifecycle;
pub mod node_plan;

pub use agent_busy::PlanOrComputed;
pub use bandwidth::BandwidthPlan;
pub use fanout::{FanOut, PlanConfig, PlanNode};
pub use lifecycle::{AgentLifecycle, ClusterLifecycle, NotReadyAgent, PeerLifecycle};
pub use node_plan::{NodePlan, PlannedBurst};

/// The node's probe plan, when a controller publishes one
/// (`discovery.mode: kubernetes`); `None` in static and local mode.
pub type PlanWatch = Option<std::sync::Arc<NodePlan>>;

/// The node label giving a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The zone of nodes without [`ZONE_LABEL`]: all of them form one zone.
pub const DEFAULT_ZONE: &str = "";

/// The series bound of one agent probing `peer_nodes` peer nodes (each on
/// the pod and the host path), in one place so the bench and the docs
/// follow the series budget when its formula moves.
pub fn agent_series_bound(peer_nodes: usize) -> usize {
    crate::metrics::budget::series_bound(peer_nodes, usize::MAX, 0)
}
