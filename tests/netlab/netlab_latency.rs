//! Latency ground truth: a known one-way delay d on the cross-node path
//! raises the reported RTT by 2d, and busy loops on both cores beside the
//! agent keep its UDP RTT p99 within 2x of idle (phases alternating in one
//! run).

use kubepulse_testkit::lab;

use std::time::Duration;

use kubepulse_testkit::scrape::sample_quantile;
use lab::agents::{fast_probes, AgentSpec, Agents, RTT_SAMPLES};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::Scrape;

const PROTOCOLS: [&str; 3] = ["udp", "tcp", "icmp"];
/// The agents' rtt_min window in these tests.
const WINDOW: Duration = Duration::from_secs(2);

/// (agent, path, peer_node) whose probes cross the delay line.
const DELAYED: [(&str, &str, &str); 2] = [
    ("host0", "host_cross_node", "node1"),
    ("pod00", "pod_cross_node", "node1"),
];

/// rtt_min of every delayed key and protocol, read once a full window of
/// samples taken at the current delay has replaced the older ones.
fn rtt_mins(agents: &Agents) -> Vec<f64> {
    // Two windows: the windowed min may keep samples up to one window old.
    std::thread::sleep(2 * WINDOW + Duration::from_millis(300));
    let mut v = Vec::new();
    for (agent, path, node) in DELAYED {
        let s = agents.scrape(agent);
        for p in PROTOCOLS {
            let m = s
                .one(
                    "kubepulse_probe_rtt_min_seconds",
                    &[("protocol", p), ("path", path), ("peer_node", node)],
                )
                .unwrap_or_else(|| panic!("{agent}: no rtt_min for {p} {path}"));
            v.push(m);
        }
    }
    v
}

/// Mean RTT per delayed key and protocol between two scrapes (reported
/// alongside, not asserted: a mean carries every scheduler hiccup).
fn means(before: &[Scrape], after: &[Scrape]) -> Vec<f64> {
    let mut v = Vec::new();
    for (i, (_, path, node)) in DELAYED.iter().enumerate() {
        for p in PROTOCOLS {
            // Only UDP keeps a per-peer RTT sum (the series budget).
            if p != "udp" {
                v.push(f64::NAN);
                continue;
            }
            let l = [("protocol", p), ("path", *path), ("peer_node", *node)];
            let sum = after[i].sum("kubepulse_probe_reply_rtt_seconds_total", &l)
                - before[i].sum("kubepulse_probe_reply_rtt_seconds_total", &l);
            // Kept replies are sent - lost.
            let kept = |s: &Scrape| {
                s.sum("kubepulse_probe_sent_total", &l) - s.sum("kubepulse_probe_lost_total", &l)
            };
            let n = kept(&after[i]) - kept(&before[i]);
            v.push(if n > 0.0 { sum / n } else { f64::NAN });
        }
    }
    v
}

/// The tolerance, max(50 us, 3%), for every protocol. It holds for
/// TCP RR because the agents' latency threads run at SCHED_FIFO 1, replies
/// carry the kernel's receive stamp, and the echo responder's tokio is
/// optimised even in test builds (without these TCP's window minimum moved
/// -110..+80 us off 2d on this 2-vCPU VM).
fn tolerance(want: f64) -> f64 {
    50e-6f64.max(0.03 * want)
}

#[test]
fn delay_line_raises_rtt_by_twice_the_delay() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let mut lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    lab.add_delay_line();
    let everyone = vec![
        AgentSpec::host(&lab, 0),
        AgentSpec::host(&lab, 1),
        AgentSpec::pod(&lab, 0, 0),
        AgentSpec::pod(&lab, 1, 0),
    ];
    let mut probes = fast_probes();
    probes["rtt_min_window"] = format!("{}ms", WINDOW.as_millis()).into();
    probes["tcp_connect"]["enabled"] = false.into();
    probes["http"]["enabled"] = false.into();
    let agents = Agents::start(&lab, &everyone, &everyone, &probes);
    let scrape_all =
        || -> Vec<Scrape> { DELAYED.iter().map(|(a, _, _)| agents.scrape(a)).collect() };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    // Each floor is the least of ROUNDS windows, the delayed and the base
    // windows alternating (d, 0, d, 0, ...) after one base window: a floor
    // is only ever raised by noise, and the host path's floor moved by
    // 40-80 us between the windows of one run on a busy CI machine (the
    // pod path's by a few), so one window a side could land a raised floor
    // on either side and fail a 50 us tolerance. Alternating, both sides
    // meet the same machine.
    const ROUNDS: usize = 3;
    let least = |a: Vec<f64>, b: Vec<f64>| -> Vec<f64> {
        a.iter().zip(&b).map(|(x, y)| x.min(*y)).collect()
    };
    lab.set_delay(Duration::ZERO);
    let mut before = rtt_mins(&agents);
    for d_us in [250u64, 1000, 5000, 20000] {
        let d = Duration::from_micros(d_us);
        let mut base = before.clone();
        let mut got = vec![f64::INFINITY; base.len()];
        let mut mean = Vec::new();
        for _ in 0..ROUNDS {
            lab.set_delay(d);
            let s0 = scrape_all();
            let g = rtt_mins(&agents);
            // The last round's, reported only.
            mean = means(&s0, &scrape_all());
            got = least(got, g);
            lab.set_delay(Duration::ZERO);
            before = rtt_mins(&agents);
            base = least(base, before.clone());
        }
        let want = 2.0 * d.as_secs_f64();
        let mut k = 0;
        for (agent, path, _) in DELAYED {
            for p in PROTOCOLS {
                let tol = tolerance(want);
                let inc = got[k] - base[k];
                let line = format!(
                    "d={d_us}us {agent} {path} {p}: rtt_min {:.1} -> {:.1} us (+{:.1}, want +{:.0} +-{:.0}); mean {:.1} us",
                    base[k] * 1e6,
                    got[k] * 1e6,
                    inc * 1e6,
                    want * 1e6,
                    tol * 1e6,
                    mean[k] * 1e6
                );
                if (inc - want).abs() > tol {
                    failures.push(line.clone());
                }
                report.push(line);
                k += 1;
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "outside tolerance:\n{}",
        failures.join("\n")
    );
}

/// Busy loops on both cores beside the agents: the dedicated probe thread
/// (and the echo responder thread, both at SCHED_FIFO 1 when permitted, as
/// here under root) keeps UDP RTT p99 within 2x of its idle value. The
/// loops run and stop in alternating 2 s phases of one 24 s run, so idle
/// and busy meet the same stalls of this shared machine (one idle window
/// then one busy window compared whichever caught a stall), and the p99s
/// are exact, over every kept sample of the agents' trace logs in each
/// phase, not interpolated in the exported doubling buckets.
#[test]
fn udp_rtt_p99_under_cpu_contention() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    let everyone = vec![
        AgentSpec::host(&lab, 0),
        AgentSpec::host(&lab, 1),
        AgentSpec::pod(&lab, 0, 0),
        AgentSpec::pod(&lab, 1, 0),
    ];
    let mut probes = fast_probes();
    probes["udp"]["interval"] = "10ms".into();
    probes["tcp"]["enabled"] = false.into();
    probes["icmp"]["enabled"] = false.into();
    probes["tcp_connect"]["enabled"] = false.into();
    probes["http"]["enabled"] = false.into();
    let log = serde_json::json!({"format": "json", "level": format!("info,{RTT_SAMPLES}=trace")});
    let agents = Agents::start_logging(&lab, &everyone, &everyone, &probes, &log);
    let paths = [("host0", "host_cross_node"), ("pod00", "pod_cross_node")];
    // Warm up past start-up (connection setup, first ARP).
    std::thread::sleep(Duration::from_secs(2));
    // One busy loop per core, in the agents' node namespaces, same
    // priority; stopped (SIGSTOP) and resumed in alternate phases.
    let loops: Vec<u32> = [lab.host(0), lab.host(1)]
        .iter()
        .map(|ns| lab.spawn(ns, &["sh", "-c", "while :; do :; done"], None))
        .collect();
    let signal = |sig: &str| {
        for pid in &loops {
            let out = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .output()
                .expect("kill");
            assert!(out.status.success(), "kill {sig} {pid}");
        }
    };
    let marks0: Vec<u64> = paths.iter().map(|(a, _)| agents.log_len(a)).collect();
    // (start, end, busy) of each phase, since the epoch; the first 200 ms
    // of a phase are left out (probes in flight at the switch).
    let mut phases = Vec::new();
    for k in 0..PHASES {
        let busy = k % 2 == 1;
        signal(if busy { "-CONT" } else { "-STOP" });
        let start = since_epoch();
        std::thread::sleep(PHASE);
        phases.push((start + SETTLE, since_epoch(), busy));
    }
    signal("-STOP");
    let marks1: Vec<u64> = paths.iter().map(|(a, _)| agents.log_len(a)).collect();
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for (((a, path), from), to) in paths.iter().zip(&marks0).zip(&marks1) {
        let samples = agents.rtt_samples(a, *from, *to, &[("protocol", "udp"), ("path", path)]);
        let mut side = [Vec::new(), Vec::new()];
        for s in &samples {
            if let Some((_, _, busy)) = phases.iter().find(|(lo, hi, _)| *lo <= s.at && s.at < *hi)
            {
                side[usize::from(*busy)].push(s.rtt_ns);
            }
        }
        let (n_idle, n_busy) = (side[0].len(), side[1].len());
        let p99 = |v: &mut Vec<u64>| sample_quantile(v, 0.99).map_or(f64::NAN, |x| x as f64 / 1e3);
        let (idle, busy) = (p99(&mut side[0]), p99(&mut side[1]));
        let line = format!(
            "{a} {path}: UDP p99 idle {idle:.1} us ({n_idle} samples), busy {busy:.1} us ({n_busy} samples), ratio {:.2}",
            busy / idle
        );
        // 6 phases of 1.8 s a side at 100 probes/s to the one peer node
        // of the path: about 1,080. A NaN p99 (no samples) is not within.
        let within = busy <= 2.0 * idle;
        if n_idle < 800 || n_busy < 800 || !within {
            bad.push(line.clone());
        }
        report.push(line);
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        bad.is_empty(),
        "p99 more than doubled (or too few samples):\n{}",
        bad.join("\n")
    );
}

/// Alternating idle and busy phases of the contention test.
const PHASES: usize = 12;
const PHASE: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_millis(200);

fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
