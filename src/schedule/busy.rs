//! Who is in a bandwidth burst when: the one question the sample guard
//! (`probe::guard`) asks of whichever component owns the slot schedule.

/// Which nodes take part in a bandwidth burst in a given slot.
pub trait BusyNodes: Send + Sync {
    /// Whether `node` is in a burst (as initiator or responder) in slot
    /// `slot` (slot `i` starts at `i · slot length` since the Unix epoch).
    fn busy(&self, slot: u64, node: &str) -> bool;
}
