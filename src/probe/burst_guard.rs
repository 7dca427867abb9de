//! The burst guard: a [`SampleGuard`] that excludes probe outcomes which
//! overlapped a bandwidth burst involving this agent's node or the peer's.
//!
//! Within each slot, bursts may run in fixed windows (the pod agents'
//! half from the slot start, the host agents' half from the middle), each
//! `[burst start, burst start + span + drain)`: `span` is the longest time an
//! agent's bursts of one half can take (a forward and a reverse burst),
//! `drain` the time the queues they filled need to empty (and the clock
//! difference between nodes). A probe is judged by its send time alone: it
//! is excluded when `[sent, sent + drain]` overlaps a window of a slot in
//! which either end's node is busy ([`BusyNodes`]). Not by `[sent, done]`:
//! a lost probe's outcome is known only at its timeout, so judging the
//! whole flight would exclude losses more often than replies and bias the
//! kept loss ratio low (the lab saw 1.4 % kept against 2.2 % dropped). The
//! guard does not care where the schedule
//! comes from; the window arithmetic runs first, so the common case (no
//! window overlapped) costs a few integer operations and no lock.

use std::sync::Arc;
use std::time::Duration;

use super::guard::SampleGuard;
use crate::metrics::labels::ExcludeReason;
use crate::schedule::busy::BusyNodes;

/// Most slots a single probe's flight is checked against; probe timeouts
/// are far shorter than that many slots.
const MAX_SLOTS_CHECKED: u64 = 64;

/// Where bursts can run within a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BurstWindows {
    /// Slot length, ns.
    slot_ns: u64,
    /// `[start, end)` offsets from the slot start, ns; `end` may pass the
    /// slot's end (a window draining into the next slot).
    windows: Vec<(u64, u64)>,
    /// The largest `end`: how far back a window can reach into a probe.
    reach_ns: u64,
    /// How long after its send a probe is taken to be in flight, whatever
    /// its outcome: the drain margin.
    flight_ns: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl BurstWindows {
    /// Windows of `span + drain` from each of `starts` (offsets within a
    /// slot of length `slot`).
    pub fn new(slot: Duration, starts: &[Duration], span: Duration, drain: Duration) -> Self {
        let len = ns(span).saturating_add(ns(drain));
        let windows: Vec<(u64, u64)> = starts
            .iter()
            .map(|s| (ns(*s), ns(*s).saturating_add(len)))
            .collect();
        let reach_ns = windows.iter().map(|w| w.1).max().unwrap_or(0);
        Self {
            slot_ns: ns(slot).max(1),
            windows,
            reach_ns,
            flight_ns: ns(drain),
        }
    }

    /// The slots whose windows `[lo, hi]` overlaps, oldest first.
    fn overlapped(&self, lo: u64, hi: u64) -> impl Iterator<Item = u64> + '_ {
        let first = lo.saturating_sub(self.reach_ns) / self.slot_ns;
        let last = (hi / self.slot_ns).min(first.saturating_add(MAX_SLOTS_CHECKED));
        (first..=last).filter(move |slot| {
            let base = slot.saturating_mul(self.slot_ns);
            self.windows
                .iter()
                .any(|(a, b)| base.saturating_add(*a) <= hi && lo < base.saturating_add(*b))
        })
    }
}

/// Excludes outcomes that overlapped a burst of this node or the peer's.
pub struct BurstGuard {
    busy: Arc<dyn BusyNodes>,
    my_node: String,
    windows: BurstWindows,
}

impl BurstGuard {
    /// A guard for the agent on `my_node`, asking `busy` about slots.
    pub fn new(busy: Arc<dyn BusyNodes>, my_node: String, windows: BurstWindows) -> Self {
        Self {
            busy,
            my_node,
            windows,
        }
    }
}

impl SampleGuard for BurstGuard {
    fn exclude(&self, peer_node: &str, sent_ns: u64, _done_ns: u64) -> Option<ExcludeReason> {
        // The outcome (and so `done`) must not decide: see the module doc.
        let (lo, hi) = (sent_ns, sent_ns.saturating_add(self.windows.flight_ns));
        self.windows
            .overlapped(lo, hi)
            .any(|slot| self.busy.busy(slot, &self.my_node) || self.busy.busy(slot, peer_node))
            .then_some(ExcludeReason::BandwidthBurst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MS: u64 = 1_000_000;

    /// Busy: node "b" in slot 10 only; counts the questions.
    #[derive(Default)]
    struct OneBusy(AtomicUsize);

    impl BusyNodes for OneBusy {
        fn busy(&self, slot: u64, node: &str) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            slot == 10 && node == "b"
        }
    }

    /// 1 s slots, bursts from 0 and 500 ms, 200 ms span, 50 ms drain.
    fn guard(me: &str) -> (BurstGuard, Arc<OneBusy>) {
        let busy = Arc::new(OneBusy::default());
        let ms = Duration::from_millis;
        let w = BurstWindows::new(ms(1000), &[ms(0), ms(500)], ms(200), ms(50));
        (BurstGuard::new(busy.clone(), me.into(), w), busy)
    }

    #[test]
    fn probes_overlapping_a_busy_window_are_excluded() {
        let (g, _) = guard("a");
        let slot10 = 10_000 * MS;
        let hit = Some(ExcludeReason::BandwidthBurst);
        // Inside the first window, to peer b (busy) .
        assert_eq!(g.exclude("b", slot10 + 10 * MS, slot10 + 11 * MS), hit);
        // Sent before the window, still in flight at its start.
        assert_eq!(g.exclude("b", slot10 - 5 * MS, slot10), hit);
        // In the drain margin of the second window (500 + 200 + 50).
        assert_eq!(g.exclude("b", slot10 + 749 * MS, slot10 + 749 * MS), hit);
        // Just after the drain margin, between the windows, or to a peer
        // that is not busy: kept.
        assert_eq!(g.exclude("b", slot10 + 750 * MS, slot10 + 751 * MS), None);
        assert_eq!(g.exclude("b", slot10 + 300 * MS, slot10 + 499 * MS), None);
        assert_eq!(g.exclude("c", slot10 + 10 * MS, slot10 + 11 * MS), None);
        // Another slot's window: b is not busy there.
        assert_eq!(g.exclude("b", slot10 + 1010 * MS, slot10 + 1011 * MS), None);
        // Our own node busy excludes probes to every peer.
        let (g, _) = guard("b");
        assert_eq!(g.exclude("c", slot10 + 510 * MS, slot10 + 512 * MS), hit);
        // Reversed or huge intervals neither panic nor loop long.
        assert_eq!(g.exclude("c", slot10 + 512 * MS, slot10 + 510 * MS), hit);
        assert_eq!(g.exclude("c", slot10 + 2000 * MS, u64::MAX), None);
    }

    #[test]
    fn the_send_time_decides_not_the_outcome() {
        let (g, _) = guard("a");
        let slot10 = 10_000 * MS;
        // Sent at 300 ms, well before the 500 ms window: kept whether it
        // was answered at once or lost at a 250 ms timeout.
        assert_eq!(g.exclude("b", slot10 + 300 * MS, slot10 + 301 * MS), None);
        assert_eq!(g.exclude("b", slot10 + 300 * MS, slot10 + 550 * MS), None);
        // Sent 20 ms before it: within the drain margin of its start.
        let hit = Some(ExcludeReason::BandwidthBurst);
        assert_eq!(g.exclude("b", slot10 + 480 * MS, slot10 + 481 * MS), hit);
        assert_eq!(g.exclude("b", slot10 + 480 * MS, slot10 + 730 * MS), hit);
    }

    #[test]
    fn a_probe_outside_every_window_asks_nothing() {
        let (g, busy) = guard("a");
        let slot10 = 10_000 * MS;
        assert_eq!(g.exclude("b", slot10 + 300 * MS, slot10 + 310 * MS), None);
        assert_eq!(busy.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_window_draining_into_the_next_slot_is_found_from_there() {
        let busy = Arc::new(OneBusy::default());
        let ms = Duration::from_millis;
        // Second window 900..1150 ms: 150 ms into slot 11.
        let w = BurstWindows::new(ms(1000), &[ms(900)], ms(200), ms(50));
        let g = BurstGuard::new(busy, "a".into(), w);
        let slot11 = 11_000 * MS;
        assert_eq!(
            g.exclude("b", slot11 + 100 * MS, slot11 + 101 * MS),
            Some(ExcludeReason::BandwidthBurst)
        );
        assert_eq!(g.exclude("b", slot11 + 160 * MS, slot11 + 161 * MS), None);
    }
}
