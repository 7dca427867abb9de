//! One probe stream: a (target, protocol) pair with its schedule, probes in
//! flight and running statistics. No IO: the engine sends and receives, the
//! stream keeps the books and updates the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::labels::{PathKind, ProbeErrorReason, Protocol};
use crate::metrics::{AgentMetrics, LatencySeries};
use crate::probe::guard::SampleGuard;
use crate::schedule::Periodic;
use crate::stats::{clock_offset, kernel_rtt, InFlight, Jitter, Match, WindowedMin};

use super::{RttSample, SampleHook};

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

/// The books of one stream.
pub(super) struct Stream {
    pub protocol: Protocol,
    pub path: PathKind,
    pub id: u64,
    pub schedule: Periodic,
    timeout: Duration,
    peer: Arc<str>,
    peer_node: Arc<str>,
    series: LatencySeries,
    next_seq: u64,
    inflight: InFlight<SendStamp>,
    jitter: Jitter,
    rtt_min: WindowedMin,
    /// Min-delay clock filter: (round trip, offset) in ns; the exchange with
    /// the smallest round trip bounds the offset most tightly.
    clock: WindowedMin<(u64, i64)>,
    /// Asked once per outcome; excluded outcomes are booked only there.
    guard: Arc<dyn SampleGuard>,
    metrics: AgentMetrics,
}

/// The responder's wall-clock receive and send times from an echo reply.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResponderTimes {
    pub rx_real_ns: u64,
    pub reply_real_ns: u64,
}

impl Stream {
    /// A new stream starting at `now` with a random phase.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        protocol: Protocol,
        path: PathKind,
        peer: Arc<str>,
        peer_node: Arc<str>,
        series: LatencySeries,
        interval: Duration,
        timeout: Duration,
        rtt_min_window: Duration,
        now: Instant,
        guard: Arc<dyn SampleGuard>,
        metrics: AgentMetrics,
    ) -> Self {
        Self {
            protocol,
            path,
            // Random so replies to a previous engine or a removed target
            // cannot be mistaken for ours.
            id: rand::random(),
            schedule: Periodic::with_random_phase(now, interval),
            timeout,
            peer,
            peer_node,
            series,
            next_seq: 0,
            inflight: InFlight::new(),
            jitter: Jitter::new(),
            rtt_min: WindowedMin::new(rtt_min_window),
            clock: WindowedMin::new(rtt_min_window),
            guard,
            metrics,
        }
    }

    /// The sequence number of the next probe.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Records a probe that left; it is booked as sent with its outcome
    /// (reply or loss), once the sample guard has kept it.
    pub fn sent(&mut self, seq: u64, stamp: SendStamp) {
        let lost = self.inflight.insert(seq, stamp.mono + self.timeout, stamp);
        self.count_lost(lost);
    }

    /// Whether the guard keeps an outcome in flight `[sent_ns, done_ns]`;
    /// an excluded one is counted as such and nowhere else.
    fn kept(&self, sent_ns: u64, done_ns: u64) -> bool {
        match self.guard.exclude(&self.peer_node, sent_ns, done_ns) {
            Some(reason) => {
                self.metrics
                    .probe_excluded(self.protocol, self.path, reason);
                false
            }
            None => true,
        }
    }

    /// Books a probe whose send failed: sent, lost and an error.
    pub fn send_failed(&mut self, metrics: &AgentMetrics) {
        self.series.sent.inc();
        self.series.lost.inc();
        metrics.probe_error(self.protocol, self.path, ProbeErrorReason::SendFailed);
    }

    /// Counts the probes whose timeout passed by `now` as lost (a loss is
    /// in flight until its timeout).
    pub fn expire(&mut self, now: Instant) {
        let mut lost = Vec::new();
        self.inflight.expire_each(now, |s| lost.push(s.real_ns));
        let timeout = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        let kept = lost
            .into_iter()
            .filter(|sent| self.kept(*sent, sent.saturating_add(timeout)))
            .count();
        self.count_lost(kept);
    }

    /// The earliest timeout of a probe in flight.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.inflight.next_deadline()
    }

    /// Books a reply to probe `seq`; `responder` carries the responder's
    /// wall-clock stamps when the protocol has them (UDP echo).
    pub fn reply(
        &mut self,
        seq: u64,
        arrival: Arrival,
        responder: Option<ResponderTimes>,
        metrics: &AgentMetrics,
        hook: Option<&SampleHook>,
    ) {
        let stamp = match self.inflight.complete(seq) {
            Match::Answered(s) => s,
            Match::Late => return self.error(metrics, ProbeErrorReason::LateReply),
            Match::Unknown => return self.error(metrics, ProbeErrorReason::BadReply),
        };
        let (rtt, now, exchange) = match arrival {
            Arrival::Kernel {
                rx_real_ns,
                now_real_ns,
                now_mono,
            } => {
                let real_elapsed = i128::from(now_real_ns) - i128::from(stamp.real_ns);
                let mono_elapsed = now_mono.saturating_duration_since(stamp.mono);
                match kernel_rtt(stamp.real_ns, rx_real_ns, real_elapsed, mono_elapsed) {
                    Ok(rtt) => {
                        let exchange = responder
                            .map(|r| [stamp.real_ns, r.rx_real_ns, r.reply_real_ns, rx_real_ns]);
                        (rtt, now_mono, exchange)
                    }
                    Err(_) => return self.error(metrics, ProbeErrorReason::ClockStep),
                }
            }
            Arrival::Mono(at) => (at.saturating_duration_since(stamp.mono), at, None),
        };
        let rtt_ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        if !self.kept(stamp.real_ns, stamp.real_ns.saturating_add(rtt_ns)) {
            return;
        }
        self.series.sent.inc();
        if let Some(t) = exchange {
            self.update_clock_offset(now, t, metrics);
        }
        self.series.observe_reply(rtt);
        self.series
            .jitter
            .set(self.jitter.update(rtt).as_secs_f64());
        self.series
            .rtt_min
            .set(self.rtt_min.push(now, rtt).as_secs_f64());
        if let Some(h) = hook {
            h(&RttSample {
                protocol: self.protocol,
                path: self.path,
                peer: self.peer.clone(),
                rtt,
            });
        }
    }

    /// Feeds one exchange (t1..t4, wall clock ns) to the min-delay filter and
    /// exports the filtered offset.
    fn update_clock_offset(&mut self, now: Instant, t: [u64; 4], metrics: &AgentMetrics) {
        let Some(e) = clock_offset(t[0], t[1], t[2], t[3]) else {
            return;
        };
        let (_, offset_ns) = self.clock.push(now, (e.rtt_ns, e.offset_ns));
        // i64 ns to f64 seconds: exact well below a microsecond.
        #[allow(clippy::cast_precision_loss)]
        let seconds = offset_ns as f64 / 1e9;
        metrics.set_clock_offset(self.path, &self.peer_node, seconds);
    }

    /// Counts a reply that matched no probe of this stream's path.
    pub fn error(&self, metrics: &AgentMetrics, reason: ProbeErrorReason) {
        metrics.probe_error(self.protocol, self.path, reason);
    }

    /// Books `n` probes as sent and lost.
    fn count_lost(&self, n: usize) {
        if n > 0 {
            let n = u64::try_from(n).unwrap_or(u64::MAX);
            self.series.sent.inc_by(n);
            self.series.lost.inc_by(n);
        }
    }
}
