//! Integration tests of the probe responders over loopback. Client sockets
//! are blocking std sockets with timeouts, used from the test thread; the
//! responders run on the test runtime's workers and their own threads.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubepulse::auth::{BurstKeys, KeySet};
use kubepulse::config::ResponderSettings;
use kubepulse::metrics::AgentMetrics;
use kubepulse::peer::ProbePorts;
use kubepulse::proto::bandwidth::{self as bw, Mode, Seal, Status};
use kubepulse::proto::echo::{self, EchoHeader, Kind};
use kubepulse::responder::{self, Responders};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

const LOCAL4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    responders: Option<Responders>,
    ports: ProbePorts,
    metrics: AgentMetrics,
    stop: CancellationToken,
    ip: IpAddr,
}

impl Fixture {
    async fn start(ip: IpAddr, limits: ResponderSettings) -> Self {
        Self::start_shifted(ip, limits, Duration::ZERO).await
    }

    /// Responders whose echo replies report a clock `clock_offset` ahead.
    async fn start_shifted(ip: IpAddr, limits: ResponderSettings, clock_offset: Duration) -> Self {
        let metrics = AgentMetrics::new(Registry::new()).expect("metrics");
        let stop = CancellationToken::new();
        let any = ProbePorts {
            udp_echo: 0,
            tcp_echo: 0,
            bandwidth: 0,
            http: 0,
        };
        let r = responder::start_shifted(
            ip,
            any,
            limits,
            Arc::new(run_keys()),
            metrics.clone(),
            stop.clone(),
            clock_offset,
        )
        .await
        .expect("responders start");
        let ports = r.ports();
        for p in [ports.udp_echo, ports.tcp_echo, ports.bandwidth, ports.http] {
            assert_ne!(p, 0, "port 0 must be replaced by the bound port");
        }
        Self {
            responders: Some(r),
            ports,
            metrics,
            stop,
            ip,
        }
    }

    async fn default4() -> Self {
        Self::start(LOCAL4, ResponderSettings::default()).await
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// A metric sample by name and labels, as exported.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for fam in self.metrics.registry().gather() {
            if fam.name() != name {
                continue;
            }
            for m in fam.get_metric() {
                let matches = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if matches {
                    return match fam.get_field_type() {
                        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                        _ => m.get_counter().get_value(),
                    };
                }
            }
        }
        panic!("no sample {name} {labels:?}");
    }

    fn requests(&self, responder: &str) -> f64 {
        self.value(
            "kubepulse_responder_requests_total",
            &[("responder", responder)],
        )
    }

    fn rejected(&self, responder: &str, reason: &str) -> f64 {
        self.value(
            "kubepulse_responder_rejected_total",
            &[("responder", responder), ("reason", reason)],
        )
    }

    fn connections(&self, responder: &str) -> f64 {
        self.value(
            "kubepulse_responder_connections",
            &[("responder", responder)],
        )
    }

    /// Waits until a metric reaches `want`.
    fn wait_value(&self, what: &str, want: f64, read: impl Fn(&Self) -> f64) {
        wait_until(what, || read(self) == want);
        assert_eq!(read(self), want, "{what}");
    }

    async fn stop(mut self) {
        self.stop.cancel();
        let r = self.responders.take().expect("running");
        tokio::time::timeout(WAIT, r.join())
            .await
            .expect("responders stop within the deadline");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test must not leave responder threads behind.
        self.stop.cancel();
    }
}

/// Polls `cond` until it holds or the deadline passes.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn now_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(d.as_nanos()).expect("fits")
}

fn request(seq: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xABu8; len];
    EchoHeader {
        seq,
        stream: 0x5eed,
        tx_mono_ns: 1,
        tx_real_ns: now_ns(),
        ..Default::default()
    }
    .encode_request(&mut buf)
    .expect("fits");
    buf
}

fn udp_client(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("client bind");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

fn tcp_client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// Asserts the peer closed the connection (EOF or reset), not a timeout.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: expected close, read {n} bytes"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
            "{what}: expected close, got {e}"
        ),
    }
}

fn tcp_round_trip(s: &mut TcpStream, seq: u64) -> EchoHeader {
    s.write_all(&request(seq, echo::HEADER_LEN)).expect("send");
    let mut reply = [0u8; echo::HEADER_LEN];
    s.read_exact(&mut reply).expect("reply");
    let (kind, h) = EchoHeader::decode(&reply).expect("decode");
    assert_eq!((kind, h.seq, h.stream), (Kind::Reply, seq, 0x5eed));
    h
}

// === UDP echo ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_round_trip_keeps_length_and_stamps_times() {
    let f = Fixture::default4().await;
    let c = udp_client(LOCAL4);
    let to = f.addr(f.ports.udp_echo);
    for (seq, len) in [
        (42u64, 1000usize),
        (43, echo::HEADER_LEN),
        (44, echo::MAX_LEN),
    ] {
        let before = now_ns();
        c.send_to(&request(seq, len), to).expect("send");
        let mut buf = vec![0u8; echo::MAX_LEN + 1];
        let (n, from) = c.recv_from(&mut buf).expect("reply");
        let after = now_ns();
        assert_eq!(from, to);
        assert_eq!(n, len, "the reply has the request's length");
        let (kind, h) = EchoHeader::decode(&buf[..n]).expect("decode");
        assert_eq!(
            (kind, h.seq, h.stream, h.tx_mono_ns),
            (Kind::Reply, seq, 0x5eed, 1)
        );
        assert!(
            before <= h.rx_real_ns && h.rx_real_ns <= h.reply_real_ns && h.reply_real_ns <= after,
            "{before} <= {} <= {} <= {after}",
            h.rx_real_ns,
            h.reply_real_ns
        );
        assert!(
            buf[echo::HEADER_LEN..n].iter().all(|b| *b == 0xAB),
            "padding kept"
        );
    }
    // Counted after the reply is sent, so it may trail our receive.
    f.wait_value("udp requests", 3.0, |f| f.requests("udp_echo"));
    f.stop().await;
}

/// A responder bound to the wildcard address (the agents' default) answers
/// from the address each request was sent to, not from the route's source
/// towards the client: on a node with a pod bridge and an overlay device a
/// host agent would otherwise answer pods from the bridge's or the
/// overlay's address, and the path MTU search's connected socket never
/// sees the reply. 127.0.0.2 stands for such a second local address: a
/// plain `send_to` answers it from 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_answers_from_the_address_it_was_asked() {
    let f = Fixture::start(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ResponderSettings::default(),
    )
    .await;
    for to in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)] {
        let c = udp_client(LOCAL4);
        // Connected, as the path MTU search is: only a reply from `to`
        // gets through.
        c.connect((to, f.ports.udp_echo)).expect("connect");
        c.send(&request(7, 1200)).expect("send");
        let mut buf = vec![0u8; echo::MAX_LEN + 1];
        let n = c
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no reply from {to}: {e}"));
        assert_eq!(n, 1200, "the reply has the request's length");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_responders_apply_the_test_clock_offset() {
    let offset = Duration::from_secs(1000);
    let f = Fixture::start_shifted(LOCAL4, ResponderSettings::default(), offset).await;
    let c = udp_client(LOCAL4);
    let off = u64::try_from(offset.as_nanos()).expect("fits");
    let before = now_ns() + off;
    c.send_to(&request(1, 64), f.addr(f.ports.udp_echo))
        .expect("send");
    let mut buf = [0u8; 128];
    let n = c.recv(&mut buf).expect("reply");
    let after = now_ns() + off;
    let (_, h) = EchoHeader::decode(&buf[..n]).expect("decode");
    assert!(
        before <= h.rx_real_ns && h.reply_real_ns <= after,
        "{before} <= {} / {} <= {after}",
        h.rx_real_ns,
        h.reply_real_ns
    );
    // The TCP echo reports the same shifted clock.
    let mut s = tcp_client(f.addr(f.ports.tcp_echo));
    let before = now_ns() + off;
    let h = tcp_round_trip(&mut s, 2);
    let after = now_ns() + off;
    assert!(
        before <= h.rx_real_ns && h.reply_real_ns <= after,
        "{before} <= {} / {} <= {after}",
        h.rx_real_ns,
        h.reply_real_ns
    );
    f.stop().await;
}

/// IPv6 loopback, because only there can a datagram exceed `MAX_LEN` (the
/// largest IPv4 UDP payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_rejects_malformed_and_oversized_without_answering() {
    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let f = Fixture::start(ip, ResponderSettings::default()).await;
    let c = udp_client(ip);
    let to = f.addr(f.ports.udp_echo);
    let mut bad_magic = request(1, 64);
    bad_magic[0] = b'X';
    let mut reply = request(2, 64);
    echo::make_reply(&mut reply, 1, 2).expect("reply");
    let oversized = request(3, echo::MAX_LEN + 1);
    for d in [&b"short"[..], &bad_magic, &reply, &oversized] {
        assert_eq!(c.send_to(d, to).expect("send"), d.len());
    }
    // The echo handles datagrams in order: if the first answer we get is the
    // valid request's, none of the bad ones was answered.
    c.send_to(&request(99, 64), to).expect("send");
    let mut buf = vec![0u8; echo::MAX_LEN + 2];
    let n = c.recv(&mut buf).expect("reply");
    let (kind, h) = EchoHeader::decode(&buf[..n]).expect("decode");
    assert_eq!((kind, h.seq), (Kind::Reply, 99));
    f.wait_value("udp requests", 1.0, |f| f.requests("udp_echo"));
    assert_eq!(f.rejected("udp_echo", "malformed"), 3.0);
    assert_eq!(f.rejected("udp_echo", "oversized"), 1.0);
    f.stop().await;
}

// === TCP echo ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_answers_many_messages_then_closes_on_malformed() {
    let f = Fixture::default4().await;
    let mut s = tcp_client(f.addr(f.ports.tcp_echo));
    for seq in 1..=3 {
        let before = now_ns();
        let h = tcp_round_trip(&mut s, seq);
        assert!(before <= h.rx_real_ns && h.reply_real_ns <= now_ns());
    }
    // Two pipelined messages in one write get two replies.
    let mut two = request(10, echo::HEADER_LEN);
    two.extend(request(11, echo::HEADER_LEN));
    s.write_all(&two).expect("send");
    let mut replies = [0u8; 2 * echo::HEADER_LEN];
    s.read_exact(&mut replies).expect("replies");
    for (i, r) in replies.chunks(echo::HEADER_LEN).enumerate() {
        let (kind, h) = EchoHeader::decode(r).expect("decode");
        assert_eq!((kind, h.seq), (Kind::Reply, 10 + i as u64));
    }
    f.wait_value("tcp requests", 5.0, |f| f.requests("tcp_echo"));
    assert_eq!(f.connections("tcp_echo"), 1.0);

    let mut bad = request(12, echo::HEADER_LEN);
    bad[4] = 9; // unknown version
    s.write_all(&bad).expect("send");
    assert_closed(&mut s, "after a malformed message");
    f.wait_value("tcp malformed", 1.0, |f| {
        f.rejected("tcp_echo", "malformed")
    });
    f.wait_value("tcp connections", 0.0, |f| f.connections("tcp_echo"));
    assert_eq!(f.requests("tcp_echo"), 5.0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_enforces_the_connection_limit() {
    let f = Fixture::start(
        LOCAL4,
        ResponderSettings {
            max_connections: 2,
            ..Default::default()
        },
    )
    .await;
    let addr = f.addr(f.ports.tcp_echo);
    let mut c1 = tcp_client(addr);
    let mut c2 = tcp_client(addr);
    tcp_round_trip(&mut c1, 1);
    tcp_round_trip(&mut c2, 2);
    assert_eq!(f.connections("tcp_echo"), 2.0);

    let mut c3 = tcp_client(addr);
    assert_closed(&mut c3, "a connection beyond the limit");
    f.wait_value("connection_limit", 1.0, |f| {
        f.rejected("tcp_echo", "connection_limit")
    });
    // The survivors are unaffected.
    tcp_round_trip(&mut c2, 3);

    drop(c1);
    f.wait_value("tcp connections", 1.0, |f| f.connections("tcp_echo"));
    let mut c4 = tcp_client(addr);
    tcp_round_trip(&mut c4, 4);
    assert_eq!(f.rejected("tcp_echo", "connection_limit"), 1.0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_closes_idle_connections() {
    let f = Fixture::start(
        LOCAL4,
        ResponderSettings {
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    let mut s = tcp_client(f.addr(f.ports.tcp_echo));
    // Taken before the request, so it precedes the responder's idle timer.
    let t = Instant::now();
    tcp_round_trip(&mut s, 1);
    assert_closed(&mut s, "an idle connection");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "closed before the idle timeout: {:?}",
        t.elapsed()
    );
    f.wait_value("tcp connections", 0.0, |f| f.connections("tcp_echo"));
    f.stop().await;
}

// === Bandwidth ===

/// This run's burst key, shared with the responders of this process.
fn run_keys() -> BurstKeys {
    BurstKeys::new(None).expect("run key")
}

/// A seal made now (`age` ago) with a random nonce.
fn seal_aged(age: Duration) -> Seal {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock") - age;
    Seal {
        timestamp_ms: now.as_millis() as u64,
        nonce: rand::random(),
    }
}

/// A request signed with this run's key.
fn signed(mode: Mode, bytes: u64, max: Duration) -> [u8; bw::REQUEST_LEN] {
    let req = bw::Request {
        mode,
        bytes,
        max_duration: max,
    };
    req.encode(
        &seal_aged(Duration::ZERO),
        &*run_keys().current().expect("key"),
    )
}

/// Sends raw request bytes; returns the stream and the status.
fn send_request(f: &Fixture, msg: &[u8]) -> (TcpStream, Status) {
    let mut s = tcp_client(f.addr(f.ports.bandwidth));
    s.write_all(msg).expect("request");
    let status = read_status(&mut s);
    (s, status)
}

/// Connects and sends a burst request; returns the stream and the status.
fn burst(f: &Fixture, mode: Mode, bytes: u64, max: Duration) -> (TcpStream, Status) {
    send_request(f, &signed(mode, bytes, max))
}

fn read_status(s: &mut TcpStream) -> Status {
    let mut r = [0u8; bw::RESPONSE_LEN];
    s.read_exact(&mut r).expect("response");
    Status::decode(&r).expect("decode response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_sink_reads_exactly_the_requested_bytes() {
    // A long allowed duration, so "closed on the last byte" and "closed at
    // the deadline" are far apart even on a loaded machine.
    let long = Duration::from_secs(5);
    let f = Fixture::start(
        LOCAL4,
        ResponderSettings {
            max_burst_duration: long,
            ..Default::default()
        },
    )
    .await;
    let n: u64 = (4 << 20) + 3;
    let data = vec![7u8; usize::try_from(n).expect("fits")];

    // All bytes sent: the sink closes as soon as it has them.
    let t = Instant::now();
    let (mut s, status) = burst(&f, Mode::Sink, n, long);
    assert_eq!(status, Status::Ok);
    s.write_all(&data).expect("send burst");
    assert_closed(&mut s, "sink after the whole burst");
    assert!(
        t.elapsed() < long - Duration::from_secs(1),
        "sink waited for more than the requested bytes: {:?}",
        t.elapsed()
    );

    // One byte short: the sink keeps waiting until its deadline. `t` is
    // taken before the request, so it precedes the responder's deadline.
    let max = Duration::from_millis(500);
    let t = Instant::now();
    let (mut s, status) = burst(&f, Mode::Sink, n, max);
    assert_eq!(status, Status::Ok);
    s.write_all(&data[1..]).expect("send burst");
    assert_closed(&mut s, "sink at its deadline");
    assert!(
        t.elapsed() >= max,
        "sink closed before the requested bytes arrived: {:?}",
        t.elapsed()
    );
    assert_eq!(f.requests("bandwidth"), 2.0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_source_sends_exactly_the_requested_bytes() {
    let f = Fixture::default4().await;
    for n in [(3u64 << 20) + 17, 1] {
        let (mut s, status) = burst(&f, Mode::Source, n, Duration::from_secs(1));
        assert_eq!(status, Status::Ok);
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("burst until EOF");
        assert_eq!(got.len() as u64, n);
        // The source frees its one burst once it sees the prober close,
        // after the prober saw the end of the data: wait for that before
        // the next request, or it is refused as busy.
        drop(s);
        f.wait_value("bandwidth connections", 0.0, |f| f.connections("bandwidth"));
    }
    assert_eq!(f.requests("bandwidth"), 2.0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_refuses_a_second_concurrent_burst() {
    let f = Fixture::default4().await;
    // A sink burst whose data never comes: it runs until its deadline.
    let (mut first, status) = burst(&f, Mode::Sink, 1000, Duration::from_secs(1));
    assert_eq!(status, Status::Ok);
    for mode in [Mode::Sink, Mode::Source] {
        let (mut s, status) = burst(&f, mode, 10, Duration::from_millis(100));
        assert_eq!(status, Status::Busy, "{mode:?}");
        assert_closed(&mut s, "after Busy");
    }
    assert_eq!(f.rejected("bandwidth", "busy"), 2.0);
    // Finishing the first burst frees the responder (before it closes).
    first.write_all(&[0u8; 1000]).expect("send");
    assert_closed(&mut first, "sink after its burst");
    let (_next, status) = burst(&f, Mode::Sink, 1, Duration::from_millis(500));
    assert_eq!(status, Status::Ok);
    f.wait_value("only the new burst open", 1.0, |f| {
        f.connections("bandwidth")
    });
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_rejects_over_limit_and_malformed_requests() {
    let f = Fixture::default4().await;
    let limits = ResponderSettings::default();
    let second = Duration::from_secs(1);
    for (bytes, max) in [
        (limits.max_burst_bytes + 1, second),
        (0, second),
        (1, limits.max_burst_duration + Duration::from_millis(1)),
        (1, Duration::ZERO),
    ] {
        let (mut s, status) = burst(&f, Mode::Source, bytes, max);
        assert_eq!(status, Status::OverLimit, "{bytes} bytes in {max:?}");
        assert_closed(&mut s, "after OverLimit");
    }
    assert_eq!(f.rejected("bandwidth", "over_limit"), 4.0);

    // Connecting and closing without a request is not counted.
    let mut s = tcp_client(f.addr(f.ports.bandwidth));
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_closed(&mut s, "an empty connection");
    assert_eq!(f.rejected("bandwidth", "malformed"), 0.0);

    // Bad magic, and a request cut short.
    let mut bad = signed(Mode::Sink, 1, second);
    bad[0] = b'X';
    for msg in [&bad[..], &bad[..10]] {
        let mut s = tcp_client(f.addr(f.ports.bandwidth));
        s.write_all(msg).expect("request");
        s.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(read_status(&mut s), Status::Malformed);
        assert_closed(&mut s, "after Malformed");
    }
    assert_eq!(f.rejected("bandwidth", "malformed"), 2.0);
    assert_eq!(f.requests("bandwidth"), 0.0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_source_requests_get_no_data() {
    let f = Fixture::default4().await;
    let second = Duration::from_secs(1);
    let req = bw::Request {
        mode: Mode::Source,
        bytes: 1 << 20,
        max_duration: second,
    };
    let run = run_keys().current().expect("key");
    let stranger = KeySet::random().expect("key");
    let mut tampered = signed(Mode::Source, 1, second);
    // Ask for more than was signed.
    tampered[15] = 0xff;
    let fresh = req.encode(&seal_aged(Duration::ZERO), &*run);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "another key",
            req.encode(&seal_aged(Duration::ZERO), &stranger).to_vec(),
        ),
        (
            "31 s old",
            req.encode(&seal_aged(Duration::from_secs(31)), &*run)
                .to_vec(),
        ),
        ("tampered", tampered.to_vec()),
        ("no MAC", {
            let mut m = fresh;
            m[bw::SIGNED_LEN..].fill(0);
            m.to_vec()
        }),
    ];
    for (what, msg) in &cases {
        let (mut s, status) = send_request(&f, msg);
        assert_eq!(status, Status::Unauthenticated, "{what}");
        // Not a single byte of burst data follows the refusal.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{what}: {} bytes of data", rest.len());
    }
    // The genuine request runs once; its replay is refused.
    let (mut s, status) = send_request(&f, &fresh);
    assert_eq!(status, Status::Ok);
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("burst until EOF");
    assert_eq!(got.len(), 1 << 20);
    let (mut s, status) = send_request(&f, &fresh);
    assert_eq!(status, Status::Unauthenticated, "replayed");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "replay got {} bytes", rest.len());
    assert_eq!(f.rejected("bandwidth", "unauthenticated"), 5.0);
    assert_eq!(f.requests("bandwidth"), 1.0);
    f.stop().await;
}

// === HTTP ===

/// Sends one request and reads one response: (status, content-length, body).
fn http_exchange(s: &mut TcpStream, method: &str) -> (u16, Option<usize>, Vec<u8>) {
    write!(s, "{method} /some/path HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("response");
        assert_ne!(n, 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(&buf).expect("parse") {
            let code = resp.code.expect("code");
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .expect("utf8")
                        .parse::<usize>()
                        .expect("number")
                });
            let mut body = buf.split_off(head);
            let want = len.expect("content-length");
            while body.len() < want {
                let n = s.read(&mut chunk).expect("body");
                assert_ne!(n, 0, "connection closed mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(body.len(), want, "no bytes beyond Content-Length");
            return (code, len, body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_serves_a_fixed_body_with_keep_alive() {
    let f = Fixture::default4().await;
    let mut s = tcp_client(f.addr(f.ports.http));
    for _ in 0..2 {
        let (code, len, body) = http_exchange(&mut s, "GET");
        assert_eq!((code, len, body.len()), (200, Some(612), 612));
    }
    // Same connection: keep-alive held.
    let (code, _, _) = http_exchange(&mut s, "POST");
    assert_eq!(code, 405);
    f.wait_value("http requests", 2.0, |f| f.requests("http"));
    assert_eq!(f.rejected("http", "malformed"), 1.0);
    assert_eq!(f.connections("http"), 1.0);
    drop(s);
    f.wait_value("http connections", 0.0, |f| f.connections("http"));

    let g = Fixture::start(
        LOCAL4,
        ResponderSettings {
            http_body_bytes: 5,
            ..Default::default()
        },
    )
    .await;
    let mut s = tcp_client(g.addr(g.ports.http));
    let (code, len, body) = http_exchange(&mut s, "GET");
    assert_eq!((code, len, body.len()), (200, Some(5), 5));
    g.stop().await;
    f.stop().await;
}

// === Shutdown ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_everything_and_frees_the_ports() {
    let f = Fixture::default4().await;
    let ports = f.ports;
    // Leave work in flight: an echo connection, a keep-alive HTTP
    // connection and a burst waiting for data.
    let mut echo = tcp_client(f.addr(ports.tcp_echo));
    tcp_round_trip(&mut echo, 1);
    let mut web = tcp_client(f.addr(ports.http));
    assert_eq!(http_exchange(&mut web, "GET").0, 200);
    let (mut sink, status) = burst(&f, Mode::Sink, 1 << 20, Duration::from_secs(1));
    assert_eq!(status, Status::Ok);

    let t = Instant::now();
    f.stop().await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_closed(&mut echo, "echo connection at shutdown");
    assert_closed(&mut web, "http connection at shutdown");
    assert_closed(&mut sink, "burst at shutdown");
    for port in [ports.tcp_echo, ports.bandwidth, ports.http] {
        let e = TcpStream::connect(SocketAddr::new(LOCAL4, port)).expect_err("port closed");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "port {port}");
    }
    UdpSocket::bind(SocketAddr::new(LOCAL4, ports.udp_echo)).expect("udp port released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_bind_error() {
    let taken = std::net::TcpListener::bind(SocketAddr::new(LOCAL4, 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let metrics = AgentMetrics::new(Registry::new()).expect("metrics");
    let ports = ProbePorts {
        udp_echo: 0,
        tcp_echo: 0,
        bandwidth: 0,
        http: port,
    };
    let err = responder::start(
        LOCAL4,
        ports,
        ResponderSettings::default(),
        Arc::new(run_keys()),
        metrics,
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("bind must fail");
    assert!(
        matches!(err, responder::ResponderError::Bind { what: "http", .. }),
        "{err}"
    );
}
