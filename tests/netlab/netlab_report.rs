//! `kubepulse report` in the network lab: on the vxlan flavour, the
//! report's overhead of the pod path against the host path points the same
//! way as iperf3 (bandwidth) and qperf (latency) measured in the same run.
//! (The routed flavour is not measured: its pod path, a veth and a route,
//! has no overhead direction to assert.)

use kubepulse_testkit::lab;

use std::time::Duration;

use lab::agents::{binary, fast_probes, AgentSpec, Agents};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use serde_json::Value as Json;

/// Reports taken, each after a fresh burst on both paths.
const REPORTS: usize = 5;

/// iperf3's receiver goodput from `from` to `to`, bits per second.
fn iperf3(lab: &Lab, from: &AgentSpec, to: &AgentSpec) -> f64 {
    let server = lab.spawn(&to.ns, &["iperf3", "-s", "-1"], None);
    let to_ip = to.address.to_string();
    // The server needs a moment to listen; iperf3 retries nothing itself.
    let out = lab::netlab::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let o = lab.exec(&from.ns, &["iperf3", "-c", &to_ip, "-t", "2", "-J"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        // A refused connection still prints JSON, with an "error" field.
        (o.status.success() && !text.contains("\"error\"")).then_some(text)
    })
    .expect("iperf3 client ran");
    lab.kill(server);
    let v: Json = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 receiver goodput missing: {out}"));
    eprintln!(
        "iperf3 {} -> {}: {:.0} Mbit/s",
        from.name,
        to.name,
        bps / 1e6
    );
    bps
}

/// qperf's tcp_lat (one way, RTT/2) from `from` to `to`, seconds.
fn qperf_lat(lab: &Lab, from: &AgentSpec, to: &AgentSpec) -> f64 {
    let server = lab.spawn(&to.ns, &["qperf"], None);
    let to_ip = to.address.to_string();
    let mut last = String::new();
    let out = lab::netlab::poll(Duration::from_secs(15), Duration::from_millis(200), || {
        let o = lab.exec(&from.ns, &["qperf", "-t", "1", &to_ip, "tcp_lat"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        last = format!("{text}{}", String::from_utf8_lossy(&o.stderr));
        (o.status.success() && text.contains("latency")).then_some(text)
    })
    .unwrap_or_else(|| panic!("qperf to {to_ip} failed: {last}"));
    lab.kill(server);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("latency"))
        .expect("latency line");
    let mut it = line.split('=').nth(1).expect("value").split_whitespace();
    let v: f64 = it.next().and_then(|x| x.parse().ok()).expect("number");
    v * match it.next() {
        Some("ns") => 1e-9,
        Some("us") => 1e-6,
        Some("ms") => 1e-3,
        other => panic!("qperf unit {other:?}"),
    }
}

struct Run {
    reports: Vec<Json>,
    iperf3_overhead: f64,
    qperf_overhead: f64,
}

fn row<'a>(report: &'a Json, path: &str) -> &'a Json {
    report["paths"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["path"] == path))
        .unwrap_or_else(|| panic!("no {path} row in {report:#}"))
}

fn measure(flavour: Flavour) -> Run {
    let lab = Lab::new(LabSpec::two_nodes(flavour));
    let (h0, h1) = (AgentSpec::host(&lab, 0), AgentSpec::host(&lab, 1));
    let (p0, p1) = (AgentSpec::pod(&lab, 0, 0), AgentSpec::pod(&lab, 1, 0));
    let mut probes = fast_probes();
    for p in ["tcp", "icmp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    let responders = Agents::start(&lab, &[h1.clone(), p1.clone()], &[], &probes);
    // The slot schedule with every slot a new round: node0's pod agent
    // bursts in the first half of its slots and its host agent in the
    // second, so the two paths never compete (as in a cluster).
    probes["bandwidth"] = serde_json::json!({
        "enabled": true,
        "schedule": "slots",
        "slots": {"slot": "6s", "max_pairs": 1, "duty_budget": 1.0},
    });
    let host = Agents::start(
        &lab,
        std::slice::from_ref(&h0),
        std::slice::from_ref(&h1),
        &probes,
    );
    let pod = Agents::start(
        &lab,
        std::slice::from_ref(&p0),
        std::slice::from_ref(&p1),
        &probes,
    );
    for (agents, name) in [(&host, &h0.name), (&pod, &p0.name)] {
        agents.wait_for(name, Duration::from_secs(90), "a send burst", |s| {
            s.samples
                .iter()
                .any(|x| {
                    x.name == "kubepulse_bandwidth_bytes_per_second"
                        && x.labels.get("direction").map(String::as_str) == Some("send")
                })
                .then_some(())
        });
    }
    // The report, as a user without Prometheus runs it, from node0; five
    // times, each after a fresh burst on both paths, and the median kept
    // (the references are medians of three runs of a second or two each;
    // a report's mean RTT covers 4 s, and on this shared 2-core machine
    // two of three once landed in the same slow stretch).
    let urls: Vec<String> = [&h0, &p0]
        .iter()
        .map(|a| format!("http://{}/metrics", a.metrics_addr()))
        .collect();
    let bin = binary();
    let mut args = vec![
        bin.to_str().expect("utf-8"),
        "report",
        "--window",
        "4s",
        "--format",
        "json",
        "--scrape",
    ];
    args.extend(urls.iter().map(String::as_str));
    let last_burst = |agents: &Agents, name: &str| {
        agents.wait_for(name, Duration::from_secs(5), "its metrics", |s| {
            Some(
                s.samples
                    .iter()
                    .filter(|x| x.name == "kubepulse_bandwidth_last_burst_timestamp_seconds")
                    .map(|x| x.value)
                    .fold(0.0, f64::max),
            )
        })
    };
    let mut reports = Vec::new();
    let mut seen = (0.0, 0.0);
    for _ in 0..REPORTS {
        let fresh = (
            host.wait_for(&h0.name, Duration::from_secs(90), "a fresh burst", |_| {
                let t = last_burst(&host, &h0.name);
                (t > seen.0).then_some(t)
            }),
            pod.wait_for(&p0.name, Duration::from_secs(90), "a fresh burst", |_| {
                let t = last_burst(&pod, &p0.name);
                (t > seen.1).then_some(t)
            }),
        );
        seen = fresh;
        let out = lab.exec(&h0.ns, &args);
        assert!(
            out.status.success(),
            "report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reports.push(serde_json::from_slice::<Json>(&out.stdout).expect("report JSON"));
    }
    // kubepulse is stopped before the references run, so nothing competes.
    host.stop(&lab);
    pod.stop(&lab);
    // Medians of three alternating runs: one run on a shared 2-core machine
    // can land on a descheduled receiver.
    let median = |f: &dyn Fn(&AgentSpec, &AgentSpec) -> f64, a: &AgentSpec, b: &AgentSpec| {
        kubepulse_testkit::scrape::median(&[f(a, b), f(a, b), f(a, b)]).expect("three runs")
    };
    let bw = |a: &AgentSpec, b: &AgentSpec| iperf3(&lab, a, b);
    let lat = |a: &AgentSpec, b: &AgentSpec| qperf_lat(&lab, a, b);
    let iperf3_overhead = 1.0 - median(&bw, &p0, &p1) / median(&bw, &h0, &h1);
    let qperf_overhead = median(&lat, &p0, &p1) / median(&lat, &h0, &h1) - 1.0;
    drop(responders);
    Run {
        reports,
        iperf3_overhead,
        qperf_overhead,
    }
}

#[test]
fn report_shows_the_vxlan_overhead_the_way_iperf3_and_qperf_do() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let r = measure(Flavour::Overlay);
    let mut lines = Vec::new();
    let mut kp_bw = Vec::new();
    let mut kp_rtt = Vec::new();
    for report in &r.reports {
        let pod = row(report, "pod_cross_node");
        let host = row(report, "host_cross_node");
        assert_eq!(
            host["rtt_overhead"].as_f64(),
            Some(0.0),
            "host is the baseline"
        );
        kp_bw.push(
            pod["bandwidth_overhead"]
                .as_f64()
                .expect("bandwidth overhead"),
        );
        kp_rtt.push(pod["rtt_overhead"].as_f64().expect("RTT overhead"));
        // The report gives bytes per second.
        let mbit = |row: &Json, dir: &str| row[dir].as_f64().unwrap_or(f64::NAN) * 8.0 / 1e6;
        lines.push(format!(
            "report: send/receive Mbit/s pod {:.0}/{:.0} host {:.0}/{:.0}",
            mbit(pod, "bandwidth_send"),
            mbit(pod, "bandwidth_receive"),
            mbit(host, "bandwidth_send"),
            mbit(host, "bandwidth_receive")
        ));
    }
    let median = |v: &[f64]| kubepulse_testkit::scrape::median(v).expect("reports");
    let (kp_bw, kp_rtt) = (median(&kp_bw), median(&kp_rtt));
    let (iperf, qperf) = (r.iperf3_overhead, r.qperf_overhead);
    lines.push(format!(
        "vxlan (medians of {REPORTS} reports, of 3 reference runs): bandwidth overhead kubepulse {:+.1}% iperf3 {:+.1}%; RTT overhead kubepulse {:+.1}% qperf tcp_lat {:+.1}%",
        kp_bw * 100.0,
        iperf * 100.0,
        kp_rtt * 100.0,
        qperf * 100.0
    ));
    eprintln!("{}", lines.join("\n"));
    // vxlan costs bandwidth and latency; the report must say so, as the
    // reference tools do in the same run.
    assert!(
        kp_bw > 0.0 && iperf > 0.0,
        "bandwidth overhead not in the same direction:\n{}",
        lines.join("\n")
    );
    assert!(
        kp_rtt > 0.0 && qperf > 0.0,
        "RTT overhead not in the same direction:\n{}",
        lines.join("\n")
    );
}
