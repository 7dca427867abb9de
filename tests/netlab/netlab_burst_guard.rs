//! Self-interference: on a tbf-shaped path (300 Mbit/s, both directions)
//! with bandwidth bursts in every other 4 s slot (duty budget 0.5: the
//! pair bursts in one slot of each round of two, 250 ms per direction),
//! the burst guard keeps the agent's own bursts out of its latency
//! results:
//! - the exact UDP RTT p99 of the samples kept in a burst slot is at most
//!   1.2x the p99 of the quiet slot after it, in the median of the 15
//!   pairs. Both come from one run of both agents (each probes the other),
//!   read from their per-sample trace logs, so the two sides alternate
//!   every 4 s: two 30 s runs per side one after the other read ratios of
//!   0.71 to 2.31 on one build, as stall episodes landed on one side or
//!   the other. Alternating alone did not settle it: a p99 of 7,000
//!   samples is its 70 slowest, a few stalls of a shared machine, and in
//!   one CI run the pooled p99s of the two sides read a ratio of 1.65
//!   while runs here read 0.99-1.08. A stall lands in one slot; a burst's
//!   effect would be in every burst slot. So each burst slot is compared
//!   with its neighbour and the median pair judged: stalls move a few
//!   pairs, a burst effect moves them all. The pooled ratio is printed
//!   beside it. Like with like in phase too: the quiet side keeps only the
//!   phases of the slot (20 ms bins) where the burst side kept samples,
//!   so the guard's windows are cut from both sides. The p99s are exact
//!   (the quiet p99 sits near the 204.8 us edge of the doubling buckets,
//!   where an interpolated p99 moved 30-40 % on a few tail samples);
//! - every probe nft saw is accounted for, kept (replied or lost) or
//!   excluded, and the kept probes' loss ratio estimates the 2 % random
//!   drop of nft: the guard excludes whole probes (replies and losses
//!   alike) at times that do not depend on the random drop; judged within
//!   4 binomial standard deviations of the difference between the kept
//!   subset and all probes nft saw (the kept subset is a random sample of
//!   the drops: at 3 sigma it would fail one run in 370 by chance, at 4
//!   one in 16,000);
//! - burst slots lose phases to the guard and
//!   `kubepulse_probe_excluded_total{protocol="udp"}` grows.

use kubepulse_testkit::lab;

use std::collections::BTreeMap;
use std::time::Duration;

use kubepulse_testkit::scrape::{median, sample_quantile};
use lab::agents::{fast_probes, AgentSpec, Agents, RttSample, RTT_SAMPLES};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::Scrape;

const INTERVAL_MS: u64 = 10;
const TIMEOUT_MS: u64 = 200;
/// Slot length: bursts in every other slot.
const SLOT: Duration = Duration::from_secs(4);
/// Measured: 15 burst and 15 quiet slots, about 9,000 kept samples a side.
const WINDOW: Duration = Duration::from_secs(120);
/// Slots skipped after the first burst: the first seconds of fresh agents
/// read a higher p99 (on both sides now, but they are not what is judged).
const WARM_UP: Duration = Duration::from_secs(8);
const RATE_MBIT: u32 = 300;
const DROP_PERMILLE: u32 = 20;
/// Phase bins of a slot.
const BIN: Duration = Duration::from_millis(20);
/// Fewest samples a slot of a judged pair holds (about 480 kept on either
/// side at 10 ms from both agents): a p99 of at least 2 tail samples.
const MIN_SLOT_SAMPLES: usize = 200;

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

/// Samples of alternating slots, split by the slots' parity and judged at
/// the same phases.
#[derive(Debug)]
struct Sides {
    /// RTTs (ns) kept in burst slots, by slot number.
    burst: BTreeMap<u64, Vec<u64>>,
    /// RTTs (ns) of quiet slots at the phases the burst side kept, by slot
    /// number.
    quiet: BTreeMap<u64, Vec<u64>>,
    /// Quiet samples dropped for their phase.
    quiet_cut: usize,
    /// Phase bins the burst side kept none in (the guard's windows).
    cut_bins: usize,
    /// Phase bins the quiet side kept none in: the drain margin at its
    /// end, where a probe's flight would reach into a burst slot's first
    /// window.
    quiet_empty_bins: usize,
}

impl Sides {
    fn pooled(side: &BTreeMap<u64, Vec<u64>>) -> Vec<u64> {
        side.values().flatten().copied().collect()
    }

    /// p99 ratio of each burst slot over the quiet slot after it (both
    /// with at least `min` samples).
    fn pair_ratios(&self, min: usize) -> Vec<f64> {
        self.burst
            .iter()
            .filter_map(|(slot, b)| Some((b, self.quiet.get(&(slot + 1))?)))
            .filter(|(b, q)| b.len() >= min && q.len() >= min)
            .filter_map(|(b, q)| {
                let p99 = |v: &[u64]| sample_quantile(&mut v.to_vec(), 0.99).map(|x| x as f64);
                Some(p99(b)? / p99(q)?)
            })
            .collect()
    }
}

/// Splits `samples` by slot parity: the side with fewer samples (the guard
/// excluded some) is the burst side. A phase bin is cut when the burst
/// side kept under a tenth of the median bin's count there (a window edge
/// or a reply logged just after a slot boundary leaves a few).
fn split(samples: &[RttSample], slot: Duration, bin: Duration) -> Sides {
    let slot_ns = slot.as_nanos();
    let bins = (slot.as_nanos() / bin.as_nanos()) as usize;
    let place = |s: &RttSample| {
        let t = s.at.as_nanos();
        (
            (t / slot_ns) as u64,
            ((t % slot_ns) / bin.as_nanos()) as usize,
        )
    };
    let mut count = [vec![0usize; bins], vec![0usize; bins]];
    for s in samples {
        let (n, b) = place(s);
        count[(n % 2) as usize][b] += 1;
    }
    let total = |p: usize| count[p].iter().sum::<usize>();
    let (burst_parity, quiet_parity) = if total(0) < total(1) { (0, 1) } else { (1, 0) };
    let mut sorted = count[burst_parity].clone();
    sorted.sort_unstable();
    let floor = sorted[bins / 2] / 10;
    let cut: Vec<bool> = count[burst_parity].iter().map(|n| *n <= floor).collect();
    let mut sides = Sides {
        burst: BTreeMap::new(),
        quiet: BTreeMap::new(),
        quiet_cut: 0,
        cut_bins: cut.iter().filter(|c| **c).count(),
        quiet_empty_bins: count[quiet_parity].iter().filter(|n| **n == 0).count(),
    };
    for s in samples {
        let (n, b) = place(s);
        if (n % 2) as usize == burst_parity {
            sides.burst.entry(n).or_default().push(s.rtt_ns);
        } else if cut[b] {
            sides.quiet_cut += 1;
        } else {
            sides.quiet.entry(n).or_default().push(s.rtt_ns);
        }
    }
    sides
}

#[test]
fn split_judges_the_quiet_side_at_the_phases_the_burst_side_kept() {
    let ms = Duration::from_millis;
    // Slot 1 s, bins of 100 ms: even slots lose phases 0.3-0.5 s.
    let mut samples = Vec::new();
    for slot in 0..10u64 {
        for phase_ms in (0..1000).step_by(10) {
            if slot % 2 == 0 && (300..500).contains(&phase_ms) {
                continue;
            }
            let rtt_ns = if slot % 2 == 0 { 100 } else { 200 };
            samples.push(RttSample {
                at: ms(slot * 1000 + phase_ms),
                rtt_ns,
            });
        }
    }
    let sides = split(&samples, ms(1000), ms(100));
    assert_eq!((sides.cut_bins, sides.quiet_empty_bins), (2, 0));
    let (burst, quiet) = (Sides::pooled(&sides.burst), Sides::pooled(&sides.quiet));
    assert_eq!(burst.len(), 5 * 80);
    assert_eq!(quiet.len(), 5 * 80);
    assert_eq!(sides.quiet_cut, 5 * 20);
    assert!(burst.iter().all(|r| *r == 100) && quiet.iter().all(|r| *r == 200));
    // Burst slots 0, 2, 4, 6, 8 each before a quiet one.
    assert_eq!(sides.pair_ratios(1), vec![0.5; 5]);
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
    let (h0, h1) = (AgentSpec::host(&lab, 0), AgentSpec::host(&lab, 1));
    lab.nft(&lab.host(1), &ruleset(&h0.address.to_string()));
    let mut probes = fast_probes();
    probes["udp"]["interval"] = format!("{INTERVAL_MS}ms").into();
    probes["udp"]["timeout"] = format!("{TIMEOUT_MS}ms").into();
    for p in ["tcp", "icmp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    probes["bandwidth"] = serde_json::json!({
        "enabled": true,
        "schedule": "slots",
        "duration": "250ms",
        "slots": {"slot": format!("{}s", SLOT.as_secs()), "max_pairs": 1, "duty_budget": 0.5},
    });
    // Both agents know both nodes, so both run their share of the bursts.
    let log = serde_json::json!({"format": "json", "level": format!("info,{RTT_SAMPLES}=trace")});
    let responder = Agents::start_logging(
        &lab,
        std::slice::from_ref(&h1),
        std::slice::from_ref(&h0),
        &probes,
        &log,
    );
    let prober = Agents::start_logging(
        &lab,
        std::slice::from_ref(&h0),
        std::slice::from_ref(&h1),
        &probes,
        &log,
    );
    // Measure once bursts really run (either agent may initiate).
    let burst = [("path", "host_cross_node"), ("outcome", "ok")];
    let ran = |s: &Scrape| {
        s.try_sum("kubepulse_bandwidth_bursts_total", &burst)
            .is_some_and(|n| n > 0.0)
    };
    prober.wait_for("host0", Duration::from_secs(30), "a burst", |s| {
        (ran(s) || ran(&responder.scrape("host1"))).then_some(())
    });
    std::thread::sleep(WARM_UP);

    // Counters read as in `netlab_loss`: the agent is read one timeout
    // after nft, so both count the same probes.
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
    let a0 = prober.scrape("host0");
    let marks0 = (prober.log_len("host0"), responder.log_len("host1"));
    std::thread::sleep(WINDOW);
    let n1 = nft();
    std::thread::sleep(settle);
    let a1 = prober.scrape("host0");
    let marks1 = (prober.log_len("host0"), responder.log_len("host1"));
    let udp = |peer| {
        [
            ("protocol", "udp"),
            ("path", "host_cross_node"),
            ("peer", peer),
        ]
    };
    let mut samples = prober.rtt_samples("host0", marks0.0, marks1.0, &udp("host1"));
    samples.extend(responder.rtt_samples("host1", marks0.1, marks1.1, &udp("host0")));
    prober.stop(&lab);
    responder.stop(&lab);

    let sides = split(&samples, SLOT, BIN);
    let (mut burst, mut quiet) = (Sides::pooled(&sides.burst), Sides::pooled(&sides.quiet));
    let p99 = |v: &mut Vec<u64>| sample_quantile(v, 0.99).map_or(f64::NAN, |x| x as f64 / 1e3);
    let (burst_p99, quiet_p99) = (p99(&mut burst), p99(&mut quiet));
    let pooled = burst_p99 / quiet_p99;
    let pairs = sides.pair_ratios(MIN_SLOT_SAMPLES);
    let ratio = median(&pairs).unwrap_or(f64::NAN);
    let listed: Vec<String> = pairs.iter().map(|r| format!("{r:.2}")).collect();
    let lost =
        one_of(&a1, "kubepulse_probe_lost_total") - one_of(&a0, "kubepulse_probe_lost_total");
    // Sent is booked with the outcome: sent − lost are the kept replies.
    let resolved =
        one_of(&a1, "kubepulse_probe_sent_total") - one_of(&a0, "kubepulse_probe_sent_total");
    let excluded = excluded(&a1) - excluded(&a0);
    let (dropped, seen) = (n1.0 - n0.0, n1.1 - n0.1);
    let truth = dropped / seen;
    let reported = lost / resolved;
    let sigma = (truth * (1.0 - truth) * (1.0 / resolved - 1.0 / seen).max(0.0)).sqrt();
    let report = format!(
        "UDP p99 exact, both agents: burst slots {burst_p99:.1} us ({} kept samples), \
         quiet slots {quiet_p99:.1} us ({} samples at the same phases; {} at the {} cut \
         phase bins of {} ms left out; the quiet side itself kept none in {} bins); \
         pooled ratio {pooled:.3}\n\
         UDP p99 exact, burst slot over the quiet slot after it, {} pairs: {}; \
         median ratio {ratio:.3}\n\
         nft dropped {dropped}/{seen} = {:.3}%, kubepulse lost {lost}/{resolved} = {:.3}% \
         (4 sigma {:.3}%); excluded {excluded}",
        burst.len(),
        quiet.len(),
        sides.quiet_cut,
        sides.cut_bins,
        BIN.as_millis(),
        sides.quiet_empty_bins,
        pairs.len(),
        listed.join(" "),
        truth * 100.0,
        reported * 100.0,
        4.0 * sigma * 100.0,
    );
    eprintln!("{report}");
    // Enough of both sides for a p99 of about a hundred tail samples.
    assert!(
        burst.len() >= 5000 && quiet.len() >= 5000 && pairs.len() >= 10,
        "too few samples:\n{report}"
    );
    assert!(
        sides.cut_bins > 0 && excluded > 0.0,
        "bursts ran but nothing was excluded:\n{report}"
    );
    // Every probe nft saw is either kept (replied or lost) or excluded.
    assert!(
        (resolved + excluded - seen).abs() <= 5.0 && seen >= 1000.0,
        "probes unaccounted for:\n{report}"
    );
    assert!(
        (reported - truth).abs() <= 4.0 * sigma,
        "kept loss differs from nft truth:\n{report}"
    );
    assert!(
        ratio <= 1.2,
        "UDP p99 with bursts {ratio:.2}x the quiet p99 (median of the pairs):\n{report}"
    );
}
