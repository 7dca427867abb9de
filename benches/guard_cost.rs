//! Cost of the burst guard's question, asked once per latency probe
//! outcome: ns per `exclude` call outside any burst window (the common
//! case), inside a window (lock and cached lookup of the slot's busy
//! nodes), and for reference one wall-clock read, which every probe
//! already does at least twice.
//!
//! Run: `cargo bench --bench guard_cost`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubepulse::peer::AgentKind;
use kubepulse::peer::{Identity, Peer, ProbePorts};
use kubepulse::probe::burst_guard::{BurstGuard, BurstWindows};
use kubepulse::probe::guard::SampleGuard;
use kubepulse::schedule::computed::ComputedSchedule;
use kubepulse::schedule::slots::SlotConfig;
use tokio::sync::watch;

const CALLS: u64 = 2_000_000;

fn per_call(mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..CALLS {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("guard_cost: skipped (run with cargo bench)");
        return;
    }
    // 200 peer nodes, default schedule (5 s slots, 1 % duty budget).
    let peers: Vec<Peer> = (0..200)
        .map(|i| Peer {
            name: format!("host-{i}"),
            address: "127.0.0.1".parse().expect("ip"),
            node: format!("node-{i:04}"),
            kind: AgentKind::Host,
            ports: ProbePorts::default(),
            path: None,
        })
        .collect();
    let me = Identity {
        name: "host-me".into(),
        node: "node-me".into(),
        kind: AgentKind::Host,
    };
    let cfg = SlotConfig::default();
    let (_tx, rx) = watch::channel(Arc::new(peers));
    let busy = Arc::new(ComputedSchedule::new(me.clone(), rx, cfg));
    let ms = Duration::from_millis;
    let windows = BurstWindows::new(cfg.slot, &[ms(0), cfg.slot / 2], ms(600), ms(100));
    let guard = BurstGuard::new(busy, me.node.clone(), windows);
    let slot_ns = 5_000_000_000u64;
    let base = 1_000_000 * slot_ns;
    // Outside: 1-2 s into a slot (between the windows).
    let outside = per_call(|i| {
        let sent = base + (i % 1000) * slot_ns + 1_000_000_000 + (i % 7) * 1_000;
        black_box(guard.exclude(black_box("node-0007"), sent, sent + 300_000));
    });
    // Inside: 10 ms into a slot, a few slots in turn (cache hits).
    let inside = per_call(|i| {
        let sent = base + (i % 3) * slot_ns + 10_000_000;
        black_box(guard.exclude(black_box("node-0007"), sent, sent + 300_000));
    });
    let clock = per_call(|_| {
        black_box(SystemTime::now().duration_since(UNIX_EPOCH).ok());
    });
    println!("| call | ns per call | / one wall-clock read |");
    println!("|---|---|---|");
    for (name, ns) in [
        ("exclude, outside every window", outside),
        ("exclude, inside a window", inside),
        ("SystemTime::now (reference)", clock),
    ] {
        println!("| {name} | {ns:.1} | **{:.2}** |", ns / clock);
    }
}
