//! `kubepulse report` and `kubepulse local --report`: the real binary, its
//! formats, its errors, and numbers that agree with the scraped deltas.

use std::io::Write;
use std::process::Command;

use kubepulse::report::{self, exposition, snapshot::Window};
use kubepulse_testkit::process::Kubepulse;
use kubepulse_testkit::scrape::{self, Scrape};
use serde_json::Value as Json;

/// Fast schedules so a few seconds hold enough probes.
const FAST: &str = "\
probes:
  udp: {interval: 100ms, timeout: 1s}
  tcp: {interval: 100ms, timeout: 1s}
  icmp: {interval: 100ms, timeout: 1s}
  tcp_connect: {interval: 500ms, timeout: 1s}
  http: {interval: 500ms, timeout: 2s}
";

/// The path kinds 5 local agents probe, in report order.
const LOCAL_PATHS: [&str; 5] = [
    "host_cross_node",
    "pod_same_node",
    "pod_cross_node",
    "pod_to_host",
    "host_to_pod",
];

fn config() -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    f.write_all(FAST.as_bytes()).expect("write config");
    f
}

fn kubepulse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubepulse"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kubepulse")
}

#[test]
fn local_report_prints_every_path_kind_and_exits_0() {
    let cfg = config();
    let path = cfg.path().to_str().expect("utf-8 path");
    let out = kubepulse(&["local", "-c", path, "--report", "3s", "--format", "json"]);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Json = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(j["format_version"], 1);
    let rows = j["paths"].as_array().expect("paths");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(names, LOCAL_PATHS, "host baseline first, every local path");
    for r in rows {
        let p = &r["path"];
        assert!(r["probes"].as_f64().expect("probes") > 0.0, "{p}: probes");
        assert_eq!(
            r["loss_ratio"].as_f64(),
            Some(0.0),
            "{p}: loopback loses nothing"
        );
        let (min, p50, p99) = (
            r["udp"]["min"].as_f64().expect("min"),
            r["udp"]["p50"].as_f64().expect("p50"),
            r["udp"]["p99"].as_f64().expect("p99"),
        );
        assert!(min > 0.0 && min < 0.1, "{p}: udp min {min}");
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 1.0, "{p}: udp {p50} {p99}");
        let over = r["rtt_overhead"]
            .as_f64()
            .expect("overhead against the host path");
        assert!(over.is_finite(), "{p}: {over}");
    }
    assert_eq!(
        rows[0]["rtt_overhead"].as_f64(),
        Some(0.0),
        "baseline against itself"
    );
    // 5 agents: every agent probes every other agent once per latency
    // protocol; the matrix has one UDP cell per (agent, peer node, path).
    let cells = j["matrix"].as_array().expect("matrix");
    assert_eq!(cells.len(), 17, "{cells:#?}");
    assert!(cells
        .iter()
        .all(|c| c["sent"].as_f64().is_some_and(|s| s > 0.0)));
    assert!(
        j["control_plane"].is_null(),
        "local mode runs no controller"
    );
}

/// Reads one number from a parsed scrape, failing when the series is missing.
fn total(sc: &Scrape, name: &str, m: &[(&str, &str)]) -> f64 {
    sc.sum(name, m)
}

#[test]
fn scrape_reports_agree_with_the_deltas_and_every_format_renders() {
    let cfg = config();
    let path = cfg.path().to_str().expect("utf-8 path");
    let kp = Kubepulse::start(&["local", "--listen", "127.0.0.1:0", "-c", path]);
    let url = format!("http://{}/metrics", kp.metrics);

    // Two scrapes of our own, some probes apart.
    // Sums without asserting: a failed scrape polls again. A peer's series
    // are created one family after another, so a scrape taken while the
    // last one was resolved had its sent counter but not its reply RTT
    // (one full `.ci/run`): the first scrape waits for both on every stream.
    let sent = |sc: &Scrape| {
        let udp = [("protocol", "udp")];
        let s = sc.select("kubepulse_probe_sent_total", &udp);
        let replies = sc.select("kubepulse_probe_reply_rtt_seconds_total", &udp);
        (s.len() >= 17 && replies.len() == s.len()).then(|| s.iter().map(|s| s.value).sum::<f64>())
    };
    let timeout = std::time::Duration::from_secs(30);
    let (first, ok) =
        scrape::scrape_until(kp.metrics, timeout, |sc| sent(sc).is_some_and(|n| n > 0.0));
    assert!(ok, "no UDP probes sent within {timeout:?}");
    let body1 = first.body.clone();
    let before = sent(&first).expect("UDP sent series (the poll saw them)");
    let (second, ok) = scrape::scrape_until(kp.metrics, timeout, |sc| {
        sent(sc).is_some_and(|n| n >= before + 200.0)
    });
    assert!(ok, "probes did not advance");
    let body2 = second.body.clone();

    let w = Window::between(
        &exposition::parse(&body1).expect("parse 1"),
        &exposition::parse(&body2).expect("parse 2"),
        1.0,
    );
    let r = report::build(&w, "test");
    assert_eq!(r.paths.len(), LOCAL_PATHS.len());
    for row in &r.paths {
        let delta = |name: &str| {
            ["udp", "tcp", "icmp"]
                .iter()
                .map(|p| {
                    let m = [("path", row.path), ("protocol", *p)];
                    total(&second, name, &m) - total(&first, name, &m)
                })
                .sum::<f64>()
        };
        let (s, l) = (
            delta("kubepulse_probe_sent_total"),
            delta("kubepulse_probe_lost_total"),
        );
        assert_eq!(row.probes, Some(s), "{}: probes", row.path);
        assert_eq!(row.loss_ratio, Some(l / s), "{}: loss", row.path);
        let udp = [("path", row.path), ("protocol", "udp")];
        let mins: Vec<f64> = second
            .select("kubepulse_probe_rtt_min_seconds", &udp)
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(
            row.udp.min,
            mins.into_iter().reduce(f64::min),
            "{}",
            row.path
        );
        let count = total(&second, "kubepulse_probe_rtt_seconds_count", &udp)
            - total(&first, "kubepulse_probe_rtt_seconds_count", &udp);
        assert!(count > 0.0, "{}: udp samples in the window", row.path);
    }
    for cell in &r.matrix {
        let m = [
            ("agent", cell.source.as_str()),
            ("peer_node", cell.peer_node.as_str()),
            ("path", cell.path),
            ("protocol", "udp"),
        ];
        let d = |n: &str| total(&second, n, &m) - total(&first, n, &m);
        assert_eq!(cell.sent, d("kubepulse_probe_sent_total"), "{m:?}");
        let lost = d("kubepulse_probe_lost_total");
        assert_eq!(cell.loss_ratio, Some(lost / cell.sent), "{m:?}");
        let mean = d("kubepulse_probe_reply_rtt_seconds_total") / (cell.sent - lost);
        let got = cell.rtt_mean.expect("mean RTT");
        assert!((got - mean).abs() <= 1e-12 * mean, "{m:?}: {got} vs {mean}");
    }

    // The command itself, in every format.
    for (format, marker) in [
        ("table", "path             "),
        ("markdown", "| path |"),
        ("csv", "table,path,"),
        ("json", "\"format_version\": 1"),
    ] {
        let out = kubepulse(&[
            "report", "--scrape", &url, "--window", "1s", "--format", format,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(marker), "{format}:\n{text}");
        for p in LOCAL_PATHS {
            assert!(text.contains(p), "{format}: no {p} row:\n{text}");
        }
    }
}

#[test]
fn unreachable_or_unsupported_sources_fail_with_a_clear_message() {
    let port = kubepulse_testkit::process::free_port();
    let out = kubepulse(&[
        "report",
        "--scrape",
        &format!("http://127.0.0.1:{port}/metrics"),
        "--window",
        "1s",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("connect"),
        "{err}"
    );
    let out = kubepulse(&["report", "--scrape", "https://127.0.0.1/metrics"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
    let out = kubepulse(&["report"]);
    assert!(!out.status.success(), "a source is required");
}
