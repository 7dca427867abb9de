//! An absolute-deadline periodic schedule: deadline `i` is
//! `start + phase + i * interval`, so wake-up errors never accumulate, and
//! a prober that fell behind skips ahead instead of bursting to catch up.

use std::time::{Duration, Instant};

/// A send that left more than this after its deadline counts as late.
pub(crate) const LATE_THRESHOLD: Duration = Duration::from_millis(1);
/// Shortest interval accepted; guards against a zero division.
const MIN_INTERVAL: Duration = Duration::from_micros(1);

/// A uniformly random duration in `[0, bound)` (zero for a zero bound):
/// the random start of a train, or the first run of a schedule, so agents
/// and probe kinds do not all fire together.
pub fn random_below(bound: Duration) -> Duration {
    let ns = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    if ns == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..ns))
}

/// One due send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The deadline this send stands for.
    pub deadline: Instant,
    /// Whether it left more than `LATE_THRESHOLD` after the deadline.
    pub late: bool,
    /// Whole earlier deadlines that were missed and are not sent.
    pub skipped: u64,
}

/// A periodic schedule.
#[derive(Debug, Clone)]
pub struct Periodic {
    origin: Instant,
    interval: Duration,
    next: u64,
}

impl Periodic {
    /// Deadlines at `start + phase + i * interval`, i = 0, 1, ...
    pub fn new(start: Instant, phase: Duration, interval: Duration) -> Self {
        Self {
            origin: start + phase,
            interval: interval.max(MIN_INTERVAL),
            next: 0,
        }
    }

    /// Deadlines at `epoch + phase + i * interval` from the first one at or
    /// after `now`: streams created at different times keep their places
    /// relative to each other (a train, see [`super::train`]).
    pub fn aligned(epoch: Instant, phase: Duration, interval: Duration, now: Instant) -> Self {
        let mut s = Self::new(epoch, phase, interval);
        let behind = now.saturating_duration_since(s.origin).as_nanos();
        let step = s.interval.as_nanos();
        s.next = u64::try_from(behind.div_ceil(step)).unwrap_or(u64::MAX);
        s
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The next deadline.
    pub fn next_deadline(&self) -> Instant {
        self.deadline(self.next)
    }

    fn deadline(&self, i: u64) -> Instant {
        // Saturate instead of overflowing after ~584 years of uptime.
        let ns = self.interval.as_nanos().saturating_mul(u128::from(i));
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(ns)
    }

    /// If a deadline is due at `now`, consumes it and returns the send to
    /// make. Missed whole intervals are skipped: at most one send per call,
    /// and the following deadline is always after `now`.
    pub fn fire(&mut self, now: Instant) -> Option<Fire> {
        let due = self.next_deadline();
        if now < due {
            return None;
        }
        let behind = now.duration_since(due);
        let skipped = u64::try_from(behind.as_nanos() / self.interval.as_nanos()).unwrap_or(0);
        self.next = self.next.saturating_add(skipped).saturating_add(1);
        Some(Fire {
            deadline: due,
            late: behind > LATE_THRESHOLD,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_aligned_schedule_starts_at_its_first_deadline_from_now() {
        let epoch = Instant::now();
        // Created 25 ms after the epoch: the 3 ms + i * 10 ms grid goes on
        // at 33 ms, neither earlier (a late send) nor shifted.
        let mut s = Periodic::aligned(epoch, ms(3), ms(10), epoch + ms(25));
        assert_eq!(s.next_deadline(), epoch + ms(33));
        assert_eq!(s.fire(epoch + ms(32)), None);
        let f = s.fire(epoch + ms(33)).expect("due");
        assert_eq!((f.late, f.skipped), (false, 0));
        // Exactly on a deadline: that one is the first.
        let t = Periodic::aligned(epoch, ms(3), ms(10), epoch + ms(13));
        assert_eq!(t.next_deadline(), epoch + ms(13));
        // Before the first deadline.
        let u = Periodic::aligned(epoch, ms(3), ms(10), epoch);
        assert_eq!(u.next_deadline(), epoch + ms(3));
    }

    #[test]
    fn deadlines_are_absolute() {
        let t0 = Instant::now();
        let mut s = Periodic::new(t0, ms(3), ms(10));
        assert_eq!(s.next_deadline(), t0 + ms(3));
        assert_eq!(s.fire(t0 + ms(2)), None, "not yet");
        // Waking 500 us late is on time and does not shift later deadlines.
        let f = s
            .fire(t0 + ms(3) + Duration::from_micros(500))
            .expect("due");
        assert_eq!(
            f,
            Fire {
                deadline: t0 + ms(3),
                late: false,
                skipped: 0
            }
        );
        assert_eq!(s.next_deadline(), t0 + ms(13));
        assert_eq!(s.fire(t0 + ms(13)).map(|f| f.late), Some(false));
        assert_eq!(s.next_deadline(), t0 + ms(23));
    }

    #[test]
    fn late_wake_is_flagged_and_missed_intervals_skipped() {
        let t0 = Instant::now();
        let mut s = Periodic::new(t0, Duration::ZERO, ms(10));
        // 2 ms late: flagged, nothing skipped.
        let f = s.fire(t0 + ms(2)).expect("due");
        assert!(f.late);
        assert_eq!(f.skipped, 0);
        // Deadline 10 ms; waking at 45 ms misses 20, 30, 40: one send only.
        let f = s.fire(t0 + ms(45)).expect("due");
        assert_eq!((f.deadline, f.late, f.skipped), (t0 + ms(10), true, 3));
        assert_eq!(s.fire(t0 + ms(45)), None, "no catch-up burst");
        assert_eq!(s.next_deadline(), t0 + ms(50));
    }

    #[test]
    fn random_below_stays_below_its_bound() {
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
        for _ in 0..1000 {
            assert!(random_below(ms(3)) < ms(3));
        }
    }

    #[test]
    fn a_zero_interval_is_guarded() {
        let t0 = Instant::now();
        let s = Periodic::new(t0, Duration::ZERO, Duration::ZERO);
        assert_eq!(s.interval(), MIN_INTERVAL, "zero interval guarded");
    }
}
