//! One probe stream: a (target, protocol) pair with its schedule, probes in
//! flight and running statistics. No IO and no metrics: the engine sends and
//! receives, the stream keeps the books and hands every result to one
//! [`Sink`] as an [`Event`] (the engine's sink writes Prometheus handles,
//! the unit tests below collect them).
//!
//! A probe is booked once, when its outcome is known (reply or loss), after
//! asking the [`SampleGuard`]: a kept probe yields exactly one
//! [`Event::Reply`] or [`Event::Lost`] (each stands for one probe sent), an
//! excluded one only [`Event::Excluded`]. So `sent − lost` is the number of
//! kept replies at every scrape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::labels::{ExcludeReason, ProbeErrorReason, Protocol};

use crate::peer::PathKind;
use crate::probe::guard::SampleGuard;
use crate::schedule::Periodic;
use crate::stats::{clock_offset, kernel_rtt, InFlight, Jitter, Match, WindowedMin};

/// What was recorded just before a probe left.
#[derive(Debug, Clone, Copy)]
pub(super) struct SendStamp {
    /// Monotonic clock.
    pub mono: Instant,
    /// Wall clock, ns since the epoch (kernel RX stamps are on this clock).
    pub real_ns: u64,
}

/// How a reply was timed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arrival {
    /// Kernel RX stamp (REALTIME) plus both clocks read when processed.
    Kernel {
        rx_real_ns: u64,
        now_real_ns: u64,
        now_mono: Instant,
    },
    /// Monotonic clock right after the read returned.
    Mono(Instant),
}

impl Arrival {
    /// Monotonic time of the read.
    pub(super) fn read_at(&self) -> Instant {
        match self {
            Arrival::Kernel { now_mono, .. } => *now_mono,
            Arrival::Mono(at) => *at,
        }
    }
}

/// A result of a stream's books, for the sink.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Event {
    /// A probe was sent and answered, and kept.
    Reply {
        /// Its round-trip time.
        rtt: Duration,
        /// The stream's RFC 3550 jitter after this sample.
        jitter: Duration,
        /// The stream's windowed minimum RTT after this sample.
        rtt_min: Duration,
    },
    /// A probe was sent and lost (timeout, overflow or failed send), and
    /// kept.
    Lost,
    /// A probe's outcome was kept out of the statistics.
    Excluded(ExcludeReason),
    /// Something that is not a loss went wrong.
    Error(ProbeErrorReason),
    /// The min-delay filtered clock offset of the peer, seconds.
    ClockOffset(f64),
}

/// Where a stream's events go.
pub(super) trait Sink {
    /// Takes one event of one stream.
    fn event(&mut self, ev: Event);
}

impl Sink for Vec<Event> {
    fn event(&mut self, ev: Event) {
        self.push(ev);
    }
}

/// The books of one stream.
pub(super) struct Stream {
    pub protocol: Protocol,
    pub path: PathKind,
    pub id: u64,
    pub schedule: Periodic,
    timeout: Duration,
    peer_node: Arc<str>,
    next_seq: u64,
    inflight: InFlight<SendStamp>,
    jitter: Jitter,
    rtt_min: WindowedMin,
    /// Min-delay clock filter: (round trip, offset) in ns; the exchange with
    /// the smallest round trip bounds the offset most tightly.
    clock: WindowedMin<(u64, i64)>,
}

/// The responder's wall-clock receive and send times from an echo reply.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResponderTimes {
    pub rx_real_ns: u64,
    pub reply_real_ns: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stream {
    /// A new stream sending on `schedule`.
    pub(super) fn new(
        protocol: Protocol,
        path: PathKind,
        peer_node: Arc<str>,
        schedule: Periodic,
        timeout: Duration,
        rtt_min_window: Duration,
    ) -> Self {
        Self {
            protocol,
            path,
            // Random so replies to a previous engine or a removed target
            // cannot be mistaken for ours.
            id: rand::random(),
            schedule,
            timeout,
            peer_node,
            next_seq: 0,
            inflight: InFlight::new(),
            jitter: Jitter::new(),
            rtt_min: WindowedMin::new(rtt_min_window),
            clock: WindowedMin::new(rtt_min_window),
        }
    }

    /// The sequence number of the next probe.
    pub(super) fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Records a probe that left; it is booked when its outcome is known.
    pub(super) fn sent(
        &mut self,
        seq: u64,
        stamp: SendStamp,
        guard: &dyn SampleGuard,
        sink: &mut dyn Sink,
    ) {
        if let Some(old) = self.inflight.push(seq, stamp.mono + self.timeout, stamp) {
            self.book_loss(old, guard, sink);
        }
    }

    /// Books a probe whose send failed: a loss (unless excluded) and an
    /// error.
    pub(super) fn send_failed(
        &mut self,
        stamp: SendStamp,
        guard: &dyn SampleGuard,
        sink: &mut dyn Sink,
    ) {
        match guard.exclude(&self.peer_node, stamp.real_ns, stamp.real_ns) {
            Some(reason) => sink.event(Event::Excluded(reason)),
            None => sink.event(Event::Lost),
        }
        sink.event(Event::Error(ProbeErrorReason::SendFailed));
    }

    /// Books the probes whose timeout passed by `now` as lost.
    pub(super) fn expire(&mut self, now: Instant, guard: &dyn SampleGuard, sink: &mut dyn Sink) {
        let timeout = self.timeout;
        let peer_node = &self.peer_node;
        self.inflight.expire_each(now, |stamp| {
            Self::loss_event(peer_node, timeout, stamp, guard, sink);
        });
    }

    fn book_loss(&self, stamp: SendStamp, guard: &dyn SampleGuard, sink: &mut dyn Sink) {
        Self::loss_event(&self.peer_node, self.timeout, stamp, guard, sink);
    }

    fn loss_event(
        peer_node: &str,
        timeout: Duration,
        stamp: SendStamp,
        guard: &dyn SampleGuard,
        sink: &mut dyn Sink,
    ) {
        // A loss is known when its timeout passes.
        let done = stamp.real_ns.saturating_add(ns(timeout));
        match guard.exclude(peer_node, stamp.real_ns, done) {
            Some(reason) => sink.event(Event::Excluded(reason)),
            None => sink.event(Event::Lost),
        }
    }

    /// The earliest timeout of a probe in flight.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.inflight.next_deadline()
    }

    /// Books a reply to probe `seq`; `responder` carries the responder's
    /// wall-clock stamps when the protocol has them (UDP echo).
    pub(super) fn reply(
        &mut self,
        seq: u64,
        arrival: Arrival,
        responder: Option<ResponderTimes>,
        guard: &dyn SampleGuard,
        sink: &mut dyn Sink,
    ) {
        let stamp = match self.inflight.complete(seq) {
            Match::Answered(s) => s,
            Match::Late => return sink.event(Event::Error(ProbeErrorReason::LateReply)),
            Match::Unknown => return sink.event(Event::Error(ProbeErrorReason::BadReply)),
        };
        let (rtt, now, done_ns) = match arrival {
            Arrival::Kernel {
                rx_real_ns,
                now_real_ns,
                now_mono,
            } => {
                let real_elapsed = i128::from(now_real_ns) - i128::from(stamp.real_ns);
                let mono_elapsed = now_mono.saturating_duration_since(stamp.mono);
                match kernel_rtt(stamp.real_ns, rx_real_ns, real_elapsed, mono_elapsed) {
                    Ok(rtt) => (rtt, now_mono, rx_real_ns),
                    // Neither a reply nor a loss: the probe is not booked.
                    Err(_) => return sink.event(Event::Error(ProbeErrorReason::ClockStep)),
                }
            }
            Arrival::Mono(at) => {
                let rtt = at.saturating_duration_since(stamp.mono);
                (rtt, at, stamp.real_ns.saturating_add(ns(rtt)))
            }
        };
        if let Some(reason) = guard.exclude(&self.peer_node, stamp.real_ns, done_ns) {
            return sink.event(Event::Excluded(reason));
        }
        let jitter = self.jitter.update(rtt);
        let rtt_min = self.rtt_min.push(now, rtt);
        sink.event(Event::Reply {
            rtt,
            jitter,
            rtt_min,
        });
        if let (Arrival::Kernel { rx_real_ns, .. }, Some(r)) = (arrival, responder) {
            let t = [stamp.real_ns, r.rx_real_ns, r.reply_real_ns, rx_real_ns];
            if let Some(e) = clock_offset(t[0], t[1], t[2], t[3]) {
                let (_, offset_ns) = self.clock.push(now, (e.rtt_ns, e.offset_ns));
                // i64 ns to f64 seconds: exact well below a microsecond.
                #[allow(clippy::cast_precision_loss)]
                sink.event(Event::ClockOffset(offset_ns as f64 / 1e9));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::guard::KeepAll;
    use crate::schedule::random_below;

    const TIMEOUT: Duration = Duration::from_millis(100);

    fn stream(now: Instant) -> Stream {
        Stream::new(
            Protocol::Udp,
            PathKind::PodCrossNode,
            Arc::from("node-b"),
            Periodic::new(
                now,
                random_below(Duration::from_secs(1)),
                Duration::from_secs(1),
            ),
            TIMEOUT,
            Duration::from_secs(60),
        )
    }

    fn stamp(mono: Instant, real_ns: u64) -> SendStamp {
        SendStamp { mono, real_ns }
    }

    /// Excludes everything towards one peer node.
    struct ExcludeNode(&'static str);
    impl SampleGuard for ExcludeNode {
        fn exclude(&self, peer_node: &str, _: u64, _: u64) -> Option<ExcludeReason> {
            (peer_node == self.0).then_some(ExcludeReason::BandwidthBurst)
        }
    }

    fn count(evs: &[Event], f: impl Fn(&Event) -> bool) -> usize {
        evs.iter().filter(|e| f(e)).count()
    }

    #[test]
    fn reply_loss_late_and_unknown_become_events() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut ev = Vec::new();
        for seq in 0..3 {
            s.sent(seq, stamp(t0, 1_000), &KeepAll, &mut ev);
        }
        assert!(ev.is_empty(), "nothing is booked before an outcome");
        s.reply(
            1,
            Arrival::Mono(t0 + Duration::from_millis(2)),
            None,
            &KeepAll,
            &mut ev,
        );
        assert_eq!(
            ev,
            vec![Event::Reply {
                rtt: Duration::from_millis(2),
                jitter: Duration::ZERO,
                rtt_min: Duration::from_millis(2),
            }]
        );
        ev.clear();
        s.expire(t0 + TIMEOUT, &KeepAll, &mut ev);
        assert_eq!(ev, vec![Event::Lost, Event::Lost]);
        assert_eq!(s.next_timeout(), None);
        ev.clear();
        s.reply(0, Arrival::Mono(t0 + 2 * TIMEOUT), None, &KeepAll, &mut ev);
        s.reply(1, Arrival::Mono(t0 + 2 * TIMEOUT), None, &KeepAll, &mut ev);
        s.reply(9, Arrival::Mono(t0 + 2 * TIMEOUT), None, &KeepAll, &mut ev);
        assert_eq!(
            ev,
            vec![
                Event::Error(ProbeErrorReason::LateReply),
                Event::Error(ProbeErrorReason::BadReply),
                Event::Error(ProbeErrorReason::BadReply),
            ]
        );
    }

    #[test]
    fn kernel_stamps_give_rtt_and_clock_offset() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut ev = Vec::new();
        let sent_ns = 1_000_000_000;
        s.sent(0, stamp(t0, sent_ns), &KeepAll, &mut ev);
        // Peer clock 5 ms ahead; 100 us each way; 10 us in the responder.
        let ahead = 5_000_000;
        let times = ResponderTimes {
            rx_real_ns: sent_ns + 100_000 + ahead,
            reply_real_ns: sent_ns + 110_000 + ahead,
        };
        let rx = sent_ns + 210_000;
        let arrival = Arrival::Kernel {
            rx_real_ns: rx,
            now_real_ns: rx + 5_000,
            now_mono: t0 + Duration::from_nanos(215_000),
        };
        s.reply(0, arrival, Some(times), &KeepAll, &mut ev);
        assert!(matches!(ev[0], Event::Reply { rtt, .. } if rtt == Duration::from_nanos(210_000)));
        assert_eq!(ev[1], Event::ClockOffset(0.005));
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn clock_step_books_nothing_but_the_error() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut ev = Vec::new();
        s.sent(0, stamp(t0, 1_000_000_000), &KeepAll, &mut ev);
        // The wall clock jumped 1 s back while the probe was in flight.
        let arrival = Arrival::Kernel {
            rx_real_ns: 100_000,
            now_real_ns: 200_000,
            now_mono: t0 + Duration::from_micros(300),
        };
        s.reply(0, arrival, None, &KeepAll, &mut ev);
        assert_eq!(ev, vec![Event::Error(ProbeErrorReason::ClockStep)]);
        ev.clear();
        s.expire(t0 + TIMEOUT, &KeepAll, &mut ev);
        assert!(ev.is_empty(), "a matched probe cannot be lost later");
    }

    #[test]
    fn guard_excluding_one_peer_books_only_exclusions() {
        let t0 = Instant::now();
        let guard = ExcludeNode("node-b");
        let mut s = stream(t0);
        let mut ev = Vec::new();
        for seq in 0..4 {
            s.sent(seq, stamp(t0, 1_000), &guard, &mut ev);
        }
        s.reply(
            0,
            Arrival::Mono(t0 + Duration::from_millis(1)),
            None,
            &guard,
            &mut ev,
        );
        s.reply(
            1,
            Arrival::Mono(t0 + Duration::from_millis(1)),
            None,
            &guard,
            &mut ev,
        );
        s.expire(t0 + TIMEOUT, &guard, &mut ev);
        s.send_failed(stamp(t0, 1_000), &guard, &mut ev);
        let excluded = count(&ev, |e| {
            matches!(e, Event::Excluded(ExcludeReason::BandwidthBurst))
        });
        assert_eq!(excluded, 5, "2 replies, 2 losses, 1 failed send: {ev:?}");
        assert_eq!(
            count(&ev, |e| matches!(e, Event::Reply { .. } | Event::Lost)),
            0
        );
        assert_eq!(count(&ev, |e| matches!(e, Event::ClockOffset(_))), 0);
        // The same probes to another peer node are all kept.
        let mut other = Stream::new(
            Protocol::Udp,
            PathKind::PodCrossNode,
            Arc::from("node-c"),
            Periodic::new(
                t0,
                random_below(Duration::from_secs(1)),
                Duration::from_secs(1),
            ),
            TIMEOUT,
            Duration::from_secs(60),
        );
        let mut kept = Vec::new();
        other.sent(0, stamp(t0, 1_000), &guard, &mut kept);
        other.sent(1, stamp(t0, 1_000), &guard, &mut kept);
        other.reply(
            0,
            Arrival::Mono(t0 + Duration::from_millis(1)),
            None,
            &guard,
            &mut kept,
        );
        other.expire(t0 + TIMEOUT, &guard, &mut kept);
        assert_eq!(count(&kept, |e| matches!(e, Event::Reply { .. })), 1);
        assert_eq!(count(&kept, |e| matches!(e, Event::Lost)), 1);
        assert_eq!(count(&kept, |e| matches!(e, Event::Excluded(_))), 0);
    }

    /// The guard sees the probe's wall-clock span: send time and, for a
    /// loss, send time plus the timeout.
    #[test]
    fn guard_sees_the_probe_span() {
        use std::sync::Mutex;
        struct Record(Mutex<Vec<(u64, u64)>>);
        impl SampleGuard for Record {
            fn exclude(&self, _: &str, sent: u64, done: u64) -> Option<ExcludeReason> {
                if let Ok(mut v) = self.0.lock() {
                    v.push((sent, done));
                }
                None
            }
        }
        let g = Record(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut ev = Vec::new();
        s.sent(0, stamp(t0, 5_000), &g, &mut ev);
        s.sent(1, stamp(t0, 6_000), &g, &mut ev);
        s.reply(
            0,
            Arrival::Mono(t0 + Duration::from_micros(3)),
            None,
            &g,
            &mut ev,
        );
        s.expire(t0 + TIMEOUT, &g, &mut ev);
        let seen = g.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(seen, vec![(5_000, 8_000), (6_000, 6_000 + 100_000_000)]);
    }

    #[test]
    fn overflow_loss_is_booked_through_the_guard() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut ev = Vec::new();
        let n = crate::stats::inflight::MAX_IN_FLIGHT as u64 + 3;
        for seq in 0..n {
            s.sent(seq, stamp(t0, 1), &KeepAll, &mut ev);
        }
        assert_eq!(ev, vec![Event::Lost; 3]);
    }
}
