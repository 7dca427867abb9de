//! Self-interference: on a tbf-shaped path (300 Mbit/s, both directions)
//! with bandwidth bursts at a high duty cycle (a pair in every 4 s slot,
//! 250 ms per direction), the burst guard keeps the agent's own bursts out
//! of its latency results:
//! - UDP RTT p99 with bursts is at most 1.2x p99 without bursts, each the
//!   lower of two runs (without the guard it was 9x here and about 100x in
//!   the issue: the probes queue behind the burst in the tbf). The p99s are
//!   exact, over every kept sample of both agents (each probes the other),
//!   read from the agents' per-sample trace log: the quiet p99 sits near
//!   the 204.8 us edge of the doubling buckets, where a shift of a few tail
//!   samples across the edge moved the interpolated p99 by 30-40 % (2 of 5
//!   runs failed on that alone). The histogram's p99 is printed beside it;
//! - every probe nft saw is accounted for, kept (replied or lost) or
//!   excluded, and the reported loss matches the nft drop counter of a 2 %
//!   random drop: without bursts the lost count equals the drop count;
//!   with bursts the guard excludes whole probes (replies and losses alike)
//!   at times that do not depend on the random drop, so the kept probes'
//!   loss ratio estimates the drop ratio, judged within 3 binomial standard
//!   deviations of the difference between the kept subset and all probes
//!   nft saw;
//! - `kubepulse_probe_excluded_total{protocol="udp"}` grows.

use kubepulse_testkit::lab;

use std::time::Duration;

use kubepulse_testkit::scrape::sample_quantile;
use lab::agents::{fast_probes, AgentSpec, Agents, RTT_SAMPLES};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::{bucket_delta, quantile, Scrape};

const INTERVAL_MS: u64 = 10;
const TIMEOUT_MS: u64 = 200;
const WINDOW: Duration = Duration::from_secs(30);
/// The warm-up run's window: it is only printed.
const WARM_UP: Duration = Duration::from_secs(10);
const RATE_MBIT: u32 = 300;
const DROP_PERMILLE: u32 = 20;

fn ruleset(prober: &str) -> String {
    format!(
        "table inet kpl {{
            counter udp_seen {{}}
            counter udp_dropped {{}}
            chain input {{
                type filter hook input priority 0; policy accept;
                ip saddr {prober} udp dport 9478 counter name \"udp_seen\" \
                    numgen random mod 1000 < {DROP_PERMILLE} counter name \"udp_dropped\" drop
            }}
        }}"
    )
}

const PATH: [(&str, &str); 2] = [("protocol", "udp"), ("path", "host_cross_node")];

/// What one measurement window saw.
struct Window {
    /// Exact p99 of both agents' kept UDP samples, seconds.
    p99: f64,
    /// Kept UDP samples of both agents.
    exact_samples: usize,
    /// h0's histogram p99 (interpolated), seconds.
    hist_p99: f64,
    samples: f64,
    lost: f64,
    resolved: f64,
    excluded: f64,
    dropped: f64,
    seen: f64,
}

fn excluded(s: &Scrape) -> f64 {
    s.one(
        "kubepulse_probe_excluded_total",
        &[
            ("protocol", "udp"),
            ("path", "host_cross_node"),
            ("reason", "bandwidth_burst"),
        ],
    )
    .expect("excluded series pre-created")
}

fn one_of(s: &Scrape, name: &str) -> f64 {
    let l = [PATH[0], PATH[1], ("peer_node", "node1")];
    s.one(name, &l).unwrap_or_else(|| panic!("{name} missing"))
}

/// Measures agent h0 towards node1 over `window`, counters read as in
/// `netlab_loss` (agent one timeout after nft, so both count the same
/// probes); the exact p99 also takes h1's samples towards node0 (the
/// `responder` agents) over the same window.
fn measure(lab: &Lab, agents: &Agents, responder: &Agents, window: Duration) -> Window {
    let ns1 = lab.host(1);
    let settle = Duration::from_millis(TIMEOUT_MS + 150);
    let nft = || {
        (
            lab.nft_counter(&ns1, "udp_dropped") as f64,
            lab.nft_counter(&ns1, "udp_seen") as f64,
        )
    };
    let n0 = nft();
    std::thread::sleep(settle);
    let a0 = agents.scrape("host0");
    let marks0 = (agents.log_len("host0"), responder.log_len("host1"));
    std::thread::sleep(window);
    let n1 = nft();
    std::thread::sleep(settle);
    let a1 = agents.scrape("host0");
    let marks1 = (agents.log_len("host0"), responder.log_len("host1"));
    let udp = |peer| {
        [
            ("protocol", "udp"),
            ("path", "host_cross_node"),
            ("peer", peer),
        ]
    };
    let mut rtts = agents.rtt_samples("host0", marks0.0, marks1.0, &udp("host1"));
    rtts.extend(responder.rtt_samples("host1", marks0.1, marks1.1, &udp("host0")));
    let d = bucket_delta(
        &a1.buckets("kubepulse_probe_rtt_seconds", &PATH),
        &a0.buckets("kubepulse_probe_rtt_seconds", &PATH),
    );
    let lost =
        one_of(&a1, "kubepulse_probe_lost_total") - one_of(&a0, "kubepulse_probe_lost_total");
    // Sent is booked with the outcome: sent − lost are the kept replies.
    let replies = one_of(&a1, "kubepulse_probe_sent_total")
        - one_of(&a0, "kubepulse_probe_sent_total")
        - lost;
    Window {
        exact_samples: rtts.len(),
        p99: sample_quantile(&mut rtts, 0.99).expect("kept UDP samples in the trace log") as f64
            / 1e9,
        hist_p99: quantile(&d, 0.99).expect("p99"),
        samples: d.last().map_or(0.0, |x| x.1),
        lost,
        resolved: lost + replies,
        excluded: excluded(&a1) - excluded(&a0),
        dropped: n1.0 - n0.0,
        seen: n1.1 - n0.1,
    }
}

fn run(lab: &Lab, bursts: bool, window: Duration) -> Window {
    let (h0, h1) = (AgentSpec::host(lab, 0), AgentSpec::host(lab, 1));
    let mut probes = fast_probes();
    probes["udp"]["interval"] = format!("{INTERVAL_MS}ms").into();
    probes["udp"]["timeout"] = format!("{TIMEOUT_MS}ms").into();
    for p in ["tcp", "icmp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    if bursts {
        probes["bandwidth"] = serde_json::json!({
            "enabled": true,
            "schedule": "slots",
            "duration": "250ms",
            "slots": {"slot": "4s", "max_pairs": 1, "duty_budget": 1.0},
        });
    }
    // Both agents know both nodes, so both run their share of the bursts.
    let log = serde_json::json!({"format": "json", "level": format!("info,{RTT_SAMPLES}=trace")});
    let responder = Agents::start_logging(
        lab,
        std::slice::from_ref(&h1),
        std::slice::from_ref(&h0),
        &probes,
        &log,
    );
    let prober = Agents::start_logging(
        lab,
        std::slice::from_ref(&h0),
        std::slice::from_ref(&h1),
        &probes,
        &log,
    );
    if bursts {
        // Measure only once bursts really run (either agent may initiate).
        let burst = [("path", "host_cross_node"), ("outcome", "ok")];
        let ran = |s: &Scrape| {
            s.try_sum("kubepulse_bandwidth_bursts_total", &burst)
                .is_some_and(|n| n > 0.0)
        };
        prober.wait_for("host0", Duration::from_secs(30), "a burst", |s| {
            (ran(s) || ran(&responder.scrape("host1"))).then_some(())
        });
    } else {
        std::thread::sleep(Duration::from_secs(2));
    }
    let w = measure(lab, &prober, &responder, window);
    prober.stop(lab);
    responder.stop(lab);
    w
}

#[test]
fn bursts_do_not_show_up_as_latency_or_loss() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    lab.set_tbf(0, RATE_MBIT, "32kb");
    lab.set_tbf(1, RATE_MBIT, "32kb");
    lab.nft(
        &lab.host(1),
        &ruleset(&AgentSpec::host(&lab, 0).address.to_string()),
    );
    // The first agents of a fresh lab read a higher p99 (4 of 4 runs):
    // a warm-up run is only printed. Then quiet runs before and after the
    // bursts; the lower p99 is the baseline, so load from outside the lab
    // cannot make the test easier.
    let warm = run(&lab, false, WARM_UP);
    eprintln!("warm-up: UDP p99 {:.1} us exact", warm.p99 * 1e6);
    let quiet = run(&lab, false, WINDOW);
    let busy = run(&lab, true, WINDOW);
    let busy_again = run(&lab, true, WINDOW);
    let after = run(&lab, false, WINDOW);
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for (name, w) in [
        ("no bursts", &quiet),
        ("bursts", &busy),
        ("bursts, again", &busy_again),
        ("no bursts, after", &after),
    ] {
        let truth = w.dropped / w.seen;
        let reported = w.lost / w.resolved;
        let sigma = (truth * (1.0 - truth) * (1.0 / w.resolved - 1.0 / w.seen).max(0.0)).sqrt();
        let line = format!(
            "{name}: UDP p99 {:.1} us exact ({} samples, both agents), {:.1} us from h0's histogram ({} samples); nft dropped {}/{} = {:.3}%, kubepulse lost {}/{} = {:.3}% (3 sigma {:.3}%); excluded {}",
            w.p99 * 1e6,
            w.exact_samples,
            w.hist_p99 * 1e6,
            w.samples,
            w.dropped,
            w.seen,
            truth * 100.0,
            w.lost,
            w.resolved,
            reported * 100.0,
            3.0 * sigma * 100.0,
            w.excluded
        );
        // Every probe nft saw is either kept (replied or lost) or excluded.
        let accounted = (w.resolved + w.excluded - w.seen).abs() <= 5.0;
        // Without exclusions the kept probes are all the probes: the loss
        // is the drop count itself (a probe or two at the window edges).
        let matches = if w.excluded == 0.0 {
            (w.lost - w.dropped).abs() <= 2.0
        } else {
            (reported - truth).abs() <= 3.0 * sigma
        };
        // Both agents' trace logs hold about twice h0's histogram count.
        let traced = w.exact_samples as f64 >= 1.8 * w.samples;
        if w.seen < 1000.0 || w.resolved < 1000.0 || !accounted || !matches || !traced {
            bad.push(line.clone());
        }
        report.push(line);
    }
    // The lower p99 of two runs on each side: a hiccup of this shared
    // machine lands in one run, our own bursts in both.
    let ratio = busy.p99.min(busy_again.p99) / quiet.p99.min(after.p99);
    report.push(format!("p99 ratio bursts / no bursts: {ratio:.3}"));
    eprintln!("{}", report.join("\n"));
    assert!(
        bad.is_empty(),
        "loss differs from nft truth:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        quiet.excluded + after.excluded,
        0.0,
        "nothing to exclude without bursts"
    );
    assert!(
        busy.excluded > 0.0 && busy_again.excluded > 0.0,
        "bursts ran but nothing was excluded"
    );
    assert!(
        ratio <= 1.2,
        "UDP p99 with bursts {ratio:.2}x the quiet p99\n{}",
        report.join("\n")
    );
}
