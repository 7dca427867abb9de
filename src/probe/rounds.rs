//! A fixed schedule of rounds for the cluster reachability probes:
//! `phase + k * interval` with a random phase per agent, so the agents of
//! a cluster do not hit CoreDNS and the apiserver in step (goldpinger#69).
//! A round still running at its next slot makes that slot skip, never
//! stack; the scheduled probes skip their missed slots by the same rule
//! ([`next_slot`]).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::schedule::random_below;

/// Runs `round` at every slot until `shutdown`; a round is awaited before
/// the next slot is considered, so a slow round skips the slots it covers.
pub(super) async fn every<F, Fut>(interval: Duration, shutdown: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // The first round at a random offset within the interval.
    let mut slot = Instant::now() + random_below(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(slot) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = round() => {}
        }
        slot = next_slot(slot, interval, Instant::now());
    }
}

/// The first `slot + k * interval` (k >= 1) after `now`: slots that passed
/// while a round ran are skipped, not made up.
pub(super) fn next_slot(slot: Instant, interval: Duration, now: Instant) -> Instant {
    let mut next = slot + interval;
    if next <= now && !interval.is_zero() {
        // Late by whole intervals (a slow round, or the host stalled): keep
        // the phase, skip the missed slots instead of bursting.
        let behind = now.duration_since(next).as_nanos() / interval.as_nanos() + 1;
        next += interval.saturating_mul(u32::try_from(behind).unwrap_or(u32::MAX));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rounds_keep_their_slots_and_skip_while_busy() {
        let shutdown = CancellationToken::new();
        let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = starts.clone();
        let t0 = Instant::now();
        let stop = shutdown.clone();
        let task = tokio::spawn(every(Duration::from_secs(10), shutdown, move || {
            let s = s2.clone();
            async move {
                let n = {
                    let mut v = s.lock().expect("lock");
                    v.push(Instant::now());
                    v.len()
                };
                // The second round takes 25 s: the two slots it covers go.
                if n == 2 {
                    tokio::time::sleep(Duration::from_secs(25)).await;
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(75)).await;
        stop.cancel();
        task.await.expect("task");
        let v = starts.lock().expect("lock").clone();
        let first = v[0].duration_since(t0);
        assert!(first < Duration::from_secs(10));
        let offsets: Vec<Duration> = v.iter().map(|t| t.duration_since(v[0])).collect();
        let s = Duration::from_secs;
        // Slots 0, 10, (20, 30 skipped), 40, 50, 60 [, 70 if within 75 s].
        assert_eq!(&offsets[..5], &[s(0), s(10), s(40), s(50), s(60)]);
    }

    #[test]
    fn next_slot_keeps_phase_and_skips_missed_slots() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        assert_eq!(next_slot(t0, i, t0), t0 + i);
        assert_eq!(next_slot(t0, i, t0 + Duration::from_secs(3)), t0 + i);
        // 25 s late: slots at 10 and 20 are gone, the next is 30.
        assert_eq!(next_slot(t0, i, t0 + Duration::from_secs(25)), t0 + 3 * i);
        assert_eq!(next_slot(t0, i, t0 + i), t0 + 2 * i);
    }
}
