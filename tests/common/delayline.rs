//! A userspace delay line: two TUN devices in two namespaces, and one FIFO
//! per direction that holds every packet until `arrival + d`.
//!
//! The kernel here has no netem, so this is how the lab injects a known
//! one-way delay. One thread per direction reads each packet as soon as the
//! source TUN wakes it, stamps it with its due time (CLOCK_MONOTONIC read +
//! d) and queues it; it waits for the next due time or the next packet with
//! ppoll (1 ns timer slack) until ~100 us before, then spins (still reading
//! arrivals without blocking) and writes the packet to the other TUN.
//! With d = 0 the same thread writes at once, so the base path has exactly
//! the wake-ups of the delayed path and RTT(d) - RTT(0) is 2d, not 2d minus
//! a hand-off latency. Due times never decrease, so order is kept even when
//! the delay changes at run time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::sys;

/// Sleep to this far before the due time, then spin: a timer wake-up is
/// ~50 us late on a busy 2-vCPU VM, the spin absorbs that.
const SPIN_NS: u64 = 100_000;
/// How often an idle thread looks at the stop flag.
const STOP_POLL_NS: u64 = 20_000_000;

/// A running delay line; dropping it stops its threads and closes the TUN
/// devices (which removes them).
pub struct DelayLine {
    delay_ns: Arc<AtomicU64>,
    packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
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

impl DelayLine {
    /// Creates TUN `ifname` in `ns_a` and in `ns_b` and starts forwarding
    /// between them with zero delay.
    pub fn start(ns_a: &str, ns_b: &str, ifname: &str) -> io::Result<DelayLine> {
        let a = open_in(ns_a, ifname)?;
        let b = open_in(ns_b, ifname)?;
        let mut dl = DelayLine {
            delay_ns: Arc::new(AtomicU64::new(0)),
            packets: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let (a2, b2) = (a.try_clone()?, b.try_clone()?);
        dl.direction(a, b2)?;
        dl.direction(b, a2)?;
        Ok(dl)
    }

    fn direction(&mut self, from: File, mut to: File) -> io::Result<()> {
        sys::set_nonblocking(&from)?;
        let (delay, stop, packets) = (
            self.delay_ns.clone(),
            self.stop.clone(),
            self.packets.clone(),
        );
        let mut from = from;
        self.threads
            .push(
                std::thread::Builder::new()
                    .name("delayline".into())
                    .spawn(move || {
                        sys::set_timer_slack_1ns();
                        let mut queue: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
                        let mut last_due = 0u64;
                        let mut buf = vec![0u8; 65536];
                        while !stop.load(Ordering::Relaxed) {
                            let now = sys::mono_ns();
                            while queue.front().is_some_and(|(due, _)| *due <= now) {
                                if let Some((_, pkt)) = queue.pop_front() {
                                    // A full queue or a device that is down
                                    // drops the packet, as a link would.
                                    let _ = to.write(&pkt);
                                }
                            }
                            let wait = match queue.front() {
                                Some((due, _)) => due.saturating_sub(now),
                                None => STOP_POLL_NS,
                            };
                            if wait > SPIN_NS {
                                match sys::poll_readable_ns(&from, wait - SPIN_NS) {
                                    Ok(true) => {}
                                    Ok(false) => continue,
                                    Err(_) => return,
                                }
                            }
                            // Drain every packet that is ready; in the spin
                            // phase this is a non-blocking check per turn.
                            loop {
                                match from.read(&mut buf) {
                                    Ok(n) => {
                                        let d = delay.load(Ordering::Relaxed);
                                        packets.fetch_add(1, Ordering::Relaxed);
                                        if d == 0 && queue.is_empty() {
                                            let _ = to.write(&buf[..n]);
                                            continue;
                                        }
                                        let due = (sys::mono_ns() + d).max(last_due);
                                        last_due = due;
                                        queue.push_back((due, buf[..n].to_vec()));
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                                    Err(_) => return,
                                }
                            }
                            if wait <= SPIN_NS {
                                std::hint::spin_loop();
                            }
                        }
                    })?,
            );
        Ok(())
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

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
