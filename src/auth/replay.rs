//! Freshness of authenticated requests: the timestamp must be within a
//! window of the responder's clock, and a nonce is accepted once while its
//! timestamp could still pass that check. Pure: the caller passes the time.
//!
//! Only requests whose MAC verified reach this check, so nobody without the
//! key can fill the nonce memory; it is bounded anyway.

use std::collections::{HashSet, VecDeque};

use crate::proto::bandwidth::{Seal, NONCE_LEN};

/// How far a request's timestamp may be from the responder's clock.
pub(crate) const WINDOW_MS: u64 = 30_000;
/// Most nonces remembered; beyond that requests are refused until old
/// ones expire (thousands of authenticated bursts a minute: never in
/// practice).
pub(crate) const MAX_NONCES: usize = 65_536;

/// Why a request with a valid MAC is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The timestamp is outside ±30 s of this node's clock.
    #[error("timestamp outside the ±30 s window")]
    Stale,
    /// The nonce was already used.
    #[error("replayed nonce")]
    Replayed,
    /// The nonce memory is full.
    #[error("too many recent requests")]
    Full,
}

/// The nonces seen within the window.
#[derive(Debug, Default)]
pub struct Freshness {
    seen: HashSet<[u8; NONCE_LEN]>,
    /// (forget after, ms since the epoch; nonce), in arrival order.
    expiry: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl Freshness {
    /// An empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `seal` at `now_ms` (ms since the epoch) once.
    pub fn check(&mut self, seal: &Seal, now_ms: u64) -> Result<(), Refusal> {
        self.forget(now_ms);
        if seal.timestamp_ms.abs_diff(now_ms) > WINDOW_MS {
            return Err(Refusal::Stale);
        }
        if self.seen.contains(&seal.nonce) {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(Refusal::Full);
        }
        self.seen.insert(seal.nonce);
        // Kept until its timestamp leaves the window: a replay after that
        // fails as stale.
        let until = seal.timestamp_ms.saturating_add(WINDOW_MS);
        // Expiry order follows arrival, not timestamps; an entry whose
        // time came is dropped once the ones before it are.
        self.expiry.push_back((until, seal.nonce));
        Ok(())
    }

    fn forget(&mut self, now_ms: u64) {
        while let Some((until, nonce)) = self.expiry.front() {
            // Arrival order: timestamps are within ±window of arrival, so
            // an entry at the front is at most 2·window late to go.
            if *until >= now_ms {
                break;
            }
            self.seen.remove(nonce);
            self.expiry.pop_front();
        }
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(ts: u64, n: u8) -> Seal {
        Seal {
            timestamp_ms: ts,
            nonce: [n; NONCE_LEN],
        }
    }

    #[test]
    fn window_is_thirty_seconds_each_way() {
        let mut f = Freshness::new();
        let now = 1_000_000;
        assert_eq!(f.check(&seal(now - WINDOW_MS, 1), now), Ok(()));
        assert_eq!(f.check(&seal(now + WINDOW_MS, 2), now), Ok(()));
        assert_eq!(
            f.check(&seal(now - WINDOW_MS - 1, 3), now),
            Err(Refusal::Stale)
        );
        assert_eq!(
            f.check(&seal(now + WINDOW_MS + 1, 4), now),
            Err(Refusal::Stale)
        );
        assert_eq!(f.check(&seal(0, 5), u64::MAX), Err(Refusal::Stale));
    }

    #[test]
    fn a_nonce_is_accepted_once_and_forgotten_when_stale() {
        let mut f = Freshness::new();
        let now = 1_000_000;
        assert_eq!(f.check(&seal(now, 7), now), Ok(()));
        assert_eq!(f.check(&seal(now, 7), now + 1), Err(Refusal::Replayed));
        // Same nonce, other timestamp: still a replay.
        assert_eq!(f.check(&seal(now + 5, 7), now + 10), Err(Refusal::Replayed));
        assert_eq!(f.len(), 1);
        // Once the original timestamp left the window, the memory is freed
        // and a replay of the original fails as stale.
        let later = now + WINDOW_MS + 1;
        assert_eq!(f.check(&seal(now, 7), later), Err(Refusal::Stale));
        assert!(f.is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let mut f = Freshness::new();
        let now = 1_000_000;
        for i in 0..MAX_NONCES {
            let mut s = seal(now, 0);
            s.nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert_eq!(f.check(&s, now), Ok(()));
        }
        assert_eq!(f.check(&seal(now, 0xee), now), Err(Refusal::Full));
        assert_eq!(
            f.check(&seal(now + 2 * WINDOW_MS, 0xee), now + 2 * WINDOW_MS),
            Ok(())
        );
        assert_eq!(f.len(), 1);
    }
}
