//! Node clock offset from Lease renewals (pure).
//!
//! For each renewal, d = renewTime (node clock) - receive time (controller
//! wall clock) = offset - propagation delay, and the delay is never
//! negative, so the largest d over recent renewals is the least-delayed
//! sample and a lower bound of the offset (a min-delay filter).

use std::collections::VecDeque;

/// Sliding min-delay filter over the last `capacity` samples.
#[derive(Debug, Clone)]
pub(crate) struct OffsetFilter {
    samples: VecDeque<f64>,
    capacity: usize,
}

impl OffsetFilter {
    /// A filter keeping `capacity` (at least 1) samples.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Adds d = renew_time - receive_time, in seconds.
    pub(crate) fn push(&mut self, d: f64) {
        if !d.is_finite() {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(d);
    }

    /// The offset estimate (node minus controller, seconds), if any sample.
    pub(crate) fn estimate(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_delayed_sample_wins() {
        let mut f = OffsetFilter::new(3);
        assert_eq!(f.estimate(), None);
        // True offset +2.0 s, delays 50, 5, 300 ms.
        for d in [0.05, 0.005, 0.3] {
            f.push(2.0 - d);
        }
        let e = f.estimate().expect("estimate");
        assert!((e - 1.995).abs() < 1e-9, "{e}");
        // Old samples age out.
        for d in [0.4, 0.4, 0.4] {
            f.push(2.0 - d);
        }
        let e = f.estimate().expect("estimate");
        assert!((e - 1.6).abs() < 1e-9, "{e}");
        f.push(f64::NAN);
        assert!(f.estimate().is_some_and(|e| e.is_finite()));
    }
}
