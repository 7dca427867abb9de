//! A userspace delay line: two TUN devices in two namespaces, and one FIFO
//! per direction that holds every packet until `arrival + d`.
//!
//! The kernel here has no netem, so this is how the lab injects a known
//! one-way delay. One thread serves both directions: it reads each packet
//! as soon as a TUN wakes it, stamps it with its due time (CLOCK_MONOTONIC
//! read + d) and queues it; it waits for the next due time or the next
//! packet with ppoll (1 ns timer slack) until 100 us before, then spins
//! (still reading arrivals without blocking) and writes the packet to the
//! other TUN. With d = 0 it writes at once.
//!
//! After every write the thread stays awake (yielding the CPU to any
//! runnable thread, so it never delays the probes) for `HOT_NS`, so the reply to a
//! forwarded request is picked up without a CPU idle exit whether or not a
//! delay is set: the base RTT(0) and RTT(d) then pay the same wake-ups, and
//! RTT(d) - RTT(0) is 2d rather than 2d minus an idle-exit latency. Due
//! times never decrease, so order is kept even when d changes at run time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::sys;

/// Sleep to this far before the due time, then spin: a timer wake-up is
/// tens of us late on a busy 2-vCPU VM, the spin absorbs that.
const SPIN_NS: u64 = 100_000;
/// How long the thread stays awake (yielding) after a write: a reply over
/// veth comes back within ~50 us, a user-space TCP echo within ~150 us.
const HOT_NS: u64 = 200_000;
/// How often an idle thread looks at the stop flag.
const STOP_POLL_NS: u64 = 20_000_000;

/// A running delay line; dropping it stops its thread and closes the TUN
/// devices (which removes them).
pub struct DelayLine {
    delay_ns: Arc<AtomicU64>,
    packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn open_in(ns: &str, ifname: &str) -> io::Result<File> {
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    // A throwaway thread enters the namespace, so no other thread of the
    // test process changes namespace; the fd stays bound to that netns.
    std::thread::spawn(move || {
        sys::enter_netns(&ns)?;
        sys::open_tun(&ifname)
    })
    .join()
    .map_err(|_| io::Error::other("TUN opener thread panicked"))?
}

/// One direction: packets read from `from`, held, written to `to`.
struct Lane {
    from: File,
    to: File,
    queue: VecDeque<(u64, Vec<u8>)>,
    last_due: u64,
}

impl Lane {
    /// Writes every packet that is due; returns whether any was written.
    fn flush(&mut self, now: u64) -> bool {
        let mut wrote = false;
        while self.queue.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, pkt)) = self.queue.pop_front() {
                // A full queue or a device that is down drops the packet,
                // as a link would.
                let _ = self.to.write(&pkt);
                wrote = true;
            }
        }
        wrote
    }

    /// Reads every packet that is ready. Returns (packets read, any written
    /// at once), or an error when the device is gone.
    fn drain(&mut self, buf: &mut [u8], delay_ns: u64) -> io::Result<(u64, bool)> {
        let (mut n_read, mut wrote) = (0, false);
        loop {
            match self.from.read(buf) {
                Ok(n) => {
                    n_read += 1;
                    if delay_ns == 0 && self.queue.is_empty() {
                        let _ = self.to.write(&buf[..n]);
                        wrote = true;
                        continue;
                    }
                    let due = (sys::mono_ns() + delay_ns).max(self.last_due);
                    self.last_due = due;
                    self.queue.push_back((due, buf[..n].to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((n_read, wrote)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl DelayLine {
    /// Creates TUN `ifname` in `ns_a` and in `ns_b` and starts forwarding
    /// between them with zero delay.
    pub fn start(ns_a: &str, ns_b: &str, ifname: &str) -> io::Result<DelayLine> {
        let a = open_in(ns_a, ifname)?;
        let b = open_in(ns_b, ifname)?;
        sys::set_nonblocking(&a)?;
        sys::set_nonblocking(&b)?;
        let lanes = [
            Lane {
                from: a.try_clone()?,
                to: b.try_clone()?,
                queue: VecDeque::new(),
                last_due: 0,
            },
            Lane {
                from: b,
                to: a,
                queue: VecDeque::new(),
                last_due: 0,
            },
        ];
        let delay_ns = Arc::new(AtomicU64::new(0));
        let packets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, p, s) = (delay_ns.clone(), packets.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("delayline".into())
            .spawn(move || run(lanes, &d, &p, &s))?;
        Ok(DelayLine {
            delay_ns,
            packets,
            stop,
            thread: Some(thread),
        })
    }

    /// Sets the one-way delay of both directions (applies to packets that
    /// arrive from now on).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ns.store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Packets carried so far, both directions.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }
}

fn run(mut lanes: [Lane; 2], delay: &AtomicU64, packets: &AtomicU64, stop: &AtomicBool) {
    sys::set_timer_slack_1ns();
    let mut buf = vec![0u8; 65536];
    let mut hot_until = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = sys::mono_ns();
        for lane in lanes.iter_mut() {
            if lane.flush(now) {
                hot_until = now + HOT_NS;
            }
        }
        let next_due = lanes
            .iter()
            .filter_map(|l| l.queue.front().map(|(due, _)| *due))
            .min();
        let wait = next_due.map_or(STOP_POLL_NS, |due| due.saturating_sub(now));
        if now >= hot_until && wait > SPIN_NS {
            let [l0, l1] = &lanes;
            if sys::wait_readable_ns(&[&l0.from, &l1.from], wait - SPIN_NS).is_err() {
                return;
            }
        }
        let d = delay.load(Ordering::Relaxed);
        let mut any = false;
        for lane in lanes.iter_mut() {
            match lane.drain(&mut buf, d) {
                Ok((n, wrote)) => {
                    packets.fetch_add(n, Ordering::Relaxed);
                    any |= n > 0;
                    if wrote {
                        hot_until = sys::mono_ns() + HOT_NS;
                    }
                }
                Err(_) => return,
            }
        }
        if !any {
            if wait <= SPIN_NS {
                // Due soon: spin for precision.
                std::hint::spin_loop();
            } else {
                // Only keeping the CPU out of idle: let any runnable thread
                // (the probe, the responder) have it first.
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
