//! kubepulse against the reference tools on the same lab paths, back to
//! back: the veth host path (node0 -> node1 underlay) and the vxlan pod path
//! (pod on node0 -> pod on node1, overlay flavour). Prints one table of
//! side-by-side numbers and ratios (the issue-3 benchmark; docs/accuracy.md
//! holds a run).
//!
//! Needs root, iperf3, qperf and ping. Run:
//! `cargo bench --bench netlab_accuracy` (release), or without a release
//! build `cargo test --bench netlab_accuracy -- --bench` (debug kubepulse:
//! CPU cost is then pessimistic). Takes about 90 s.

use kubepulse_testkit::lab;

use std::time::Duration;

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{Flavour, Lab, LabSpec};
use lab::prom::Scrape;

/// Latency probe spacing for kubepulse and ping alike (cadence moves RTT).
const SPACING_MS: u64 = 10;
const LAT_WINDOW: Duration = Duration::from_secs(8);
/// Bursts whose CPU cost is summed (each runs 250 ms, the default).
const BURSTS: usize = 6;
/// Alternating kubepulse / iperf3 rounds on the unshaped veth.
const ROUNDS: usize = 5;
/// iperf3's run time in the alternating comparison.
const IPERF3_SECS: f64 = 5.0;

/// One measured path.
struct Path {
    label: &'static str,
    /// kubepulse `path` label.
    kind: &'static str,
    from: AgentSpec,
    to: AgentSpec,
    /// Interface whose tx bytes count a burst's traffic, in `from`'s netns.
    dev: &'static str,
    /// A tbf (Mbit/s) on both underlay ends while this path is measured.
    tbf: Option<u32>,
}

#[derive(Default, Debug)]
struct Row {
    kp_icmp_mean: f64,
    kp_tcp_mean: f64,
    kp_tcp_min: f64,
    kp_udp_min: f64,
    kp_icmp_min: f64,
    ping_mean: f64,
    ping_min: f64,
    qperf_tcp_lat: f64,
    qperf_send_cost: f64,
    qperf_bw: f64,
    iperf3_bw: f64,
    kp_bw: f64,
    kp_burst_time: f64,
    kp_cpu_per_gb: f64,
}

/// Mean RTT between two scrapes from the per-path histogram (`l` without
/// `peer_node`): the prober here has exactly one peer on the path, and TCP
/// and ICMP keep no per-peer RTT sum (series budget).
fn mean_between(a: &Scrape, b: &Scrape, l: &[(&str, &str)]) -> f64 {
    let sum =
        b.sum("kubepulse_probe_rtt_seconds_sum", l) - a.sum("kubepulse_probe_rtt_seconds_sum", l);
    let n = b.sum("kubepulse_probe_rtt_seconds_count", l)
        - a.sum("kubepulse_probe_rtt_seconds_count", l);
    sum / n
}

/// Number before `unit` in qperf's `name = value unit` line, in base units.
fn qperf_value(text: &str, name: &str) -> f64 {
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with(name) {
            continue;
        }
        let Some(rest) = line.split('=').nth(1) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let v: f64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
        let scale = match it.next().unwrap_or("") {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "sec" | "s" => 1.0,
            "ms/GB" => 1e-3,
            "sec/GB" | "s/GB" => 1.0,
            "us/GB" => 1e-6,
            "GB/sec" => 8e9,
            "MB/sec" => 8e6,
            "KB/sec" => 8e3,
            _ => f64::NAN,
        };
        return v * scale;
    }
    f64::NAN
}

fn tx_bytes(lab: &Lab, ns: &str, dev: &str) -> f64 {
    let out = lab.run(
        ns,
        &["cat", &format!("/sys/class/net/{dev}/statistics/tx_bytes")],
    );
    out.trim().parse().unwrap_or(f64::NAN)
}

/// utime + stime of the agent processes (clock ticks of 10 ms; the
/// exporter's own process_cpu_seconds_total is whole seconds).
fn cpu_seconds(agents: &[&Agents]) -> f64 {
    let mut ticks = 0.0;
    for a in agents {
        for pid in &a.pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the ")" that ends the command name: utime is the
            // 12th, stime the 13th.
            let rest = stat.rsplit_once(')').map_or("", |x| x.1);
            let f: Vec<&str> = rest.split_whitespace().collect();
            for i in [11, 12] {
                ticks += f
                    .get(i)
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
            }
        }
    }
    ticks / 100.0
}

fn measure(lab: &Lab, p: &Path) -> Row {
    let mut row = Row::default();
    if let Some(rate) = p.tbf {
        lab.set_tbf(0, rate, "128kb");
        lab.set_tbf(1, rate, "128kb");
    }
    let to_ip = p.to.address.to_string();

    // 1. kubepulse latency probes alone.
    let mut probes = fast_probes();
    for proto in ["udp", "tcp", "icmp"] {
        probes[proto]["interval"] = format!("{SPACING_MS}ms").into();
    }
    for k in ["tcp_connect", "http"] {
        probes[k]["enabled"] = false.into();
    }
    probes["rtt_min_window"] = "60s".into();
    let responder = Agents::start(lab, std::slice::from_ref(&p.to), &[], &probes);
    let prober = Agents::start(
        lab,
        std::slice::from_ref(&p.from),
        std::slice::from_ref(&p.to),
        &probes,
    );
    std::thread::sleep(Duration::from_secs(2));
    let a = prober.scrape(&p.from.name);
    std::thread::sleep(LAT_WINDOW);
    let b = prober.scrape(&p.from.name);
    let l = |proto: &'static str| {
        [
            ("protocol", proto),
            ("path", p.kind),
            ("peer_node", p.to.node.as_str()),
        ]
    };
    row.kp_icmp_mean = mean_between(&a, &b, &l("icmp")[..2]);
    row.kp_tcp_mean = mean_between(&a, &b, &l("tcp")[..2]);
    row.kp_tcp_min = b.sum("kubepulse_probe_rtt_min_seconds", &l("tcp"));
    row.kp_udp_min = b.sum("kubepulse_probe_rtt_min_seconds", &l("udp"));
    row.kp_icmp_min = b.sum("kubepulse_probe_rtt_min_seconds", &l("icmp"));
    prober.stop(lab);

    // 2. ping at the same spacing.
    let n = (LAT_WINDOW.as_millis() as u64 / SPACING_MS).to_string();
    let spacing = format!("{}", SPACING_MS as f64 / 1000.0);
    let out = lab.run(
        &p.from.ns,
        &["ping", "-n", "-q", "-c", &n, "-i", &spacing, &to_ip],
    );
    if let Some(v) = out.lines().find_map(|l| l.split(" = ").nth(1)) {
        let parts: Vec<f64> = v.split(['/', ' ']).filter_map(|x| x.parse().ok()).collect();
        row.ping_min = parts.first().copied().unwrap_or(f64::NAN) / 1e3;
        row.ping_mean = parts.get(1).copied().unwrap_or(f64::NAN) / 1e3;
    }

    // 3. qperf (server in the target namespace).
    let qs = lab.spawn(&p.to.ns, &["qperf"], None);
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.run(
        &p.from.ns,
        &["qperf", "-t", "3", "-v", &to_ip, "tcp_bw", "tcp_lat"],
    );
    row.qperf_tcp_lat = qperf_value(&out, "latency");
    row.qperf_send_cost = qperf_value(&out, "send_cost");
    row.qperf_bw = qperf_value(&out, "bw");
    lab.kill(qs);

    // 4. iperf3, 5 s, receiver goodput.
    let is = lab.spawn(&p.to.ns, &["iperf3", "-s", "-1"], None);
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.run(&p.from.ns, &["iperf3", "-c", &to_ip, "-t", "5", "-J"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    row.iperf3_bw = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN);
    lab.kill(is);

    // 5. kubepulse bandwidth bursts alone (latency probes slowed down), CPU
    // of both agent processes over whole bursts.
    let mut probes = fast_probes();
    probes["udp"]["interval"] = "1s".into();
    for k in ["tcp", "icmp", "tcp_connect", "http"] {
        probes[k]["enabled"] = false.into();
    }
    probes["bandwidth"] =
        serde_json::json!({"enabled": true, "schedule": "interval", "interval": "1s"});
    let prober = Agents::start(
        lab,
        std::slice::from_ref(&p.from),
        std::slice::from_ref(&p.to),
        &probes,
    );
    let bl = [
        ("path", p.kind),
        ("peer_node", p.to.node.as_str()),
        ("direction", "send"),
    ];
    let first = prober.wait_for(&p.from.name, Duration::from_secs(20), "a burst", |s| {
        s.one("kubepulse_bandwidth_last_burst_timestamp_seconds", &bl)
    });
    // From just after one burst to just after the next BURSTS: whole bursts.
    let c0 = cpu_seconds(&[&prober, &responder]);
    let x0 = tx_bytes(lab, &p.from.ns, p.dev);
    let mut seen = first;
    let mut bursts = 0;
    let mut goodputs = Vec::new();
    while bursts < BURSTS {
        let (ts, bw) = prober.wait_for(
            &p.from.name,
            Duration::from_secs(20),
            "the next burst",
            |s| {
                let ts = s.one("kubepulse_bandwidth_last_burst_timestamp_seconds", &bl)?;
                (ts > seen)
                    .then(|| Some((ts, s.one("kubepulse_bandwidth_bytes_per_second", &bl)?)))?
            },
        );
        seen = ts;
        bursts += 1;
        goodputs.push(bw * 8.0);
    }
    let x1 = tx_bytes(lab, &p.from.ns, p.dev);
    let c1 = cpu_seconds(&[&prober, &responder]);
    let bytes = x1 - x0;
    row.kp_bw = goodputs.iter().sum::<f64>() / goodputs.len() as f64;
    // Per burst: its bytes at its goodput (a burst runs for its duration).
    row.kp_burst_time = bytes / bursts as f64 * 8.0 / row.kp_bw;
    row.kp_cpu_per_gb = (c1 - c0) / (bytes / 1e9);
    prober.stop(lab);
    responder.stop(lab);
    if p.tbf.is_some() {
        lab.clear_tbf(0);
        lab.clear_tbf(1);
    }
    row
}

fn median(v: &[f64]) -> f64 {
    kubepulse_testkit::scrape::median(v).unwrap_or(f64::NAN)
}

/// One iperf3 run of `secs` from `from` to `to`: receiver goodput, bit/s.
fn iperf3(lab: &Lab, from: &AgentSpec, to: &AgentSpec, secs: f64) -> f64 {
    let is = lab.spawn(&to.ns, &["iperf3", "-s", "-1"], None);
    std::thread::sleep(Duration::from_millis(300));
    let to_ip = to.address.to_string();
    let t = format!("{secs}");
    let out = lab.run(&from.ns, &["iperf3", "-c", &to_ip, "-t", &t, "-J"]);
    lab.kill(is);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// The unshaped veth, where throughput moves between runs: `ROUNDS` rounds
/// of one kubepulse burst pair (default 250 ms per direction) then one
/// iperf3 run of 5 s, alternating so both see the same drift. Returns the
/// kubepulse send and receive goodputs and the iperf3 goodputs (bit/s).
fn alternating(lab: &Lab, from: &AgentSpec, to: &AgentSpec) -> [Vec<f64>; 3] {
    let mut probes = fast_probes();
    probes["udp"]["interval"] = "1s".into();
    for k in ["tcp", "icmp", "tcp_connect", "http"] {
        probes[k]["enabled"] = false.into();
    }
    let responder = Agents::start(lab, std::slice::from_ref(to), &[], &probes);
    probes["bandwidth"] =
        serde_json::json!({"enabled": true, "schedule": "interval", "interval": "1s"});
    let (mut send, mut receive, mut reference) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let prober = Agents::start(
            lab,
            std::slice::from_ref(from),
            std::slice::from_ref(to),
            &probes,
        );
        let l = |dir: &'static str| {
            [
                ("path", "host_cross_node"),
                ("peer_node", to.node.as_str()),
                ("direction", dir),
            ]
        };
        // The first burst pair of a fresh agent, then stop it before the
        // next pair (a second later) can overlap iperf3.
        let (s, r) = prober.wait_for(&from.name, Duration::from_secs(20), "a burst pair", |s| {
            let bw = |d| s.one("kubepulse_bandwidth_bytes_per_second", &l(d));
            Some((bw("send")?, bw("receive")?))
        });
        prober.stop(lab);
        send.push(s * 8.0);
        receive.push(r * 8.0);
        std::thread::sleep(Duration::from_millis(300));
        reference.push(iperf3(lab, from, to, IPERF3_SECS));
    }
    responder.stop(lab);
    [send, receive, reference]
}

fn main() {
    // `cargo test --all-targets` also runs bench targets; only measure when
    // started by `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("netlab_accuracy: skipped (run with cargo bench)");
        return;
    }
    if !lab::require_root() {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        flavour: Flavour::Overlay,
    });
    let paths = [
        Path {
            label: "veth host path",
            kind: "host_cross_node",
            from: AgentSpec::host(&lab, 0),
            to: AgentSpec::host(&lab, 1),
            dev: "ul",
            tbf: None,
        },
        Path {
            label: "vxlan pod path",
            kind: "pod_cross_node",
            from: AgentSpec::pod(&lab, 0, 0),
            to: AgentSpec::pod(&lab, 1, 0),
            dev: "eth0",
            tbf: None,
        },
        Path {
            label: "veth host path, tbf 1 Gbit/s (truth 956.4)",
            kind: "host_cross_node",
            from: AgentSpec::host(&lab, 0),
            to: AgentSpec::host(&lab, 1),
            dev: "ul",
            tbf: Some(1000),
        },
    ];
    let [send, receive, reference] = alternating(&lab, &paths[0].from, &paths[0].to);
    let rows: Vec<Row> = paths.iter().map(|p| measure(&lab, p)).collect();
    let us = |s: f64| s * 1e6;
    let mb = |b: f64| b / 1e6;
    let labels: Vec<&str> = paths.iter().map(|p| p.label).collect();
    println!("| measurement | {} |", labels.join(" | "));
    println!("|---|{}", "---|".repeat(paths.len()));
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        let cells: Vec<String> = rows.iter().map(f).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    line("kubepulse bandwidth / iperf3 5 s receiver (Mbit/s)", &|r| {
        format!(
            "{:.0} / {:.0} = **{:.2}**",
            mb(r.kp_bw),
            mb(r.iperf3_bw),
            r.kp_bw / r.iperf3_bw
        )
    });
    line("test time kubepulse / iperf3 (s)", &|r| {
        format!(
            "{:.2} / 5 = **{:.2}**",
            r.kp_burst_time,
            r.kp_burst_time / 5.0
        )
    });
    line(&format!("kubepulse TCP RR mean / (2 x qperf tcp_lat) (us; kubepulse every {SPACING_MS} ms, qperf back to back)"), &|r| {
        format!("{:.1} / {:.1} = **{:.2}**", us(r.kp_tcp_mean), us(2.0 * r.qperf_tcp_lat), r.kp_tcp_mean / (2.0 * r.qperf_tcp_lat))
    });
    line("kubepulse TCP RR min / (2 x qperf tcp_lat) (us)", &|r| {
        format!(
            "{:.1} / {:.1} = **{:.2}**",
            us(r.kp_tcp_min),
            us(2.0 * r.qperf_tcp_lat),
            r.kp_tcp_min / (2.0 * r.qperf_tcp_lat)
        )
    });
    line(
        &format!("kubepulse ICMP mean / ping mean, both every {SPACING_MS} ms (us)"),
        &|r| {
            format!(
                "{:.1} / {:.1} = **{:.2}**",
                us(r.kp_icmp_mean),
                us(r.ping_mean),
                r.kp_icmp_mean / r.ping_mean
            )
        },
    );
    line("kubepulse ICMP min / ping min (us)", &|r| {
        format!(
            "{:.1} / {:.1} = **{:.2}**",
            us(r.kp_icmp_min),
            us(r.ping_min),
            r.kp_icmp_min / r.ping_min
        )
    });
    line(
        "kubepulse CPU-s per GB (both agents) / qperf send_cost (whole host)",
        &|r| {
            format!(
                "{:.3} / {:.3} = **{:.2}**",
                r.kp_cpu_per_gb,
                r.qperf_send_cost,
                r.kp_cpu_per_gb / r.qperf_send_cost
            )
        },
    );
    let (h, p) = (&rows[0], &rows[1]);
    println!(
        "| overlay overhead, RTT min pod/host - 1 | kubepulse UDP {:+.0}%, ICMP {:+.0}% | ping min {:+.0}%, qperf tcp_lat {:+.0}% | |",
        (p.kp_udp_min / h.kp_udp_min - 1.0) * 100.0,
        (p.kp_icmp_min / h.kp_icmp_min - 1.0) * 100.0,
        (p.ping_min / h.ping_min - 1.0) * 100.0,
        (p.qperf_tcp_lat / h.qperf_tcp_lat - 1.0) * 100.0
    );
    println!(
        "| overlay overhead, 1 - bw pod/host | kubepulse {:+.0}% | iperf3 {:+.0}%, qperf tcp_bw {:+.0}% | |",
        (1.0 - p.kp_bw / h.kp_bw) * 100.0,
        (1.0 - p.iperf3_bw / h.iperf3_bw) * 100.0,
        (1.0 - p.qperf_bw / h.qperf_bw) * 100.0
    );
    let gb = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.1}", x / 1e9))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!(
        "| unshaped veth, {ROUNDS} alternating rounds | median (Gbit/s) | runs | / iperf3 median |"
    );
    println!("|---|---|---|---|");
    let iperf3_median = median(&reference);
    for (name, v) in [
        ("kubepulse send, 250 ms burst", &send),
        ("kubepulse receive, 250 ms burst", &receive),
        ("iperf3, 5 s run", &reference),
    ] {
        println!(
            "| {name} | {:.2} | {} | **{:.2}** |",
            median(v) / 1e9,
            gb(v),
            median(v) / iperf3_median
        );
    }
    println!(
        "| test time, one burst / one iperf3 run | 0.25 / {IPERF3_SECS} s | | **{:.2}** |",
        0.25 / IPERF3_SECS
    );
    eprintln!("raw: {rows:#?}");
}
