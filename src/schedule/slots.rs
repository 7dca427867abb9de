//! The cluster-wide bandwidth schedule, computed independently by every
//! agent from the same sorted node list and the slot number: no coordinator,
//! no Lease.
//!
//! Time is cut into slots of `slot` length (slot `i` starts at
//! `i · slot` since the Unix epoch) and slots into rounds of
//! `L = ceil(1 / duty_budget)` slots. Every round draws a fresh random
//! perfect matching of the nodes (seeded by the round number, so every agent
//! draws the same one) and spreads its pairs over the round, at most
//! `max_pairs` per slot. Hence:
//! - a node is in at most one pair per slot (a matching is disjoint);
//! - at most `max_pairs` pairs burst cluster-wide at any time;
//! - a node bursts in at most one slot per round: duty cycle ≤ 1/L ≤ budget.
//!   Matchings larger than `L · max_pairs` pairs are truncated; the next
//!   round's reshuffle gives the left-out nodes their turn.
//!
//! Within a pair's slot the initiator node's pod agent runs its bursts
//! (forward, reverse) in the first half and its host agent in the second
//! half, so the pod and host paths between the same two nodes are measured
//! back to back and their ratio (overlay overhead) compares like with like.
//! Agents that briefly disagree (a peer list still converging) can schedule
//! an overlap; the responder's "busy" refusal keeps that from distorting a
//! measurement, and it is counted as `outcome="busy"`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rendezvous::stable_hash;
use crate::metrics::labels::Direction;
use crate::peer::{path, Identity, Peer};
use crate::peer::{AgentKind, PathKind};

/// Bandwidth schedule settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotConfig {
    /// Length of one slot; each half must fit a forward and a reverse burst.
    #[serde(with = "humantime_serde")]
    pub slot: Duration,
    /// Most node pairs bursting at once, cluster-wide.
    pub max_pairs: usize,
    /// Largest fraction of slots a node may spend in bursts (0 < b ≤ 1).
    pub duty_budget: f64,
}

impl Default for SlotConfig {
    fn default() -> Self {
        Self {
            slot: Duration::from_secs(5),
            max_pairs: 4,
            duty_budget: 0.01,
        }
    }
}

/// An invalid [`SlotConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlotConfigError {
    /// `max_pairs` is zero.
    #[error("bandwidth schedule: max_pairs must be at least 1")]
    NoPairs,
    /// `duty_budget` is not within (0, 1].
    #[error("bandwidth schedule: duty_budget must be within (0, 1], got {0}")]
    Budget(f64),
    /// A slot half cannot hold a forward and a reverse burst.
    #[error("bandwidth schedule: slot must be at least {0:?}")]
    SlotTooShort(Duration),
}

impl SlotConfig {
    /// Checks the settings against the longest burst a prober may run.
    pub fn validate(&self, max_burst: Duration) -> Result<(), SlotConfigError> {
        if self.max_pairs == 0 {
            return Err(SlotConfigError::NoPairs);
        }
        if !(self.duty_budget > 0.0 && self.duty_budget <= 1.0) {
            return Err(SlotConfigError::Budget(self.duty_budget));
        }
        // Two halves (pod, host), each a forward and a reverse burst.
        let need = max_burst.saturating_mul(4);
        if self.slot < need || self.slot.is_zero() {
            return Err(SlotConfigError::SlotTooShort(
                need.max(Duration::from_millis(1)),
            ));
        }
        Ok(())
    }

    /// Slots per round, `ceil(1 / duty_budget)`; each node bursts in at most
    /// one slot of a round.
    pub fn round_len(&self) -> u64 {
        let l = (1.0 / self.duty_budget).ceil();
        if l.is_finite() && l >= 1.0 {
            // Bounded by the check above; clamp anyway for odd inputs.
            l.min(1e9) as u64
        } else {
            1
        }
    }

    /// The slot that contains `since_epoch` (time since the Unix epoch).
    pub fn slot_at(&self, since_epoch: Duration) -> u64 {
        let len = self.slot.as_millis().max(1);
        u64::try_from(since_epoch.as_millis() / len).unwrap_or(u64::MAX)
    }

    /// Start of `slot`, as time since the Unix epoch.
    pub fn slot_start(&self, slot: u64) -> Duration {
        let ms = u64::try_from(self.slot.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(ms.saturating_mul(slot))
    }
}

/// The node pairs bursting in `slot`, as `(initiator, responder)` indexes
/// into `nodes` (which every agent must pass sorted and deduplicated).
pub fn pairs_in_slot(slot: u64, nodes: &[&str], cfg: &SlotConfig) -> Vec<(usize, usize)> {
    let round_len = cfg.round_len();
    let (round, pos) = (slot / round_len, slot % round_len);
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    let seed = round.to_le_bytes();
    order.sort_by_key(|&i| (stable_hash(&[&seed, nodes[i].as_bytes()]), i));
    let max_pairs = cfg.max_pairs.max(1);
    let capacity = usize::try_from(round_len)
        .unwrap_or(usize::MAX)
        .saturating_mul(max_pairs);
    let used = (nodes.len() / 2).min(capacity);
    let groups = used.div_ceil(max_pairs);
    // Group g runs at position g·L/G: spread evenly over the round.
    let group = (0..groups).find(|g| (*g as u64).saturating_mul(round_len) / groups as u64 == pos);
    let Some(g) = group else {
        return Vec::new();
    };
    (g * max_pairs..((g + 1) * max_pairs).min(used))
        .map(|j| (order[2 * j], order[2 * j + 1]))
        .collect()
}

/// The distinct nodes of `me` and `peers` (Service targets excluded),
/// sorted: the common input of every agent's schedule.
pub fn schedule_nodes<'a>(me: &'a Identity, peers: &'a [Peer]) -> Vec<&'a str> {
    let mut nodes: Vec<&str> = peers
        .iter()
        .filter(|p| p.path.is_none())
        .map(|p| p.node.as_str())
        .chain(std::iter::once(me.node.as_str()))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// One bandwidth measurement this agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// The responder.
    pub peer: Peer,
    /// `pod_cross_node` or `host_cross_node`.
    pub path: PathKind,
    /// When to start, from the slot start.
    pub offset: Duration,
    /// The time it must finish within (half a slot).
    pub budget: Duration,
    /// Run in this order, back to back.
    pub directions: [Direction; 2],
}

/// The bursts `me` initiates in `slot`, given the full (not fanned-out)
/// peer list. Empty in most slots; at most one burst today.
pub fn my_bursts(slot: u64, me: &Identity, peers: &[Peer], cfg: &SlotConfig) -> Vec<Burst> {
    let nodes = schedule_nodes(me, peers);
    let Some(partner) = pairs_in_slot(slot, &nodes, cfg)
        .into_iter()
        .find(|(a, _)| nodes[*a] == me.node)
        .map(|(_, b)| nodes[b])
    else {
        return Vec::new();
    };
    partner_bursts(me, peers, partner, cfg)
}

/// The bursts `me` runs with `partner`'s node: to the same-kind agent
/// there (the smallest name if a rollout briefly runs two), if any.
pub(crate) fn partner_bursts(
    me: &Identity,
    peers: &[Peer],
    partner: &str,
    cfg: &SlotConfig,
) -> Vec<Burst> {
    peers
        .iter()
        .filter(|p| p.path.is_none() && p.node == partner && p.kind == me.kind)
        .min_by(|a, b| a.name.cmp(&b.name))
        .and_then(|peer| burst_to(me, peer, cfg))
        .into_iter()
        .collect()
}

/// A burst from `me` to `peer` at `me`'s half of the slot.
pub(crate) fn burst_to(me: &Identity, peer: &Peer, cfg: &SlotConfig) -> Option<Burst> {
    let local = path::Endpoint {
        node: &me.node,
        kind: me.kind,
    };
    let remote = path::Endpoint {
        node: &peer.node,
        kind: peer.kind,
    };
    let path = path::classify(local, remote)?;
    let half = cfg.slot / 2;
    Some(Burst {
        peer: peer.clone(),
        path,
        offset: match me.kind {
            AgentKind::Pod => Duration::ZERO,
            AgentKind::Host => half,
        },
        budget: half,
        directions: [Direction::Send, Direction::Receive],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ProbePorts;
    use std::collections::HashMap;

    fn cluster(n: usize) -> Vec<Peer> {
        (0..n)
            .flat_map(|i| {
                [AgentKind::Pod, AgentKind::Host].map(|kind| Peer {
                    name: format!("{kind}-{i}"),
                    address: "127.0.0.1".parse().expect("ip"),
                    node: format!("node-{i:04}"),
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

    /// Node-level check (fast enough for 1000 nodes): pairs per slot are
    /// disjoint and capped; returns the largest fraction of slots any node
    /// spent in bursts.
    fn simulate_pairs(n: usize, cfg: &SlotConfig, rounds: u64) -> f64 {
        let names: Vec<String> = (0..n).map(|i| format!("node-{i:04}")).collect();
        let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
        let slots = rounds * cfg.round_len();
        let mut busy = vec![0u64; n];
        for slot in 0..slots {
            let pairs = pairs_in_slot(slot, &nodes, cfg);
            assert!(pairs.len() <= cfg.max_pairs);
            let mut seen = std::collections::HashSet::new();
            for (a, b) in pairs {
                assert!(seen.insert(a) && seen.insert(b), "slot {slot}: node twice");
                busy[a] += 1;
                busy[b] += 1;
            }
        }
        busy.iter().copied().max().unwrap_or(0) as f64 / slots as f64
    }

    /// Agent-level check: every agent computes its own bursts, as in a real
    /// cluster. Checks the per-slot invariants over `rounds` rounds and
    /// returns the largest fraction of slots any node spent in bursts.
    fn simulate(n: usize, cfg: &SlotConfig, rounds: u64) -> f64 {
        let peers = cluster(n);
        let slots = rounds * cfg.round_len();
        let mut busy: HashMap<String, u64> = HashMap::new();
        for slot in 0..slots {
            // Every agent computes its own bursts, as in a real cluster.
            let mut at: HashMap<Duration, Vec<String>> = HashMap::new();
            let mut pairs = std::collections::BTreeSet::new();
            for p in &peers {
                for b in my_bursts(slot, &identity(p), &peers, cfg) {
                    assert_eq!(b.peer.kind, p.kind, "pod to pod, host to host");
                    assert!(b.offset + b.budget <= cfg.slot);
                    at.entry(b.offset)
                        .or_default()
                        .extend([p.node.clone(), b.peer.node.clone()]);
                    pairs.insert((p.node.clone(), b.peer.node.clone()));
                }
            }
            assert!(pairs.len() <= cfg.max_pairs, "slot {slot}: {pairs:?}");
            for (offset, nodes) in &at {
                let mut uniq = nodes.clone();
                uniq.sort();
                uniq.dedup();
                assert_eq!(
                    uniq.len(),
                    nodes.len(),
                    "slot {slot}+{offset:?}: node twice"
                );
                assert!(nodes.len() / 2 <= cfg.max_pairs);
            }
            // Pod and host halves pair the same nodes: back to back.
            if let (Some(pod), Some(host)) = (at.get(&Duration::ZERO), at.get(&(cfg.slot / 2))) {
                assert_eq!(pod, host, "slot {slot}");
            }
            for (a, b) in pairs {
                *busy.entry(a).or_default() += 1;
                *busy.entry(b).or_default() += 1;
            }
        }
        let max = busy.values().copied().max().unwrap_or(0);
        max as f64 / slots as f64
    }

    #[test]
    fn duty_cycle_within_budget_over_many_slots() {
        let cfg = SlotConfig::default();
        assert_eq!(cfg.round_len(), 100);
        for (n, rounds) in [(2, 50), (3, 50), (10, 20)] {
            let duty = simulate(n, &cfg, rounds);
            eprintln!("nodes={n} max duty (slots) = {:.4}%", duty * 100.0);
            assert!(duty <= cfg.duty_budget, "n={n}: duty {duty}");
            assert!(duty > 0.0, "n={n}: nobody measured");
            assert_eq!(
                duty,
                simulate_pairs(n, &cfg, rounds),
                "agents agree with pairs"
            );
        }
        for n in [57, 1000] {
            let duty = simulate_pairs(n, &cfg, 20);
            eprintln!("nodes={n} max duty (slots) = {:.4}%", duty * 100.0);
            assert!(duty <= cfg.duty_budget && duty > 0.0, "n={n}: duty {duty}");
        }
    }

    #[test]
    fn large_cluster_keeps_cap_and_budget() {
        let cfg = SlotConfig::default();
        // 500 pairs per round but capacity 400: the cap binds every slot.
        let peers = cluster(1000);
        let me = identity(&peers[0]);
        let nodes = schedule_nodes(&me, &peers);
        for slot in 0..cfg.round_len() {
            assert_eq!(pairs_in_slot(slot, &nodes, &cfg).len(), cfg.max_pairs);
        }
    }

    #[test]
    fn every_pair_is_eventually_measured() {
        let cfg = SlotConfig {
            duty_budget: 0.1,
            ..SlotConfig::default()
        };
        let peers = cluster(6);
        let me = identity(&peers[0]);
        let nodes = schedule_nodes(&me, &peers);
        let mut seen = std::collections::BTreeSet::new();
        for slot in 0..cfg.round_len() * 200 {
            for (a, b) in pairs_in_slot(slot, &nodes, &cfg) {
                seen.insert((a.min(b), a.max(b)));
            }
        }
        assert_eq!(seen.len(), 6 * 5 / 2);
    }

    #[test]
    fn slot_arithmetic_and_validation() {
        let cfg = SlotConfig::default();
        assert_eq!(cfg.slot_at(Duration::from_millis(14_999)), 2);
        assert_eq!(cfg.slot_start(3), Duration::from_secs(15));
        assert!(cfg.validate(Duration::from_secs(1)).is_ok());
        let bad = SlotConfig {
            duty_budget: 0.0,
            ..cfg
        };
        assert!(bad.validate(Duration::from_secs(1)).is_err());
        let short = SlotConfig {
            slot: Duration::from_secs(3),
            ..cfg
        };
        assert!(short.validate(Duration::from_secs(1)).is_err());
    }
}
