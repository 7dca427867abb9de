//! Minimum over a sliding time window, in amortised O(1): a monotonic deque
//! of (time, value) with increasing values. Values may carry a payload by
//! ordering on a tuple, e.g. `(rtt, offset)` for a min-delay clock filter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Smallest value seen over the last `window`.
#[derive(Debug, Clone)]
pub struct WindowedMin<T = Duration> {
    window: Duration,
    // Increasing in both time and value; the front is the minimum.
    q: VecDeque<(Instant, T)>,
}

impl<T: PartialOrd + Copy> WindowedMin<T> {
    /// An empty window of length `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            q: VecDeque::new(),
        }
    }

    /// Adds `value` observed at `at` (times must not go backwards) and
    /// returns the minimum over `(at - window, at]`.
    pub fn push(&mut self, at: Instant, value: T) -> T {
        // Older, larger values can never be the minimum again.
        while self.q.back().is_some_and(|(_, v)| *v >= value) {
            self.q.pop_back();
        }
        self.q.push_back((at, value));
        self.evict(at);
        self.q.front().map_or(value, |(_, v)| *v)
    }

    /// The minimum over the window ending at `now`, or `None` if no sample
    /// falls inside it.
    pub fn min(&mut self, now: Instant) -> Option<T> {
        self.evict(now);
        self.q.front().map(|(_, v)| *v)
    }

    fn evict(&mut self, now: Instant) {
        while self
            .q
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= self.window)
        {
            self.q.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn tracks_the_minimum_and_forgets_old_samples() {
        let t0 = Instant::now();
        let mut w = WindowedMin::new(ms(100));
        assert_eq!(w.min(t0), None);
        assert_eq!(w.push(t0, ms(5)), ms(5));
        assert_eq!(w.push(t0 + ms(10), ms(7)), ms(5));
        assert_eq!(w.push(t0 + ms(20), ms(3)), ms(3));
        assert_eq!(w.push(t0 + ms(30), ms(9)), ms(3));
        // At 120 ms the 3 ms sample (t=20) has left the window.
        assert_eq!(w.push(t0 + ms(120), ms(8)), ms(8));
        assert_eq!(w.min(t0 + ms(125)), Some(ms(8)));
        assert_eq!(w.min(t0 + ms(300)), None);
    }

    #[test]
    fn matches_a_brute_force_minimum() {
        let t0 = Instant::now();
        let win = ms(50);
        let mut w = WindowedMin::new(win);
        let mut all = Vec::new();
        let mut x: u64 = 12345;
        for i in 0..500u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = Duration::from_micros((x >> 33) % 1000);
            let t = t0 + ms(i * 3);
            all.push((t, v));
            let got = w.push(t, v);
            let want = all
                .iter()
                .filter(|(s, _)| t.duration_since(*s) < win)
                .map(|(_, v)| *v)
                .min()
                .expect("non-empty");
            assert_eq!(got, want, "at {i}");
        }
    }
}
