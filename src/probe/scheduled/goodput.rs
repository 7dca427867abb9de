//! Goodput of a burst from `(time, cumulative bytes)` samples: the bytes of
//! the second half of the transfer divided by the time they took, so TCP
//! slow start (all in the first half at datacenter RTTs) does not drag the
//! number down. Pure; the prober feeds it `TCP_INFO.bytes_acked` (sender)
//! or bytes read (receiver).

use std::time::{Duration, Instant};

/// The goodput of the second half of a transfer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Goodput {
    /// Bytes per second over the measured window.
    pub bytes_per_sec: f64,
    /// Bytes in the measured window (at least half of `total_bytes`).
    pub window_bytes: u64,
    /// Duration of the measured window.
    pub window: Duration,
    /// Bytes transferred in the whole burst (acked or received); when a
    /// burst is cut by its deadline this is what got through by then.
    pub total_bytes: u64,
}

/// Computes the second-half goodput of a burst.
///
/// `samples` are `(when, cumulative bytes)` in time order, cumulative bytes
/// never decreasing (a sample that goes backwards is ignored for the total).
/// The total is the largest count seen; the window ends at the **first**
/// sample reaching it (later samples that repeat it, e.g. polling until a
/// deadline, add no time) and starts at the last sample at or below half of
/// it, so with coarse samples the window covers slightly more than half.
///
/// Returns `None` when no bytes moved, when no sample lies at or below the
/// half (a single sample, or everything arrived before the first one), or
/// when the window has zero duration.
pub(crate) fn second_half(samples: &[(Instant, u64)]) -> Option<Goodput> {
    let total = samples.iter().map(|(_, b)| *b).max()?;
    if total == 0 {
        return None;
    }
    let end = samples.iter().position(|(_, b)| *b >= total)?;
    // `b <= total / 2` rounded so that an odd total still needs half: use
    // 2b <= total, computed without overflow.
    let start = samples[..=end]
        .iter()
        .rposition(|(_, b)| b.checked_mul(2).is_some_and(|d| d <= total))?;
    let (t0, b0) = samples[start];
    let (t1, b1) = samples[end];
    let window = t1.checked_duration_since(t0)?;
    if window.is_zero() || b1 <= b0 {
        return None;
    }
    let window_bytes = b1 - b0;
    Some(Goodput {
        bytes_per_sec: window_bytes as f64 / window.as_secs_f64(),
        window_bytes,
        window,
        total_bytes: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Samples at `t0 + ms(i)` with the given cumulative byte counts.
    fn series(t0: Instant, bytes: &[u64]) -> Vec<(Instant, u64)> {
        (0u64..).zip(bytes).map(|(i, b)| (t0 + ms(i), *b)).collect()
    }

    #[test]
    fn constant_rate_is_recovered() {
        let t0 = Instant::now();
        let bytes: Vec<u64> = (0..=100).map(|i| i * 1000).collect();
        let g = second_half(&series(t0, &bytes)).expect("goodput");
        assert_eq!(g.total_bytes, 100_000);
        assert_eq!(g.window_bytes, 50_000);
        assert_eq!(g.window, ms(50));
        assert!((g.bytes_per_sec - 1_000_000.0).abs() < 1e-6);
    }

    #[test]
    fn slow_start_in_first_half_is_excluded() {
        let t0 = Instant::now();
        // 50 ms at 100 B/ms (slow start), then 10 ms at 5000 B/ms.
        let mut bytes: Vec<u64> = (0..=50).map(|i| i * 100).collect();
        bytes.extend((1..=10).map(|i| 5_000 + i * 5_000));
        let g = second_half(&series(t0, &bytes)).expect("goodput");
        // Total 55_000; the last sample <= 27_500 is 25_000 at 54 ms.
        assert_eq!(g.total_bytes, 55_000);
        assert_eq!(g.window_bytes, 30_000);
        assert_eq!(g.window, ms(6));
        assert!((g.bytes_per_sec - 5_000_000.0).abs() < 1e-6);
    }

    #[test]
    fn capped_by_deadline_measures_what_got_through() {
        let t0 = Instant::now();
        // Asked for far more; only 40_000 acked by the deadline, and the
        // prober kept polling the same count until the deadline at 60 ms.
        let mut bytes: Vec<u64> = (0..=40).map(|i| i * 1000).collect();
        bytes.extend(std::iter::repeat_n(40_000, 20));
        let g = second_half(&series(t0, &bytes)).expect("goodput");
        assert_eq!(g.total_bytes, 40_000);
        // The idle polling after the last progress adds no time.
        assert_eq!(g.window, ms(20));
        assert!((g.bytes_per_sec - 1_000_000.0).abs() < 1e-6);
    }

    #[test]
    fn coarse_samples_widen_the_window_to_cover_half() {
        let t0 = Instant::now();
        let s = vec![(t0, 0), (t0 + ms(10), 400), (t0 + ms(30), 1000)];
        let g = second_half(&s).expect("goodput");
        assert_eq!(g.window_bytes, 600);
        assert_eq!(g.window, ms(20));
    }

    #[test]
    fn degenerate_inputs_give_none() {
        let t0 = Instant::now();
        assert_eq!(second_half(&[]), None);
        assert_eq!(second_half(&[(t0, 0)]), None);
        assert_eq!(second_half(&[(t0, 0), (t0 + ms(5), 0)]), None);
        // Everything already there at the first sample: nothing to time.
        assert_eq!(second_half(&[(t0, 10), (t0 + ms(5), 10)]), None);
        // Two samples at the same instant.
        assert_eq!(second_half(&[(t0, 0), (t0, 10)]), None);
    }

    #[test]
    fn odd_totals_and_huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let s = vec![(t0, 0), (t0 + ms(1), 1), (t0 + ms(2), 3)];
        // 2*1 <= 3, so the window starts at 1 byte.
        let g = second_half(&s).expect("goodput");
        assert_eq!(g.window_bytes, 2);
        let s = vec![(t0, 0), (t0 + ms(1000), u64::MAX)];
        let g = second_half(&s).expect("goodput");
        assert_eq!(g.total_bytes, u64::MAX);
    }
}
