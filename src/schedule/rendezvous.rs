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

use crate::discovery::{Identity, Peer};

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

/// Series per (path, peer_node) key: 3 latency protocols × 6 (sent, lost,
/// replies, reply RTT sum, jitter, RTT min) + path and interface MTU + 2
/// directions × 2 bandwidth gauges + retransmits.
pub const SERIES_PER_PEER_KEY: usize = 3 * 6 + 2 + 2 * 2 + 1;
/// Series per path kind in use: RTT histograms (3 protocols × 20 lines),
/// errors (4 protocols × 5 reasons), exclusions (4 protocols × 1 reason),
/// TCP connect histogram (20), HTTP phase histograms (3 × 20), bandwidth
/// bursts (2 directions × 3 outcomes).
pub const SERIES_PER_PATH: usize = 3 * 20 + 4 * 5 + 4 + 20 + 3 * 20 + 2 * 3;
/// Series independent of peers: send-late (3), responder requests (4),
/// rejections (4 × 8), connections (3), ICMP mode (3), peers by path (7),
/// build info, discovery (2) and the 7 `process_*` series.
pub const SERIES_FIXED: usize = 3 + 4 + 4 * 8 + 3 + 3 + 7 + 1 + 2 + 7;
/// Path kinds an agent uses: pod agents pod_cross_node, pod_to_host and the
/// two Service paths; host agents host_cross_node, host_to_pod and the two
/// Service paths. pod_same_node adds one when a node runs two pod agents.
pub const PATHS_PER_AGENT: usize = 4;

/// Upper bound on the series one agent exports with `peer_nodes` other
/// nodes, each running a pod and a host agent, and the Service targets:
/// `62 + 170·(4 + [s > 0]) + 25·(2·min(n, max_peers) + 3 + s)` where `s`
/// is the number of extra agents on the agent's own node (0 outside
/// rollouts).
pub fn series_bound(peer_nodes: usize, max_peers: usize, same_node_extra: usize) -> usize {
    let keys = 2 * peer_nodes.min(max_peers) + 3 + same_node_extra;
    let paths = PATHS_PER_AGENT + usize::from(same_node_extra > 0);
    SERIES_FIXED + SERIES_PER_PATH * paths + SERIES_PER_PEER_KEY * keys
}

#[cfg(test)]
mod series_budget {
    use super::*;
    use crate::discovery::{targets, ProbePorts};
    use crate::labels::{AgentKind, Direction, IcmpMode, PathKind, Protocol};
    use crate::metrics::{register_process_metrics, AgentMetrics};

    fn agent(node: usize, kind: AgentKind) -> Peer {
        Peer {
            name: format!("agent-{kind}-{node}"),
            address: "127.0.0.1".parse().expect("ip"),
            node: format!("node-{node:04}"),
            kind,
            ports: ProbePorts::default(),
            path: None,
        }
    }

    fn count(r: &prometheus::Registry) -> usize {
        r.gather()
            .iter()
            .map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| {
                        if f.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
                            m.get_histogram().get_bucket().len() + 3
                        } else {
                            1
                        }
                    })
                    .sum::<usize>()
            })
            .sum()
    }

    /// Every series a pod agent on node 0 can create with `nodes` nodes,
    /// fanned out as the Kubernetes discovery does, Services included.
    fn simulate(nodes: usize, max_peers: usize) -> usize {
        let mut peers: Vec<Peer> = (0..nodes)
            .flat_map(|i| [agent(i, AgentKind::Pod), agent(i, AgentKind::Host)])
            .collect();
        let me = Identity {
            name: "agent-pod-0".into(),
            node: "node-0000".into(),
            kind: AgentKind::Pod,
        };
        let mut probe = fan_out(&me, &peers, max_peers);
        let mut svc = agent(1, AgentKind::Pod);
        svc.name = "service-clusterip/kubepulse-agent".into();
        svc.node = "kubepulse-agent".into();
        svc.path = Some(PathKind::ServiceClusterip);
        probe.push(svc.clone());
        svc.name = "service-nodeport/kubepulse-agent".into();
        svc.node = "node-0001".into();
        svc.path = Some(PathKind::ServiceNodeport);
        probe.push(svc);
        peers.clear();
        let registry = prometheus::Registry::new();
        register_process_metrics(&registry).expect("process metrics");
        crate::discovery::kubernetes::DiscoveryMetrics::new(&registry).expect("discovery");
        let m = AgentMetrics::new(registry.clone()).expect("metrics");
        m.set_icmp_mode(IcmpMode::Dgram);
        for t in targets(&me, &probe) {
            let (path, node) = (t.path, t.peer.node.as_str());
            m.precreate_peer(path, node, Protocol::ALL);
            m.set_path_mtu(path, node, 1500, 1500);
            for d in Direction::ALL {
                m.record_burst(path, node, *d, 1.0, 0, 1.0);
            }
        }
        count(&registry)
    }

    #[test]
    fn series_count_matches_the_formula_and_stays_bounded() {
        for (nodes, max) in [(11, 200), (201, 200), (1001, 200), (1001, 20)] {
            let got = simulate(nodes, max);
            let bound = series_bound(nodes - 1, max, 0);
            eprintln!(
                "peer nodes={} max_peers={max}: {got} series (bound {bound})",
                nodes - 1
            );
            // Exact: every term of the formula is really used.
            assert_eq!(got, bound);
        }
        assert_eq!(
            simulate(1001, 200),
            simulate(201, 200),
            "flat above max_peers"
        );
    }
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
