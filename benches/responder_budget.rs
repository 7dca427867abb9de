//! Cost of the per-source budget on the UDP echo's hot path, against the
//! reference the echo pays anyway for every packet: one loopback
//! `send_to` + `recv_from` pair. Prints ns per operation and the ratio.
//!
//! `cargo bench --bench responder_budget`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use kubepulse::responder::budget::{Rate, TokenBuckets, DEFAULT_MAX_SOURCES};

const N: u32 = 200_000;

fn per_op(d: Duration, n: u32) -> f64 {
    d.as_nanos() as f64 / f64::from(n)
}

fn main() {
    // `cargo test --all-targets` also runs bench targets; only measure when
    // started by `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("responder_budget: skipped (run with cargo bench)");
        return;
    }
    // Reference: a datagram through loopback, sent and received.
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = rx.local_addr().expect("addr");
    let msg = [0u8; 64];
    let mut buf = [0u8; 2048];
    let t = Instant::now();
    for _ in 0..N {
        tx.send_to(&msg, to).expect("send");
        let _ = rx.recv_from(&mut buf).expect("recv");
    }
    let reference = per_op(t.elapsed(), N);

    // The budget of one tracked source, always within budget.
    let now = Instant::now();
    let mut b = TokenBuckets::new(Rate::new(1e12, 1.0), DEFAULT_MAX_SOURCES, now);
    let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let t = Instant::now();
    for _ in 0..N {
        black_box(b.take(black_box(src), 1.0, Instant::now()));
    }
    let allowed = per_op(t.elapsed(), N);

    // A flooding source, refused every time.
    let mut b = TokenBuckets::new(Rate::new(1.0, 1.0), DEFAULT_MAX_SOURCES, now);
    let t = Instant::now();
    for _ in 0..N {
        black_box(b.take(black_box(src), 1.0, Instant::now()));
    }
    let refused = per_op(t.elapsed(), N);

    // A full table of tracked sources, each looked up in turn.
    let mut b = TokenBuckets::new(Rate::new(1e12, 1.0), DEFAULT_MAX_SOURCES, now);
    let ips: Vec<IpAddr> = (0..DEFAULT_MAX_SOURCES as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let t = Instant::now();
    for i in 0..N as usize {
        let ip = ips[i % ips.len()];
        black_box(b.take(black_box(ip), 1.0, Instant::now()));
    }
    let full = per_op(t.elapsed(), N);

    println!("loopback send_to+recv_from (reference): {reference:8.1} ns/packet");
    for (what, ns) in [
        ("budget, tracked source, allowed", allowed),
        ("budget, flooding source, refused", refused),
        ("budget, 4096 sources tracked", full),
    ] {
        println!(
            "{what:<34}: {ns:8.1} ns/packet = {:5.1} % of the reference",
            100.0 * ns / reference
        );
    }
}
