//! Probes in flight of one stream, matched by sequence number. Open loop:
//! any number may be outstanding; a probe not answered by its deadline is a
//! loss, and a reply to it afterwards is told apart as late.

use std::collections::VecDeque;
use std::time::Instant;

/// Most probes kept in flight per stream; beyond that the oldest is counted
/// lost early, so a stuck stream cannot grow without bound.
pub const MAX_IN_FLIGHT: usize = 4096;
/// How many lost sequence numbers are remembered to recognise late replies.
pub const LATE_MEMORY: usize = 1024;

/// The outcome of matching a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match<T> {
    /// The reply answers a probe in flight; here is what was stored at send.
    Answered(T),
    /// The probe was already counted lost.
    Late,
    /// Never sent, already answered (duplicate), or forgotten.
    Unknown,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    seq: u64,
    deadline: Instant,
    // None once answered; the entry stays until it reaches the front.
    info: Option<T>,
}

/// The in-flight table of one stream. Sequence numbers must be inserted in
/// increasing order and deadlines must not decrease (one timeout per
/// stream), which keeps the table sorted on both.
#[derive(Debug, Clone)]
pub struct InFlight<T> {
    pending: VecDeque<Entry<T>>,
    expired: VecDeque<u64>,
    outstanding: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self {
            pending: VecDeque::new(),
            expired: VecDeque::new(),
            outstanding: 0,
        }
    }
}

impl<T> InFlight<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records probe `seq`, due by `deadline`. Returns how many older probes
    /// had to be counted lost to stay within [`MAX_IN_FLIGHT`] (0 or 1).
    pub fn insert(&mut self, seq: u64, deadline: Instant, info: T) -> usize {
        let mut lost = 0;
        if self.pending.len() >= MAX_IN_FLIGHT {
            if let Some(e) = self.pending.pop_front() {
                if e.info.is_some() {
                    self.outstanding -= 1;
                    self.remember_lost(e.seq);
                    lost = 1;
                }
            }
        }
        self.pending.push_back(Entry {
            seq,
            deadline,
            info: Some(info),
        });
        self.outstanding += 1;
        lost
    }

    /// Matches a reply to probe `seq`.
    pub fn complete(&mut self, seq: u64) -> Match<T> {
        if let Ok(i) = self.pending.binary_search_by_key(&seq, |e| e.seq) {
            let taken = self.pending.get_mut(i).and_then(|e| e.info.take());
            return match taken {
                Some(info) => {
                    self.outstanding -= 1;
                    self.drop_answered_front();
                    Match::Answered(info)
                }
                None => Match::Unknown,
            };
        }
        if let Some(i) = self.expired.iter().position(|s| *s == seq) {
            // Forget it, so a duplicate of the late reply is Unknown.
            self.expired.remove(i);
            return Match::Late;
        }
        Match::Unknown
    }

    /// Counts and forgets the probes whose deadline is at or before `now`;
    /// returns how many were lost.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut lost = 0;
        self.expire_each(now, |_| lost += 1);
        lost
    }

    /// Forgets the probes whose deadline is at or before `now`, handing
    /// what was stored for each lost one to `lost`.
    pub fn expire_each(&mut self, now: Instant, mut lost: impl FnMut(T)) {
        while let Some(e) = self.pending.front() {
            if e.info.is_some() && e.deadline > now {
                break;
            }
            if let Some(e) = self.pending.pop_front() {
                if let Some(info) = e.info {
                    self.outstanding -= 1;
                    self.remember_lost(e.seq);
                    lost(info);
                }
            }
        }
    }

    /// The earliest deadline of a probe still unanswered.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .find(|e| e.info.is_some())
            .map(|e| e.deadline)
    }

    /// Probes sent and neither answered nor lost yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn drop_answered_front(&mut self) {
        while self.pending.front().is_some_and(|e| e.info.is_none()) {
            self.pending.pop_front();
        }
    }

    fn remember_lost(&mut self, seq: u64) {
        if self.expired.len() >= LATE_MEMORY {
            self.expired.pop_front();
        }
        self.expired.push_back(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn answers_losses_late_and_unknown() {
        let t0 = Instant::now();
        let mut f = InFlight::new();
        for seq in 0..4u64 {
            assert_eq!(f.insert(seq, t0 + ms(100 + seq * 10), seq * 2), 0);
        }
        assert_eq!(f.outstanding(), 4);
        // Out-of-order answers are fine (open loop).
        assert_eq!(f.complete(2), Match::Answered(4));
        assert_eq!(f.complete(2), Match::Unknown, "duplicate");
        assert_eq!(f.complete(0), Match::Answered(0));
        assert_eq!(f.complete(99), Match::Unknown, "never sent");
        assert_eq!(f.next_deadline(), Some(t0 + ms(110)));
        // Nothing is due yet.
        assert_eq!(f.expire(t0 + ms(105)), 0);
        // Seq 1 (due 110) and 3 (due 130) are lost; 2 was answered.
        assert_eq!(f.expire(t0 + ms(130)), 2);
        assert_eq!(f.outstanding(), 0);
        assert_eq!(f.next_deadline(), None);
        assert_eq!(f.complete(3), Match::Late);
        assert_eq!(f.complete(3), Match::Unknown, "late reply counted once");
        assert_eq!(f.complete(1), Match::Late);
    }

    #[test]
    fn overflow_counts_the_oldest_lost() {
        let t0 = Instant::now();
        let mut f = InFlight::new();
        let mut lost = 0;
        for seq in 0..(MAX_IN_FLIGHT as u64 + 10) {
            lost += f.insert(seq, t0 + ms(seq), ());
        }
        assert_eq!(lost, 10);
        assert_eq!(f.outstanding(), MAX_IN_FLIGHT);
        assert_eq!(f.complete(0), Match::Late);
    }

    #[test]
    fn late_memory_is_bounded() {
        let t0 = Instant::now();
        let mut f = InFlight::new();
        let n = LATE_MEMORY as u64 + 5;
        for seq in 0..n {
            f.insert(seq, t0, ());
        }
        assert_eq!(f.expire(t0), n as usize);
        assert_eq!(f.complete(0), Match::Unknown, "forgotten");
        assert_eq!(f.complete(n - 1), Match::Late);
    }
}
