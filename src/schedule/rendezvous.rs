//! Bounded fan-out by rendezvous (highest-random-weight) hashing.
//!
//! Up to `max_peers` peer nodes every agent probes every node (full mesh).
//! Above that, each agent keeps the `max_peers` peer nodes with the highest
//! weight `hash(my node, peer node)`, plus every agent on its own node. The
//! unit is the node, not the agent, so the pod and host agents of a node pick
//! the same peer nodes and their pod vs host results stay comparable; and the
//! per-peer series are keyed by `peer_node` anyway.
//!
//! Rendezvous hashing is stable under churn: a node joining or leaving
//! changes at most one node of any other agent's selection.

use std::collections::BTreeSet;

use crate::peer::{Identity, Peer};

/// Default `max_peers`: full mesh up to 200 peer nodes.
pub const DEFAULT_MAX_PEERS: usize = 200;

/// FNV-1a, then a SplitMix64 finaliser: stable across builds and platforms
/// (std's hasher is not guaranteed to be), which matters while agents of two
/// versions run side by side during a rollout.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous weight of `peer_node` as seen from `my_node`.
pub fn weight(my_node: &str, peer_node: &str) -> u64 {
    stable_hash(&[my_node.as_bytes(), peer_node.as_bytes()])
}

/// The peer nodes `my_node` probes among `nodes` (its own node excluded):
/// all of them up to `max_peers`, else the `max_peers` with the highest
/// weight (ties broken by name, so the result is fully deterministic).
pub fn select_nodes<'a>(
    my_node: &str,
    nodes: impl IntoIterator<Item = &'a str>,
    max_peers: usize,
) -> BTreeSet<&'a str> {
    let others: BTreeSet<&str> = nodes.into_iter().filter(|n| *n != my_node).collect();
    if others.len() <= max_peers {
        return others;
    }
    let mut ranked: Vec<(u64, &str)> = others
        .into_iter()
        .map(|n| (weight(my_node, n), n))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.into_iter().take(max_peers).map(|(_, n)| n).collect()
}

/// The peers `me` probes: every agent on its own node, every agent on the
/// selected peer nodes, and every peer with an explicit path (Service
/// targets). Order is preserved.
pub fn fan_out(me: &Identity, peers: &[Peer], max_peers: usize) -> Vec<Peer> {
    let chosen = select_nodes(
        &me.node,
        peers
            .iter()
            .filter(|p| p.path.is_none())
            .map(|p| p.node.as_str()),
        max_peers,
    );
    peers
        .iter()
        .filter(|p| p.path.is_some() || p.node == me.node || chosen.contains(p.node.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    #[test]
    fn full_mesh_up_to_max() {
        let ns = nodes(11);
        let got = select_nodes("node-0000", ns.iter().map(String::as_str), 10);
        assert_eq!(got.len(), 10);
        assert!(!got.contains("node-0000"));
    }

    #[test]
    fn bounded_above_max_and_deterministic() {
        let ns = nodes(1000);
        let a = select_nodes("node-0007", ns.iter().map(String::as_str), 20);
        let b = select_nodes("node-0007", ns.iter().rev().map(String::as_str), 20);
        assert_eq!(a.len(), 20);
        assert_eq!(a, b, "input order must not matter");
        let other = select_nodes("node-0008", ns.iter().map(String::as_str), 20);
        assert_ne!(a, other, "different agents spread their probes");
    }

    #[test]
    fn stable_under_churn() {
        let ns = nodes(300);
        let me = "node-0000";
        let before = select_nodes(me, ns.iter().map(String::as_str), 50);
        // Remove a node that was not selected: nothing changes.
        let unselected = ns
            .iter()
            .find(|n| n.as_str() != me && !before.contains(n.as_str()))
            .expect("some node is unselected");
        let after = select_nodes(
            me,
            ns.iter().filter(|n| *n != unselected).map(String::as_str),
            50,
        );
        assert_eq!(before, after);
        // Remove a selected node: exactly one replacement.
        let selected = before.iter().next().copied().expect("non-empty");
        let after = select_nodes(
            me,
            ns.iter().map(String::as_str).filter(|n| *n != selected),
            50,
        );
        assert_eq!(before.difference(&after).count(), 1);
        assert_eq!(after.len(), 50);
        // Add a node: at most one changes.
        let mut more = ns.clone();
        more.push("node-new".into());
        let after = select_nodes(me, more.iter().map(String::as_str), 50);
        assert!(before.difference(&after).count() <= 1);
    }

    #[test]
    fn each_node_is_probed_by_about_k_others() {
        let ns = nodes(400);
        let k = 20;
        let mut indegree = std::collections::HashMap::<&str, usize>::new();
        for me in &ns {
            for n in select_nodes(me, ns.iter().map(String::as_str), k) {
                *indegree.entry(n).or_default() += 1;
            }
        }
        // Mean is exactly k; HRW keeps the spread modest (binomial-ish).
        let max = indegree.values().copied().max().unwrap_or(0);
        assert!(max < 3 * k, "hot spot: a node probed by {max} agents");
        assert_eq!(indegree.values().sum::<usize>(), ns.len() * k);
    }
}
