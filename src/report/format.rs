//! Rendering a [`Report`]: an aligned table for a terminal, Markdown, CSV
//! and JSON. Text formats show milliseconds, Mbit/s and percent; JSON keeps
//! base units (seconds, bytes per second, ratios).

use std::fmt::Write as _;

use serde::Serialize;

use super::model::{Report, Rtt};

/// Output formats of `kubepulse report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// GitHub-flavoured Markdown tables.
    Markdown,
    /// JSON, field names documented in docs/report.md.
    Json,
    /// CSV, one section per table, separated by a blank line.
    Csv,
}

/// A titled table of strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Heading.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Cells.
    pub rows: Vec<Vec<String>>,
}

/// Missing value.
pub const NONE: &str = "-";

/// Milliseconds with microsecond resolution (the seeds' `0.139 ms`).
pub fn ms(s: Option<f64>) -> String {
    s.map_or_else(|| NONE.into(), |s| format!("{:.3}", s * 1e3))
}

/// A ratio as a percentage with one decimal, signed when `signed`.
pub fn pct(r: Option<f64>, signed: bool) -> String {
    match r {
        Some(r) if signed => format!("{:+.1}", r * 100.0),
        Some(r) => format!("{:.1}", r * 100.0),
        None => NONE.into(),
    }
}

/// Bytes per second as Mbit/s.
pub fn mbit(b: Option<f64>) -> String {
    b.map_or_else(|| NONE.into(), |b| format!("{:.1}", b * 8.0 / 1e6))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| NONE.into(), |v| format!("{v:.0}"))
}

fn rtt(r: &Rtt) -> String {
    format!("{}/{}/{}", ms(r.min), ms(r.p50), ms(r.p99))
}

fn strings<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| (*s).to_string()).collect()
}

/// The tables of a report, in print order (no path tables for a report
/// without agents, such as the controller's page).
pub fn tables(r: &Report) -> Vec<Table> {
    let mut out = path_tables(r);
    if !r.matrix.is_empty() {
        out.push(Table {
            title: "Probed pairs (UDP)".into(),
            header: strings([
                "source",
                "peer_node",
                "path",
                "sent",
                "loss %",
                "rtt mean ms",
            ]),
            rows: r
                .matrix
                .iter()
                .map(|c| {
                    vec![
                        c.source.clone(),
                        c.peer_node.clone(),
                        c.path.to_string(),
                        format!("{:.0}", c.sent),
                        pct(c.loss_ratio, false),
                        ms(c.rtt_mean),
                    ]
                })
                .collect(),
        });
    }
    if !r.reach.is_empty() {
        out.push(Table {
            title:
                "Cluster DNS and apiserver from each node (ms; failures: share of probes not ok)"
                    .into(),
            header: strings([
                "source",
                "network",
                "dns lookups",
                "dns fail %",
                "dns p50",
                "service fail %",
                "direct fail %",
                "livez p50 (service)",
            ]),
            rows: r
                .reach
                .iter()
                .map(|x| {
                    vec![
                        x.source.clone(),
                        x.network.clone(),
                        format!("{:.0}", x.dns_lookups),
                        pct(x.dns_failure_ratio, false),
                        ms(x.dns_p50),
                        pct(x.service_failure_ratio, false),
                        pct(x.direct_failure_ratio, false),
                        ms(x.service_livez_p50),
                    ]
                })
                .collect(),
        });
    }
    if !r.lifecycle.is_empty() {
        out.push(Table {
            title: "Peer lifecycle (not Ready: left out of the plan, not probed; expected down: probed, not judged by the per-peer alerts)".into(),
            header: strings(["source", "peers not ready", "expected down"]),
            rows: r
                .lifecycle
                .iter()
                .map(|l| {
                    let down: Vec<String> = l
                        .expected_down
                        .iter()
                        .map(|d| format!("{} ({})", d.peer_node, d.reason))
                        .collect();
                    vec![
                        l.source.clone(),
                        format!("{:.0}", l.peers_not_ready),
                        if down.is_empty() {
                            NONE.into()
                        } else {
                            down.join(", ")
                        },
                    ]
                })
                .collect(),
        });
    }
    if let Some(cp) = &r.control_plane {
        out.push(Table {
            title: "Pod startup (s; SLO: pod_startup p99 <= 5 s)".into(),
            header: strings(["phase", "count", "p50", "p90", "p99", "slo"]),
            rows: cp
                .pod_startup
                .iter()
                .map(|p| {
                    let s = |v: Option<f64>| v.map_or_else(|| NONE.into(), |v| format!("{v:.3}"));
                    let slo = match (p.slo_seconds, p.q.p99) {
                        (Some(slo), Some(p99)) if p99 <= slo => "met".into(),
                        (Some(_), Some(_)) => "MISSED".into(),
                        _ => NONE.into(),
                    };
                    vec![
                        p.phase.clone(),
                        format!("{:.0}", p.q.count),
                        s(p.q.p50),
                        s(p.q.p90),
                        s(p.q.p99),
                        slo,
                    ]
                })
                .collect(),
        });
        out.push(Table {
            title: "apiserver calls (ms; SLO on p99: 1 s single objects, 30 s LISTs)".into(),
            header: strings([
                "verb", "resource", "scope", "count", "p50", "p90", "p99", "slo",
            ]),
            rows: cp
                .apiserver
                .iter()
                .map(|a| {
                    let slo = match a.q.p99 {
                        Some(p) if p <= a.slo_seconds => "met",
                        Some(_) => "MISSED",
                        None => NONE,
                    };
                    vec![
                        a.verb.clone(),
                        a.resource.clone(),
                        a.scope.clone(),
                        format!("{:.0}", a.q.count),
                        ms(a.q.p50),
                        ms(a.q.p90),
                        ms(a.q.p99),
                        slo.into(),
                    ]
                })
                .collect(),
        });
        out.push(Table {
            title: "Nodes".into(),
            header: strings([
                "throttled (429)",
                "largest clock offset",
                "node",
                "ready transitions",
            ]),
            rows: vec![vec![
                num(cp.throttled),
                cp.clock_offset_max
                    .map_or_else(|| NONE.into(), |s| format!("{:+.3} ms", s * 1e3)),
                cp.clock_offset_node.clone().unwrap_or_else(|| NONE.into()),
                num(cp.not_ready_transitions),
            ]],
        });
    }
    out
}

/// Latency and bandwidth per path kind; none without path rows.
fn path_tables(r: &Report) -> Vec<Table> {
    if r.paths.is_empty() {
        return Vec::new();
    }
    vec![
        Table {
            title: "Latency by path (ms; RTT as min/p50/p99; overhead: mean UDP RTT against host_cross_node)".into(),
            header: strings([
                "path", "udp rtt", "udp mean", "tcp rtt", "icmp rtt", "loss %", "jitter", "connect p99",
                "http p50", "http p99", "rtt overhead %",
            ]),
            rows: r
                .paths
                .iter()
                .map(|p| {
                    vec![
                        p.path.to_string(),
                        rtt(&p.udp),
                        ms(p.udp_mean),
                        rtt(&p.tcp),
                        rtt(&p.icmp),
                        pct(p.loss_ratio, false),
                        ms(p.jitter),
                        ms(p.tcp_connect_p99),
                        ms(p.http_p50),
                        ms(p.http_p99),
                        pct(p.rtt_overhead, true),
                    ]
                })
                .collect(),
        },
        Table {
            title: "Bandwidth and MTU by path (last bursts; overhead: send goodput against host_cross_node)".into(),
            header: strings(["path", "send Mbit/s", "recv Mbit/s", "bw overhead %", "path mtu"]),
            rows: r
                .paths
                .iter()
                .map(|p| {
                    vec![
                        p.path.to_string(),
                        mbit(p.bandwidth_send),
                        mbit(p.bandwidth_receive),
                        pct(p.bandwidth_overhead, true),
                        num(p.path_mtu),
                    ]
                })
                .collect(),
        },
    ]
}

fn aligned(t: &Table, out: &mut String) {
    let mut width: Vec<usize> = t.header.iter().map(|h| h.chars().count()).collect();
    for r in &t.rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String], out: &mut String| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i == 0 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    let _ = writeln!(out, "{}", t.title);
    line(&t.header, out);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule, out);
    for r in &t.rows {
        line(r, out);
    }
}

fn markdown(t: &Table, out: &mut String) {
    let _ = writeln!(out, "### {}\n", t.title);
    let _ = writeln!(out, "| {} |", t.header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(t.header.len()));
    for r in &t.rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(t: &Table, out: &mut String) {
    let line = |cells: &mut dyn Iterator<Item = &String>| {
        cells.map(|c| csv_field(c)).collect::<Vec<_>>().join(",")
    };
    let table = "table".to_string();
    let _ = writeln!(
        out,
        "{}",
        line(&mut std::iter::once(&table).chain(&t.header))
    );
    for r in &t.rows {
        let _ = writeln!(out, "{}", line(&mut std::iter::once(&t.title).chain(r)));
    }
}

/// Renders `r` in `format`.
pub fn render(r: &Report, format: Format) -> String {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Versioned<'a> {
            format_version: u32,
            #[serde(flatten)]
            report: &'a Report,
        }
        let v = Versioned {
            format_version: 1,
            report: r,
        };
        // Serialising plain structs of numbers and strings cannot fail.
        return serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    }
    let mut out = String::new();
    if format != Format::Csv {
        let window = if r.window_seconds > 0.0 {
            format!(
                "over {}",
                humantime::format_duration(std::time::Duration::from_secs_f64(
                    r.window_seconds.round()
                ))
            )
        } else {
            "since start".into()
        };
        let _ = writeln!(out, "kubepulse report: {} ({window})\n", r.source);
    }
    for (i, t) in tables(r).iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match format {
            Format::Table => aligned(t, &mut out),
            Format::Markdown => markdown(t, &mut out),
            Format::Csv => csv(t, &mut out),
            Format::Json => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::PathRow;

    fn report() -> Report {
        Report {
            source: "test".into(),
            window_seconds: 60.0,
            paths: vec![PathRow {
                path: "host_cross_node",
                udp: Rtt {
                    min: Some(0.000139),
                    p50: Some(0.0002),
                    p99: None,
                },
                udp_mean: Some(0.00015),
                tcp: Rtt::default(),
                icmp: Rtt::default(),
                probes: Some(10.0),
                loss_ratio: Some(0.25),
                jitter: None,
                tcp_connect_p99: None,
                http_p50: None,
                http_p99: None,
                bandwidth_send: Some(117_750_000.0),
                bandwidth_receive: None,
                path_mtu: Some(1500.0),
                rtt_overhead: Some(0.0),
                bandwidth_overhead: Some(0.0),
            }],
            matrix: vec![],
            control_plane: None,
            reach: vec![],
            lifecycle: vec![],
        }
    }

    #[test]
    fn text_formats_show_units_a_person_reads() {
        let t = render(&report(), Format::Table);
        assert!(t.contains("0.139/0.200/-"), "{t}");
        assert!(t.contains("942.0"), "Mbit/s: {t}");
        assert!(t.contains("1500"), "mtu: {t}");
        assert!(t.contains("25.0"), "loss %: {t}");
        assert!(t.contains("over 1m"), "{t}");
        let md = render(&report(), Format::Markdown);
        assert!(md.contains("| host_cross_node | 0.139/0.200/- |"), "{md}");
        let csv = render(&report(), Format::Csv);
        assert!(csv.starts_with("table,path,udp rtt"), "{csv}");
        assert!(csv.contains(",host_cross_node,0.139/0.200/-,"), "{csv}");
    }

    #[test]
    fn lifecycle_rows_show_only_when_there_is_something_to_say() {
        use crate::report::model::{ExpectedDown, LifecycleRow};
        let t = render(&report(), Format::Table);
        assert!(!t.contains("Peer lifecycle"), "{t}");
        let mut r = report();
        r.lifecycle = vec![LifecycleRow {
            source: "node-a".into(),
            peers_not_ready: 2.0,
            expected_down: vec![
                ExpectedDown {
                    peer_node: "node-b".into(),
                    reason: "cordoned".into(),
                },
                ExpectedDown {
                    peer_node: "node-c".into(),
                    reason: "gone".into(),
                },
            ],
        }];
        let t = render(&r, Format::Table);
        assert!(t.contains("Peer lifecycle"), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("node-a")
                && l.contains("  2  ")
                && l.ends_with("node-b (cordoned), node-c (gone)")),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&render(&r, Format::Json)).expect("json");
        assert_eq!(j["lifecycle"][0]["peers_not_ready"], 2.0);
        assert_eq!(j["lifecycle"][0]["expected_down"][1]["reason"], "gone");
    }

    #[test]
    fn json_keeps_base_units_and_nulls() {
        let j: serde_json::Value =
            serde_json::from_str(&render(&report(), Format::Json)).expect("json");
        assert_eq!(j["format_version"], 1);
        assert_eq!(j["paths"][0]["udp"]["min"], 0.000139);
        assert_eq!(j["paths"][0]["udp"]["p99"], serde_json::Value::Null);
        assert_eq!(j["paths"][0]["bandwidth_send"], 117_750_000.0);
    }
}
