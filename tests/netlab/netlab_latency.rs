//! Latency ground truth: a known one-way delay d on the cross-node path
//! raises the reported RTT by 2d, and busy loops on both cores beside the
//! agent keep its UDP RTT p99 within 2x of idle.

use kubepulse_testkit::lab;

use std::time::Duration;

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::{bucket_delta, quantile, Scrape};

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
    // The base floor is measured right before and right after each d, and
    // the lower of the two kept: slow drifts cancel as with one base, and a
    // base window that a hiccup of the machine lifted as a whole (the first
    // one after the agents start read 85 us instead of 40-60 once) cannot
    // shrink the increase, a floor only ever being raised by noise.
    lab.set_delay(Duration::ZERO);
    let mut before = rtt_mins(&agents);
    for d_us in [250u64, 1000, 5000, 20000] {
        let d = Duration::from_micros(d_us);
        lab.set_delay(d);
        let s0 = scrape_all();
        let got = rtt_mins(&agents);
        let mean = means(&s0, &scrape_all());
        lab.set_delay(Duration::ZERO);
        let after = rtt_mins(&agents);
        let base: Vec<f64> = before.iter().zip(&after).map(|(a, b)| a.min(*b)).collect();
        before = after;
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
/// here under root) keeps UDP RTT p99 within 2x of its idle value. p99 is
/// interpolated in the exported doubling buckets, so the check is as coarse
/// as one bucket; docs/accuracy.md has the runs behind it.
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
    let agents = Agents::start(&lab, &everyone, &everyone, &probes);
    let paths = [("host0", "host_cross_node"), ("pod00", "pod_cross_node")];
    let window = Duration::from_secs(10);
    let measure = || -> Vec<(f64, f64)> {
        let b: Vec<Scrape> = paths.iter().map(|(a, _)| agents.scrape(a)).collect();
        std::thread::sleep(window);
        paths
            .iter()
            .zip(&b)
            .map(|((a, path), before)| {
                let after = agents.scrape(a);
                let l = [("protocol", "udp"), ("path", *path)];
                let d = bucket_delta(
                    &after.buckets("kubepulse_probe_rtt_seconds", &l),
                    &before.buckets("kubepulse_probe_rtt_seconds", &l),
                );
                let n = d.last().map_or(0.0, |x| x.1);
                assert!(n >= 500.0, "{a} {path}: only {n} samples in the window");
                (quantile(&d, 0.99).expect("p99"), n)
            })
            .collect()
    };
    // Warm up past start-up (connection setup, first ARP).
    std::thread::sleep(Duration::from_secs(2));
    let idle = measure();
    // One busy loop per core, in the agents' node namespaces, same priority.
    for ns in [lab.host(0), lab.host(1)] {
        lab.spawn(&ns, &["sh", "-c", "while :; do :; done"], None);
    }
    let busy = measure();
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for (((a, path), i), b) in paths.iter().zip(&idle).zip(&busy) {
        let line = format!(
            "{a} {path}: UDP p99 idle {:.1} us ({} samples), busy {:.1} us ({} samples), ratio {:.2}",
            i.0 * 1e6,
            i.1,
            b.0 * 1e6,
            b.1,
            b.0 / i.0
        );
        if b.0 > 2.0 * i.0 {
            bad.push(line.clone());
        }
        report.push(line);
    }
    eprintln!("{}", report.join("\n"));
    assert!(bad.is_empty(), "p99 more than doubled:\n{}", bad.join("\n"));
}
