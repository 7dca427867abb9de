//! Cluster DNS and apiserver reachability in the network lab: a real DNS
//! server (dnsmasq) and a TLS server standing in for the apiserver (openssl
//! s_server answering `GET /livez`) run on node 1; the `kubernetes` Service
//! ClusterIP is an nftables DNAT in each node's host namespace (what
//! kube-proxy does). The agents (host and pod network on both nodes) read a
//! pod-style resolv.conf and probe the Service and the endpoint directly.
//!
//! A real Prometheus evaluates the real alert rules (test-time windows, see
//! `tests/lab/prometheus.rs`). Faults are injected on node 0 only: DNS
//! dropped, the Service translation removed, the TLS endpoint refused. Each
//! must fire exactly the expected per-node alerts for node 0 (both of its
//! networks) and nothing for node 1, whose failure counters must not move.
//! Latency: the delay line adds a known one-way delay between the nodes;
//! node 0's DNS lookup and apiserver connect times must grow by twice that
//! within max(50 µs, 3 %).
//!
//! Also: local mode, which has no cluster DNS or apiserver of its own,
//! shows both probes when the configuration names servers (here dnsmasq
//! and the TLS stand-in on loopback).

use kubepulse_testkit::lab;
use kubepulse_testkit::{process, scrape};

use std::collections::BTreeSet;
use std::time::Duration;

use lab::agents::{fast_probes, AgentSpec, Agents};
use lab::netlab::{timing_lock, Flavour, Lab, LabSpec};
use lab::prom::Scrape;
use lab::prometheus::Prom;
use lab::reach::{self, ReachFiles};
use serde_json::json;

const CONTROLLER_ABSENT: &str = "KubepulseControllerAbsent{severity=warning}";
const DNS_LOOKUPS: &str = "kubepulse_dns_lookups_total";
const API_PROBES: &str = "kubepulse_apiserver_probes_total";
/// Queries printed when an expected alert set is not reached.
const DEBUG: &[&str] = &[
    "node_network:kubepulse_dns_lookup_failures:ratio_rate5m",
    "node_network_target:kubepulse_apiserver_probe_failures:ratio_rate5m",
    "sum by (node, network, outcome) (kubepulse_dns_lookups_total)",
    "sum by (node, network, target, outcome) (kubepulse_apiserver_probes_total)",
];

/// Probes that did not end `ok` in `metric` (with `extra` labels).
fn failures(s: &Scrape, metric: &str, extra: &[(&str, &str)]) -> f64 {
    let mut ok = extra.to_vec();
    ok.push(("outcome", "ok"));
    s.sum(metric, extra) - s.sum(metric, &ok)
}

/// (sum, count) of a histogram selection.
fn sum_count(s: &Scrape, name: &str, want: &[(&str, &str)]) -> (f64, f64) {
    (
        s.sum(&format!("{name}_sum"), want),
        s.sum(&format!("{name}_count"), want),
    )
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

/// The node 0 alerts of `alert` with `severity`, one per agent network.
fn node0(alert: &str, severity: &str) -> Vec<String> {
    ["host", "pod"]
        .iter()
        .map(|n| format!("{alert}{{severity={severity},node=node0,network={n}}}"))
        .collect()
}

#[test]
fn faults_on_one_node_raise_its_alerts_only_and_latency_follows_the_delay_line() {
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
    let server_ns = lab.host(1);
    let server_ip = lab.host_ip(1);
    let files = ReachFiles::new(server_ip);
    let dns_pid = reach::start_dnsmasq(&lab, &server_ns, server_ip, files.dir.path());
    let tls_pid = reach::start_apiserver(&lab, &server_ns, server_ip, &files);
    for i in 0..2 {
        reach::install_service(&lab, i, server_ip);
    }

    let all = AgentSpec::all(&lab);
    let mut probes = fast_probes();
    for p in ["udp", "tcp", "icmp", "tcp_connect", "http"] {
        probes[p]["enabled"] = false.into();
    }
    probes["dns"] = json!({
        "interval": "100ms",
        "timeout": "100ms",
        // Nameservers from a pod-style resolv.conf; static discovery asks
        // only named names (the cluster-domain default is for clusters).
        "resolv_conf": files.path("resolv.conf"),
        "names": [format!("kubernetes.default.svc.{}", reach::CLUSTER_DOMAIN)],
    });
    probes["apiserver"] = json!({
        "interval": "200ms",
        "timeout": "200ms",
        "ca_file": files.path("ca.crt"),
        "service": reach::SERVICE.to_string(),
        "endpoints": [reach::endpoint(server_ip).to_string()],
    });
    let agents = Agents::start(&lab, &all, &[], &probes);
    let prom = Prom::start(&lab, &all);
    assert!(lab.alive(dns_pid), "dnsmasq exited");
    assert!(lab.alive(tls_pid), "s_server exited");

    // Baseline: every agent resolves and reaches the apiserver both ways,
    // with no failure at all; nothing fires but the controller's absence.
    for a in &all {
        agents.wait_for(
            &a.name,
            Duration::from_secs(30),
            "ok DNS and apiserver probes",
            |s| {
                let net = [("network", a.kind)];
                let ok = |m, extra: &[(&str, &str)]| {
                    let mut l = extra.to_vec();
                    l.push(("outcome", "ok"));
                    s.sum(m, &l)
                };
                (ok(DNS_LOOKUPS, &net) >= 3.0
                    && ok(API_PROBES, &[("target", "service")]) >= 3.0
                    && ok(API_PROBES, &[("target", "direct")]) >= 3.0
                    && failures(s, DNS_LOOKUPS, &[]) == 0.0
                    && failures(s, API_PROBES, &[]) == 0.0)
                    .then_some(())
            },
        );
    }
    let baseline = set(&[CONTROLLER_ABSENT.into()]);
    prom.expect_firing(
        "baseline",
        &baseline,
        Duration::from_secs(60),
        Duration::from_secs(3),
        DEBUG,
    );

    check_latency_follows_the_delay_line(&lab, &agents);

    // Each fault on node 0 only: exactly its alerts, node 1 untouched.
    let node0_ns = lab.host(0);
    let node1: Vec<&AgentSpec> = all.iter().filter(|a| a.node == "node1").collect();
    let node0_agents: Vec<&AgentSpec> = all.iter().filter(|a| a.node == "node0").collect();
    let drop_dns = "table inet kplfault {
            chain kout { type filter hook output priority 0; udp dport 53 drop; }
            chain kfwd { type filter hook forward priority 0; udp dport 53 drop; }
        }"
    .to_string();
    // New connections only: a handshake node 0 had in flight when the
    // rule arrived would otherwise lose its next segments here, leaving
    // s_server (one connection at a time, no timeout) waiting on it while
    // node 1's probes queue behind: node 1 failed too, and the
    // cluster-wide alert fired instead of node 0's (1 full run in 3).
    let refuse_tls = format!(
        "table inet kplfault {{
            chain kout {{ type filter hook output priority 0; ip daddr {server_ip} tcp dport {p} ct state new reject with tcp reset; }}
            chain kfwd {{ type filter hook forward priority 0; ip daddr {server_ip} tcp dport {p} ct state new reject with tcp reset; }}
        }}",
        p = reach::APISERVER_PORT
    );
    let faults = [
        (
            Fault::Nft(drop_dns),
            node0("KubepulseNodeDNSFailing", "critical"),
            DNS_LOOKUPS,
            // The host agent's own query is refused at send (nft output
            // drop: EPERM); the pod's is forwarded into the void.
            [
                vec![("outcome", "send_failed")],
                vec![("outcome", "timeout")],
            ],
        ),
        (
            Fault::ServiceGone,
            node0("KubepulseNodeAPIServerServiceUnreachable", "warning"),
            API_PROBES,
            // No translation: the SYN to the ClusterIP finds nobody.
            [
                vec![("target", "service"), ("outcome", "timeout")],
                vec![("target", "service"), ("outcome", "timeout")],
            ],
        ),
        (
            Fault::Nft(refuse_tls),
            node0("KubepulseNodeAPIServerUnreachable", "critical"),
            API_PROBES,
            [
                vec![("target", "direct"), ("outcome", "connect_failed")],
                vec![("target", "direct"), ("outcome", "connect_failed")],
            ],
        ),
    ];
    for (fault, alerts, metric, failing) in faults {
        let what = fault.what();
        let healthy_before: Vec<f64> = node1
            .iter()
            .map(|a| {
                let s = agents.scrape(&a.name);
                failures(&s, DNS_LOOKUPS, &[]) + failures(&s, API_PROBES, &[])
            })
            .collect();
        // The expected failure of each node 0 agent, by its network.
        let failing_of = |a: &AgentSpec| failing[usize::from(a.kind == "pod")].clone();
        let sick_before: Vec<f64> = node0_agents
            .iter()
            .map(|a| agents.scrape(&a.name).sum(metric, &failing_of(a)))
            .collect();
        fault.inject(&lab, &node0_ns, server_ip);
        let mut want = alerts.clone();
        want.push(CONTROLLER_ABSENT.into());
        prom.expect_firing(
            what,
            &set(&want),
            Duration::from_secs(60),
            Duration::from_secs(3),
            DEBUG,
        );
        // Node 0's agents booked the expected failure kind...
        for (a, before) in node0_agents.iter().zip(&sick_before) {
            let expected = failing_of(a);
            let now = agents.scrape(&a.name).sum(metric, &expected);
            assert!(
                now > *before,
                "{what}: {} booked no {metric} {expected:?} ({before} -> {now})",
                a.name
            );
        }
        // ...and node 1's booked no failure at all.
        for (a, before) in node1.iter().zip(&healthy_before) {
            let s = agents.scrape(&a.name);
            let now = failures(&s, DNS_LOOKUPS, &[]) + failures(&s, API_PROBES, &[]);
            assert_eq!(now, *before, "{what}: healthy {} booked failures", a.name);
        }
        fault.clear(&lab, &node0_ns, server_ip);
        prom.expect_firing(
            &format!("{what}: cleared"),
            &baseline,
            Duration::from_secs(60),
            Duration::from_secs(2),
            DEBUG,
        );
    }
    prom.assert_rules_healthy();
}

/// Node 0's DNS lookup and apiserver connect times (both agents) grow by
/// exactly the round trip the delay line adds. Individual samples are read
/// off the exported series: the test scrapes faster than the probes run,
/// and a scrape interval with exactly one new sample gives that sample
/// (the increase of `_sum`). The minimum per condition is compared, as
/// tests/netlab_latency.rs compares the windowed minimum RTT: samples
/// stretched by CPU contention on the shared machine (the delay line is a
/// user-space forwarder) only ever add; the median is printed alongside.
/// (agent, histogram, labels) of one timed quantity.
type Series = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn check_latency_follows_the_delay_line(lab: &Lab, agents: &Agents) {
    const WINDOW: Duration = Duration::from_secs(5);
    const ROUNDS: usize = 4;
    const SCRAPE_EVERY: Duration = Duration::from_millis(20);
    let one_way = Duration::from_millis(2);
    let series: [Series; 4] = [
        ("host0", "kubepulse_dns_lookup_duration_seconds", vec![]),
        ("pod00", "kubepulse_dns_lookup_duration_seconds", vec![]),
        (
            "host0",
            "kubepulse_apiserver_probe_duration_seconds",
            vec![("phase", "connect"), ("target", "direct")],
        ),
        (
            "pod00",
            "kubepulse_apiserver_probe_duration_seconds",
            vec![("phase", "connect"), ("target", "direct")],
        ),
    ];
    let n = series.len();
    // samples[condition][series]
    let mut samples = [vec![Vec::new(); n], vec![Vec::new(); n]];
    let mut skipped = 0usize;
    // Alternate plain and delayed windows, so load that drifts during the
    // test (other builds on the machine) weighs on both alike.
    for _ in 0..ROUNDS {
        for (k, d) in [Duration::ZERO, one_way].into_iter().enumerate() {
            lab.set_delay(d);
            // Probes in flight at the switch are timed across it.
            std::thread::sleep(Duration::from_millis(300));
            let mut last: Vec<Option<(f64, f64)>> = vec![None; n];
            let end = std::time::Instant::now() + WINDOW;
            while std::time::Instant::now() < end {
                let host0 = agents.scrape("host0");
                let pod00 = agents.scrape("pod00");
                for (i, (a, m, l)) in series.iter().enumerate() {
                    let s = if *a == "host0" { &host0 } else { &pod00 };
                    let now = sum_count(s, m, l);
                    if let Some((s0, c0)) = last[i] {
                        match now.1 - c0 {
                            0.0 => {}
                            1.0 => samples[k][i].push(now.0 - s0),
                            _ => skipped += 1,
                        }
                    }
                    last[i] = Some(now);
                }
                std::thread::sleep(SCRAPE_EVERY);
            }
        }
    }
    lab.set_delay(Duration::ZERO);
    // (minimum, median) of a condition's samples.
    let stats = |v: &mut Vec<f64>| -> (f64, f64) {
        assert!(v.len() >= 30, "too few single samples: {}", v.len());
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let want = 2.0 * one_way.as_secs_f64();
    let tol = (50e-6f64).max(0.03 * want);
    let mut bad = Vec::new();
    for (i, (a, m, l)) in series.iter().enumerate() {
        let (nb, nd) = (samples[0][i].len(), samples[1][i].len());
        let (b, bmed) = stats(&mut samples[0][i]);
        let (d, dmed) = stats(&mut samples[1][i]);
        let added = d - b;
        eprintln!(
            "{a} {m} {l:?}: min {:.1} µs ({nb} samples) -> {:.1} µs ({nd}), added {:.1} µs (want {:.1} ± {:.1}); median added {:.1} µs",
            b * 1e6,
            d * 1e6,
            added * 1e6,
            want * 1e6,
            tol * 1e6,
            (dmed - bmed) * 1e6
        );
        if (added - want).abs() > tol {
            bad.push(format!(
                "{a} {m} {l:?}: the delay line adds {want} s per round trip, the probe saw {added} s more"
            ));
        }
    }
    eprintln!("scrape intervals with more than one new sample (not used): {skipped}");
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A fault injected on node 0.
enum Fault {
    /// An nftables table `inet kplfault` in node 0's host namespace.
    Nft(String),
    /// Node 0's Service translation removed (stale kube-proxy).
    ServiceGone,
}

impl Fault {
    fn what(&self) -> &'static str {
        match self {
            Fault::Nft(r) if r.contains("dport 53") => "DNS dropped on node 0",
            Fault::Nft(_) => "apiserver endpoint refused on node 0",
            Fault::ServiceGone => "Service translation gone on node 0",
        }
    }

    fn inject(&self, lab: &Lab, ns: &str, _server: std::net::Ipv4Addr) {
        match self {
            Fault::Nft(rules) => lab.nft(ns, rules),
            Fault::ServiceGone => reach::break_service(lab, 0),
        }
    }

    fn clear(&self, lab: &Lab, ns: &str, server: std::net::Ipv4Addr) {
        match self {
            Fault::Nft(_) => {
                lab.run(ns, &["nft", "delete", "table", "inet", "kplfault"]);
            }
            Fault::ServiceGone => reach::install_service(lab, 0, server),
        }
    }
}

/// Kills a helper process when the test ends, whatever its outcome.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubepulse local` with servers named in its configuration: every agent
/// resolves through dnsmasq and reaches the TLS stand-in, and the four
/// cluster reachability families are exported as documented.
#[test]
fn local_mode_probes_configured_servers() {
    if !lab::require_root() {
        return;
    }
    let _t = timing_lock();
    let lo = std::net::Ipv4Addr::LOCALHOST;
    let files = ReachFiles::new(lo);
    let dns_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port();
    let tls_port = process::free_port();
    let log = |name: &str| std::fs::File::create(files.path(name)).expect("log file");
    let _dns = Helper(
        std::process::Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={dns_port}"),
                &format!("--pid-file={}", files.path("dnsmasq.pid").display()),
                "--address=/kubernetes.default.svc.cluster.local/10.96.0.1",
            ])
            .stdout(log("dnsmasq.log"))
            .stderr(log("dnsmasq.err"))
            .spawn()
            .expect("dnsmasq (Debian dnsmasq-base) must be installed"),
    );
    let _tls = Helper(
        std::process::Command::new("openssl")
            .current_dir(files.dir.path())
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{tls_port}"))
            .arg("-cert")
            .arg(files.path("tls.crt"))
            .arg("-key")
            .arg(files.path("tls.key"))
            .stdout(log("s_server.log"))
            .stderr(log("s_server.err"))
            .spawn()
            .expect("openssl must be installed"),
    );
    // Both up before the agents' first probes, or those book a failure.
    reach::wait_listening(None, "-u", dns_port);
    reach::wait_listening(None, "-t", tls_port);
    let off = json!({"enabled": false, "interval": "1s", "timeout": "1s"});
    let cfg = json!({
        "probes": {
            "udp": off, "tcp": off, "icmp": off, "tcp_connect": off, "http": off,
            "pmtu": {"enabled": false},
            "bandwidth": {"enabled": false},
            "dns": {
                "interval": "200ms",
                "timeout": "200ms",
                "nameservers": ["127.0.0.1"],
                "port": dns_port,
                "names": ["kubernetes.default.svc.cluster.local"],
            },
            "apiserver": {
                "interval": "200ms",
                "timeout": "200ms",
                "service": format!("127.0.0.1:{tls_port}"),
                "ca_file": files.path("ca.crt"),
            },
        },
    });
    let cfg_path = files.path("local.yaml");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    let kp = process::Kubepulse::start(&[
        "local",
        "--agents",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--config",
        cfg_path.to_str().expect("utf-8 path"),
    ]);
    let agents = ["local-a-host", "local-b-host"];
    let phases = ["connect", "tls_handshake", "livez"];
    let (sc, ok) = scrape::scrape_until(kp.metrics, Duration::from_secs(30), |sc| {
        agents.iter().all(|a| {
            sc.sum(DNS_LOOKUPS, &[("agent", a), ("outcome", "ok")]) >= 3.0
                && sc.sum(
                    "kubepulse_dns_lookup_duration_seconds_count",
                    &[("agent", a)],
                ) >= 3.0
                && sc.sum(
                    API_PROBES,
                    &[("agent", a), ("target", "service"), ("outcome", "ok")],
                ) >= 3.0
                && phases.iter().all(|p| {
                    sc.sum(
                        "kubepulse_apiserver_probe_duration_seconds_count",
                        &[("agent", a), ("phase", p), ("target", "service")],
                    ) >= 3.0
                })
        })
    });
    assert!(
        ok,
        "local mode never showed ok DNS lookups and apiserver probes for every agent:\n{}",
        sc.body
    );
    for a in agents {
        let all = sc.sum(DNS_LOOKUPS, &[("agent", a)]);
        let good = sc.sum(DNS_LOOKUPS, &[("agent", a), ("outcome", "ok")]);
        assert_eq!(all, good, "{a}: failed lookups on loopback");
        let all = sc.sum(API_PROBES, &[("agent", a)]);
        let good = sc.sum(API_PROBES, &[("agent", a), ("outcome", "ok")]);
        assert_eq!(all, good, "{a}: failed apiserver probes on loopback");
    }
    scrape::assert_documented(
        &sc,
        &[
            "Agent metrics",
            "Cluster reachability metrics",
            "Process metrics",
        ],
        &["agent"],
        kubepulse::metrics::catalog::CLUSTER_REACH,
    );
}
