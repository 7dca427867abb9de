//! Bandwidth bursts on the cluster-wide slot schedule
//! ([`crate::schedule::slots`]): at every slot boundary the agent computes,
//! from the full peer list, the bursts it initiates in that slot, and runs
//! them at their offsets. Every agent computes the same schedule, so no node
//! is in two bursts at once and the duty cycle stays under its budget with
//! no coordinator.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::discovery::Target;
use crate::probe::ProbeContext;
use crate::schedule::slots::{my_bursts, SlotConfig};

use super::{run_job, Kind};

/// Time since the epoch; a wall clock before 1970 reads as 0, which only
/// delays the schedule.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Runs this agent's scheduled bursts until shutdown.
pub(super) async fn run(ctx: ProbeContext, cfg: SlotConfig) {
    tracing::debug!(slot = ?cfg.slot, max_pairs = cfg.max_pairs,
        duty_budget = cfg.duty_budget, "Bandwidth slot schedule started");
    loop {
        // Wall-clock slots: every agent's clock must agree to within a
        // fraction of a slot (NTP does far better; the clock offset metric
        // shows when it does not).
        let now = since_epoch();
        let slot = cfg.slot_at(now).saturating_add(1);
        let wait = cfg.slot_start(slot).saturating_sub(now);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let peers = ctx.all_peers.borrow().clone();
        let slot_began = tokio::time::Instant::now();
        for burst in my_bursts(slot, &ctx.identity, &peers, &cfg) {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(slot_began + burst.offset) => {}
            }
            let target = Target {
                peer: burst.peer,
                path: burst.path,
            };
            tracing::debug!(slot, peer = %target.peer.name, path = %target.path, "Slot burst");
            let job_ctx = ctx.clone();
            let job =
                tokio::task::spawn_blocking(move || run_job(Kind::Bandwidth, &job_ctx, &target));
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                r = job => if let Err(e) = r {
                    tracing::error!(error = %e, "Bandwidth burst job panicked");
                }
            }
        }
    }
}
