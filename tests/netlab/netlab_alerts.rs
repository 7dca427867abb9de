//! End-to-end alerting in the network lab: a real Prometheus, running inside
//! the lab (node 0's host namespace), scrapes the lab's agents and evaluates
//! the REAL alerts/kubepulse-rules.yaml, transformed for test time only:
//!
//! - every `for:` becomes `for: 2s` (the production values are minutes);
//! - the `[5m]` and `[10m]` rate windows become `[10s]`, so a fault shows
//!   (and startup losses age out) within seconds, not minutes. Recording rule
//!   names keep their `rate5m` suffix; thresholds and expression logic are
//!   untouched.
//!
//! Scenarios (one lab and one Prometheus each): 20% random loss between two
//! pods on different nodes; a DF blackhole (> 1400 bytes) on node 1; 1 ms
//! one-way delay on the pod network only (the delay line carries the pod
//! CIDRs, host traffic stays on the underlay).
//!
//! Each scenario first shows a clean baseline (no network alert firing),
//! then injects one fault and asserts the EXACT set of firing alerts
//! (alertname + severity + node/peer_node/path/protocol): the right ones
//! fire, every other pair and path stays quiet. `KubepulseControllerAbsent`
//! fires throughout, correctly: the lab runs no controller.

use kubepulse_testkit::lab;

use std::collections::BTreeSet;
use std::time::Duration;

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{poll, timing_lock, Flavour, Lab, LabSpec};
use lab::prometheus::Prom;

/// Alert expected in every phase: no controller runs in the lab.
const CONTROLLER_ABSENT: &str = "KubepulseControllerAbsent{severity=warning}";
/// Shown when a firing set never matches.
const DEBUG: &[&str] = &[
    "node_peer_node_path:kubepulse_probe_loss:ratio_rate5m > 0",
    "kubepulse_path_mtu_bytes",
];

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

/// Loss: nft drops 20% of the packets from pod 0 of node 0 to pod 0 of
/// node 1 (forwarded by node 1's host). Both directed pod pairs lose ~20%
/// (requests one way, replies the other); host paths stay clean.
#[test]
fn loss_fires_pair_and_pod_network_alerts_only_for_the_lossy_pods() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        flavour: Flavour::Routed,
    });
    let all = AgentSpec::all(&lab);
    let mut probes = fast_probes();
    // Only the UDP and ICMP latency probes: their loss is exact per probe.
    for p in ["udp", "icmp"] {
        probes[p]["interval"] = "50ms".into();
    }
    for p in ["tcp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    let _agents = Agents::start(&lab, &all, &all, &probes);
    let prom = Prom::start(&lab, &all);

    // Baseline: every pair's loss ratio evaluated and zero (startup losses
    // aged out of the window), then nothing but the controller's absence.
    let pairs = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let r = prom.query("node_peer_node_path:kubepulse_probe_loss:ratio_rate5m");
        (r.len() == 12 && r.iter().all(|(_, v)| *v == 0.0)).then_some(r.len())
    });
    assert!(
        pairs.is_some(),
        "baseline loss ratios never all zero: {:?}",
        prom.query("node_peer_node_path:kubepulse_probe_loss:ratio_rate5m")
    );
    let baseline = set(&[CONTROLLER_ABSENT.into()]);
    prom.expect_firing(
        "loss baseline",
        &baseline,
        Duration::from_secs(10),
        Duration::from_secs(5),
        DEBUG,
    );

    let (p0, p1) = (lab.pod_ip(0, 0), lab.pod_ip(1, 0));
    let ns1 = lab.host(1);
    lab.nft(
        &ns1,
        &format!(
            "table inet kpl {{
                counter dropped {{}}
                chain forward {{
                    type filter hook forward priority 0; policy accept;
                    ip saddr {p0} ip daddr {p1} numgen random mod 1000 < 200 counter name \"dropped\" drop
                }}
            }}"
        ),
    );
    let mut want = vec![CONTROLLER_ABSENT.to_string()];
    for (n, pn) in [("node0", "node1"), ("node1", "node0")] {
        want.push(format!(
            "KubepulseNodePairPacketLoss{{severity=warning,node={n},peer_node={pn},path=pod_cross_node}}"
        ));
    }
    for proto in ["icmp", "udp"] {
        for sev in ["critical", "warning"] {
            want.push(format!(
                "KubepulsePodNetworkLossHigh{{severity={sev},path=pod_cross_node,protocol={proto}}}"
            ));
        }
    }
    prom.expect_firing(
        "20% loss pod00 -> pod10",
        &set(&want),
        Duration::from_secs(45),
        Duration::from_secs(5),
        DEBUG,
    );
    assert!(lab.nft_counter(&ns1, "dropped") > 0);
    prom.assert_rules_healthy();

    // Fault removed: everything resolves once the window is clean again.
    lab.run(&ns1, &["nft", "delete", "table", "inet", "kpl"]);
    prom.expect_firing(
        "loss removed",
        &baseline,
        Duration::from_secs(45),
        Duration::from_secs(3),
        DEBUG,
    );
}

/// MTU blackhole: node 1 silently drops DF packets over 1400 bytes. Node
/// 0's agents (the only probers) see path MTU 1400 < 1500 on every path to
/// node 1; their same-node path keeps 1500. No loss alert fires.
#[test]
fn mtu_blackhole_fires_path_mtu_alert_only_for_paths_to_the_blackholed_node() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    let probers = vec![AgentSpec::host(&lab, 0), AgentSpec::pod(&lab, 0, 0)];
    let responders = vec![
        AgentSpec::host(&lab, 1),
        AgentSpec::pod(&lab, 1, 0),
        AgentSpec::pod(&lab, 0, 1),
    ];
    let mut probes = fast_probes();
    probes["pmtu"] = serde_json::json!({"interval": "3s", "timeout": "200ms"});
    for p in ["udp", "icmp"] {
        probes[p]["interval"] = "100ms".into();
    }
    for p in ["tcp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    let _resp = Agents::start(&lab, &responders, &[], &probes);
    let _probers = Agents::start(&lab, &probers, &responders, &probes);
    let mut everyone = probers.clone();
    everyone.extend(responders.iter().cloned());
    let prom = Prom::start(&lab, &everyone);

    // Baseline: path MTU measured on all 6 (node, path, peer node) keys,
    // equal to the interface MTU; no network alert.
    let ok = poll(Duration::from_secs(40), Duration::from_millis(500), || {
        let r = prom.query(
            "min by (node, peer_node, path) (kubepulse_path_mtu_bytes) == 1500 \
             and on (node, peer_node, path) min by (node, peer_node, path) (kubepulse_interface_mtu_bytes) == 1500",
        );
        let loss = prom.query("node_peer_node_path:kubepulse_probe_loss:ratio_rate5m");
        (r.len() == 6 && loss.len() == 6 && loss.iter().all(|(_, v)| *v == 0.0)).then_some(())
    });
    assert!(
        ok.is_some(),
        "baseline path MTU / loss not clean: {:?} {:?}",
        prom.query("kubepulse_path_mtu_bytes"),
        prom.query("node_peer_node_path:kubepulse_probe_loss:ratio_rate5m")
    );
    let baseline = set(&[CONTROLLER_ABSENT.into()]);
    prom.expect_firing(
        "MTU baseline",
        &baseline,
        Duration::from_secs(10),
        Duration::from_secs(5),
        DEBUG,
    );

    // Prometheus's scrapes of node 1's agents (TCP from port 9477) are
    // spared: their large segments would be blackholed too and fire
    // KubepulseAgentDown for node 1, a lab artifact (in a cluster the
    // scrape path need not cross the faulty link).
    let ns1 = lab.host(1);
    lab.nft(
        &ns1,
        "table inet kpl {
            counter blackholed {}
            chain input {
                type filter hook input priority 0; policy accept;
                tcp sport 9477 accept
                ip length > 1400 ip frag-off & 0x4000 != 0 counter name \"blackholed\" drop
            }
            chain forward {
                type filter hook forward priority 0; policy accept;
                tcp sport 9477 accept
                ip length > 1400 ip frag-off & 0x4000 != 0 counter name \"blackholed\" drop
            }
        }",
    );
    let mut want = vec![CONTROLLER_ABSENT.to_string()];
    for path in [
        "host_cross_node",
        "host_to_pod",
        "pod_cross_node",
        "pod_to_host",
    ] {
        want.push(format!(
            "KubepulsePathMTUBelowInterfaceMTU{{severity=warning,node=node0,peer_node=node1,path={path}}}"
        ));
    }
    prom.expect_firing(
        "DF blackhole > 1400 on node1",
        &set(&want),
        Duration::from_secs(45),
        Duration::from_secs(5),
        DEBUG,
    );
    assert!(lab.nft_counter(&ns1, "blackholed") > 0);
    prom.assert_rules_healthy();
}

/// Added delay on the pod network only: the lab's delay line carries the
/// pod CIDR routes between the nodes while host-to-host traffic keeps the
/// direct underlay route, so pod-minus-host RTT min grows by twice the
/// one-way delay and KubepulseOverlayRTTOverheadHigh (> 0.5 ms) fires for
/// both node pairs and every latency protocol; nothing else does.
#[test]
fn pod_only_delay_fires_overlay_rtt_overhead_alert() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let mut lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        flavour: Flavour::Routed,
    });
    lab.add_delay_line();
    // Host traffic back on the underlay (the /24 connected route on `ul`).
    for (me, peer) in [(0usize, 1usize), (1, 0)] {
        let dst = format!("{}/32", lab.host_ip(peer));
        lab::netlab::ip(&["-n", &lab.host(me), "route", "del", &dst, "dev", "dl"]);
    }
    let all = AgentSpec::all(&lab);
    let mut probes = fast_probes();
    for p in ["udp", "icmp"] {
        probes[p]["interval"] = "50ms".into();
    }
    for p in ["tcp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    let _agents = Agents::start(&lab, &all, &all, &probes);
    let prom = Prom::start(&lab, &all);
    let overhead = "node_peer_node_protocol:kubepulse_probe_rtt_min_seconds:pod_minus_host";

    // Baseline (delay line at zero): overhead evaluated for both node pairs
    // and both protocols, loss clean, nothing firing.
    let ok = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let o = prom.query(overhead);
        let loss = prom.query("node_peer_node_path:kubepulse_probe_loss:ratio_rate5m");
        (o.len() == 4 && loss.len() == 12 && loss.iter().all(|(_, v)| *v == 0.0)).then_some(())
    });
    assert!(
        ok.is_some(),
        "baseline overhead / loss not ready: {:?} {:?}",
        prom.query(overhead),
        prom.query("node_peer_node_path:kubepulse_probe_loss:ratio_rate5m")
    );
    let baseline = set(&[CONTROLLER_ABSENT.into()]);
    prom.expect_firing(
        "delay baseline",
        &baseline,
        Duration::from_secs(10),
        Duration::from_secs(5),
        DEBUG,
    );
    let base: Vec<f64> = prom.query(overhead).iter().map(|(_, v)| *v).collect();

    let before = lab.delay_line_packets();
    lab.set_delay(Duration::from_millis(1));
    let mut want = vec![CONTROLLER_ABSENT.to_string()];
    for (n, pn) in [("node0", "node1"), ("node1", "node0")] {
        for proto in ["icmp", "udp"] {
            want.push(format!(
                "KubepulseOverlayRTTOverheadHigh{{severity=warning,node={n},peer_node={pn},protocol={proto}}}"
            ));
        }
    }
    prom.expect_firing(
        "1 ms one-way delay on pod traffic",
        &set(&want),
        Duration::from_secs(30),
        Duration::from_secs(5),
        DEBUG,
    );
    let now: Vec<f64> = prom.query(overhead).iter().map(|(_, v)| *v).collect();
    eprintln!("pod-minus-host RTT min: baseline {base:?} s, with 1 ms delay {now:?} s");
    assert!(lab.delay_line_packets() > before);
    prom.assert_rules_healthy();

    lab.set_delay(Duration::ZERO);
    prom.expect_firing(
        "delay removed",
        &baseline,
        Duration::from_secs(30),
        Duration::from_secs(3),
        DEBUG,
    );
}
