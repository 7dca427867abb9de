//! [`BusyNodes`] for the schedule every agent computes itself
//! ([`super::slots`]) from the full peer list: a node is busy in a slot when
//! it is in one of that slot's pairs.
//!
//! The answer for a slot is computed once per (slot, peer list) and cached,
//! so the sample guard's occasional question costs a lock and a binary
//! search, not a matching.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::busy::BusyNodes;
use super::slots::{pairs_in_slot, schedule_nodes, SlotConfig};
use crate::peer::{Identity, PeerSet};

/// Slots remembered: a probe window spans at most two, and the engine and
/// scheduled probes ask about the current and the previous one.
const CACHED_SLOTS: usize = 4;

/// The busy nodes of one slot, computed from one peer list.
struct Entry {
    slot: u64,
    peers: PeerSet,
    /// Sorted node names in a pair of `slot`.
    busy: Vec<String>,
}

/// The agent-computed slot schedule, seen as [`BusyNodes`].
pub struct ComputedSchedule {
    me: Identity,
    peers: watch::Receiver<PeerSet>,
    cfg: SlotConfig,
    cache: Mutex<Vec<Entry>>,
}

impl ComputedSchedule {
    /// Follows `peers` (the full, not fanned-out peer list) as the slot
    /// runner does.
    pub fn new(me: Identity, peers: watch::Receiver<PeerSet>, cfg: SlotConfig) -> Self {
        Self {
            me,
            peers,
            cfg,
            cache: Mutex::new(Vec::with_capacity(CACHED_SLOTS)),
        }
    }
}

/// The sorted names of the nodes in a pair of `slot`.
pub fn busy_nodes(
    slot: u64,
    me: &Identity,
    peers: &[crate::peer::Peer],
    cfg: &SlotConfig,
) -> Vec<String> {
    let nodes = schedule_nodes(me, peers);
    let mut busy: Vec<String> = pairs_in_slot(slot, &nodes, cfg)
        .into_iter()
        .flat_map(|(a, b)| [nodes[a].to_owned(), nodes[b].to_owned()])
        .collect();
    busy.sort_unstable();
    busy
}

impl BusyNodes for ComputedSchedule {
    fn busy(&self, slot: u64, node: &str) -> bool {
        let peers = self.peers.borrow().clone();
        // A poisoned lock only means another thread panicked mid-update;
        // the cache is rebuilt from scratch then.
        let mut cache = self.cache.lock().unwrap_or_else(|p| {
            let mut c = p.into_inner();
            c.clear();
            c
        });
        let hit = cache
            .iter()
            .position(|e| e.slot == slot && Arc::ptr_eq(&e.peers, &peers));
        let i = match hit {
            Some(i) => i,
            None => {
                if cache.len() >= CACHED_SLOTS {
                    // Oldest slot out: time moves forward.
                    if let Some(old) = (0..cache.len()).min_by_key(|&k| cache[k].slot) {
                        cache.swap_remove(old);
                    }
                }
                let busy = busy_nodes(slot, &self.me, &peers, &self.cfg);
                cache.push(Entry { slot, peers, busy });
                cache.len() - 1
            }
        };
        cache[i]
            .busy
            .binary_search_by(|n| n.as_str().cmp(node))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::AgentKind;
    use crate::peer::Peer;

    fn peer(node: &str) -> Peer {
        Peer::on_loopback(&format!("host-{node}"), node, AgentKind::Host)
    }

    #[test]
    fn busy_matches_the_pairs_of_the_slot() {
        let cfg = SlotConfig {
            duty_budget: 0.25,
            max_pairs: 1,
            ..SlotConfig::default()
        };
        let me = Identity {
            name: "host-a".into(),
            node: "a".into(),
            kind: AgentKind::Host,
        };
        let peers: PeerSet = Arc::new(["b", "c", "d"].map(peer).to_vec());
        let (tx, rx) = watch::channel(peers.clone());
        let s = ComputedSchedule::new(me.clone(), rx, cfg);
        let mut busy_slots = 0;
        for slot in 0..40 {
            let nodes = schedule_nodes(&me, &peers);
            let pairs = pairs_in_slot(slot, &nodes, &cfg);
            for n in ["a", "b", "c", "d"] {
                let want = pairs.iter().any(|(x, y)| nodes[*x] == n || nodes[*y] == n);
                assert_eq!(s.busy(slot, n), want, "slot {slot} node {n}");
                busy_slots += usize::from(want);
            }
            assert!(!s.busy(slot, "unknown"));
        }
        assert!(busy_slots > 0, "some slot has a pair");
        // A new peer list is seen at once: alone, nobody is busy.
        tx.send(Arc::new(Vec::new())).expect("send");
        assert!((0..40).all(|slot| !s.busy(slot, "a")));
    }
}
