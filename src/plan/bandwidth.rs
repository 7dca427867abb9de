//! The bandwidth slot schedule over the plan's pairs only, computed once by
//! the controller so agents cannot disagree about it during churn.
//!
//! Slots and rounds are those of [`crate::schedule::slots`]: slot `i` starts
//! at `i · slot` since the Unix epoch and a round is
//! `L = ceil(1 / duty_budget)` slots. The probed pairs (unordered) are
//! shuffled by a stable hash and packed greedily into rounds: each round is a
//! matching (a node at most once) of at most `L · max_pairs` pairs, spread
//! over the round's slots at most `max_pairs` per slot. Rounds repeat as a
//! cycle of `rounds · L` slots. Hence, as before:
//! - a node is in at most one pair per slot;
//! - at most `max_pairs` pairs burst cluster-wide at any time;
//! - a node bursts in at most one slot per round: duty cycle ≤ 1/L.

use std::collections::{BTreeMap, BTreeSet};

use crate::schedule::rendezvous::stable_hash;
use crate::schedule::slots::SlotConfig;

use super::FanOut;

/// One burst of the cycle: `initiator` measures towards `responder` in
/// slot `slot` of the cycle (both its pod and its host agent, back to back).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CycleBurst {
    /// Slot within the cycle.
    pub slot: u64,
    /// The prober's node.
    pub initiator: String,
    /// The target's node.
    pub responder: String,
}

/// The whole cluster's bandwidth cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthPlan {
    /// Cycle length in slots (0: nothing to measure).
    pub cycle_slots: u64,
    /// Every burst, sorted by slot.
    pub bursts: Vec<CycleBurst>,
}

impl BandwidthPlan {
    /// The slots (within the cycle) each node spends in a burst.
    pub fn busy_slots(&self) -> BTreeMap<&str, Vec<u64>> {
        let mut m: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for b in &self.bursts {
            m.entry(b.initiator.as_str()).or_default().push(b.slot);
            m.entry(b.responder.as_str()).or_default().push(b.slot);
        }
        m
    }
}

/// The unordered probed pairs, each with its initiator: the prober (the
/// smaller name when both probe each other).
fn pairs(plan: &FanOut) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (a, b) in plan.edges() {
        let reverse = plan.targets.get(b).is_some_and(|ts| ts.contains(a));
        if reverse && b < a {
            continue;
        }
        out.insert((a.to_string(), b.to_string()));
    }
    out
}

/// Packs the plan's pairs into a cycle of rounds.
pub(crate) fn schedule(plan: &FanOut, cfg: &SlotConfig) -> BandwidthPlan {
    let round_len = cfg.round_len();
    let max_pairs = cfg.max_pairs.max(1);
    let capacity = usize::try_from(round_len)
        .unwrap_or(usize::MAX)
        .saturating_mul(max_pairs);
    // Nodes as indexes: the packing loop runs once per round over every
    // pair left, which at 5,000 nodes is a few hundred rounds.
    let names: Vec<&str> = plan.targets.keys().map(String::as_str).collect();
    let index = |n: &str| names.binary_search(&n).ok();
    let mut left: Vec<(u64, usize, usize)> = pairs(plan)
        .iter()
        .filter_map(|(a, b)| {
            let h = stable_hash(&[a.as_bytes(), b.as_bytes()]);
            Some((h, index(a)?, index(b)?))
        })
        .collect();
    left.sort_unstable();
    let mut used_in: Vec<u64> = vec![u64::MAX; names.len()];
    let mut bursts = Vec::new();
    let mut round: u64 = 0;
    while !left.is_empty() {
        let mut taken: Vec<usize> = Vec::new();
        for (i, &(_, a, b)) in left.iter().enumerate() {
            if taken.len() == capacity {
                break;
            }
            if used_in[a] == round || used_in[b] == round {
                continue;
            }
            used_in[a] = round;
            used_in[b] = round;
            taken.push(i);
        }
        let groups = taken.len().div_ceil(max_pairs) as u64;
        for (j, &i) in taken.iter().enumerate() {
            // Group g runs at position g·L/G: spread evenly over the round.
            let g = (j / max_pairs) as u64;
            let pos = g.saturating_mul(round_len) / groups.max(1);
            let (_, a, b) = left[i];
            bursts.push(CycleBurst {
                slot: round * round_len + pos,
                initiator: names[a].to_string(),
                responder: names[b].to_string(),
            });
        }
        let mut k = 0;
        let mut next = taken.into_iter().peekable();
        left.retain(|_| {
            let drop = next.peek() == Some(&k);
            if drop {
                next.next();
            }
            k += 1;
            !drop
        });
        round += 1;
    }
    bursts.sort();
    BandwidthPlan {
        cycle_slots: round * round_len,
        bursts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fanout::{fan_out, PlanConfig, PlanNode};

    fn cluster(n: usize, zones: usize) -> FanOut {
        let nodes: Vec<PlanNode> = (0..n)
            .map(|i| PlanNode {
                name: format!("node-{i:05}"),
                zone: format!("zone-{}", i % zones),
            })
            .collect();
        fan_out(&nodes, &PlanConfig::default())
    }

    /// Checks the guarantees; returns the largest duty cycle of a node.
    fn check(plan: &FanOut, cfg: &SlotConfig) -> f64 {
        let bw = schedule(plan, cfg);
        let mut per_slot: BTreeMap<u64, Vec<&CycleBurst>> = BTreeMap::new();
        for b in &bw.bursts {
            assert!(b.slot < bw.cycle_slots);
            per_slot.entry(b.slot).or_default().push(b);
        }
        for (slot, bs) in &per_slot {
            assert!(bs.len() <= cfg.max_pairs, "slot {slot}: {} pairs", bs.len());
            let mut nodes: Vec<&str> = bs
                .iter()
                .flat_map(|b| [b.initiator.as_str(), b.responder.as_str()])
                .collect();
            let n = nodes.len();
            nodes.sort_unstable();
            nodes.dedup();
            assert_eq!(nodes.len(), n, "slot {slot}: a node in two bursts");
        }
        // Only probed pairs, and every probed pair once per cycle.
        let want = pairs(plan);
        assert_eq!(bw.bursts.len(), want.len());
        for b in &bw.bursts {
            let fwd = plan.targets[&b.initiator].contains(&b.responder);
            assert!(fwd, "{} -> {} is not probed", b.initiator, b.responder);
        }
        let busy = bw.busy_slots();
        // At most one slot per round per node.
        let round_len = cfg.round_len();
        for (n, slots) in &busy {
            let rounds: BTreeSet<u64> = slots.iter().map(|s| s / round_len).collect();
            assert_eq!(rounds.len(), slots.len(), "{n}: two bursts in a round");
        }
        let max = busy.values().map(Vec::len).max().unwrap_or(0);
        max as f64 / bw.cycle_slots.max(1) as f64
    }

    #[test]
    fn guarantees_hold_on_plans_of_every_shape() {
        let cfg = SlotConfig::default();
        for (n, z) in [(2, 1), (3, 1), (10, 1), (100, 3), (1000, 10)] {
            let duty = check(&cluster(n, z), &cfg);
            eprintln!("nodes={n} zones={z}: max duty {:.3}%", duty * 100.0);
            assert!(duty <= cfg.duty_budget, "n={n}: duty {duty}");
            assert!(duty > 0.0, "n={n}: nobody measured");
        }
    }

    #[test]
    fn cap_binds_in_large_clusters() {
        let cfg = SlotConfig::default();
        let bw = schedule(&cluster(1000, 3), &cfg);
        let mut per_slot = BTreeMap::<u64, usize>::new();
        for b in &bw.bursts {
            *per_slot.entry(b.slot).or_default() += 1;
        }
        // The first round is full: every slot runs max_pairs pairs.
        for s in 0..cfg.round_len() {
            assert_eq!(per_slot.get(&s), Some(&cfg.max_pairs), "slot {s}");
        }
    }

    #[test]
    fn empty_plan_has_an_empty_cycle() {
        let bw = schedule(&cluster(1, 1), &SlotConfig::default());
        assert_eq!(bw, BandwidthPlan::default());
    }
}
