//! Loss ground truth: nftables drops 1%, 5% and 20% of the probes at
//! random, and its drop counter is the exact truth; the reported loss ratio
//! over the same window must be within 3 binomial standard deviations.

use kubepulse_testkit::lab;

use std::time::Duration;

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::Scrape;

const INTERVAL_MS: u64 = 10;
const TIMEOUT_MS: u64 = 100;
const WINDOW: Duration = Duration::from_secs(12);

fn ruleset(prober: &str, permille: u32) -> String {
    format!(
        "table inet kpl {{
            counter udp_seen {{}}
            counter udp_dropped {{}}
            counter icmp_seen {{}}
            counter icmp_dropped {{}}
            chain input {{
                type filter hook input priority 0; policy accept;
                ip saddr {prober} udp dport 9478 counter name \"udp_seen\" \
                    numgen random mod 1000 < {permille} counter name \"udp_dropped\" drop
                ip saddr {prober} icmp type echo-request counter name \"icmp_seen\" \
                    numgen random mod 1000 < {permille} counter name \"icmp_dropped\" drop
            }}
        }}"
    )
}

/// (lost, resolved = sent) of `protocol` towards node1: a probe is counted
/// sent when its outcome (reply or loss) is known.
fn resolved(s: &Scrape, protocol: &str) -> (f64, f64) {
    let l = [
        ("protocol", protocol),
        ("path", "host_cross_node"),
        ("peer_node", "node1"),
    ];
    let lost = s.sum("kubepulse_probe_lost_total", &l);
    (lost, s.sum("kubepulse_probe_sent_total", &l))
}

#[test]
fn loss_ratio_matches_nft_drop_counter() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    let (h0, h1) = (AgentSpec::host(&lab, 0), AgentSpec::host(&lab, 1));
    let mut probes = fast_probes();
    for p in ["udp", "icmp"] {
        probes[p]["interval"] = format!("{INTERVAL_MS}ms").into();
        probes[p]["timeout"] = format!("{TIMEOUT_MS}ms").into();
    }
    for p in ["tcp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    // node1 only answers; node0 probes it.
    let _responder = Agents::start(&lab, std::slice::from_ref(&h1), &[], &probes);
    let prober = Agents::start(
        &lab,
        std::slice::from_ref(&h0),
        std::slice::from_ref(&h1),
        &probes,
    );
    let ns1 = lab.host(1);
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for permille in [10u32, 50, 200] {
        let _ = lab.exec(&ns1, &["nft", "delete", "table", "inet", "kpl"]);
        lab.nft(&ns1, &ruleset(&h0.address.to_string(), permille));
        // Agent counters are read one timeout after the nft counters, so
        // both count the same probes: those sent before the nft read are
        // resolved (answered or lost) by the agent read.
        let settle = Duration::from_millis(TIMEOUT_MS + 150);
        let nft = |p: &str| {
            (
                lab.nft_counter(&ns1, &format!("{p}_dropped")) as f64,
                lab.nft_counter(&ns1, &format!("{p}_seen")) as f64,
            )
        };
        std::thread::sleep(settle);
        let n0: Vec<_> = ["udp", "icmp"].iter().map(|p| nft(p)).collect();
        std::thread::sleep(settle);
        let a0 = prober.scrape("host0");
        std::thread::sleep(WINDOW);
        let n1: Vec<_> = ["udp", "icmp"].iter().map(|p| nft(p)).collect();
        std::thread::sleep(settle);
        let a1 = prober.scrape("host0");
        for (k, p) in ["udp", "icmp"].iter().enumerate() {
            let dropped = n1[k].0 - n0[k].0;
            let seen = n1[k].1 - n0[k].1;
            let (l0, r0) = resolved(&a0, p);
            let (l1, r1) = resolved(&a1, p);
            let (lost, sent) = (l1 - l0, r1 - r0);
            let truth = dropped / seen;
            let reported = lost / sent;
            let sigma = (truth * (1.0 - truth) / seen).sqrt();
            let line = format!(
                "{p} {:.0}%: nft dropped {dropped}/{seen} = {:.3}%, kubepulse lost {lost}/{sent} = {:.3}% (3 sigma {:.3}%)",
                f64::from(permille) / 10.0,
                truth * 100.0,
                reported * 100.0,
                3.0 * sigma * 100.0
            );
            // The window must hold enough probes for the statistic to
            // mean anything, and the agent and nft must count the same ones.
            if seen < 1000.0 || (seen - sent).abs() > 5.0 || (reported - truth).abs() > 3.0 * sigma
            {
                bad.push(line.clone());
            }
            report.push(line);
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        bad.is_empty(),
        "loss outside 3 sigma of nft truth:\n{}",
        bad.join("\n")
    );
}
