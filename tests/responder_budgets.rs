//! Per-source budgets of the responders under a flood, over loopback: one
//! hostile source address (127.0.0.2) floods in bounded loops while a
//! legitimate prober from another address (127.0.0.3) keeps working. The
//! caps hold (checked on the wire and in the responders' own counters), the
//! prober loses under 1 %, and the process's RSS stays bounded.
//!
//! Linux routes all of 127.0.0.0/8 to loopback, so no namespace is needed.
//! A test binary of its own: it measures the whole process's RSS, which
//! tests running beside it would grow.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubepulse::auth::BurstKeys;
use kubepulse::config::ResponderSettings;
use kubepulse::metrics::AgentMetrics;
use kubepulse::peer::ProbePorts;
use kubepulse::proto::bandwidth::{self as bw, Mode, Seal, Status};
use kubepulse::proto::echo::{self, EchoHeader, Kind};
use kubepulse::responder::{self, Responders};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const HOSTILE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PROBER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    responders: Option<Responders>,
    ports: ProbePorts,
    metrics: AgentMetrics,
    stop: CancellationToken,
}

impl Fixture {
    async fn start(limits: ResponderSettings) -> Self {
        let metrics = AgentMetrics::new(Registry::new()).expect("metrics");
        let stop = CancellationToken::new();
        let any = ProbePorts {
            udp_echo: 0,
            tcp_echo: 0,
            bandwidth: 0,
            http: 0,
        };
        // The process's run key: the requests below are signed with it.
        let keys = Arc::new(BurstKeys::new(None).expect("run key"));
        let r = responder::start(SERVER, any, limits, keys, metrics.clone(), stop.clone())
            .await
            .expect("responders start");
        Self {
            ports: r.ports(),
            responders: Some(r),
            metrics,
            stop,
        }
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(SERVER, port)
    }

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

    fn rejected(&self, responder: &str, reason: &str) -> f64 {
        self.value(
            "kubepulse_responder_rejected_total",
            &[("responder", responder), ("reason", reason)],
        )
    }

    fn requests(&self, responder: &str) -> f64 {
        self.value(
            "kubepulse_responder_requests_total",
            &[("responder", responder)],
        )
    }

    async fn stop(mut self) {
        self.stop.cancel();
        let r = self.responders.take().expect("running");
        tokio::time::timeout(WAIT, r.join())
            .await
            .expect("responders stop within the deadline");
    }
}

fn request(seq: u64) -> Vec<u8> {
    let mut buf = vec![0u8; echo::HEADER_LEN];
    EchoHeader {
        seq,
        stream: 0x5eed,
        tx_mono_ns: 1,
        tx_real_ns: 1,
        ..Default::default()
    }
    .encode_request(&mut buf)
    .expect("fits");
    buf
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Sends echo requests from `HOSTILE` at up to `pps` for `duration` (a
/// bounded loop), draining replies; returns (sent, replies received).
fn flood_udp(target: SocketAddr, pps: u64, duration: Duration) -> (u64, u64) {
    let s = UdpSocket::bind(SocketAddr::new(HOSTILE, 0)).expect("hostile bind");
    s.set_nonblocking(true).expect("nonblocking");
    let msg = request(1);
    let mut buf = [0u8; 2048];
    let (mut sent, mut replies) = (0u64, 0u64);
    let t0 = Instant::now();
    // Paced in 1 ms ticks, so the rate is bounded whatever the machine.
    let per_tick = (pps / 1000).max(1);
    let mut tick = 0u64;
    while t0.elapsed() < duration {
        for _ in 0..per_tick {
            match s.send_to(&msg, target) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("hostile send: {e}"),
            }
        }
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if n == echo::HEADER_LEN {
                replies += 1;
            }
        }
        tick += 1;
        let next = t0 + Duration::from_millis(tick);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    // Late replies.
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        match s.recv_from(&mut buf) {
            Ok((n, _)) if n == echo::HEADER_LEN => replies += 1,
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    (sent, replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_caps_a_flooding_source_and_keeps_answering_others() {
    const RATE: u32 = 500;
    let limits = ResponderSettings {
        udp_packets_per_second_per_source: RATE,
        ..Default::default()
    };
    let f = Fixture::start(limits).await;
    let target = f.addr(f.ports.udp_echo);
    let rss_before = rss_bytes();
    let flood_for = Duration::from_secs(2);
    let t0 = Instant::now();
    let flood = std::thread::spawn(move || flood_udp(target, 50_000, flood_for));

    // The legitimate prober: 100 requests a second, each waiting for its reply.
    let p = UdpSocket::bind(SocketAddr::new(PROBER, 0)).expect("prober bind");
    p.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (mut probes, mut answered) = (0u64, 0u64);
    let mut buf = [0u8; 2048];
    while t0.elapsed() < flood_for {
        probes += 1;
        p.send_to(&request(probes), target).expect("prober send");
        // Until our reply, or the timeout (a loss).
        while let Ok((n, _)) = p.recv_from(&mut buf) {
            let got = buf.get(..n).and_then(|b| EchoHeader::decode(b).ok());
            if let Some((Kind::Reply, h)) = got {
                if h.seq == probes {
                    answered += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (sent, hostile_replies) = flood.join().expect("flood thread");
    let elapsed = t0.elapsed().as_secs_f64();
    let rss_after = rss_bytes();

    let lost = probes - answered;
    println!(
        "hostile sent {sent}, answered {hostile_replies}; prober {answered}/{probes} answered; \
         rejected source_rate {}; RSS {} -> {} KiB",
        f.rejected("udp_echo", "source_rate"),
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(sent > 20 * u64::from(RATE), "the flood was a flood: {sent}");
    // The cap holds: one second's burst plus the rate over the whole run.
    let cap = f64::from(RATE) * (1.0 + elapsed);
    assert!(
        (hostile_replies as f64) <= cap,
        "{hostile_replies} replies > cap {cap}"
    );
    assert!(
        f.requests("udp_echo") <= cap + probes as f64,
        "answered {} > cap {cap} + prober {probes}",
        f.requests("udp_echo")
    );
    assert!(
        hostile_replies > 0,
        "the hostile source still gets its budget"
    );
    assert!(
        f.rejected("udp_echo", "source_rate") >= (sent as f64) * 0.5,
        "most of the flood is refused and counted"
    );
    // The prober keeps its loss under 1 %.
    assert!(probes >= 100, "{probes}");
    assert!(
        (lost as f64) < 0.01 * probes as f64,
        "prober lost {lost} of {probes}"
    );
    // RSS bounded: no per-packet allocation survives the flood.
    assert!(
        rss_after < rss_before + 16 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss_after}"
    );
    f.stop().await;
}

fn connect_from(ip: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// One echo round trip; false if the responder closed the connection.
fn round_trip(s: &mut TcpStream, seq: u64) -> bool {
    if s.write_all(&request(seq)).is_err() {
        return false;
    }
    let mut reply = [0u8; echo::HEADER_LEN];
    match s.read_exact(&mut reply) {
        Ok(()) => matches!(EchoHeader::decode(&reply), Ok((Kind::Reply, h)) if h.seq == seq),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_caps_connections_per_source() {
    const PER_SOURCE: usize = 8;
    let limits = ResponderSettings {
        max_connections: 64,
        max_connections_per_source: PER_SOURCE,
        tcp_connections_per_second_per_source: 20,
        ..Default::default()
    };
    let f = Fixture::start(limits).await;
    let target = f.addr(f.ports.tcp_echo);
    // The hostile source opens 200 connections as fast as it can (bounded
    // loop) and holds them all: more than the responder's whole limit.
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = connect_from(HOSTILE, target) {
            held.push(s);
        }
    }
    // Each held connection is served only if the responder kept it.
    let mut served = 0;
    for (i, s) in held.iter_mut().enumerate() {
        if round_trip(s, i as u64 + 1) {
            served += 1;
        }
    }
    println!(
        "hostile held {} connections, {served} served; rejected source_rate {}, source_connections {}",
        held.len(),
        f.rejected("tcp_echo", "source_rate"),
        f.rejected("tcp_echo", "source_connections")
    );
    assert!(served >= 1, "the hostile source still gets its share");
    assert!(served <= PER_SOURCE, "{served} > {PER_SOURCE} per source");
    let refused =
        f.rejected("tcp_echo", "source_rate") + f.rejected("tcp_echo", "source_connections");
    assert_eq!(
        refused as usize + served,
        held.len(),
        "every other connection was refused and counted"
    );
    assert_eq!(f.rejected("tcp_echo", "connection_limit"), 0.0);
    // The prober from another address is served at once.
    let mut p = connect_from(PROBER, target).expect("prober connects");
    for seq in 1..=100 {
        assert!(round_trip(&mut p, seq), "prober round trip {seq}");
    }
    // Closing frees the source's share: it may connect again (once the
    // rate budget has refilled a token).
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = connect_from(HOSTILE, target).expect("connect");
        if round_trip(&mut s, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the source never got a slot back"
        );
        std::thread::sleep(Duration::from_millis(60));
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_bytes_per_minute_are_capped_per_source() {
    const MIB: u64 = 1 << 20;
    let limits = ResponderSettings {
        max_burst_bytes: MIB,
        bandwidth_bytes_per_minute_per_source: 3 * MIB,
        ..Default::default()
    };
    let f = Fixture::start(limits).await;
    let target = f.addr(f.ports.bandwidth);
    let once = |from: IpAddr| -> Status {
        let mut s = connect_from(from, target).expect("connect");
        let req = bw::Request {
            mode: Mode::Source,
            bytes: MIB,
            max_duration: Duration::from_secs(1),
        };
        let keys = BurstKeys::new(None).expect("run key");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        let seal = Seal {
            timestamp_ms: u64::try_from(now.as_millis()).expect("ms"),
            nonce: rand::random(),
        };
        let msg = req.encode(&seal, &*keys.current().expect("key"));
        s.write_all(&msg).expect("request");
        let mut r = [0u8; bw::RESPONSE_LEN];
        s.read_exact(&mut r).expect("response");
        let status = Status::decode(&r).expect("status");
        if status == Status::Ok {
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).expect("burst data");
            assert_eq!(sink.len() as u64, MIB);
        }
        status
    };
    // The previous burst may still be winding down (busy is not charged).
    let burst = |from: IpAddr| -> Status {
        let deadline = Instant::now() + WAIT;
        loop {
            let st = once(from);
            if st != Status::Busy || Instant::now() > deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Three 1 MiB bursts fit in 3 MiB a minute; the fourth does not.
    for i in 0..3 {
        assert_eq!(burst(HOSTILE), Status::Ok, "burst {i}");
    }
    assert_eq!(burst(HOSTILE), Status::OverLimit);
    assert_eq!(f.rejected("bandwidth", "source_bytes"), 1.0);
    // Another source has its own budget.
    assert_eq!(burst(PROBER), Status::Ok);
    assert_eq!(f.requests("bandwidth"), 4.0);
    f.stop().await;
}
