//! Topology-aware, bounded fan-out (Pingmesh-style).
//!
//! The unit is the node: the pod and host agents of a node probe the same
//! peer nodes, so both paths between two chosen nodes are measured.
//!
//! - **Own zone**: every zone is a hashed ring (nodes sorted by
//!   `stable_hash(name)`); a node probes the `k_zone` nodes after it on its
//!   ring. Every node of a zone larger than `k_zone` therefore has exactly
//!   `k_zone` probers from its zone, and one node joining or leaving changes
//!   the plans of only the `k_zone` nodes before it.
//! - **Other zones**: each zone also has a ring of [`VIRTUAL_POINTS`] points
//!   per node; a node probes the first `k_cross` distinct nodes after its own
//!   point `hash(node, zone)` on every other zone's ring. Virtual points even
//!   out the load; a joining node only takes over the arcs before its
//!   points.
//! - **Bound**: at most `max_peer_nodes` peer nodes per node (other zones are
//!   visited in a per-node order, first choices before second ones, so many
//!   zones share the budget fairly).
//! - **In-degree**: a node still probed by fewer than `min_probers` (tiny
//!   zones, one-node zones) gets extra probers, chosen by rendezvous weight
//!   among nodes with budget left.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::schedule::rendezvous::{stable_hash, weight};

/// Points per node on the cross-zone rings.
pub(crate) const VIRTUAL_POINTS: usize = 16;

/// Fan-out settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanConfig {
    /// Peer nodes probed in a node's own zone.
    pub k_zone: usize,
    /// Peer nodes probed in each other zone.
    pub k_cross: usize,
    /// Every node is probed by at least this many other nodes (when the
    /// cluster has that many).
    pub min_probers: usize,
    /// Hard cap on the peer nodes of one node: bounds each agent's series.
    pub max_peer_nodes: usize,
}

impl Default for PlanConfig {
    /// 10 in-zone + 2 per other zone: 28 peer nodes at 10 zones, the cap
    /// that keeps an agent within the 2,000-series budget (with more zones,
    /// every zone's first choice is taken before any second one).
    fn default() -> Self {
        Self {
            k_zone: 10,
            k_cross: 2,
            min_probers: 3,
            max_peer_nodes: 28,
        }
    }
}

/// An invalid [`PlanConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanConfigError {
    /// `max_peer_nodes` is zero.
    #[error("probe plan: max_peer_nodes must be at least 1")]
    NoPeers,
    /// `min_probers` is zero or above `max_peer_nodes`.
    #[error("probe plan: min_probers must be within 1..=max_peer_nodes ({0})")]
    MinProbers(usize),
}

impl PlanConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), PlanConfigError> {
        if self.max_peer_nodes == 0 {
            return Err(PlanConfigError::NoPeers);
        }
        if self.min_probers == 0 || self.min_probers > self.max_peer_nodes {
            return Err(PlanConfigError::MinProbers(self.max_peer_nodes));
        }
        Ok(())
    }
}

/// A node as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlanNode {
    /// Node name.
    pub name: String,
    /// Its zone ([`super::DEFAULT_ZONE`] when unlabelled).
    pub zone: String,
}

/// The plan's graph: for every node, the peer nodes it probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Node → its zone.
    pub zones: BTreeMap<String, String>,
    /// Node → the peer nodes it probes.
    pub targets: BTreeMap<String, BTreeSet<String>>,
}

impl FanOut {
    /// Node → how many nodes probe it (every node present, 0 included).
    pub fn in_degree(&self) -> BTreeMap<&str, usize> {
        let mut d: BTreeMap<&str, usize> = self.targets.keys().map(|n| (n.as_str(), 0)).collect();
        for ts in self.targets.values() {
            for t in ts {
                *d.entry(t.as_str()).or_default() += 1;
            }
        }
        d
    }

    /// The largest number of peer nodes of one node.
    pub fn max_out_degree(&self) -> usize {
        self.targets.values().map(BTreeSet::len).max().unwrap_or(0)
    }

    /// Every probed pair as `(prober, target)`.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &str)> {
        self.targets
            .iter()
            .flat_map(|(a, ts)| ts.iter().map(move |b| (a.as_str(), b.as_str())))
    }
}

/// A zone's rings.
struct Zone<'a> {
    /// Nodes in ring order (by hash, then name).
    ring: Vec<&'a str>,
    /// Virtual points `(hash, node)`, sorted.
    points: Vec<(u64, &'a str)>,
}

impl<'a> Zone<'a> {
    fn new(mut nodes: Vec<&'a str>) -> Self {
        nodes.sort_by_key(|n| (stable_hash(&[n.as_bytes()]), *n));
        let mut points: Vec<(u64, &str)> = nodes
            .iter()
            .flat_map(|n| {
                (0..VIRTUAL_POINTS as u64)
                    .map(move |v| (stable_hash(&[n.as_bytes(), &v.to_le_bytes()]), *n))
            })
            .collect();
        points.sort_unstable();
        Self {
            ring: nodes,
            points,
        }
    }

    /// The first `k` distinct nodes after `point` on the virtual ring.
    fn successors(&self, point: u64, k: usize) -> Vec<&'a str> {
        let k = k.min(self.ring.len());
        let start = self.points.partition_point(|(h, _)| *h <= point);
        let mut out: Vec<&str> = Vec::with_capacity(k);
        for i in 0..self.points.len() {
            if out.len() == k {
                break;
            }
            let (_, n) = self.points[(start + i) % self.points.len()];
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
}

/// Computes the fan-out of `nodes` (duplicates by name: the first wins).
pub(crate) fn fan_out(nodes: &[PlanNode], cfg: &PlanConfig) -> FanOut {
    let mut zones_of: BTreeMap<String, String> = BTreeMap::new();
    for n in nodes {
        zones_of
            .entry(n.name.clone())
            .or_insert_with(|| n.zone.clone());
    }
    let mut by_zone: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, z) in &zones_of {
        by_zone.entry(z.as_str()).or_default().push(n.as_str());
    }
    let zones: BTreeMap<&str, Zone> = by_zone
        .into_iter()
        .map(|(z, ns)| (z, Zone::new(ns)))
        .collect();
    let cap = cfg.max_peer_nodes;
    let mut targets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (zname, zone) in &zones {
        let r = zone.ring.len();
        for (i, me) in zone.ring.iter().enumerate() {
            let mut mine: Vec<&str> = (1..=cfg.k_zone.min(r - 1).min(cap))
                .map(|d| zone.ring[(i + d) % r])
                .collect();
            // Other zones in this node's own order, so nodes spread their
            // first choices over different zones when the cap binds.
            let mut others: Vec<(&str, &Zone)> = zones
                .iter()
                .filter(|(z, _)| *z != zname)
                .map(|(z, zz)| (*z, zz))
                .collect();
            others.sort_by_key(|(z, _)| std::cmp::Reverse((weight(me, z), *z)));
            let picks: Vec<Vec<&str>> = others
                .iter()
                .map(|(z, zz)| zz.successors(weight(me, z), cfg.k_cross))
                .collect();
            'fill: for rank in 0..cfg.k_cross {
                for p in &picks {
                    if mine.len() >= cap {
                        break 'fill;
                    }
                    if let Some(n) = p.get(rank) {
                        mine.push(n);
                    }
                }
            }
            targets.insert(
                (*me).to_string(),
                mine.into_iter().map(str::to_string).collect(),
            );
        }
    }
    let mut plan = FanOut {
        zones: zones_of,
        targets,
    };
    repair_in_degree(&mut plan, cfg);
    plan
}

/// Gives every node with fewer than `min_probers` probers extra ones: the
/// nodes with the highest rendezvous weight towards it that have budget left.
fn repair_in_degree(plan: &mut FanOut, cfg: &PlanConfig) {
    let deficient: Vec<(String, usize)> = plan
        .in_degree()
        .into_iter()
        .filter(|(_, d)| *d < cfg.min_probers)
        .map(|(n, d)| (n.to_string(), d))
        .collect();
    for (t, have) in deficient {
        let mut candidates: Vec<(u64, String)> = plan
            .targets
            .iter()
            .filter(|(p, ts)| **p != t && !ts.contains(&t) && ts.len() < cfg.max_peer_nodes)
            .map(|(p, _)| (weight(p, &t), p.clone()))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, p) in candidates.into_iter().take(cfg.min_probers - have) {
            if let Some(ts) = plan.targets.get_mut(&p) {
                ts.insert(t.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::budget::{max_peer_nodes, series_bound, DEFAULT_MAX_SERIES};

    pub(crate) fn cluster(n: usize, zones: usize) -> Vec<PlanNode> {
        (0..n)
            .map(|i| PlanNode {
                name: format!("node-{i:05}"),
                zone: format!("zone-{}", i % zones),
            })
            .collect()
    }

    fn changed_plans(a: &FanOut, b: &FanOut) -> usize {
        a.targets
            .iter()
            .filter(|(n, ts)| b.targets.get(*n).is_some_and(|u| u != *ts))
            .count()
    }

    #[test]
    fn bounded_and_every_node_has_min_probers() {
        let cfg = PlanConfig::default();
        for (n, z) in [
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 3),
            (7, 3),
            (100, 1),
            (100, 3),
            (100, 10),
            (1000, 3),
            (5000, 10),
        ] {
            let plan = fan_out(&cluster(n, z), &cfg);
            assert_eq!(plan.targets.len(), n);
            let indeg = plan.in_degree();
            let min = indeg.values().copied().min().unwrap_or(0);
            let want = cfg.min_probers.min(n - 1);
            assert!(min >= want, "n={n} zones={z}: min in-degree {min}");
            assert!(plan.max_out_degree() <= cfg.max_peer_nodes, "n={n} z={z}");
            for (me, ts) in &plan.targets {
                assert!(!ts.contains(me), "{me} probes itself");
            }
        }
    }

    #[test]
    fn own_zone_and_every_other_zone_are_probed() {
        let cfg = PlanConfig::default();
        let plan = fan_out(&cluster(1000, 10), &cfg);
        for (me, ts) in &plan.targets {
            let my_zone = &plan.zones[me];
            let same = ts.iter().filter(|t| &plan.zones[*t] == my_zone).count();
            assert!(same >= cfg.k_zone, "{me}: {same} in-zone peers");
            let zones: BTreeSet<&String> = ts.iter().map(|t| &plan.zones[t]).collect();
            assert_eq!(zones.len(), 10, "{me} reaches every zone");
            assert!(ts.len() <= cfg.k_zone + 9 * cfg.k_cross + cfg.min_probers);
        }
        // In-zone rings give exactly k_zone in-zone probers.
        let mut in_zone = BTreeMap::<&str, usize>::new();
        for (a, b) in plan.edges() {
            if plan.zones[a] == plan.zones[b] {
                *in_zone.entry(b).or_default() += 1;
            }
        }
        assert!(in_zone.values().all(|d| *d == cfg.k_zone));
        // Cross-zone load stays near the mean of 9 zones * 2 = 18.
        let indeg = plan.in_degree();
        let max = indeg.values().copied().max().unwrap_or(0);
        assert!(max <= cfg.k_zone + 3 * 18, "hot spot: in-degree {max}");
    }

    #[test]
    fn many_zones_respect_the_cap() {
        let cfg = PlanConfig::default();
        let plan = fan_out(&cluster(600, 30), &cfg);
        assert_eq!(plan.max_out_degree(), cfg.max_peer_nodes);
        let min = plan.in_degree().values().copied().min().unwrap_or(0);
        assert!(min >= cfg.min_probers);
    }

    #[test]
    fn deterministic_and_order_independent() {
        let cfg = PlanConfig::default();
        let mut nodes = cluster(300, 3);
        let a = fan_out(&nodes, &cfg);
        nodes.reverse();
        assert_eq!(a, fan_out(&nodes, &cfg));
    }

    #[test]
    fn one_node_joining_or_leaving_changes_few_plans() {
        let cfg = PlanConfig::default();
        for zones in [1, 3, 10] {
            let nodes = cluster(1000, zones);
            let before = fan_out(&nodes, &cfg);
            let mut more = nodes.clone();
            more.push(PlanNode {
                name: "node-new".into(),
                zone: "zone-0".into(),
            });
            let after = fan_out(&more, &cfg);
            let changed = changed_plans(&before, &after);
            let probers = after.in_degree()["node-new"];
            eprintln!("zones={zones}: join changed {changed} plans ({probers} probers)");
            // Only the new node's probers gain it (each drops at most one).
            assert!(changed <= probers, "zones={zones}: {changed} > {probers}");
            assert!(
                changed < 1000 / 20,
                "zones={zones}: {changed} plans changed"
            );
            let gone = &nodes[17].name;
            let fewer: Vec<PlanNode> = nodes.iter().filter(|n| &n.name != gone).cloned().collect();
            let after = fan_out(&fewer, &cfg);
            let changed = changed_plans(&before, &after);
            let had = before.in_degree()[gone.as_str()];
            assert!(
                changed <= had,
                "zones={zones}: leave changed {changed} > {had}"
            );
        }
    }

    #[test]
    fn config_validation() {
        assert!(PlanConfig::default().validate().is_ok());
        let bad = PlanConfig {
            min_probers: 0,
            ..PlanConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = PlanConfig {
            max_peer_nodes: 0,
            ..PlanConfig::default()
        };
        assert_eq!(bad.validate(), Err(PlanConfigError::NoPeers));
    }

    /// The controller's default fan-out cap (pod and host path to each
    /// peer node, 3 Service targets) fits the default budget, which is at
    /// most the 2,000 series the cluster-scale work allows.
    #[test]
    fn default_fan_out_fits_the_default_budget() {
        let cap = PlanConfig::default().max_peer_nodes;
        const { assert!(DEFAULT_MAX_SERIES <= 2000) };
        assert!(
            series_bound(cap, cap, 0) <= DEFAULT_MAX_SERIES,
            "{}",
            series_bound(cap, cap, 0)
        );
        // The Service paths carry no ICMP series, which leaves room for one
        // more peer node; not for two.
        assert_eq!(
            max_peer_nodes(DEFAULT_MAX_SERIES, 0),
            cap + 1,
            "the budget holds the fan-out cap, and one node more"
        );
    }
}
