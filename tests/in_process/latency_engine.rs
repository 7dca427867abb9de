//! End-to-end tests of the latency engine against tiny test-only echo
//! responders on 127.0.0.1 (the real responders live in `src/responder`).
//! Conditions are polled with deadlines; the only timing assertion is the
//! busy-runtime p99 check the issue asks for.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubepulse::config::settings::{ProbeCadence, ProbeSettings};
use kubepulse::metrics::labels::ExcludeReason;
use kubepulse::metrics::labels::{IcmpMode, ProbeErrorReason, Protocol};
use kubepulse::metrics::AgentMetrics;
use kubepulse::peer::{AgentKind, PathKind};
use kubepulse::peer::{Identity, Peer, ProbePorts, Target};
use kubepulse::probe::guard::{KeepAll, SampleGuard};
use kubepulse::probe::latency::{self, LatencyProber, RttSample, SampleHook};
use kubepulse::probe::{ProbeContext, TargetSet};
use kubepulse::proto::echo;
use kubepulse_testkit::scrape::sample_quantile;
use prometheus::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The two tests measure timing; they must not run at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// UDP and TCP echo responders on ephemeral ports, stopped on drop.
struct Responder {
    ports: ProbePorts,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Whether the UDP echo thread got SCHED_FIFO.
    realtime: bool,
}

impl Responder {
    /// Responders at normal priority.
    fn start() -> Self {
        Self::start_with(false)
    }

    /// With `realtime`, the UDP echo thread runs SCHED_FIFO when the host
    /// allows it (see `Responder::realtime`), so that CPU contention on
    /// the test host delays the prober, not the stand-in peer.
    fn start_with(realtime: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind((LOCALHOST, 0)).expect("bind udp");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let tcp = TcpListener::bind((LOCALHOST, 0)).expect("bind tcp");
        let ports = ProbePorts {
            udp_echo: udp.local_addr().expect("addr").port(),
            tcp_echo: tcp.local_addr().expect("addr").port(),
            ..ProbePorts::default()
        };
        let s = stop.clone();
        let (rt_tx, rt_rx) = mpsc::channel();
        let udp_thread = std::thread::spawn(move || {
            let rt = realtime && kubepulse::sys::thread::set_realtime_fifo(10).is_ok();
            let _ = rt_tx.send(rt);
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let rx = now_ns();
                if echo::make_reply(&mut buf[..n], rx, now_ns()).is_ok() {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        let s = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((c, _)) => {
                        let s = s.clone();
                        conns.push(std::thread::spawn(move || serve_tcp(c, &s)));
                    }
                    // Blocking accept: Drop wakes it with a connection.
                    Err(_) => continue,
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        let realtime = rt_rx.recv().unwrap_or(false);
        Self {
            ports,
            stop,
            threads: vec![udp_thread, tcp_thread],
            realtime,
        }
    }
}

fn serve_tcp(mut c: TcpStream, stop: &AtomicBool) {
    c.set_nonblocking(false).expect("blocking");
    c.set_nodelay(true).expect("nodelay");
    c.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut buf = [0u8; echo::HEADER_LEN];
    let mut have = 0;
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf[have..]) {
            Ok(0) => return,
            Ok(n) => have += n,
            Err(_) => continue,
        }
        if have == buf.len() {
            have = 0;
            let rx = now_ns();
            if echo::make_reply(&mut buf, rx, now_ns()).is_err() || c.write_all(&buf).is_err() {
                return;
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect((LOCALHOST, self.ports.tcp_echo));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Ports nothing listens on: bound, read, released.
fn dead_ports() -> ProbePorts {
    let u = UdpSocket::bind((LOCALHOST, 0)).expect("bind");
    let t = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    ProbePorts {
        udp_echo: u.local_addr().expect("addr").port(),
        tcp_echo: t.local_addr().expect("addr").port(),
        ..ProbePorts::default()
    }
}

fn target(name: &str, ports: ProbePorts) -> Target {
    Target {
        peer: Peer {
            name: name.into(),
            address: LOCALHOST,
            node: format!("node-{name}"),
            kind: AgentKind::Pod,
            ports,
            path: None,
        },
        path: PathKind::PodCrossNode,
    }
}

fn periodic(enabled: bool, interval: Duration) -> ProbeCadence {
    ProbeCadence {
        enabled,
        interval,
        // The production default; generous for a loaded test host.
        timeout: Duration::from_secs(1),
    }
}

/// UDP, TCP and ICMP every 20 ms, with a minimum-RTT window that outlasts
/// the test.
fn every_protocol_every_20ms() -> ProbeSettings {
    let interval = Duration::from_millis(20);
    ProbeSettings {
        udp: periodic(true, interval),
        tcp: periodic(true, interval),
        icmp: periodic(true, interval),
        rtt_min_window: Duration::from_secs(60),
        ..ProbeSettings::default()
    }
}

struct Engine {
    registry: Registry,
    metrics: AgentMetrics,
    targets: watch::Sender<TargetSet>,
    shutdown: CancellationToken,
    prober: Option<LatencyProber>,
}

impl Engine {
    fn start(settings: ProbeSettings, targets: Vec<Target>, hook: Option<SampleHook>) -> Self {
        Self::start_guarded(settings, targets, hook, Arc::new(KeepAll))
    }

    fn start_guarded(
        settings: ProbeSettings,
        targets: Vec<Target>,
        hook: Option<SampleHook>,
        guard: Arc<dyn SampleGuard>,
    ) -> Self {
        let registry = Registry::new();
        let metrics = AgentMetrics::new(registry.clone()).expect("metrics");
        // As the agent's target publisher does: the series exist (and are
        // live) before the engine sees a target.
        for t in &targets {
            metrics.precreate_peer(t.path, &t.peer.node, Protocol::ALL);
        }
        let (tx, rx) = watch::channel::<TargetSet>(Arc::new(targets));
        let shutdown = CancellationToken::new();
        let ctx = ProbeContext {
            identity: Identity {
                name: "tester".into(),
                node: "node-tester".into(),
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
        let prober = latency::start_with_hook(ctx, hook).expect("engine starts");
        Self {
            registry,
            metrics,
            targets: tx,
            shutdown,
            prober: Some(prober),
        }
    }

    /// Replaces the target set as the agent's publisher does: departed
    /// keys' series removed, new ones created, then the set published.
    fn set_targets(&self, new: Vec<Target>) {
        let old = self.targets.borrow().clone();
        for (path, node) in kubepulse::roles::agent::departed_keys(&old, &new) {
            self.metrics.remove_peer(path, &node);
        }
        for t in &new {
            self.metrics
                .precreate_peer(t.path, &t.peer.node, Protocol::ALL);
        }
        self.targets.send_replace(Arc::new(new));
    }

    /// Probes answered and kept: sent minus lost (both are booked when a
    /// probe's outcome is known).
    fn kept(&self, p: Protocol, node: &str) -> f64 {
        self.peer_value("kubepulse_probe_sent_total", p, node)
            - self.peer_value("kubepulse_probe_lost_total", p, node)
    }

    /// A sample value: counter, gauge, or a histogram's count; `None` when
    /// no series matches (panics when several do: the labels are too few).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let fam = self
            .registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)?;
        let mut matching = fam.get_metric().iter().filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        });
        let m = matching.next()?;
        assert!(
            matching.next().is_none(),
            "{name} {labels:?}: several series match"
        );
        Some(match fam.get_field_type() {
            prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
            prometheus::proto::MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
            _ => return None,
        })
    }

    /// The value of a series that must exist: panics naming it otherwise
    /// (every series a test reads here is created with its peer).
    fn existing(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
    }

    fn peer_value(&self, name: &str, p: Protocol, node: &str) -> f64 {
        self.existing(
            name,
            &[
                ("protocol", p.as_str()),
                ("path", "pod_cross_node"),
                ("peer_node", node),
            ],
        )
    }

    fn error_count(&self, p: Protocol, reason: ProbeErrorReason) -> f64 {
        self.existing(
            "kubepulse_probe_errors_total",
            &[
                ("protocol", p.as_str()),
                ("path", "pod_cross_node"),
                ("reason", reason.as_str()),
            ],
        )
    }

    fn icmp_mode(&self) -> Option<IcmpMode> {
        IcmpMode::ALL.iter().copied().find(|m| {
            self.value("kubepulse_icmp_socket_info", &[("mode", m.as_str())]) == Some(1.0)
        })
    }

    fn stop(mut self) {
        self.halt();
    }

    /// Stops the engine, keeping its metrics readable.
    fn halt(&mut self) {
        self.shutdown.cancel();
        let prober = self.prober.take().expect("running");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            prober.join();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("engine thread exits after shutdown");
    }
}

/// Polls `cond` until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn probes_live_and_dead_targets_and_follows_target_changes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = Responder::start();
    let b = Responder::start();
    let settings = every_protocol_every_20ms();
    let (ta, tb, dead) = (
        target("a", a.ports),
        target("b", b.ports),
        target("dead", dead_ports()),
    );
    let e = Engine::start(settings, vec![ta.clone(), tb.clone(), dead.clone()], None);

    let mode = e.icmp_mode().expect("icmp mode exported");
    eprintln!("ICMP socket mode: {mode}");
    let mut live_protocols = vec![Protocol::Udp, Protocol::Tcp];
    if mode != IcmpMode::Unavailable {
        live_protocols.push(Protocol::Icmp);
    }
    let live = ["node-a", "node-b"];
    // The stand-in responders' threads start cold; measure from the first
    // reply on every live stream so their start-up is not in the numbers.
    wait_for(
        "first replies from live peers",
        Duration::from_secs(20),
        || {
            live.iter()
                .all(|n| live_protocols.iter().all(|p| e.kept(*p, n) >= 1.0))
        },
    );
    // Only UDP keeps a per-peer reply RTT sum (the series budget; checked
    // absent for the others below): NaN stands for "no such series".
    let snapshot = |n: &str, p: Protocol| {
        [
            e.kept(p, n),
            if p == Protocol::Udp {
                e.peer_value("kubepulse_probe_reply_rtt_seconds_total", p, n)
            } else {
                f64::NAN
            },
            e.peer_value("kubepulse_probe_lost_total", p, n),
        ]
    };
    let base: Vec<[f64; 3]> = live
        .iter()
        .flat_map(|n| live_protocols.iter().map(|p| snapshot(n, *p)))
        .collect();
    wait_for(
        "replies from live peers and losses to the dead one",
        Duration::from_secs(20),
        || {
            live.iter().zip(0..).all(|(n, i)| {
                live_protocols
                    .iter()
                    .zip(0..)
                    .all(|(p, j)| e.kept(*p, n) >= base[i * live_protocols.len() + j][0] + 20.0)
            }) && e.peer_value("kubepulse_probe_lost_total", Protocol::Udp, "node-dead") >= 5.0
                && e.error_count(Protocol::Tcp, ProbeErrorReason::ConnectFailed) >= 2.0
        },
    );

    for (i, node) in live.iter().enumerate() {
        for (j, p) in live_protocols.iter().enumerate() {
            let b = base[i * live_protocols.len() + j];
            let now = snapshot(node, *p);
            let n = now[0] - b[0];
            let min = e.peer_value("kubepulse_probe_rtt_min_seconds", *p, node);
            assert!(n >= 20.0, "{p} {node}: {n} kept replies");
            assert!(min > 0.0 && min < 0.1, "{p} {node} min RTT {min}");
            assert_eq!(now[2], 0.0, "{p} {node} lost probes");
            let detail = [
                "kubepulse_probe_reply_rtt_seconds_total",
                "kubepulse_probe_jitter_seconds",
            ];
            let labels = [
                ("protocol", p.as_str()),
                ("path", "pod_cross_node"),
                ("peer_node", *node),
            ];
            if *p != Protocol::Udp {
                // The series budget: TCP and ICMP RTT detail is per path.
                for m in detail {
                    assert_eq!(e.value(m, &labels), None, "{m} {p} {node}");
                }
                continue;
            }
            // Mean over kept replies: reply RTT sum / (sent - lost).
            let mean = (now[1] - b[1]) / n;
            eprintln!(
                "{p} {node}: {n} replies, mean RTT {:.1} us, min {:.1} us",
                mean * 1e6,
                min * 1e6
            );
            assert!(mean > 0.0 && mean < 0.1, "{p} {node} mean RTT {mean}");
            assert!(min <= mean, "{p} {node} min RTT {min}");
            // RFC 3550 jitter is an average of |RTT differences|: positive
            // on a real path (nanosecond timestamps never repeat 20 times)
            // and bounded by the RTT range, which is below 100 ms here.
            let jitter = e.existing(detail[1], &labels);
            assert!(jitter > 0.0 && jitter < 0.1, "{p} {node}: jitter {jitter}");
        }
    }
    for p in &live_protocols {
        let hist = e.existing(
            "kubepulse_probe_rtt_seconds",
            &[("protocol", p.as_str()), ("path", "pod_cross_node")],
        );
        assert!(hist >= 40.0, "{p} histogram count {hist}");
    }
    if mode == IcmpMode::Unavailable {
        assert_eq!(e.kept(Protocol::Icmp, "node-a"), 0.0);
    }
    // The dead peer: UDP probes are sent and lost, TCP never connects.
    assert_eq!(e.kept(Protocol::Udp, "node-dead"), 0.0);
    assert_eq!(e.kept(Protocol::Tcp, "node-dead"), 0.0);
    assert!(e.peer_value("kubepulse_probe_sent_total", Protocol::Udp, "node-dead") >= 5.0);

    // Drop b and the dead peer, add c (served by b's responders).
    let tc = target("c", b.ports);
    e.set_targets(vec![ta, tc]);
    wait_for(
        "the new target's first replies",
        Duration::from_secs(10),
        || e.kept(Protocol::Udp, "node-c") >= 1.0,
    );
    let sent = |p, n| e.peer_value("kubepulse_probe_sent_total", p, n);
    let c0 = sent(Protocol::Udp, "node-c");
    wait_for("ten more probes to c", Duration::from_secs(10), || {
        sent(Protocol::Udp, "node-c") >= c0 + 10.0
    });
    // The engine has long caught up: none of the removed keys' series
    // came back, whatever their streams still had in flight.
    for m in [
        "kubepulse_probe_sent_total",
        "kubepulse_probe_lost_total",
        "kubepulse_probe_rtt_min_seconds",
        "kubepulse_probe_reply_rtt_seconds_total",
        "kubepulse_probe_jitter_seconds",
    ] {
        for node in ["node-b", "node-dead"] {
            for p in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
                let l = [("protocol", p.as_str()), ("peer_node", node)];
                assert_eq!(e.value(m, &l), None, "{m} {p} {node} after removal");
            }
        }
    }
    for node in ["node-b", "node-dead"] {
        let l = [("peer_node", node)];
        assert_eq!(e.value("kubepulse_peer_clock_offset_seconds", &l), None);
    }
    e.stop();
}

fn p99(samples: &mut [Duration]) -> Duration {
    sample_quantile(samples, 0.99).expect("RTT samples")
}

/// Collects `n` UDP RTT samples from `rx`, after discarding `warmup`.
fn collect(rx: &mpsc::Receiver<Duration>, warmup: usize, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    let mut skipped = 0;
    while out.len() < n {
        let s = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("RTT samples keep coming");
        if skipped < warmup {
            skipped += 1;
        } else {
            out.push(s);
        }
    }
    out
}

/// CPU burnt per task between yields.
const BURN: Duration = Duration::from_micros(200);
/// Busy tasks on the runtime.
const TASKS: usize = 8;

/// A multi-thread tokio runtime with 2 workers kept 100% busy by `TASKS`
/// CPU-bound tasks (spin `BURN`, yield, repeat): both cores of a 2-vCPU
/// host are saturated while it runs.
fn busy_runtime() -> (tokio::runtime::Runtime, Arc<AtomicBool>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..TASKS {
        let stop = stop.clone();
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < BURN {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        });
    }
    (rt, stop)
}

/// The requirement: a busy tokio runtime beside the engine does not
/// inflate its UDP p99 RTT by more than 2x. Idle and busy phases alternate
/// (24 rounds of 100 samples each at 2 ms spacing, 2400 per condition) so
/// that background load on the machine (other builds) affects both alike.
/// What is judged is the typical round: the median over rounds of each
/// phase's p99. A busy runtime's effect is in every busy phase; one stall
/// of this shared VM (50 ms hold 25 samples, 1 % of a side) lands in one
/// phase and decided the pooled p99 alone (busy 210 us against idle 87 us
/// in one full `.ci/run`, busy below idle in 6 of 6 runs alone after it).
/// The pooled p99s are printed too. The idle p99 is floored at 50 us so
/// that a tiny idle p99 (noise divided by noise) cannot fail the ratio.
///
/// The stand-in peer's UDP echo thread runs SCHED_FIFO where permitted: in
/// production the responder is on another node, and on a 2-vCPU test host
/// its wake-up delay under contention would otherwise dominate the RTT
/// (kernel-answered ICMP probes, which have no user-space responder, showed
/// p99 15 us idle vs 19 us busy on a host loaded by other builds, while UDP
/// to a normal-priority responder reached milliseconds). The engine thread
/// itself stays at normal priority: it is what is under test.
///
/// It runs alone (`.ci/run` runs it in a step of its own): a CPU-bound test
/// beside it in this binary loads the busy phases more than the idle ones
/// (p99 164 us against 69 us in one full run, 4 of 4 passes alone).
#[test]
#[ignore = "timing: runs alone, with every test thread (.config/nextest.toml; .ci/run passes --run-ignored all)"]
fn busy_tokio_runtime_does_not_inflate_udp_p99() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let r = Responder::start_with(true);
    eprintln!("UDP echo responder SCHED_FIFO: {}", r.realtime);
    let settings = ProbeSettings {
        udp: periodic(true, Duration::from_millis(2)),
        tcp: periodic(false, Duration::from_secs(1)),
        icmp: periodic(false, Duration::from_secs(1)),
        rtt_min_window: Duration::from_secs(60),
        ..ProbeSettings::default()
    };
    let (tx, rx) = mpsc::channel::<Duration>();
    let tx = Mutex::new(tx);
    let hook: SampleHook = Arc::new(move |s: &RttSample| {
        if s.protocol == Protocol::Udp {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(s.rtt);
            }
        }
    });
    let e = Engine::start(settings, vec![target("p", r.ports)], Some(hook));

    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    let (mut idle_rounds, mut busy_rounds) = (Vec::new(), Vec::new());
    for _round in 0..24 {
        // Drop what queued up between phases, then warm up.
        while rx.try_recv().is_ok() {}
        let mut phase = collect(&rx, 10, 100);
        idle_rounds.push(p99(&mut phase));
        idle.extend(phase);
        let (rt, stop) = busy_runtime();
        while rx.try_recv().is_ok() {}
        let mut phase = collect(&rx, 10, 100);
        busy_rounds.push(p99(&mut phase));
        busy.extend(phase);
        stop.store(true, Ordering::Relaxed);
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    let (n_idle, n_busy) = (idle.len(), busy.len());
    let p50 = |v: &mut Vec<Duration>| sample_quantile(v, 0.5).expect("RTT samples");
    let (p99_idle, p99_busy) = (p99(&mut idle), p99(&mut busy));
    let (p50_idle, p50_busy) = (p50(&mut idle), p50(&mut busy));
    let (round_idle, round_busy) = (p50(&mut idle_rounds), p50(&mut busy_rounds));
    eprintln!(
        "UDP RTT idle: n={n_idle} p50={p50_idle:?} p99={p99_idle:?}; \
         busy runtime: n={n_busy} p50={p50_busy:?} p99={p99_busy:?}; \
         median round p99: idle {round_idle:?}, busy {round_busy:?}"
    );
    let floor = round_idle.max(Duration::from_micros(50));
    assert!(
        round_busy <= floor * 2,
        "busy p99 {round_busy:?} > 2 x idle p99 {round_idle:?} (floored at {floor:?}), \
         medians over rounds of each phase's p99"
    );
    assert_eq!(
        e.peer_value("kubepulse_probe_lost_total", Protocol::Udp, "node-p"),
        0.0
    );
    e.stop();
}

/// A UDP peer that answers every request with `reply(request)`, `delay`
/// after receiving it. Stops when `stop` is set.
fn odd_udp_peer(
    delay: Duration,
    reply: fn(&mut Vec<u8>),
    stop: Arc<AtomicBool>,
) -> (u16, JoinHandle<()>) {
    let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let t = std::thread::spawn(move || {
        let mut queue: Vec<(Instant, Vec<u8>, std::net::SocketAddr)> = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut msg = buf[..n].to_vec();
                reply(&mut msg);
                queue.push((Instant::now() + delay, msg, from));
            }
            let now = Instant::now();
            queue.retain(|(due, msg, from)| {
                if *due > now {
                    return true;
                }
                let _ = sock.send_to(msg, from);
                false
            });
        }
    });
    (port, t)
}

#[test]
fn bad_and_late_replies_are_counted_apart_from_losses() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = |m: &mut Vec<u8>| {
        m.clear();
        m.extend_from_slice(b"not an echo reply");
    };
    let echo_reply = |m: &mut Vec<u8>| {
        let _ = echo::make_reply(m, now_ns(), now_ns());
    };
    let (g_port, g) = odd_udp_peer(Duration::ZERO, garbage, stop.clone());
    // Replies 200 ms after the request, with a 50 ms timeout: always late.
    let (s_port, s) = odd_udp_peer(Duration::from_millis(200), echo_reply, stop.clone());
    let mut tg = target(
        "garbage",
        ProbePorts {
            udp_echo: g_port,
            ..ProbePorts::default()
        },
    );
    tg.path = PathKind::ServiceClusterip;
    let ts = target(
        "slow",
        ProbePorts {
            udp_echo: s_port,
            ..ProbePorts::default()
        },
    );
    let settings = ProbeSettings {
        udp: ProbeCadence {
            enabled: true,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(50),
        },
        tcp: periodic(false, Duration::from_secs(1)),
        icmp: periodic(false, Duration::from_secs(1)),
        rtt_min_window: Duration::from_secs(60),
        ..ProbeSettings::default()
    };
    let mut e = Engine::start(settings, vec![tg, ts], None);
    let err = |e: &Engine, path: &str, reason: ProbeErrorReason| {
        e.existing(
            "kubepulse_probe_errors_total",
            &[
                ("protocol", "udp"),
                ("path", path),
                ("reason", reason.as_str()),
            ],
        )
    };
    wait_for("bad and late replies", Duration::from_secs(20), || {
        err(&e, "service_clusterip", ProbeErrorReason::BadReply) >= 5.0
            && err(&e, "pod_cross_node", ProbeErrorReason::LateReply) >= 5.0
    });
    // Stopped, so the counters read below cannot move between two reads.
    e.halt();
    // Late replies are losses too (they missed the timeout); never replies.
    let slow = |m| e.peer_value(m, Protocol::Udp, "node-slow");
    assert!(slow("kubepulse_probe_lost_total") >= 5.0);
    assert_eq!(
        slow("kubepulse_probe_sent_total"),
        slow("kubepulse_probe_lost_total")
    );
    assert_eq!(err(&e, "pod_cross_node", ProbeErrorReason::BadReply), 0.0);
    assert_eq!(
        err(&e, "service_clusterip", ProbeErrorReason::LateReply),
        0.0
    );
    stop.store(true, Ordering::Relaxed);
    for t in [g, s] {
        t.join().expect("peer thread");
    }
}

/// Excludes every outcome towards `node-dead`, and those towards `node-b`
/// sent in an even 100 ms block; counts its questions.
#[derive(Default)]
struct TestGuard {
    asked: std::sync::atomic::AtomicU64,
}

impl SampleGuard for TestGuard {
    fn exclude(&self, peer_node: &str, sent_ns: u64, done_ns: u64) -> Option<ExcludeReason> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        assert!(done_ns >= sent_ns, "outcome before its probe left");
        let out = match peer_node {
            "node-dead" => true,
            "node-b" => (sent_ns / 100_000_000).is_multiple_of(2),
            _ => false,
        };
        out.then_some(ExcludeReason::BandwidthBurst)
    }
}

#[test]
fn excluded_outcomes_are_counted_only_as_excluded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = Responder::start();
    let b = Responder::start();
    let interval = Duration::from_millis(10);
    let mut settings = ProbeSettings {
        udp: periodic(true, interval),
        tcp: periodic(true, interval),
        icmp: periodic(false, interval),
        rtt_min_window: Duration::from_secs(60),
        ..ProbeSettings::default()
    };
    // Losses resolve quickly.
    settings.udp.timeout = Duration::from_millis(200);
    settings.tcp.timeout = Duration::from_millis(200);
    let guard = Arc::new(TestGuard::default());
    let mut e = Engine::start_guarded(
        settings,
        vec![
            target("a", a.ports),
            target("b", b.ports),
            target("dead", dead_ports()),
        ],
        None,
        guard.clone(),
    );
    let get = |e: &Engine, name: &str, p: Protocol, node: &str| {
        e.value(
            name,
            &[
                ("protocol", p.as_str()),
                ("path", "pod_cross_node"),
                ("peer_node", node),
            ],
        )
        .unwrap_or_else(|| panic!("{name} {p} {node}: series missing"))
    };
    let excluded = |e: &Engine, p: Protocol| {
        e.value(
            "kubepulse_probe_excluded_total",
            &[
                ("protocol", p.as_str()),
                ("path", "pod_cross_node"),
                ("reason", "bandwidth_burst"),
            ],
        )
        .expect("excluded series pre-created")
    };
    let kept_b = |e: &Engine| {
        let m = |name| e.value(name, &[("protocol", "udp"), ("peer_node", "node-b")]);
        Some(m("kubepulse_probe_sent_total")? - m("kubepulse_probe_lost_total")?)
    };
    wait_for(
        "kept and excluded outcomes",
        Duration::from_secs(10),
        || {
            kept_b(&e).is_some_and(|r| r >= 20.0)
                && excluded(&e, Protocol::Udp) >= 40.0
                && guard.asked.load(Ordering::Relaxed) >= 100
        },
    );
    e.halt();
    // The dead peer's probes were all excluded: none sent, none lost.
    let p = Protocol::Udp;
    assert_eq!(get(&e, "kubepulse_probe_sent_total", p, "node-dead"), 0.0);
    assert_eq!(get(&e, "kubepulse_probe_lost_total", p, "node-dead"), 0.0);
    for p in [Protocol::Udp, Protocol::Tcp] {
        // Only kept replies reach the RTT histogram: its count is the kept
        // probes' sent − lost, summed over the peers.
        let kept = |node| {
            get(&e, "kubepulse_probe_sent_total", p, node)
                - get(&e, "kubepulse_probe_lost_total", p, node)
        };
        let observed = e
            .value(
                "kubepulse_probe_rtt_seconds",
                &[("protocol", p.as_str()), ("path", "pod_cross_node")],
            )
            .expect("RTT histogram");
        let (a_kept, b_kept) = (kept("node-a"), kept("node-b"));
        assert!(b_kept > 0.0 && a_kept > 0.0, "{p}: a {a_kept} b {b_kept}");
        assert_eq!(observed, a_kept + b_kept + kept("node-dead"), "{p}");
    }
    // Excluded = the dead peer's probes plus about half of b's.
    assert!(excluded(&e, Protocol::Udp) >= 40.0);
    assert!(excluded(&e, Protocol::Tcp) > 0.0);
    drop((a, b));
}

/// ICMP echo never probes a Service address (nothing behind it answers:
/// `PathKind::probed_with_icmp`): a Service target gets UDP and TCP probes
/// and no ICMP series at all, while an agent target beside it gets all
/// three.
#[test]
fn service_targets_get_no_icmp_probes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = Responder::start();
    let svc = Responder::start();
    let settings = every_protocol_every_20ms();
    let mut clusterip = target("svc", svc.ports);
    clusterip.path = PathKind::ServiceClusterip;
    clusterip.peer.path = Some(PathKind::ServiceClusterip);
    let mut nodeport = target("np", svc.ports);
    nodeport.path = PathKind::ServiceNodeport;
    nodeport.peer.path = Some(PathKind::ServiceNodeport);
    let mut e = Engine::start(
        settings,
        vec![target("a", a.ports), clusterip, nodeport],
        None,
    );
    let sent = |p: Protocol, path: &str, node: &str| {
        e.value(
            "kubepulse_probe_sent_total",
            &[
                ("protocol", p.as_str()),
                ("path", path),
                ("peer_node", node),
            ],
        )
    };
    let icmp_works = e.icmp_mode().expect("icmp mode exported") != IcmpMode::Unavailable;
    wait_for(
        "UDP and TCP replies through both Service paths, ICMP to the agent",
        Duration::from_secs(20),
        || {
            [
                ("service_clusterip", "node-svc"),
                ("service_nodeport", "node-np"),
            ]
            .iter()
            .all(|(path, node)| {
                [Protocol::Udp, Protocol::Tcp]
                    .iter()
                    .all(|p| sent(*p, path, node).is_some_and(|n| n >= 10.0))
            }) && (!icmp_works
                || sent(Protocol::Icmp, "pod_cross_node", "node-a").is_some_and(|n| n >= 10.0))
        },
    );
    e.halt();
    let gathered = |name: &str| {
        e.registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| {
                let l = |k: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == k)
                        .map(|l| l.value().to_string())
                };
                l("protocol").as_deref() == Some("icmp")
                    && l("path").is_some_and(|p| p.starts_with("service_"))
            })
            .count()
    };
    for name in [
        "kubepulse_probe_sent_total",
        "kubepulse_probe_lost_total",
        "kubepulse_probe_rtt_min_seconds",
        "kubepulse_probe_rtt_seconds",
        "kubepulse_probe_errors_total",
        "kubepulse_probe_excluded_total",
    ] {
        assert_eq!(gathered(name), 0, "{name}: ICMP series on a Service path");
    }
    drop((a, svc));
}

/// A guard that takes 8 ms per question (so the engine thread falls
/// behind and sends leave late) and excludes everything or nothing.
struct SlowGuard {
    exclude: bool,
}

impl SampleGuard for SlowGuard {
    fn exclude(&self, _peer: &str, _sent_ns: u64, _done_ns: u64) -> Option<ExcludeReason> {
        std::thread::sleep(Duration::from_millis(8));
        self.exclude.then_some(ExcludeReason::BandwidthBurst)
    }
}

/// A late send counts only when its probe counts: one the burst guard
/// excludes (a burst of this node or the peer's, whose load may well delay
/// it) biases no statistic, so it is not reported as the prober starving.
#[test]
fn late_sends_of_excluded_probes_are_not_counted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = Responder::start();
    let late = |exclude: bool| {
        let settings = ProbeSettings {
            udp: periodic(true, Duration::from_millis(5)),
            tcp: periodic(false, Duration::from_secs(1)),
            icmp: periodic(false, Duration::from_secs(1)),
            rtt_min_window: Duration::from_secs(60),
            ..ProbeSettings::default()
        };
        let mut e = Engine::start_guarded(
            settings,
            vec![target("a", a.ports)],
            None,
            Arc::new(SlowGuard { exclude }),
        );
        let excluded = |e: &Engine| {
            e.value(
                "kubepulse_probe_excluded_total",
                &[("protocol", "udp"), ("path", "pod_cross_node")],
            )
            .unwrap_or(0.0)
        };
        wait_for("probes judged", Duration::from_secs(20), || {
            if exclude {
                excluded(&e) >= 50.0
            } else {
                e.kept(Protocol::Udp, "node-a") >= 50.0
            }
        });
        e.halt();
        e.existing("kubepulse_probe_send_late_total", &[("protocol", "udp")])
    };
    let kept_late = late(false);
    assert!(
        kept_late > 10.0,
        "a slow guard makes sends late: {kept_late}"
    );
    assert_eq!(
        late(true),
        0.0,
        "excluded probes' late sends are not counted"
    );
    drop(a);
}
