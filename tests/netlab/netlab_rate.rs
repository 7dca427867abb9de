//! Rate ground truth: through a tbf of 100 Mbit/s, 500 Mbit/s (burst
//! 32 KB) and 1 Gbit/s (burst 128 KB) on the underlay, the bandwidth probe's goodput (default
//! time-bounded bursts of 250 ms) is within 3% of the shaper's goodput
//! truth, rate x MSS / (IP len + L2). The fastest of three consecutive
//! bursts is judged: a burst cannot beat the shaper (its 128 KB bucket is
//! 0.4 % of a 250 ms burst at 1 Gbit/s), so a reading above the truth is
//! the probe's error, while a stall of this shared 2-vCPU machine can only
//! slow a burst (at 1 Gbit/s two of three bursts read 809 and 844 Mbit/s
//! against 956 in one full `.ci/run`, the median 5.6 % and 8.2 % low).

use kubepulse_testkit::lab;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};

/// TCP payload per 1500-byte IP packet with timestamps (1500 - 20 - 20 - 12).
const MSS: f64 = 1448.0;
/// tbf on a veth counts the 14-byte Ethernet header.
const WIRE: f64 = 1500.0 + 14.0;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[test]
fn bandwidth_goodput_matches_tbf_truth() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lab = Lab::new(LabSpec::two_nodes(Flavour::Routed));
    let (h0, h1) = (AgentSpec::host(&lab, 0), AgentSpec::host(&lab, 1));
    let mut probes = fast_probes();
    probes["udp"]["interval"] = "200ms".into();
    for p in ["tcp", "icmp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    probes["bandwidth"] =
        serde_json::json!({"enabled": true, "schedule": "interval", "interval": "2s"});
    // Both directions of the underlay are shaped, so `send` (node0 sends)
    // and `receive` (node1's responder sends) both meet the tbf.
    lab.set_tbf(0, 100, "32kb");
    lab.set_tbf(1, 100, "32kb");
    let _responder = Agents::start(&lab, std::slice::from_ref(&h1), &[], &probes);
    let prober = Agents::start(
        &lab,
        std::slice::from_ref(&h0),
        std::slice::from_ref(&h1),
        &probes,
    );
    let mut report = Vec::new();
    let mut bad = Vec::new();
    // At 1 Gbit/s a 32 KB bucket is below what the shaper needs to reach
    // its rate between timer ticks; 128 KB (as in the accuracy bench) is not.
    for (rate, bucket) in [(100u32, "32kb"), (500, "32kb"), (1000, "128kb")] {
        lab.set_tbf(0, rate, bucket);
        lab.set_tbf(1, rate, bucket);
        // Only bursts that started after the shaper change count: a burst
        // lasts 250 ms plus its handshake (1.5 s leaves room for a slow one).
        let since = unix_now() + 1.5;
        let truth = f64::from(rate) * 1e6 * MSS / WIRE;
        for dir in ["send", "receive"] {
            let l = [
                ("path", "host_cross_node"),
                ("peer_node", "node1"),
                ("direction", dir),
            ];
            // Three consecutive bursts; the fastest is judged (the module's
            // doc says why; every value is printed).
            let mut seen = since;
            let mut got = Vec::new();
            while got.len() < 3 {
                let (ts, bw) =
                    prober.wait_for("host0", Duration::from_secs(30), "a fresh burst", |s| {
                        let last = s.one("kubepulse_bandwidth_last_burst_timestamp_seconds", &l)?;
                        (last > seen).then(|| {
                            Some((last, s.one("kubepulse_bandwidth_bytes_per_second", &l)?))
                        })?
                    });
                seen = ts;
                got.push(bw * 8.0);
            }
            let bps = got.iter().copied().fold(0.0, f64::max);
            let line = format!(
                "tbf {rate} Mbit {dir}: kubepulse fastest {:.1} Mbit/s of {:.1?}, truth {:.1} ({:+.2}%)",
                bps / 1e6,
                got.iter().map(|x| x / 1e6).collect::<Vec<_>>(),
                truth / 1e6,
                (bps / truth - 1.0) * 100.0
            );
            if (bps / truth - 1.0).abs() > 0.03 {
                bad.push(line.clone());
            }
            report.push(line);
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        bad.is_empty(),
        "goodput off by more than 3%:\n{}",
        bad.join("\n")
    );
}
