//! From a [`Window`] of samples to a [`Report`]: pure, so the scrape
//! source, the Prometheus source and the live page all compute the same
//! numbers the same way.

use std::collections::BTreeMap;

use crate::metrics::labels::{Direction, HttpPhase, Protocol};

use crate::metrics::catalog as c;
use crate::peer::PathKind;

use super::model::{
    ApiRow, ControlPlane, ExpectedDown, LifecycleRow, MatrixCell, PathRow, PhaseRow, Quantiles,
    ReachRow, Report, Rtt,
};
use super::quantile::histogram_quantile;
use super::snapshot::Window;

/// Path kinds in report order: the host baseline first, then the paths the
/// seed reports compare against it.
pub(crate) const PATH_ORDER: [PathKind; 7] = [
    PathKind::HostCrossNode,
    PathKind::PodSameNode,
    PathKind::PodCrossNode,
    PathKind::PodToHost,
    PathKind::HostToPod,
    PathKind::ServiceClusterip,
    PathKind::ServiceNodeport,
];

/// The pod startup SLO (SIG Scalability): p99 ≤ 5 s.
pub(crate) const POD_STARTUP_SLO_SECONDS: f64 = 5.0;

/// Labels that name the probing node, in order of preference: the scrape's
/// `node` target label in a cluster, local mode's `agent` label.
const SOURCE_LABELS: [&str; 2] = ["node", "agent"];

/// Builds the report of `w`; `source` says where the samples came from.
pub fn build(w: &Window, source: &str) -> Report {
    let mut paths: Vec<PathRow> = PATH_ORDER.iter().filter_map(|p| path_row(w, *p)).collect();
    let base = paths
        .iter()
        .find(|r| r.path == PathKind::HostCrossNode.as_str())
        .map(|r| (r.udp_mean, r.bandwidth_send));
    if let Some((base_rtt, base_bw)) = base {
        for r in &mut paths {
            r.rtt_overhead = ratio(r.udp_mean, base_rtt).map(|x| x - 1.0);
            r.bandwidth_overhead = ratio(r.bandwidth_send, base_bw).map(|x| 1.0 - x);
        }
    }
    Report {
        source: source.to_string(),
        window_seconds: w.seconds,
        paths,
        matrix: matrix(w),
        control_plane: control_plane(w),
        reach: reach(w),
        lifecycle: lifecycle(w),
    }
}

/// One row per source with peers not Ready or peer nodes expected down;
/// an agent's own page, without a source label, is `-`.
fn lifecycle(w: &Window) -> Vec<LifecycleRow> {
    let mut rows: BTreeMap<String, LifecycleRow> = BTreeMap::new();
    for s in w.select(c::PEERS_NOT_READY.name, &[]) {
        lifecycle_row(&mut rows, &s.labels).peers_not_ready += s.value;
    }
    for s in w.select(c::PEER_EXPECTED_DOWN.name, &[]) {
        let (Some(peer_node), Some(reason)) = (s.labels.get("peer_node"), s.labels.get("reason"))
        else {
            continue;
        };
        if s.value > 0.0 {
            lifecycle_row(&mut rows, &s.labels)
                .expected_down
                .push(ExpectedDown {
                    peer_node: peer_node.clone(),
                    reason: reason.clone(),
                });
        }
    }
    rows.into_values()
        .filter(|r| r.peers_not_ready > 0.0 || !r.expected_down.is_empty())
        .map(|mut r| {
            r.expected_down.sort();
            r.expected_down.dedup();
            r
        })
        .collect()
}

fn lifecycle_row<'a>(
    rows: &'a mut BTreeMap<String, LifecycleRow>,
    labels: &super::snapshot::Labels,
) -> &'a mut LifecycleRow {
    let source = source_of(labels).cloned().unwrap_or_else(|| "-".into());
    rows.entry(source.clone()).or_insert_with(|| LifecycleRow {
        source,
        peers_not_ready: 0.0,
        expected_down: Vec::new(),
    })
}

/// One row per (source, network) with DNS lookups or apiserver probes.
fn reach(w: &Window) -> Vec<ReachRow> {
    let mut keys: Vec<(String, String)> = [c::DNS_LOOKUPS.name, c::APISERVER_PROBES.name]
        .iter()
        .flat_map(|name| w.select(name, &[]))
        .filter_map(|s| {
            Some((
                source_of(&s.labels)?.clone(),
                s.labels.get("network")?.clone(),
            ))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(src, net)| {
            let label = SOURCE_LABELS
                .iter()
                .find(|l| {
                    w.select(c::DNS_LOOKUPS.name, &[(l, src.as_str())])
                        .next()
                        .is_some()
                        || w.select(c::APISERVER_PROBES.name, &[(l, src.as_str())])
                            .next()
                            .is_some()
                })
                .copied()
                .unwrap_or("node");
            let at = [(label, src.as_str()), ("network", net.as_str())];
            let failure = |name: &str, extra: &[(&str, &str)]| -> (Option<f64>, Option<f64>) {
                let mut all: Vec<(&str, &str)> = at.to_vec();
                all.extend_from_slice(extra);
                let total = w.sum(name, &all);
                let mut ok = all.clone();
                ok.push(("outcome", "ok"));
                let ok = w.sum(name, &ok).unwrap_or(0.0);
                (total, total.and_then(|t| ratio(Some(t - ok), Some(t))))
            };
            let (dns_lookups, dns_failure_ratio) = failure(c::DNS_LOOKUPS.name, &[]);
            let (_, service_failure_ratio) =
                failure(c::APISERVER_PROBES.name, &[("target", "service")]);
            let (_, direct_failure_ratio) =
                failure(c::APISERVER_PROBES.name, &[("target", "direct")]);
            let mut livez: Vec<(&str, &str)> = at.to_vec();
            livez.extend_from_slice(&[("target", "service"), ("phase", "livez")]);
            ReachRow {
                dns_lookups: dns_lookups.unwrap_or(0.0),
                dns_failure_ratio,
                dns_p50: histogram_quantile(0.5, &w.buckets(c::DNS_LOOKUP_DURATION.name, &at)),
                service_failure_ratio,
                direct_failure_ratio,
                service_livez_p50: histogram_quantile(
                    0.5,
                    &w.buckets(c::APISERVER_PROBE_DURATION.name, &livez),
                ),
                source: src,
                network: net,
            }
        })
        .collect()
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn rtt(w: &Window, protocol: Protocol, path: &str) -> Rtt {
    let m = [("protocol", protocol.as_str()), ("path", path)];
    let b = w.buckets(c::PROBE_RTT.name, &m);
    Rtt {
        min: w.min(c::PROBE_RTT_MIN.name, &m),
        p50: histogram_quantile(0.5, &b),
        p99: histogram_quantile(0.99, &b),
    }
}

fn path_row(w: &Window, path: PathKind) -> Option<PathRow> {
    let p = path.as_str();
    let on_path = [("path", p)];
    let latency = [Protocol::Udp, Protocol::Tcp, Protocol::Icmp];
    let sent = sum_over(w, c::PROBE_SENT.name, p, &latency);
    let lost = sum_over(w, c::PROBE_LOST.name, p, &latency);
    let connect = w.buckets(c::TCP_CONNECT.name, &on_path);
    let http = w.buckets(
        c::HTTP_PHASE.name,
        &[("path", p), ("phase", HttpPhase::Total.as_str())],
    );
    let bw = |d: Direction| w.mean(c::BANDWIDTH.name, &[("path", p), ("direction", d.as_str())]);
    let udp = [Protocol::Udp];
    let udp_answered = match (
        sum_over(w, c::PROBE_SENT.name, p, &udp),
        sum_over(w, c::PROBE_LOST.name, p, &udp),
    ) {
        (Some(s), Some(l)) => Some(s - l),
        _ => None,
    };
    let row = PathRow {
        path: p,
        udp: rtt(w, Protocol::Udp, p),
        udp_mean: ratio(sum_over(w, c::PROBE_REPLY_RTT.name, p, &udp), udp_answered),
        tcp: rtt(w, Protocol::Tcp, p),
        icmp: rtt(w, Protocol::Icmp, p),
        probes: sent,
        loss_ratio: ratio(lost, sent),
        jitter: w.mean(
            c::PROBE_JITTER.name,
            &[("protocol", Protocol::Udp.as_str()), ("path", p)],
        ),
        tcp_connect_p99: histogram_quantile(0.99, &connect),
        http_p50: histogram_quantile(0.5, &http),
        http_p99: histogram_quantile(0.99, &http),
        bandwidth_send: bw(Direction::Send),
        bandwidth_receive: bw(Direction::Receive),
        path_mtu: w.min(c::PATH_MTU.name, &on_path),
        rtt_overhead: None,
        bandwidth_overhead: None,
    };
    // A path kind with no probe sent and nothing else measured is not in use.
    let measured = row.probes.is_some_and(|n| n > 0.0)
        || row.tcp_connect_p99.is_some()
        || row.bandwidth_send.is_some()
        || row.path_mtu.is_some();
    measured.then_some(row)
}

fn sum_over(w: &Window, name: &str, path: &str, protocols: &[Protocol]) -> Option<f64> {
    protocols
        .iter()
        .filter_map(|pr| w.sum(name, &[("protocol", pr.as_str()), ("path", path)]))
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

fn source_of(labels: &super::snapshot::Labels) -> Option<&String> {
    SOURCE_LABELS.iter().find_map(|l| labels.get(*l))
}

fn matrix(w: &Window) -> Vec<MatrixCell> {
    let udp = Protocol::Udp.as_str();
    let mut cells: Vec<MatrixCell> = Vec::new();
    for s in w.select(c::PROBE_SENT.name, &[("protocol", udp)]) {
        let (Some(src), Some(peer), Some(path)) = (
            source_of(&s.labels),
            s.labels.get("peer_node"),
            s.labels.get("path"),
        ) else {
            continue;
        };
        let Some(path) = PATH_ORDER.iter().find(|p| p.as_str() == path) else {
            continue;
        };
        let key: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let lost = w.sum(c::PROBE_LOST.name, &key);
        let rtt_sum = w.sum(c::PROBE_REPLY_RTT.name, &key);
        let answered = lost.map(|l| s.value - l);
        cells.push(MatrixCell {
            source: src.clone(),
            peer_node: peer.clone(),
            path: path.as_str(),
            sent: s.value,
            loss_ratio: ratio(lost, Some(s.value)),
            rtt_mean: ratio(rtt_sum, answered),
        });
    }
    cells.sort_by(|a, b| (&a.source, &a.peer_node, a.path).cmp(&(&b.source, &b.peer_node, b.path)));
    cells
}

fn quantiles(b: &[(f64, f64)]) -> Quantiles {
    Quantiles {
        count: b.last().map_or(0.0, |x| x.1),
        p50: histogram_quantile(0.5, b),
        p90: histogram_quantile(0.9, b),
        p99: histogram_quantile(0.99, b),
    }
}

fn control_plane(w: &Window) -> Option<ControlPlane> {
    let startup = c::POD_STARTUP_DURATION.name;
    let pod_startup: Vec<PhaseRow> = w
        .label_values(&format!("{startup}_bucket"), "phase")
        .into_iter()
        .map(|phase| {
            let q = quantiles(&w.buckets(startup, &[("phase", &phase)]));
            let slo_seconds = (phase == "pod_startup").then_some(POD_STARTUP_SLO_SECONDS);
            PhaseRow {
                phase,
                q,
                slo_seconds,
            }
        })
        .filter(|r| r.q.count > 0.0)
        .collect();
    let api = c::APISERVER_REQUEST_DURATION.name;
    let mut keys: Vec<(String, String, String)> = w
        .select(&format!("{api}_count"), &[])
        .filter_map(|s| {
            let l = |k: &str| s.labels.get(k).cloned();
            Some((l("verb")?, l("resource")?, l("scope")?))
        })
        .collect();
    keys.sort();
    keys.dedup();
    let apiserver: Vec<ApiRow> = keys
        .into_iter()
        .map(|(verb, resource, scope)| {
            let b = w.buckets(
                api,
                &[("verb", &verb), ("resource", &resource), ("scope", &scope)],
            );
            let slo_seconds = if scope == "resource" { 1.0 } else { 30.0 };
            ApiRow {
                q: quantiles(&b),
                verb,
                resource,
                scope,
                slo_seconds,
            }
        })
        .filter(|r| r.q.count > 0.0)
        .collect();
    let offset = w
        .select(c::NODE_LEASE_CLOCK_OFFSET.name, &[])
        .filter(|s| !s.value.is_nan())
        .max_by(|a, b| a.value.abs().total_cmp(&b.value.abs()));
    let cp = ControlPlane {
        pod_startup,
        apiserver,
        throttled: w.sum(c::APISERVER_THROTTLED.name, &[]),
        clock_offset_node: offset.and_then(|s| s.labels.get("target_node").cloned()),
        clock_offset_max: offset.map(|s| s.value),
        not_ready_transitions: w.sum(c::NODE_READY_TRANSITIONS.name, &[]),
    };
    let any = !cp.pod_startup.is_empty()
        || !cp.apiserver.is_empty()
        || cp.throttled.is_some()
        || cp.clock_offset_max.is_some();
    any.then_some(cp)
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::{Kind, Sample, Snapshot};
    use super::*;

    fn s(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample::new(name, labels, value)
    }

    fn hist(name: &str, labels: &[(&str, &str)], buckets: &[(&str, f64)]) -> Vec<Sample> {
        buckets
            .iter()
            .map(|(le, v)| {
                let mut l = labels.to_vec();
                l.push(("le", le));
                s(&format!("{name}_bucket"), &l, *v)
            })
            .collect()
    }

    fn agents() -> Snapshot {
        let mut types = std::collections::HashMap::new();
        for d in c::ALL.iter().chain(c::CONTROLLER) {
            let k = match d.kind {
                c::MetricType::Counter => Kind::Counter,
                c::MetricType::Gauge => Kind::Gauge,
                c::MetricType::Histogram => Kind::Histogram,
            };
            types.insert(d.name.to_string(), k);
        }
        let mut samples = Vec::new();
        for (path, rtt_mid, bw, lost) in [
            ("host_cross_node", "0.0002", 1e8, 0.0),
            ("pod_cross_node", "0.0004", 6e7, 2.0),
        ] {
            let udp = [("protocol", "udp"), ("path", path)];
            samples.extend(hist(
                c::PROBE_RTT.name,
                &udp,
                &[("0.0001", 0.0), (rtt_mid, 100.0), ("+Inf", 100.0)],
            ));
            let peer = [
                ("agent", "a"),
                ("protocol", "udp"),
                ("path", path),
                ("peer_node", "n2"),
            ];
            samples.push(s(c::PROBE_SENT.name, &peer, 100.0));
            samples.push(s(c::PROBE_LOST.name, &peer, lost));
            samples.push(s(c::PROBE_REPLY_RTT.name, &peer, 0.015));
            samples.push(s(
                c::BANDWIDTH.name,
                &[("path", path), ("peer_node", "n2"), ("direction", "send")],
                bw,
            ));
        }
        Snapshot { types, samples }
    }

    /// Node n1's pod agent: 8 of 10 lookups ok, half of the Service probes
    /// failed, every direct one ok; node n2's host agent: all fine.
    #[test]
    fn reach_rows_per_node_and_network() {
        let mut snap = agents();
        for (kind, d) in [
            (Kind::Counter, &c::DNS_LOOKUPS),
            (Kind::Counter, &c::APISERVER_PROBES),
            (Kind::Histogram, &c::DNS_LOOKUP_DURATION),
            (Kind::Histogram, &c::APISERVER_PROBE_DURATION),
        ] {
            snap.types.insert(d.name.to_string(), kind);
        }
        let dns = |node, net, outcome, v| {
            s(
                c::DNS_LOOKUPS.name,
                &[
                    ("node", node),
                    ("network", net),
                    ("nameserver", "10.96.0.10"),
                    ("outcome", outcome),
                ],
                v,
            )
        };
        let api = |node, net, target, outcome, v| {
            s(
                c::APISERVER_PROBES.name,
                &[
                    ("node", node),
                    ("network", net),
                    ("target", target),
                    ("outcome", outcome),
                ],
                v,
            )
        };
        snap.samples.extend([
            dns("n1", "pod", "ok", 8.0),
            dns("n1", "pod", "timeout", 2.0),
            api("n1", "pod", "service", "ok", 5.0),
            api("n1", "pod", "service", "timeout", 5.0),
            api("n1", "pod", "direct", "ok", 10.0),
            dns("n2", "host", "ok", 10.0),
            api("n2", "host", "service", "ok", 10.0),
        ]);
        snap.samples.extend(hist(
            c::DNS_LOOKUP_DURATION.name,
            &[("node", "n1"), ("network", "pod")],
            &[("0.0001", 0.0), ("0.0002", 8.0), ("+Inf", 8.0)],
        ));
        let r = build(&Window::since_start(&snap), "test");
        assert_eq!(r.reach.len(), 2);
        let a = &r.reach[0];
        assert_eq!((a.source.as_str(), a.network.as_str()), ("n1", "pod"));
        assert_eq!(a.dns_lookups, 10.0);
        assert_eq!(a.dns_failure_ratio, Some(0.2));
        assert!((a.dns_p50.expect("p50") - 0.00015).abs() < 1e-12);
        assert_eq!(a.service_failure_ratio, Some(0.5));
        assert_eq!(a.direct_failure_ratio, Some(0.0));
        let b = &r.reach[1];
        assert_eq!((b.source.as_str(), b.network.as_str()), ("n2", "host"));
        assert_eq!(b.dns_failure_ratio, Some(0.0));
        assert_eq!(
            b.direct_failure_ratio, None,
            "no direct probes is no number"
        );
        assert_eq!(b.dns_p50, None);
        // No reach series: no rows.
        assert!(build(&Window::since_start(&agents()), "t").reach.is_empty());
    }

    /// n1's pod and host agents: one peer not Ready each, n3 cordoned (seen
    /// by both), n4 gone; n2: nothing to say; the agent's own page: `-`.
    #[test]
    fn lifecycle_rows_per_source() {
        let mut snap = agents();
        let not_ready = |node: Option<&str>, v| {
            let l: Vec<(&str, &str)> = node.map(|n| ("node", n)).into_iter().collect();
            s(c::PEERS_NOT_READY.name, &l, v)
        };
        let down = |node, peer, reason| {
            s(
                c::PEER_EXPECTED_DOWN.name,
                &[("node", node), ("peer_node", peer), ("reason", reason)],
                1.0,
            )
        };
        snap.samples.extend([
            not_ready(Some("n1"), 1.0),
            not_ready(Some("n1"), 1.0),
            not_ready(Some("n2"), 0.0),
            down("n1", "n3", "cordoned"),
            down("n1", "n3", "cordoned"),
            down("n1", "n4", "gone"),
        ]);
        let r = build(&Window::since_start(&snap), "test");
        assert_eq!(r.lifecycle.len(), 1, "n2 has nothing to say");
        let n1 = &r.lifecycle[0];
        assert_eq!((n1.source.as_str(), n1.peers_not_ready), ("n1", 2.0));
        let down: Vec<(&str, &str)> = n1
            .expected_down
            .iter()
            .map(|d| (d.peer_node.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(down, [("n3", "cordoned"), ("n4", "gone")]);
        snap.samples.push(not_ready(None, 3.0));
        let r = build(&Window::since_start(&snap), "test");
        assert_eq!(r.lifecycle[0].source, "-");
        assert_eq!(r.lifecycle[0].peers_not_ready, 3.0);
        assert!(build(&Window::since_start(&agents()), "t")
            .lifecycle
            .is_empty());
    }

    #[test]
    fn rows_quantiles_loss_and_overhead_against_the_host_baseline() {
        let r = build(&Window::since_start(&agents()), "test");
        let paths: Vec<&str> = r.paths.iter().map(|p| p.path).collect();
        assert_eq!(paths, ["host_cross_node", "pod_cross_node"], "host first");
        let host = &r.paths[0];
        let pod = &r.paths[1];
        // 100 observations between 0.1 and 0.2 ms: p50 interpolates to 0.15.
        assert!((host.udp.p50.expect("p50") - 0.00015).abs() < 1e-12);
        assert!((pod.udp.p50.expect("p50") - 0.00025).abs() < 1e-12);
        assert_eq!(host.loss_ratio, Some(0.0));
        assert_eq!(pod.loss_ratio, Some(0.02));
        // Mean RTT: 0.015 s over 100 and 98 answered probes.
        assert!((host.udp_mean.expect("mean") - 0.015 / 100.0).abs() < 1e-12);
        assert!((pod.rtt_overhead.expect("rtt") - (100.0 / 98.0 - 1.0)).abs() < 1e-9);
        assert!((pod.bandwidth_overhead.expect("bw") - 0.4).abs() < 1e-9);
        assert_eq!(host.tcp.p50, None, "no TCP series is no number, not zero");
        assert_eq!(r.matrix.len(), 2);
        let cell = &r.matrix[1];
        assert_eq!((cell.source.as_str(), cell.peer_node.as_str()), ("a", "n2"));
        assert!((cell.rtt_mean.expect("mean") - 0.015 / 98.0).abs() < 1e-12);
        assert!(r.control_plane.is_none());
    }

    #[test]
    fn control_plane_phases_and_api_calls_with_their_slos() {
        let mut snap = agents();
        snap.samples.extend(hist(
            c::POD_STARTUP_DURATION.name,
            &[("phase", "pod_startup")],
            &[("1", 10.0), ("2", 20.0), ("+Inf", 20.0)],
        ));
        let key = [
            ("verb", "LIST"),
            ("resource", "pods"),
            ("scope", "cluster"),
            ("code", "2xx"),
        ];
        snap.samples.extend(hist(
            c::APISERVER_REQUEST_DURATION.name,
            &key,
            &[("0.1", 4.0), ("+Inf", 4.0)],
        ));
        snap.samples.push(s(
            &format!("{}_count", c::APISERVER_REQUEST_DURATION.name),
            &key,
            4.0,
        ));
        snap.samples.push(s(
            c::NODE_LEASE_CLOCK_OFFSET.name,
            &[("target_node", "x")],
            -0.5,
        ));
        snap.samples.push(s(
            c::NODE_LEASE_CLOCK_OFFSET.name,
            &[("target_node", "y")],
            0.2,
        ));
        let cp = build(&Window::since_start(&snap), "t")
            .control_plane
            .expect("cp");
        assert_eq!(cp.pod_startup[0].q.p50, Some(1.0));
        assert_eq!(cp.pod_startup[0].slo_seconds, Some(5.0));
        assert_eq!(cp.apiserver[0].slo_seconds, 30.0);
        assert_eq!(cp.apiserver[0].q.count, 4.0);
        assert_eq!(cp.clock_offset_node.as_deref(), Some("x"));
        assert_eq!(cp.throttled, None);
    }
}
