//! The agent's series budget: how many series an agent exports for a given
//! set of probe targets, exactly, and which targets fit a hard budget.
//!
//! The formula counts what the metrics code creates with the default probe
//! settings (UDP, TCP, ICMP, TCP connect, HTTP, path MTU and bandwidth all
//! on). With some probes off an agent exports fewer series, never more, so
//! the functions stay upper bounds.
//!
//! `S = SERIES_FIXED + SERIES_PER_PATH·P + SERIES_PER_SERVICE_PATH·Pₛ +
//! SERIES_PER_PEER_KEY·K + SERIES_PER_SERVICE_KEY·Kₛ + C + N`, where `P`
//! is the number of agent path kinds in use and `Pₛ` of Service path kinds
//! (ICMP does not probe a Service address, [`PathKind::probed_with_icmp`],
//! so they carry no ICMP series), `K` and `Kₛ` the numbers of (path,
//! peer_node) keys on them, `C` how many keys are on a cross-node path
//! (they also carry the peer's clock offset) and `N` the number of peer
//! nodes among them (each may be expected down: a drain must not break the
//! budget). `docs/metrics.md` carries the same formula; the test at the
//! bottom builds every series through the real metrics code and checks it
//! exactly.

use std::collections::{BTreeSet, HashSet};

use super::labels::{
    ApiserverOutcome, ApiserverPhase, ApiserverTarget, DnsOutcome, ExcludeReason, IcmpMode,
    ProbeErrorReason, RejectReason, ResponderKind,
};
use crate::auth::KeyState;
use crate::peer::PathKind;
use crate::peer::Target;
use crate::proto::dns::MAX_NAMESERVERS;

use super::catalog::{COARSE_BUCKETS, RTT_BUCKETS};
use super::has_clock_offset;

/// Default `metrics.max_series`: the most series one agent exports. The
/// controller's default fan-out (at most 28 peer nodes, see the plan's
/// `PlanConfig` tests) fits with the cluster DNS and apiserver probes on.
pub const DEFAULT_MAX_SERIES: usize = 2000;

/// Lines of a histogram with the fine layout: buckets, `+Inf`, `_sum`,
/// `_count`.
const HISTOGRAM: usize = RTT_BUCKETS + 3;
/// Lines of a histogram with the coarse layout.
const COARSE_HISTOGRAM: usize = COARSE_BUCKETS + 3;

/// Series per (path, peer_node) key: sent, lost and windowed minimum RTT for
/// each of the 3 latency protocols; the UDP reply RTT sum and jitter (the
/// node x node RTT matrix); path and interface MTU; 2 directions × 2
/// bandwidth gauges (goodput, last burst); retransmits.
pub const SERIES_PER_PEER_KEY: usize = 3 * 3 + 2 + 2 + 2 * 2 + 1;
/// Series per key on a Service path: [`SERIES_PER_PEER_KEY`] without the
/// ICMP sent, lost and windowed minimum.
pub const SERIES_PER_SERVICE_KEY: usize = SERIES_PER_PEER_KEY - 3;
/// Extra series per key on a cross-node path: the peer's clock offset.
pub const SERIES_PER_CROSS_NODE_KEY: usize = 1;
/// Series per peer node of the targets (the Service ClusterIP's
/// `peer_node`, the Service, excepted): its `kubepulse_peer_expected_down`,
/// counted whether or not the node is expected down now.
pub const SERIES_PER_PEER_NODE: usize = 1;
/// Series per path kind in use: RTT histograms (3 protocols × 20 lines),
/// errors (4 protocols × 5 reasons), exclusions (4 protocols × 1 reason),
/// TCP connect histogram (20), HTTP phase histograms (3 × 20), bandwidth
/// bursts (2 directions × 3 outcomes).
pub const SERIES_PER_PATH: usize = 3 * HISTOGRAM + 4 * 5 + 4 + HISTOGRAM + 3 * HISTOGRAM + 2 * 3;
/// Series per Service path kind in use: [`SERIES_PER_PATH`] without ICMP's
/// RTT histogram, error and exclusion counters.
pub const SERIES_PER_SERVICE_PATH: usize =
    SERIES_PER_PATH - HISTOGRAM - ProbeErrorReason::ALL.len() - ExcludeReason::ALL.len();
/// Series of the cluster reachability probes, independent of peers: the
/// DNS lookup histogram (20 lines, the agent's one network), lookups by
/// nameserver (at most `MAX_NAMESERVERS`) × outcome, and the apiserver
/// phase histograms (2 targets × 3 phases × 12 lines, coarse buckets) and
/// probes by target × outcome.
pub const SERIES_CLUSTER_REACH: usize = HISTOGRAM
    + MAX_NAMESERVERS * DnsOutcome::ALL.len()
    + ApiserverTarget::ALL.len() * ApiserverPhase::ALL.len() * COARSE_HISTOGRAM
    + ApiserverTarget::ALL.len() * ApiserverOutcome::ALL.len();
/// Series independent of peers: send-late (3), responder requests (one per
/// responder), rejections (responders × reasons), connections (3), ICMP
/// mode (one per mode), burst key state (one per state), peers by path (one
/// per path kind), peers not Ready, targets over budget, build info,
/// discovery (2), the 7 `process_*` series and the cluster reachability
/// probes ([`SERIES_CLUSTER_REACH`]). Counted from the label enums, so a new
/// label value moves the formula with it.
pub const SERIES_FIXED: usize = 3
    + ResponderKind::ALL.len()
    + ResponderKind::ALL.len() * RejectReason::ALL.len()
    + 3
    + IcmpMode::ALL.len()
    + KeyState::ALL.len()
    + PathKind::ALL.len()
    + 1
    + 1
    + 1
    + 2
    + 7
    + SERIES_CLUSTER_REACH;
/// Agent path kinds an agent uses: pod agents pod_cross_node and
/// pod_to_host, host agents host_cross_node and host_to_pod. pod_same_node
/// adds one when a node runs two pod agents.
pub const PATHS_PER_AGENT: usize = 2;
/// Service path kinds an agent uses: service_clusterip and
/// service_nodeport, one key each.
pub const SERVICE_PATHS_PER_AGENT: usize = 2;

/// What an agent's series depend on: its (path, peer_node) keys and path
/// kinds, those through a Service apart (no ICMP series there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesShape {
    /// Keys on agent paths (pod and host ends).
    pub keys: usize,
    /// Keys on Service paths.
    pub service_keys: usize,
    /// Keys on a cross-node path (part of `keys`).
    pub cross_node_keys: usize,
    /// Peer nodes among the keys.
    pub peer_nodes: usize,
    /// Agent path kinds in use.
    pub paths: usize,
    /// Service path kinds in use.
    pub service_paths: usize,
}

impl SeriesShape {
    /// The series an agent of this shape exports.
    pub fn series(&self) -> usize {
        SERIES_FIXED
            + SERIES_PER_PATH * self.paths
            + SERIES_PER_SERVICE_PATH * self.service_paths
            + SERIES_PER_PEER_KEY * self.keys
            + SERIES_PER_SERVICE_KEY * self.service_keys
            + SERIES_PER_CROSS_NODE_KEY * self.cross_node_keys.min(self.keys)
            + SERIES_PER_PEER_NODE * self.peer_nodes.min(self.keys + self.service_keys)
    }
}

/// The series an agent exports with `peer_keys` (path, peer_node) keys, of
/// which `cross_node_keys` are on a cross-node path, to `peer_nodes` peer
/// nodes, over `paths` path kinds, none of them through a Service.
pub fn series_for(
    peer_keys: usize,
    cross_node_keys: usize,
    peer_nodes: usize,
    paths: usize,
) -> usize {
    SeriesShape {
        keys: peer_keys,
        cross_node_keys,
        peer_nodes,
        paths,
        ..SeriesShape::default()
    }
    .series()
}

/// The most (path, peer_node) keys that fit `budget` over `paths` path
/// kinds, counting every key as cross-node and to a node of its own (the
/// worst case). 0 when even the fixed and per-path series exceed the
/// budget.
pub fn max_peer_keys(budget: usize, paths: usize) -> usize {
    let base = SERIES_FIXED + SERIES_PER_PATH * paths;
    budget.saturating_sub(base)
        / (SERIES_PER_PEER_KEY + SERIES_PER_CROSS_NODE_KEY + SERIES_PER_PEER_NODE)
}

/// The series of one agent with `peer_nodes` other nodes, each running a pod
/// and a host agent, fanned out to `max_peers` nodes, plus the Service
/// targets: `2·m + 1 + s` agent keys (m = min(n, max_peers); `s` extra
/// agents on the agent's own node, 0 outside rollouts) and 2 Service keys,
/// `m` of them cross-node, to `m + 1` nodes (its own included; the NodePort
/// target is one of them), over `2 + [s > 0]` agent path kinds and 2
/// Service path kinds.
pub fn series_bound(peer_nodes: usize, max_peers: usize, same_node_extra: usize) -> usize {
    let m = peer_nodes.min(max_peers);
    SeriesShape {
        keys: 2 * m + 1 + same_node_extra,
        service_keys: SERVICE_PATHS_PER_AGENT,
        cross_node_keys: m,
        peer_nodes: m + 1,
        paths: PATHS_PER_AGENT + usize::from(same_node_extra > 0),
        service_paths: SERVICE_PATHS_PER_AGENT,
    }
    .series()
}

/// The most peer nodes a pod or host agent can fan out to within `budget`
/// (the `max_peers` for [`series_bound`]), with `same_node_extra` extra
/// agents on its own node; 0 when not even one fits.
pub fn max_peer_nodes(budget: usize, same_node_extra: usize) -> usize {
    let keys_per_node = 2 * SERIES_PER_PEER_KEY + SERIES_PER_CROSS_NODE_KEY + SERIES_PER_PEER_NODE;
    let base = series_bound(0, 0, same_node_extra);
    budget.saturating_sub(base) / keys_per_node
}

/// The targets that fit `budget`, in their given order: a target whose key
/// is already kept costs nothing; a new key (and a new path kind) is kept
/// only while the total stays within the budget. Returns the kept targets
/// and how many were left out.
pub fn fit(targets: Vec<Target>, budget: usize) -> (Vec<Target>, usize) {
    let mut keys: HashSet<(PathKind, &str)> = HashSet::new();
    let mut paths: HashSet<PathKind> = HashSet::new();
    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    let mut shape = SeriesShape::default();
    let mut keep = Vec::with_capacity(targets.len());
    for t in &targets {
        let key = (t.path, t.peer.node.as_str());
        if keys.contains(&key) {
            keep.push(true);
            continue;
        }
        let node = has_node(t).then_some(t.peer.node.as_str());
        let mut next = shape;
        let new_path = !paths.contains(&t.path);
        if t.path.is_service() {
            next.service_keys += 1;
            next.service_paths += usize::from(new_path);
        } else {
            next.keys += 1;
            next.paths += usize::from(new_path);
        }
        next.cross_node_keys += usize::from(has_clock_offset(t.path));
        next.peer_nodes += usize::from(node.is_some_and(|n| !nodes.contains(n)));
        let fits = next.series() <= budget;
        if fits {
            keys.insert(key);
            paths.insert(t.path);
            nodes.extend(node);
            shape = next;
        }
        keep.push(fits);
    }
    let dropped = keep.iter().filter(|k| !**k).count();
    let kept = targets
        .into_iter()
        .zip(keep)
        .filter_map(|(t, k)| k.then_some(t))
        .collect();
    (kept, dropped)
}

/// Whether `t`'s `peer_node` is a node (that may be expected down): every
/// path's but the Service ClusterIP's, whose `peer_node` is the Service.
pub fn has_node(t: &Target) -> bool {
    t.path != PathKind::ServiceClusterip
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::labels::{Direction, IcmpMode, Protocol};
    use crate::metrics::{register_process_metrics, AgentMetrics};
    use crate::peer::AgentKind;
    use crate::peer::{targets, Identity, Peer, ProbePorts};

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

    fn me() -> Identity {
        Identity {
            name: "agent-pod-0".into(),
            node: "node-0000".into(),
            kind: AgentKind::Pod,
        }
    }

    /// The targets of a pod agent on node 0 with `nodes` nodes (a pod and a
    /// host agent each, `extra` more pod agents on node 0), fanned out as
    /// the Kubernetes discovery does, Services included.
    fn plan(nodes: usize, max_peers: usize, extra: usize) -> Vec<Target> {
        let mut peers: Vec<Peer> = (0..nodes)
            .flat_map(|i| [agent(i, AgentKind::Pod), agent(i, AgentKind::Host)])
            .collect();
        for i in 0..extra {
            let mut p = agent(0, AgentKind::Pod);
            p.name = format!("agent-pod-0-new-{i}");
            peers.push(p);
        }
        // The first `max_peers` other nodes: which ones does not matter.
        let mut probe: Vec<Peer> = peers
            .into_iter()
            .filter(|p| {
                let i: usize = p.node.trim_start_matches("node-").parse().expect("index");
                i <= max_peers
            })
            .collect();
        let mut svc = agent(1, AgentKind::Pod);
        svc.name = "service-clusterip/kubepulse-agent".into();
        svc.node = "kubepulse-agent".into();
        svc.path = Some(PathKind::ServiceClusterip);
        probe.push(svc.clone());
        svc.name = "service-nodeport/kubepulse-agent".into();
        svc.node = "node-0001".into();
        svc.path = Some(PathKind::ServiceNodeport);
        probe.push(svc);
        targets(&me(), &probe)
    }

    /// Every series an agent can create for `targets`, through the real
    /// metrics code: every writer of every per-peer series has written.
    fn simulate(targets: &[Target]) -> usize {
        use std::collections::BTreeMap;
        let registry = prometheus::Registry::new();
        register_process_metrics(&registry).expect("process metrics");
        crate::metrics::DiscoveryMetrics::new(&registry).expect("discovery");
        let m = AgentMetrics::new(registry.clone()).expect("metrics");
        m.set_icmp_mode(IcmpMode::Dgram);
        m.set_burst_key_state(KeyState::Loaded);
        // The most nameservers a resolver configuration yields.
        let ns: Vec<String> = (1..=MAX_NAMESERVERS)
            .map(|i| format!("10.96.0.{i}"))
            .collect();
        m.precreate_dns(AgentKind::Pod, &ns);
        m.precreate_apiserver(AgentKind::Pod);
        // A drain of every peer node at once: the worst case.
        let down: BTreeMap<String, crate::peer::NodeState> = targets
            .iter()
            .filter(|t| has_node(t))
            .map(|t| (t.peer.node.clone(), crate::peer::NodeState::Cordoned))
            .collect();
        m.set_expected_down(&down);
        for t in targets {
            let (path, node) = (t.path, t.peer.node.as_str());
            m.precreate_peer(path, node, Protocol::ALL);
            m.set_path_mtu(path, node, 1500, 1500);
            for d in Direction::ALL {
                m.record_burst(path, node, *d, 1.0, 0, 1.0);
            }
            if let Some(g) = m.clock_offset(path, node) {
                g.set(0.001);
            }
        }
        count(&registry)
    }

    #[test]
    fn series_count_matches_the_formula_and_stays_bounded() {
        for (nodes, max, extra) in [
            (11, 200, 0),
            (33, 200, 0),
            (201, 200, 0),
            (1001, 200, 0),
            (1001, 20, 0),
            (33, 200, 1),
        ] {
            let got = simulate(&plan(nodes, max, extra));
            let bound = series_bound(nodes - 1, max, extra);
            eprintln!(
                "peer nodes={} max_peers={max} extra={extra}: {got} series (bound {bound})",
                nodes - 1
            );
            // Exact: every term of the formula is really used.
            assert_eq!(got, bound);
        }
        assert_eq!(
            simulate(&plan(1001, 200, 0)),
            simulate(&plan(201, 200, 0)),
            "flat above max_peers"
        );
    }

    /// The numbers docs/metrics.md ("Cardinality") and docs/deploy.md give.
    #[test]
    fn the_documented_formula_is_this_one() {
        assert_eq!(
            (
                SERIES_FIXED,
                SERIES_PER_PATH,
                SERIES_PER_SERVICE_PATH,
                SERIES_PER_PEER_KEY,
                SERIES_PER_SERVICE_KEY
            ),
            (200, 170, 144, 18, 15)
        );
        for m in [0, 10, 28, 200] {
            assert_eq!(series_bound(m, m, 0), 877 + 38 * m, "{m}");
        }
        assert_eq!(max_peer_nodes(DEFAULT_MAX_SERIES, 0), 29);
    }

    #[test]
    fn max_peer_nodes_is_the_largest_that_fits() {
        for budget in [0, 1000, 2000, 10_000] {
            for extra in [0, 1, 2] {
                let m = max_peer_nodes(budget, extra);
                if series_bound(0, 0, extra) <= budget {
                    assert!(series_bound(m, m, extra) <= budget);
                }
                assert!(
                    series_bound(m + 1, m + 1, extra) > budget,
                    "{budget} {extra}"
                );
            }
        }
    }

    #[test]
    fn max_peer_keys_is_the_largest_that_fits() {
        for budget in [0, 500, 1000, 2000, 5000] {
            for paths in [1, 4, 5] {
                let k = max_peer_keys(budget, paths);
                if k > 0 {
                    assert!(series_for(k, k, k, paths) <= budget);
                }
                if SERIES_FIXED + SERIES_PER_PATH * paths <= budget {
                    assert!(
                        series_for(k + 1, k + 1, k + 1, paths) > budget,
                        "{budget} {paths}"
                    );
                }
            }
        }
    }

    /// Whatever discovery hands the agent, the kept targets' real series
    /// stay within the budget, and only what does not fit is left out.
    #[test]
    fn fit_enforces_the_budget_on_real_series() {
        for (nodes, budget) in [(201, 2000), (201, 900), (11, 2000), (33, 2000), (33, 1968)] {
            let all = plan(nodes, 200, 0);
            let n = all.len();
            let (kept, dropped) = fit(all.clone(), budget);
            assert_eq!(kept.len() + dropped, n);
            let got = simulate(&kept);
            assert!(
                got <= budget,
                "{nodes} nodes, budget {budget}: {got} series"
            );
            if dropped == 0 {
                assert_eq!(got, simulate(&all));
            } else {
                // One more key would not have fitted (within a key's worth).
                assert!(
                    got + SERIES_PER_PEER_KEY
                        + SERIES_PER_CROSS_NODE_KEY
                        + SERIES_PER_PEER_NODE
                        + SERIES_PER_PATH
                        > budget,
                    "{got}"
                );
            }
        }
        // 28 peer nodes at the default budget: nothing is left out.
        assert_eq!(fit(plan(29, 200, 0), DEFAULT_MAX_SERIES).1, 0);
        // 200 peer nodes without a bounded fan-out: capped, and visible.
        let (kept, dropped) = fit(plan(201, 200, 0), DEFAULT_MAX_SERIES);
        assert!(dropped > 0 && !kept.is_empty());
    }
}
