//! Where each probe stream's sends fall within its interval: the streams
//! of one interval go out as a train, one every [`TRAIN_SPACING`] from a
//! random start, as `fping -i` sends to its targets.
//!
//! Why a train and not independent random phases: every send is a wake-up
//! of the prober thread, and a wake-up after a long sleep costs far more
//! CPU than one a millisecond after the last (fping on this 2-vCPU VM: 46
//! µs per probe at 1 ms spacing, 89 µs at 10 ms). Why not all at once: the
//! sends of one wake-up leave back to back and queue behind each other on
//! a shared path or responder (the lab's RTT floors rose 40–90 µs when the
//! protocols of a target shared a phase); a millisecond apart they do not.
//! The start is random per agent and interval, so agents do not
//! synchronise.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Time between two sends of one train.
pub const TRAIN_SPACING: Duration = Duration::from_millis(1);

/// A place in a train: the interval it belongs to and its slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrainSlot {
    interval: Duration,
    slot: u64,
}

/// One interval's train: its start and the slots in use.
#[derive(Debug)]
struct Train {
    start: Duration,
    used: BTreeSet<u64>,
}

/// The trains of one prober, one per distinct interval. Pure bookkeeping:
/// the caller supplies the random start of a new train.
#[derive(Debug, Default)]
pub struct Trains {
    trains: HashMap<Duration, Train>,
}

impl Trains {
    /// No trains yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the lowest free slot of `interval`'s train and returns it with
    /// its phase in `[0, interval)`. A new train starts at
    /// `random_start(interval)` (taken modulo the interval). When more
    /// streams share an interval than it has room for at
    /// [`TRAIN_SPACING`], the train wraps and slots share phases.
    pub fn take(
        &mut self,
        interval: Duration,
        random_start: impl FnOnce(Duration) -> Duration,
    ) -> (TrainSlot, Duration) {
        let train = self.trains.entry(interval).or_insert_with(|| Train {
            start: random_start(interval),
            used: BTreeSet::new(),
        });
        // The lowest number not in use: slots are handed out low first.
        let slot = train
            .used
            .iter()
            .enumerate()
            .find(|(i, s)| *i as u64 != **s)
            .map_or(train.used.len() as u64, |(i, _)| i as u64);
        train.used.insert(slot);
        let phase = phase(train.start, slot, interval);
        (TrainSlot { interval, slot }, phase)
    }

    /// Gives `slot` back; a train with no slot left is forgotten, so the
    /// next stream of that interval starts a new one.
    pub fn release(&mut self, slot: TrainSlot) {
        if let Some(train) = self.trains.get_mut(&slot.interval) {
            train.used.remove(&slot.slot);
            if train.used.is_empty() {
                self.trains.remove(&slot.interval);
            }
        }
    }

    /// Slots in use, over every train.
    pub fn len(&self) -> usize {
        self.trains.values().map(|t| t.used.len()).sum()
    }

    /// Whether no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.trains.is_empty()
    }
}

/// `(start + slot * TRAIN_SPACING) mod interval`.
fn phase(start: Duration, slot: u64, interval: Duration) -> Duration {
    let interval_ns = interval.as_nanos().max(1);
    let offset = start.as_nanos() + TRAIN_SPACING.as_nanos() * u128::from(slot);
    let ns = offset % interval_ns;
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_interval_is_one_train_spaced_by_the_train_spacing() {
        let mut t = Trains::new();
        let phases: Vec<Duration> = (0..5).map(|_| t.take(ms(1000), |_| ms(300)).1).collect();
        assert_eq!(phases, vec![ms(300), ms(301), ms(302), ms(303), ms(304)]);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn the_start_is_drawn_once_per_train_and_taken_modulo_the_interval() {
        let mut t = Trains::new();
        let mut draws = 0;
        let a = t.take(ms(10), |i| {
            draws += 1;
            i + ms(4)
        });
        let b = t.take(ms(10), |_| unreachable!("the train exists"));
        assert_eq!((a.1, b.1), (ms(4), ms(5)));
        assert_eq!(draws, 1);
        // Another interval is another train with its own start.
        let c = t.take(ms(1000), |_| ms(900));
        assert_eq!(c.1, ms(900));
    }

    #[test]
    fn a_full_train_wraps_around_its_interval() {
        let mut t = Trains::new();
        let phases: Vec<Duration> = (0..5).map(|_| t.take(ms(3), |_| ms(1)).1).collect();
        assert_eq!(phases, vec![ms(1), ms(2), ms(0), ms(1), ms(2)]);
    }

    #[test]
    fn freed_slots_are_reused_lowest_first_and_an_empty_train_is_forgotten() {
        let mut t = Trains::new();
        let s: Vec<(TrainSlot, Duration)> = (0..4).map(|_| t.take(ms(1000), |_| ms(0))).collect();
        t.release(s[2].0);
        t.release(s[1].0);
        assert_eq!(t.take(ms(1000), |_| ms(0)).1, ms(1));
        assert_eq!(t.take(ms(1000), |_| ms(0)).1, ms(2));
        assert_eq!(t.take(ms(1000), |_| ms(0)).1, ms(4));
        for slot in [s[0].0, s[3].0] {
            t.release(slot);
        }
        assert_eq!(t.len(), 3);
        // Releasing twice or a slot of no train is harmless.
        t.release(s[0].0);
        t.release(TrainSlot {
            interval: ms(7),
            slot: 0,
        });
        assert_eq!(t.len(), 3);
        let mut u = Trains::new();
        let only = u.take(ms(1000), |_| ms(10));
        u.release(only.0);
        assert!(u.is_empty());
        assert_eq!(
            u.take(ms(1000), |_| ms(20)).1,
            ms(20),
            "a new train, a new start"
        );
    }
}
