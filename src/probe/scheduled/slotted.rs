//! Bandwidth bursts on the cluster-wide slot schedule: at every slot
//! boundary the agent takes the bursts it initiates in that slot from the
//! controller's plan ([`crate::plan::bandwidth`]) or, without a controller
//! (static and local mode), computes them from the full peer list
//! ([`crate::schedule::slots`]), and runs them at their offsets. Either way
//! every agent follows the same schedule, so no node is in two bursts at
//! once and the duty cycle stays under its budget.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::peer::Target;
use crate::plan::node_plan::plan_bursts;
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
        let plan = ctx.plan.borrow().clone();
        let bursts = match plan {
            // The controller's schedule, the same for every agent.
            Some(plan) => plan_bursts(slot, &ctx.identity, &plan, &cfg),
            None => {
                let peers = ctx.all_peers.borrow().clone();
                my_bursts(slot, &ctx.identity, &peers, &cfg)
            }
        };
        let slot_began = tokio::time::Instant::now();
        for burst in bursts {
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
