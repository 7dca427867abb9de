//! kubepulse agents in every pod and host namespace of the lab: each probe
//! result lands under the right `path` label, and path MTU matches the
//! configured truth (vxlan 1450 vs 1500; a DF blackhole below the interface
//! MTU).

use kubepulse_testkit::lab;

use std::collections::BTreeSet;
use std::time::Duration;

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::Scrape;

/// The path kind the issue defines for a probe from `a` to `b`, written out
/// independently of kubepulse's classifier.
fn expected_path(a: &AgentSpec, b: &AgentSpec) -> Option<&'static str> {
    let same = a.node == b.node;
    match (a.kind, b.kind) {
        ("pod", "pod") if same => Some("pod_same_node"),
        ("pod", "pod") => Some("pod_cross_node"),
        ("host", "host") if same => None,
        ("host", "host") => Some("host_cross_node"),
        ("pod", "host") => Some("pod_to_host"),
        ("host", "pod") => Some("host_to_pod"),
        _ => unreachable!(),
    }
}

/// (path, peer_node) keys `a` should report.
fn expected_keys(a: &AgentSpec, all: &[AgentSpec]) -> BTreeSet<(String, String)> {
    all.iter()
        .filter(|b| b.name != a.name)
        .filter_map(|b| expected_path(a, b).map(|p| (p.to_string(), b.node.clone())))
        .collect()
}

/// (path, peer_node) keys with a positive value of `metric` for `protocol`.
fn keys_with(s: &Scrape, metric: &str, protocol: &str) -> BTreeSet<(String, String)> {
    s.select(metric, &[("protocol", protocol)])
        .into_iter()
        .filter(|x| x.value > 0.0)
        .filter_map(|x| {
            Some((
                x.labels.get("path")?.clone(),
                x.labels.get("peer_node")?.clone(),
            ))
        })
        .collect()
}

/// (path, peer_node) keys of `protocol` with kept replies: sent − lost > 0
/// (both are booked when a probe's outcome is known).
fn keys_with_replies(s: &Scrape, protocol: &str) -> BTreeSet<(String, String)> {
    s.select("kubepulse_probe_sent_total", &[("protocol", protocol)])
        .into_iter()
        .filter_map(|x| {
            let (path, node) = (x.labels.get("path")?, x.labels.get("peer_node")?);
            let lost = s.try_sum(
                "kubepulse_probe_lost_total",
                &[("protocol", protocol), ("path", path), ("peer_node", node)],
            )?;
            (x.value - lost > 0.0).then(|| (path.clone(), node.clone()))
        })
        .collect()
}

/// Paths with a positive value of `metric` (a histogram `_count`).
fn paths_with(s: &Scrape, metric: &str, want: &[(&str, &str)]) -> BTreeSet<String> {
    s.select(metric, want)
        .into_iter()
        .filter(|x| x.value > 0.0)
        .filter_map(|x| x.labels.get("path").cloned())
        .collect()
}

const PROTOCOLS: [&str; 3] = ["udp", "tcp", "icmp"];

fn classification(flavour: Flavour) {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(flavour));
    let all = AgentSpec::all(&lab);
    let mut probes = fast_probes();
    for p in PROTOCOLS {
        probes[p]["interval"] = "50ms".into();
    }
    probes["pmtu"] = serde_json::json!({"interval": "3s", "timeout": "200ms"});
    let agents = Agents::start(&lab, &all, &all, &probes);

    for a in &all {
        let want = expected_keys(a, &all);
        let want_paths: BTreeSet<String> = want.iter().map(|(p, _)| p.clone()).collect();
        // Every expected (protocol, path, peer_node) gets replies, and every
        // scheduled probe kind lands under every expected path.
        agents.wait_for(
            &a.name,
            Duration::from_secs(20),
            "results on every expected path",
            |s| {
                let latency_done = PROTOCOLS.iter().all(|p| keys_with_replies(s, p) == want);
                let connect = paths_with(s, "kubepulse_tcp_connect_duration_seconds_count", &[]);
                let http = paths_with(
                    s,
                    "kubepulse_http_probe_duration_seconds_count",
                    &[("phase", "total")],
                );
                let pmtu: BTreeSet<(String, String)> = s
                    .select("kubepulse_path_mtu_bytes", &[])
                    .into_iter()
                    .filter(|x| x.value > 0.0)
                    .filter_map(|x| {
                        Some((
                            x.labels.get("path")?.clone(),
                            x.labels.get("peer_node")?.clone(),
                        ))
                    })
                    .collect();
                (latency_done && connect == want_paths && http == want_paths && pmtu == want)
                    .then_some(())
            },
        );
        let s = agents.scrape(&a.name);
        for p in PROTOCOLS {
            // Nothing was sent, answered or lost under any other key.
            assert_eq!(
                keys_with(&s, "kubepulse_probe_sent_total", p),
                want,
                "{} {p} sent",
                a.name
            );
            assert_eq!(keys_with_replies(&s, p), want, "{} {p} replies", a.name);
            assert_eq!(
                paths_with(&s, "kubepulse_probe_rtt_seconds_count", &[("protocol", p)]),
                want_paths,
                "{} {p} rtt histogram paths",
                a.name
            );
        }
        for path in &want_paths {
            let n = all
                .iter()
                .filter(|b| b.name != a.name && expected_path(a, b) == Some(path.as_str()))
                .count();
            assert_eq!(
                s.one("kubepulse_peers", &[("path", path)]),
                Some(n as f64),
                "{}: peers on {path}",
                a.name
            );
        }
        // Path MTU truth: any pod end in the overlay is behind a 1450 MTU.
        for (path, node) in &want {
            let lbl = [("path", path.as_str()), ("peer_node", node.as_str())];
            let pmtu = s.one("kubepulse_path_mtu_bytes", &lbl);
            let ifmtu = s.one("kubepulse_interface_mtu_bytes", &lbl);
            let truth = if flavour == Flavour::Overlay && path != "host_cross_node" {
                1450.0
            } else {
                1500.0
            };
            assert_eq!(pmtu, Some(truth), "{} {path} {node}: path MTU", a.name);
            assert_eq!(
                ifmtu,
                Some(truth),
                "{} {path} {node}: interface MTU",
                a.name
            );
        }
        eprintln!("{}: {} keys ok: {want:?}", a.name, want.len());
    }
    // Losses while peers were still starting are real; once every agent
    // is up, a clean lab loses nothing on any path.
    let before: Vec<Scrape> = all.iter().map(|a| agents.scrape(&a.name)).collect();
    std::thread::sleep(Duration::from_secs(2));
    for (a, s0) in all.iter().zip(&before) {
        let s1 = agents.scrape(&a.name);
        for p in PROTOCOLS {
            for x in s1.select("kubepulse_probe_lost_total", &[("protocol", p)]) {
                let lbl: Vec<(&str, &str)> = x
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let was = s0.counter_born_since("kubepulse_probe_lost_total", &lbl);
                assert_eq!(
                    x.value, was,
                    "{} {p}: new losses on a clean lab: {:?}",
                    a.name, x.labels
                );
            }
        }
    }
}

#[test]
fn every_result_under_the_right_path_routed() {
    classification(Flavour::Routed);
}

#[test]
fn every_result_under_the_right_path_overlay_with_pmtu_1450() {
    classification(Flavour::Overlay);
}

/// A DF blackhole (node 1 silently drops DF packets over 1400 bytes, no
/// ICMP) shows as a path MTU below the interface MTU on the host and pod
/// cross-node paths, while same-node paths keep the full MTU.
#[test]
fn mtu_blackhole_reported_below_interface_mtu() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    lab.nft(
        &lab.host(1),
        "table inet kpl {
            counter blackholed {}
            chain input {
                type filter hook input priority 0; policy accept;
                ip length > 1400 ip frag-off & 0x4000 != 0 counter name \"blackholed\" drop
            }
            chain forward {
                type filter hook forward priority 0; policy accept;
                ip length > 1400 ip frag-off & 0x4000 != 0 counter name \"blackholed\" drop
            }
        }",
    );
    let probers = vec![AgentSpec::host(&lab, 0), AgentSpec::pod(&lab, 0, 0)];
    let peers = [
        AgentSpec::host(&lab, 1),
        AgentSpec::pod(&lab, 1, 0),
        AgentSpec::pod(&lab, 0, 1),
    ];
    let mut probes = fast_probes();
    probes["pmtu"] = serde_json::json!({"interval": "3s", "timeout": "200ms"});
    for p in PROTOCOLS {
        probes[p]["interval"] = "100ms".into();
    }
    let mut everyone = probers.clone();
    everyone.extend(peers.iter().cloned());
    let agents = Agents::start(&lab, &everyone, &everyone, &probes);
    let cases = [
        ("host0", "host_cross_node", "node1", 1400.0),
        ("host0", "host_to_pod", "node1", 1400.0),
        ("pod00", "pod_cross_node", "node1", 1400.0),
        ("pod00", "pod_to_host", "node1", 1400.0),
        ("pod00", "pod_same_node", "node0", 1500.0),
    ];
    for (agent, path, node, truth) in cases {
        let lbl = [("path", path), ("peer_node", node)];
        let (pmtu, ifmtu) = agents.wait_for(agent, Duration::from_secs(25), "a path MTU", |s| {
            Some((
                s.one("kubepulse_path_mtu_bytes", &lbl)?,
                s.one("kubepulse_interface_mtu_bytes", &lbl)?,
            ))
        });
        eprintln!("{agent} {path} {node}: path MTU {pmtu}, interface MTU {ifmtu}");
        assert_eq!(ifmtu, 1500.0, "{agent} {path}: interface MTU");
        assert_eq!(pmtu, truth, "{agent} {path}: path MTU");
    }
    assert!(lab.nft_counter(&lab.host(1), "blackholed") > 0);
}
