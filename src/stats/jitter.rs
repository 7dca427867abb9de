//! RFC 3550 interarrival jitter (section 6.4.1), applied to consecutive
//! round-trip times of one stream: `J += (|D| - J) / 16`.

use std::time::Duration;

/// Running RFC 3550 jitter estimate over a sequence of RTTs.
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    prev_ns: Option<f64>,
    j_ns: f64,
}

impl Jitter {
    /// An estimator with no samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next RTT and returns the updated estimate. The first sample
    /// only primes the estimator (there is no difference yet).
    pub fn update(&mut self, rtt: Duration) -> Duration {
        let x = rtt.as_nanos() as f64;
        if let Some(prev) = self.prev_ns {
            let d = (x - prev).abs();
            self.j_ns += (d - self.j_ns) / 16.0;
        }
        self.prev_ns = Some(x);
        self.current()
    }

    /// The current estimate.
    pub fn current(&self) -> Duration {
        Duration::from_nanos(self.j_ns.max(0.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn constant_rtt_has_zero_jitter() {
        let mut j = Jitter::new();
        for _ in 0..100 {
            j.update(us(100));
        }
        assert_eq!(j.current(), Duration::ZERO);
    }

    #[test]
    fn follows_the_rfc_recurrence() {
        let mut j = Jitter::new();
        assert_eq!(j.update(us(100)), Duration::ZERO, "first sample primes");
        // |D| = 160 us: J = 160/16 = 10 us.
        assert_eq!(j.update(us(260)), us(10));
        // |D| = 160 us again: J = 10 + (160 - 10)/16 = 19.375 us.
        assert_eq!(j.update(us(100)), Duration::from_nanos(19_375));
    }

    #[test]
    fn converges_to_mean_absolute_difference() {
        // Alternating 100/200 us: |D| is always 100 us, J converges to it.
        let mut j = Jitter::new();
        for i in 0..1000 {
            j.update(us(if i % 2 == 0 { 100 } else { 200 }));
        }
        let got = j.current().as_nanos() as i128;
        assert!((got - 100_000).abs() < 10, "{got}");
    }
}
