//! Scheduled probes against tiny test-only servers on 127.0.0.1: TCP
//! listener, HTTP, UDP echo (with an MTU blackhole) and bandwidth
//! sink/source. Assertions poll the metrics with a deadline; none depends
//! on how fast anything is.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kubepulse::config::ProbeSettings;
use kubepulse::metrics::catalog::{self, MetricDef};
use kubepulse::metrics::labels::{ExcludeReason, Protocol};
use kubepulse::metrics::AgentMetrics;
use kubepulse::peer::{AgentKind, PathKind};
use kubepulse::peer::{Identity, Peer, ProbePorts, Target};
use kubepulse::probe::guard::{KeepAll, SampleGuard};
use kubepulse::probe::{scheduled, ProbeContext, TargetSet};
use kubepulse::proto::{bandwidth as bw, echo};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Generous: only bounds a failing test, never a timing goal.
const PATIENCE: Duration = Duration::from_secs(30);

/// Every scheduled probe off; each test turns on the one it checks.
fn quiet_settings() -> ProbeSettings {
    let mut s = ProbeSettings::default();
    s.tcp_connect.enabled = false;
    s.http.enabled = false;
    s.pmtu.enabled = false;
    s.bandwidth.enabled = false;
    s
}

fn target(node: &str, path: PathKind, ports: ProbePorts) -> Target {
    Target {
        peer: Peer {
            name: format!("agent-{node}"),
            address: LOCALHOST,
            node: node.into(),
            kind: AgentKind::Pod,
            ports,
            path: Some(path),
        },
        path,
    }
}

fn ports_with(f: impl FnOnce(&mut ProbePorts)) -> ProbePorts {
    let mut p = ProbePorts::default();
    f(&mut p);
    p
}

struct Running {
    metrics: AgentMetrics,
    shutdown: CancellationToken,
    handles: Vec<JoinHandle<()>>,
    targets: watch::Sender<TargetSet>,
}

impl Running {
    fn start(settings: ProbeSettings, targets: Vec<Target>) -> Self {
        Self::start_guarded(settings, targets, Arc::new(KeepAll))
    }

    fn start_guarded(
        settings: ProbeSettings,
        targets: Vec<Target>,
        guard: Arc<dyn SampleGuard>,
    ) -> Self {
        let metrics = AgentMetrics::new(prometheus::Registry::new()).expect("metrics");
        // As the agent's target publisher does: a target's per-peer series
        // exist (and may be written) before its probes start.
        for t in &targets {
            metrics.precreate_peer(t.path, &t.peer.node, Protocol::ALL);
        }
        let (tx, rx) = watch::channel::<TargetSet>(Arc::new(targets));
        let shutdown = CancellationToken::new();
        let ctx = ProbeContext {
            identity: Identity {
                name: "agent-a".into(),
                node: "a".into(),
                kind: AgentKind::Pod,
            },
            bind: LOCALHOST,
            settings,
            metrics: metrics.clone(),
            targets: rx,
            all_peers: watch::channel(Arc::new(Vec::new())).1,
            plan: watch::channel(None).1,
            shutdown: shutdown.clone(),
            guard,
            burst_keys: Arc::new(kubepulse::auth::BurstKeys::new(None).expect("run key")),
        };
        let handles = scheduled::start(ctx);
        Running {
            metrics,
            shutdown,
            handles,
            targets: tx,
        }
    }

    /// The value of a counter or gauge, or the sample count of a histogram.
    fn value(&self, def: &MetricDef, labels: &[(&str, &str)]) -> Option<f64> {
        self.sample(def, labels).map(|(v, _)| v)
    }

    /// (value or count, histogram sum).
    fn sample(&self, def: &MetricDef, labels: &[(&str, &str)]) -> Option<(f64, f64)> {
        let fams = self.metrics.registry().gather();
        let fam = fams.iter().find(|f| f.name() == def.name)?;
        let m = fam.get_metric().iter().find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })?;
        Some(match def.kind {
            catalog::MetricType::Counter => (m.get_counter().get_value(), 0.0),
            catalog::MetricType::Gauge => (m.get_gauge().get_value(), 0.0),
            catalog::MetricType::Histogram => {
                let h = m.get_histogram();
                (h.get_sample_count() as f64, h.get_sample_sum())
            }
        })
    }

    async fn eventually(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels and checks every task ends.
    async fn stop(self) {
        self.shutdown.cancel();
        for h in self.handles {
            tokio::time::timeout(PATIENCE, h)
                .await
                .expect("probe task stops after shutdown")
                .expect("probe task did not panic");
        }
    }
}

fn spawn_server<F>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) + Send + Clone + 'static,
{
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let h = handle.clone();
            std::thread::spawn(move || h(conn));
        }
    });
}

fn free_closed_port() -> u16 {
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn tcp_connect_times_connects_and_counts_failures() {
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    spawn_server(l, drop);
    let closed = free_closed_port();
    let mut s = quiet_settings();
    s.tcp_connect.enabled = true;
    s.tcp_connect.interval = Duration::from_millis(100);
    s.tcp_connect.timeout = Duration::from_secs(2);
    let r = Running::start(
        s,
        vec![
            target(
                "b",
                PathKind::PodCrossNode,
                ports_with(|p| p.tcp_echo = port),
            ),
            target(
                "c",
                PathKind::PodToHost,
                ports_with(|p| p.tcp_echo = closed),
            ),
        ],
    );
    let hist = |r: &Running, path: &str| r.value(&catalog::TCP_CONNECT, &[("path", path)]);
    let err = |r: &Running, path: &str| {
        r.value(
            &catalog::PROBE_ERRORS,
            &[
                ("protocol", "tcp"),
                ("path", path),
                ("reason", "connect_failed"),
            ],
        )
    };
    r.eventually("connect samples and failures", |r| {
        hist(r, "pod_cross_node") >= Some(3.0) && err(r, "pod_to_host") >= Some(3.0)
    })
    .await;
    let (_, sum) = r
        .sample(&catalog::TCP_CONNECT, &[("path", "pod_cross_node")])
        .expect("histogram");
    assert!(sum > 0.0, "connect durations are positive");
    let (n, _) = r
        .sample(&catalog::TCP_CONNECT, &[("path", "pod_cross_node")])
        .expect("histogram");
    println!(
        "loopback connect: mean {:.1} us over {n} probes",
        sum / n * 1e6
    );
    assert_eq!(hist(&r, "pod_to_host"), Some(0.0), "failures are not timed");
    assert_eq!(
        err(&r, "pod_cross_node"),
        Some(0.0),
        "the open port never fails"
    );
    r.stop().await;
}

/// Excludes every outcome towards node "b".
struct ExcludeB;

impl SampleGuard for ExcludeB {
    fn exclude(&self, peer_node: &str, sent_ns: u64, done_ns: u64) -> Option<ExcludeReason> {
        assert!(done_ns >= sent_ns, "outcome before its probe");
        (peer_node == "b").then_some(ExcludeReason::BandwidthBurst)
    }
}

#[tokio::test]
async fn excluded_connect_and_http_probes_are_counted_only_as_excluded() {
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    spawn_server(l, drop);
    let web = http_server("200 OK");
    let mut s = quiet_settings();
    for p in [&mut s.tcp_connect, &mut s.http] {
        p.enabled = true;
        p.interval = Duration::from_millis(100);
        p.timeout = Duration::from_secs(2);
    }
    let ports = ports_with(|p| {
        p.tcp_echo = port;
        p.http = web;
    });
    let r = Running::start_guarded(
        s,
        vec![
            target("b", PathKind::PodCrossNode, ports),
            target("c", PathKind::PodToHost, ports),
        ],
        Arc::new(ExcludeB),
    );
    let excluded = |r: &Running, protocol: &str| {
        r.value(
            &catalog::PROBE_EXCLUDED,
            &[
                ("protocol", protocol),
                ("path", "pod_cross_node"),
                ("reason", "bandwidth_burst"),
            ],
        )
    };
    let connects = |r: &Running, path: &str| r.value(&catalog::TCP_CONNECT, &[("path", path)]);
    let first_byte = |r: &Running, path: &str| {
        r.value(
            &catalog::HTTP_PHASE,
            &[("path", path), ("phase", "first_byte")],
        )
    };
    r.eventually("kept and excluded probes", |r| {
        excluded(r, "tcp") >= Some(3.0)
            && excluded(r, "http") >= Some(3.0)
            && connects(r, "pod_to_host").is_some_and(|n| n >= 3.0)
            && first_byte(r, "pod_to_host").is_some_and(|n| n >= 3.0)
    })
    .await;
    // Node b's probes all ran, and none reached a histogram (whose series
    // is only created by a first observation here: absent or zero).
    let b_connects = r.value(&catalog::TCP_CONNECT, &[("path", "pod_cross_node")]);
    assert!(matches!(b_connects, None | Some(0.0)), "{b_connects:?}");
    let b_http = r.value(
        &catalog::HTTP_PHASE,
        &[("path", "pod_cross_node"), ("phase", "first_byte")],
    );
    assert!(matches!(b_http, None | Some(0.0)), "{b_http:?}");
    r.stop().await;
}

/// A TCP listener that counts accepted connections.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    spawn_server(l, move |c| {
        counter.fetch_add(1, Ordering::SeqCst);
        drop(c);
    });
    (port, n)
}

#[tokio::test]
async fn targets_come_and_go() {
    let (port_b, accepted_b) = counting_listener();
    let (port_c, _) = counting_listener();
    let mut s = quiet_settings();
    s.tcp_connect.enabled = true;
    s.tcp_connect.interval = Duration::from_millis(50);
    let r = Running::start(s, Vec::new());
    let count = |r: &Running, path: &str| r.value(&catalog::TCP_CONNECT, &[("path", path)]);
    let b = target(
        "b",
        PathKind::PodCrossNode,
        ports_with(|p| p.tcp_echo = port_b),
    );
    let c = target(
        "c",
        PathKind::PodToHost,
        ports_with(|p| p.tcp_echo = port_c),
    );
    r.targets.send_replace(Arc::new(vec![b]));
    r.eventually("the added peer is probed", |r| {
        count(r, "pod_cross_node") >= Some(2.0)
    })
    .await;
    // Replace b by c: c gets probed, b no more (one probe may have been
    // in flight at the switch).
    r.targets.send_replace(Arc::new(vec![c]));
    let accepted_at_switch = accepted_b.load(Ordering::SeqCst);
    r.eventually("the new peer is probed", |r| {
        count(r, "pod_to_host") >= Some(4.0)
    })
    .await;
    let after = accepted_b.load(Ordering::SeqCst);
    assert!(
        after <= accepted_at_switch + 1,
        "removed peer still probed: {accepted_at_switch} -> {after}"
    );
    r.stop().await;
}

const BODY: usize = 612;

/// Reads an HTTP request head; false if the client went away.
fn read_request(c: &mut TcpStream) -> bool {
    let mut req = Vec::new();
    let mut b = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return false,
            Ok(n) => req.extend_from_slice(&b[..n]),
        }
    }
    assert!(req.starts_with(b"GET / HTTP/1.1\r\n"), "request line");
    true
}

fn respond(c: &mut TcpStream, status: &str) {
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n");
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(&[b'x'; BODY]);
}

fn http_server(status: &'static str) -> u16 {
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    spawn_server(l, move |mut c: TcpStream| {
        if read_request(&mut c) {
            respond(&mut c, status);
        }
    });
    port
}

#[tokio::test]
async fn http_probe_records_three_phases_and_bad_status() {
    let ok = http_server("200 OK");
    let bad = http_server("404 Not Found");
    let closed = free_closed_port();
    let mut s = quiet_settings();
    s.http.enabled = true;
    s.http.interval = Duration::from_millis(100);
    s.http.timeout = Duration::from_secs(5);
    let r = Running::start(
        s,
        vec![
            target("b", PathKind::PodCrossNode, ports_with(|p| p.http = ok)),
            target("c", PathKind::PodToHost, ports_with(|p| p.http = bad)),
            target("d", PathKind::HostToPod, ports_with(|p| p.http = closed)),
        ],
    );
    let phase = |r: &Running, phase: &str| {
        r.sample(
            &catalog::HTTP_PHASE,
            &[("path", "pod_cross_node"), ("phase", phase)],
        )
        .unwrap_or((0.0, 0.0))
    };
    let err = |r: &Running, path: &str, reason: &str| {
        r.value(
            &catalog::PROBE_ERRORS,
            &[("protocol", "http"), ("path", path), ("reason", reason)],
        )
    };
    r.eventually("phases and errors", |r| {
        ["first_byte", "transfer", "total"]
            .iter()
            .all(|p| phase(r, p).0 >= 2.0)
            && err(r, "pod_to_host", "bad_reply") >= Some(1.0)
            && err(r, "host_to_pod", "connect_failed") >= Some(1.0)
    })
    .await;
    assert!(phase(&r, "first_byte").1 > 0.0);
    // The whole request includes the other phases (and the connect).
    let (n, total) = phase(&r, "total");
    assert!(
        n == phase(&r, "first_byte").0,
        "one total per complete probe"
    );
    assert!(total >= phase(&r, "first_byte").1 + phase(&r, "transfer").1);
    for p in ["first_byte", "transfer", "total"] {
        let (n, sum) = phase(&r, p);
        println!(
            "loopback http {p}: mean {:.1} us over {n} probes",
            sum / n * 1e6
        );
    }
    // A 404 is a bad reply, not a timing sample.
    let (bad_count, _) = r
        .sample(
            &catalog::HTTP_PHASE,
            &[("path", "pod_to_host"), ("phase", "first_byte")],
        )
        .unwrap_or((0.0, 0.0));
    assert_eq!(bad_count, 0.0);
    assert_eq!(err(&r, "pod_cross_node", "bad_reply"), Some(0.0));
    r.stop().await;
}

/// A UDP echo server that drops datagrams whose IPv4 packet would exceed
/// `max_ip` bytes (an MTU blackhole: no ICMP, just silence).
fn udp_echo(max_ip: usize) -> u16 {
    let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind");
    let port = sock.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n + 28 > max_ip {
                continue;
            }
            if echo::make_reply(&mut buf[..n], 1, 2).is_ok() {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    port
}

/// [`udp_echo`] that also drops the first `lose` datagrams larger than
/// `above` bytes that would pass (lost probes, not a smaller MTU).
fn lossy_udp_echo(max_ip: usize, above: usize, lose: usize) -> u16 {
    let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind");
    let port = sock.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut lost = 0;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n + 28 > max_ip {
                continue;
            }
            if n + 28 > above && lost < lose {
                lost += 1;
                continue;
            }
            if echo::make_reply(&mut buf[..n], 1, 2).is_ok() {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    port
}

/// Every try at one size lost (a short outage) lowers no path MTU: the
/// smallest failed size is tried again and the search goes on above it.
#[tokio::test]
async fn path_mtu_search_outlasts_lost_probes() {
    const HOLE: u32 = 1433;
    let mut s = quiet_settings();
    s.pmtu.enabled = true;
    s.pmtu.interval = Duration::from_secs(600);
    s.pmtu.timeout = Duration::from_millis(100);
    s.pmtu.tries = 2;
    // Both tries of the first fitting size above the minimum (1200) lost.
    let lossy = lossy_udp_echo(HOLE as usize, 1200, 2);
    let r = Running::start(
        s,
        vec![target(
            "b",
            PathKind::PodCrossNode,
            ports_with(|p| p.udp_echo = lossy),
        )],
    );
    let labels = [("path", "pod_cross_node"), ("peer_node", "b")];
    r.eventually("the search", |r| {
        r.value(&catalog::PATH_MTU, &labels).is_some()
    })
    .await;
    assert_eq!(
        r.value(&catalog::PATH_MTU, &labels),
        Some(f64::from(HOLE)),
        "lost probes lowered the path MTU"
    );
    r.stop().await;
}

#[tokio::test]
async fn path_mtu_on_loopback_and_through_a_blackhole() {
    let clean = udp_echo(usize::MAX);
    const HOLE: u32 = 1433;
    let holed = udp_echo(HOLE as usize);
    let mut s = quiet_settings();
    s.pmtu.enabled = true;
    s.pmtu.interval = Duration::from_millis(500);
    s.pmtu.timeout = Duration::from_millis(100);
    s.pmtu.tries = 2;
    let r = Running::start(
        s,
        vec![
            target(
                "b",
                PathKind::PodCrossNode,
                ports_with(|p| p.udp_echo = clean),
            ),
            target(
                "c",
                PathKind::PodCrossNode,
                ports_with(|p| p.udp_echo = holed),
            ),
        ],
    );
    let get = |r: &Running, def: &MetricDef, node: &str| {
        r.value(def, &[("path", "pod_cross_node"), ("peer_node", node)])
    };
    r.eventually("both searches", |r| {
        get(r, &catalog::PATH_MTU, "b").is_some() && get(r, &catalog::PATH_MTU, "c").is_some()
    })
    .await;
    let lo_mtu: f64 = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .expect("lo mtu")
        .trim()
        .parse()
        .expect("number");
    let iface = lo_mtu.min(65535.0);
    assert_eq!(get(&r, &catalog::INTERFACE_MTU, "b"), Some(iface));
    assert_eq!(
        get(&r, &catalog::PATH_MTU, "b"),
        Some(iface),
        "clean path = interface MTU"
    );
    assert_eq!(get(&r, &catalog::INTERFACE_MTU, "c"), Some(iface));
    assert_eq!(
        get(&r, &catalog::PATH_MTU, "c"),
        Some(f64::from(HOLE)),
        "largest size through the blackhole"
    );
    r.stop().await;
}

/// A bandwidth responder speaking `proto::bandwidth`; `busy` answers Busy.
fn bandwidth_server(busy: bool) -> u16 {
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    spawn_server(l, move |mut c: TcpStream| {
        let mut req = [0u8; bw::REQUEST_LEN];
        if c.read_exact(&mut req).is_err() {
            return;
        }
        let Ok(req) = bw::Request::decode(&req) else {
            let _ = c.write_all(&bw::Status::Malformed.encode());
            return;
        };
        if busy {
            let _ = c.write_all(&bw::Status::Busy.encode());
            return;
        }
        if c.write_all(&bw::Status::Ok.encode()).is_err() {
            return;
        }
        let mut buf = vec![0u8; 128 << 10];
        let mut left = req.bytes;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let r = match req.mode {
                bw::Mode::Sink => c.read(&mut buf[..n]),
                bw::Mode::Source => c.write(&buf[..n]),
            };
            match r {
                Ok(0) | Err(_) => return,
                Ok(k) => left -= k as u64,
            }
        }
    });
    port
}

#[tokio::test]
async fn bandwidth_bursts_both_ways_and_busy() {
    let ok = bandwidth_server(false);
    let busy = bandwidth_server(true);
    let closed = free_closed_port();
    let mut s = quiet_settings();
    s.bandwidth.enabled = true;
    s.bandwidth.schedule = kubepulse::config::BandwidthSchedule::Interval;
    s.bandwidth.interval = Duration::from_millis(300);
    s.bandwidth.duration = Duration::from_millis(100);
    let r = Running::start(
        s,
        vec![
            target(
                "b",
                PathKind::PodCrossNode,
                ports_with(|p| p.bandwidth = ok),
            ),
            target("c", PathKind::PodToHost, ports_with(|p| p.bandwidth = busy)),
            target(
                "d",
                PathKind::HostToPod,
                ports_with(|p| p.bandwidth = closed),
            ),
        ],
    );
    let rate = |r: &Running, dir: &str| {
        r.value(
            &catalog::BANDWIDTH,
            &[
                ("path", "pod_cross_node"),
                ("peer_node", "b"),
                ("direction", dir),
            ],
        )
    };
    let bursts = |r: &Running, path: &str, dir: &str, outcome: &str| {
        r.value(
            &catalog::BANDWIDTH_BURSTS,
            &[("path", path), ("direction", dir), ("outcome", outcome)],
        )
    };
    r.eventually("bursts in both directions and busy answers", |r| {
        rate(r, "send").is_some()
            && rate(r, "receive").is_some()
            && bursts(r, "pod_to_host", "send", "busy") >= Some(1.0)
            && bursts(r, "pod_to_host", "receive", "busy") >= Some(1.0)
            && bursts(r, "host_to_pod", "send", "error") >= Some(1.0)
            && bursts(r, "host_to_pod", "receive", "error") >= Some(1.0)
    })
    .await;
    let send = rate(&r, "send").expect("send");
    let recv = rate(&r, "receive").expect("receive");
    println!(
        "loopback goodput: send {:.0} MB/s, receive {:.0} MB/s",
        send / 1e6,
        recv / 1e6
    );
    assert!(send > 0.0 && recv > 0.0);
    assert!(bursts(&r, "pod_cross_node", "send", "ok") >= Some(1.0));
    assert!(bursts(&r, "pod_cross_node", "receive", "ok") >= Some(1.0));
    assert_eq!(bursts(&r, "pod_cross_node", "send", "error"), Some(0.0));
    assert_eq!(bursts(&r, "pod_cross_node", "receive", "error"), Some(0.0));
    assert_eq!(bursts(&r, "pod_to_host", "send", "ok"), Some(0.0));
    let last = r
        .value(
            &catalog::BANDWIDTH_LAST,
            &[
                ("path", "pod_cross_node"),
                ("peer_node", "b"),
                ("direction", "send"),
            ],
        )
        .expect("last burst time");
    assert!(last > 1.7e9, "a Unix timestamp");
    r.stop().await;
}

#[tokio::test]
async fn a_stuck_peer_does_not_delay_others() {
    let ok = http_server("200 OK");
    // A peer that holds every request until the test releases it.
    let release = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let stuck = l.local_addr().expect("addr").port();
    let (rel, h) = (release.clone(), held.clone());
    spawn_server(l, move |mut c: TcpStream| {
        h.fetch_add(1, Ordering::SeqCst);
        if read_request(&mut c) {
            while !rel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            respond(&mut c, "200 OK");
        }
    });
    let mut s = quiet_settings();
    s.http.enabled = true;
    s.http.interval = Duration::from_millis(50);
    // Longer than the test can wait: the stuck probe never times out.
    s.http.timeout = PATIENCE * 2;
    let r = Running::start(
        s,
        vec![
            target("b", PathKind::PodCrossNode, ports_with(|p| p.http = ok)),
            target("c", PathKind::PodToHost, ports_with(|p| p.http = stuck)),
        ],
    );
    let count = |r: &Running, path: &str| {
        r.value(
            &catalog::HTTP_PHASE,
            &[("path", path), ("phase", "first_byte")],
        )
    };
    r.eventually("the healthy peer keeps being probed", |r| {
        count(r, "pod_cross_node") >= Some(5.0) && held.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        count(&r, "pod_to_host"),
        Some(0.0),
        "the stuck probe is still waiting"
    );
    assert_eq!(
        held.load(Ordering::SeqCst),
        1,
        "slots of a peer whose probe is running are skipped, not stacked"
    );
    release.store(true, Ordering::SeqCst);
    r.eventually("the released probe completes", |r| {
        count(r, "pod_to_host") >= Some(1.0)
    })
    .await;
    r.stop().await;
}
