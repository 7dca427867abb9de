//! `kubepulse local` end to end: the real binary, scraped over HTTP, checked
//! against the docs and by `promtool check metrics`, stopped with SIGTERM.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use kubepulse::metrics::catalog;
use kubepulse::peer::PathKind;
use kubepulse_testkit::process::Kubepulse;
use kubepulse_testkit::scrape::{self, Scrape};

/// Fast schedules so a test sees every probe kind within seconds.
const FAST: &str = "\
probes:
  udp: {interval: 100ms, timeout: 1s}
  tcp: {interval: 100ms, timeout: 1s}
  icmp: {interval: 100ms, timeout: 1s}
  tcp_connect: {interval: 500ms, timeout: 1s}
  http: {interval: 500ms, timeout: 2s}
  bandwidth: {interval: 2s, duration: 100ms}
";

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    f.write_all(text.as_bytes()).expect("write config");
    f
}

/// The path kinds 4 local agents produce (see roles::local::layout).
const FOUR_AGENT_PATHS: &[PathKind] = &[
    PathKind::PodCrossNode,
    PathKind::HostCrossNode,
    PathKind::PodToHost,
    PathKind::HostToPod,
];

fn icmp_available(sc: &Scrape) -> bool {
    sc.sum("kubepulse_icmp_socket_info", &[("mode", "unavailable")]) == 0.0
}

/// Everything the issue asks a local scrape to show, per path kind (a
/// series not there yet reads as incomplete, never as 0).
fn complete(sc: &Scrape) -> bool {
    if sc.is_absent("kubepulse_icmp_socket_info", &[("mode", "unavailable")]) {
        return false;
    }
    let positive = |name: &str, m: &[(&str, &str)]| sc.try_sum(name, m).is_some_and(|v| v > 0.0);
    FOUR_AGENT_PATHS.iter().all(|p| {
        let p = p.as_str();
        // Kept replies: sent − lost (both booked at the probe's outcome).
        let replied = |proto| {
            let l = [("protocol", proto), ("path", p)];
            sc.try_sum("kubepulse_probe_sent_total", &l)
                .zip(sc.try_sum("kubepulse_probe_lost_total", &l))
                .is_some_and(|(sent, lost)| sent - lost > 0.0)
        };
        replied("udp")
            && replied("tcp")
            && (!icmp_available(sc) || replied("icmp"))
            && positive(
                "kubepulse_tcp_connect_duration_seconds_count",
                &[("path", p)],
            )
            && positive(
                "kubepulse_http_probe_duration_seconds_count",
                &[("path", p), ("phase", "transfer")],
            )
            && !sc
                .select("kubepulse_path_mtu_bytes", &[("path", p)])
                .is_empty()
            && positive(
                "kubepulse_bandwidth_bursts_total",
                &[("path", p), ("outcome", "ok"), ("direction", "send")],
            )
            && positive(
                "kubepulse_bandwidth_bursts_total",
                &[("path", p), ("outcome", "ok"), ("direction", "receive")],
            )
    })
}

#[test]
fn local_mode_serves_sane_documented_metrics_and_stops_on_sigterm() {
    let cfg = config_file(FAST);
    let path = cfg.path().to_str().expect("utf-8 path");
    let mut kp = Kubepulse::start(&[
        "local",
        "--agents",
        "4",
        "--listen",
        "127.0.0.1:0",
        "--bandwidth",
        "--config",
        path,
    ]);
    let (sc, ok) = scrape::scrape_until(kp.metrics, Duration::from_secs(90), complete);
    assert!(
        ok,
        "local mode never showed every probe kind on every path:\n{}",
        sc.body
    );

    // Sane values: loopback RTTs between 0 and 100 ms, no loss, positive goodput.
    for proto in ["udp", "tcp", "icmp"] {
        if proto == "icmp" && !icmp_available(&sc) {
            continue;
        }
        for p in FOUR_AGENT_PATHS {
            let m = [("protocol", proto), ("path", p.as_str())];
            let count = sc.sum("kubepulse_probe_rtt_seconds_count", &m);
            let mean = sc.sum("kubepulse_probe_rtt_seconds_sum", &m) / count;
            assert!(
                count > 0.0 && mean > 0.0 && mean < 0.1,
                "{proto} {p}: mean rtt {mean} over {count}"
            );
            let lost = sc.sum("kubepulse_probe_lost_total", &m);
            assert_eq!(lost, 0.0, "{proto} {p}: loss on loopback");
            for s in sc.select("kubepulse_probe_rtt_min_seconds", &m) {
                assert!(
                    s.value > 0.0 && s.value < 0.1,
                    "{proto} {p}: rtt_min {}",
                    s.value
                );
            }
        }
    }
    for s in sc.select("kubepulse_bandwidth_bytes_per_second", &[]) {
        assert!(s.value > 0.0, "goodput {s:?}");
    }
    for s in sc.select("kubepulse_path_mtu_bytes", &[]) {
        let iface = sc
            .select(
                "kubepulse_interface_mtu_bytes",
                &[
                    ("agent", &s.labels["agent"]),
                    ("path", &s.labels["path"]),
                    ("peer_node", &s.labels["peer_node"]),
                ],
            )
            .first()
            .map(|i| i.value);
        assert_eq!(
            Some(s.value),
            iface,
            "loopback path MTU equals the interface MTU: {s:?}"
        );
    }

    // Every documented agent metric is there, every exported family is
    // documented (local mode adds its `agent` label).
    scrape::assert_documented(
        &sc,
        &["Agent metrics", "Process metrics"],
        &["agent"],
        catalog::ALL,
    );
    println!("local scrape with 4 agents: {} series", sc.series_count());

    // promtool is the reference linter for the exposition format.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(sc.body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics rejected the scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The other endpoints.
    let get = |p| scrape::http_get(kp.metrics, p).expect("GET");
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200);
    let (code, page) = get("/");
    assert!(
        code == 200 && page.contains("/metrics"),
        "landing page: {code} {page}"
    );
    assert_eq!(get("/nope").0, 404);

    kp.signal("TERM");
    let status = kp
        .wait_exit(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}
