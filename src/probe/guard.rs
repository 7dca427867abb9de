//! Keeping the agent's own traffic out of its latency results.
//!
//! A bandwidth burst fills the queues of the path it crosses: latency probes
//! in flight while a burst involves either end's node would measure
//! kubepulse, not the network. Every prober asks a [`SampleGuard`] before it
//! books a probe's outcome; an excluded probe is counted in
//! `kubepulse_probe_excluded_total` and nowhere else (not in sent, lost,
//! replies, RTT, jitter, the windowed minimum or the clock offset), so
//! `sent − lost` stays the number of kept replies.

use crate::metrics::labels::ExcludeReason;

/// Decides whether a probe's outcome must be kept out of the statistics.
pub trait SampleGuard: Send + Sync {
    /// Why a probe to an agent on `peer_node`, in flight from `sent_ns` to
    /// `done_ns` (wall clock, ns since the Unix epoch), must be excluded;
    /// `None` keeps it. Called once per probe outcome on the prober's
    /// thread: it must be cheap and must not block.
    fn exclude(&self, peer_node: &str, sent_ns: u64, done_ns: u64) -> Option<ExcludeReason>;
}

/// Keeps every outcome: no bandwidth bursts run, or none can interfere.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl SampleGuard for KeepAll {
    fn exclude(&self, _peer_node: &str, _sent_ns: u64, _done_ns: u64) -> Option<ExcludeReason> {
        None
    }
}
