//! Scheduled probes: TCP connect, HTTP, path MTU and bandwidth.
//!
//! One tokio task per enabled probe kind follows the target set and keeps
//! an absolute schedule per target (`phase + k * interval`, random phase).
//! Scheduling runs on tokio (cadences of seconds to minutes); each probe
//! itself runs with blocking sockets on the blocking pool and is timed with
//! `Instant`, so its timing is not shaped by the runtime. Every probe is
//! its own blocking job, so a slow or dead peer never delays the others;
//! a kind has a bounded number of jobs in flight, and a target whose
//! previous probe is still running skips its slot rather than stacking up.
//! Bandwidth has a single permit: never two bursts at once on one agent.
//! With `schedule: slots` (the default outside local mode) bandwidth runs on
//! the cluster-wide slot schedule instead (`slotted`).

mod bandwidth;
mod connect;
pub(crate) mod goodput;
mod http;
#[cfg(fuzzing)]
pub(crate) use http::fuzz_response_head;
mod pmtu;
mod slotted;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::ProbeContext;
use crate::config::BandwidthSchedule;
use crate::metrics::labels::{BurstOutcome, Direction, HttpPhase, ProbeErrorReason, Protocol};
use crate::peer::Target;
use crate::proto::bandwidth::Mode;
use crate::schedule::train::{TrainSlot, Trains};
use crate::schedule::{random_below, Periodic};

use super::rounds::next_slot;

/// Connect and HTTP probes in flight at once per kind. At the default
/// cadences this is far above need; it only bounds threads when many peers
/// are unreachable and each job waits for its full timeout.
const MAX_IN_FLIGHT: usize = 32;
/// Path MTU searches in flight at once (a blackholed path takes seconds).
const MAX_PMTU_IN_FLIGHT: usize = 4;
/// The first path MTU search of a peer starts within this delay, whatever
/// the interval (10 min by default), so a bad path shows up soon.
const PMTU_FIRST_SPREAD: Duration = Duration::from_secs(10);
/// On shutdown, how long a kind waits for its running jobs (which check
/// the shutdown token between steps) before leaving them to finish alone.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A scheduled probe kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TcpConnect,
    Http,
    Pmtu,
    Bandwidth,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::TcpConnect => "tcp_connect",
            Kind::Http => "http",
            Kind::Pmtu => "pmtu",
            Kind::Bandwidth => "bandwidth",
        }
    }

    /// (enabled, interval, spread of the first run, jobs in flight).
    fn plan(self, ctx: &ProbeContext) -> (bool, Duration, Duration, usize) {
        let s = &ctx.settings;
        match self {
            Kind::TcpConnect => (
                s.tcp_connect.enabled,
                s.tcp_connect.interval,
                s.tcp_connect.interval,
                MAX_IN_FLIGHT,
            ),
            Kind::Http => (
                s.http.enabled,
                s.http.interval,
                s.http.interval,
                MAX_IN_FLIGHT,
            ),
            Kind::Pmtu => (
                s.pmtu.enabled,
                s.pmtu.interval,
                s.pmtu.interval.min(PMTU_FIRST_SPREAD),
                MAX_PMTU_IN_FLIGHT,
            ),
            // One permit: the semaphore is the agent-wide bandwidth lock.
            Kind::Bandwidth => (
                s.bandwidth.enabled,
                s.bandwidth.interval,
                s.bandwidth.interval,
                1,
            ),
        }
    }
}

/// Starts one task per enabled scheduled probe kind.
pub fn start(ctx: ProbeContext) -> Vec<JoinHandle<()>> {
    [Kind::TcpConnect, Kind::Http, Kind::Pmtu, Kind::Bandwidth]
        .into_iter()
        .filter_map(|kind| {
            let (enabled, interval, _, _) = kind.plan(&ctx);
            if !enabled {
                return None;
            }
            if interval.is_zero() {
                tracing::warn!(probe = kind.name(), "Interval is zero; probe disabled");
                return None;
            }
            if kind == Kind::Bandwidth
                && ctx.settings.bandwidth.schedule == BandwidthSchedule::Slots
            {
                let slots = ctx.settings.bandwidth.slots;
                return Some(tokio::spawn(slotted::run(ctx.clone(), slots)));
            }
            Some(tokio::spawn(run(ctx.clone(), kind)))
        })
        .collect()
}

/// Follows the targets and runs `kind` on each at its slots until shutdown.
async fn run(ctx: ProbeContext, kind: Kind) {
    let (_, interval, first_spread, in_flight) = kind.plan(&ctx);
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut targets_rx = ctx.targets.clone();
    let mut due: HashMap<Target, Instant> = HashMap::new();
    let mut running: HashSet<Target> = HashSet::new();
    let mut ids: HashMap<tokio::task::Id, Target> = HashMap::new();
    let mut jobs: JoinSet<()> = JoinSet::new();
    // The short probes go out as a train, as the latency streams do (see
    // schedule::train): a thread woken a millisecond after its last job
    // costs less than one woken after a long sleep. Not bursts (one at a
    // time, spread so they do not run back to back) nor PMTU searches.
    let in_train = matches!(kind, Kind::TcpConnect | Kind::Http);
    let epoch = Instant::now();
    let mut trains = Trains::new();
    let mut train_slots: HashMap<Target, TrainSlot> = HashMap::new();
    let mut sync = true;
    // False once the publisher is gone: keep probing the last target set.
    let mut watching = true;
    tracing::debug!(probe = kind.name(), ?interval, "Scheduled probe started");
    loop {
        if sync {
            sync = false;
            let current = targets_rx.borrow_and_update().clone();
            let now = Instant::now();
            let keep: HashSet<&Target> = current.iter().collect();
            due.retain(|t, _| keep.contains(t));
            train_slots.retain(|t, slot| {
                let stays = keep.contains(t);
                if !stays {
                    trains.release(*slot);
                }
                stays
            });
            for t in current.iter() {
                due.entry(t.clone()).or_insert_with(|| {
                    if !in_train {
                        return now + random_below(first_spread);
                    }
                    let (slot, phase) = trains.take(interval, random_below);
                    train_slots.insert(t.clone(), slot);
                    let next = Periodic::aligned(epoch.into_std(), phase, interval, now.into_std());
                    Instant::from_std(next.next_deadline())
                });
            }
        }

        // Launch every due target while permits last, earliest first.
        let now = Instant::now();
        let mut ready: Vec<(Instant, Target)> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, at)| (*at, t.clone()))
            .collect();
        ready.sort_by_key(|(at, _)| *at);
        for (at, target) in ready {
            if running.contains(&target) {
                tracing::debug!(probe = kind.name(), peer = %target.peer.name,
                    "Previous probe still running; slot skipped");
            } else {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Stays due; retried when a running job finishes.
                    break;
                };
                let job_ctx = ctx.clone();
                let t = target.clone();
                let handle = jobs.spawn_blocking(move || {
                    run_job(kind, &job_ctx, &t);
                    drop(permit);
                });
                ids.insert(handle.id(), target.clone());
                running.insert(target.clone());
            }
            due.insert(target, next_slot(at, interval, now));
        }

        // Sleep until the next slot (a running target's too, so its slot
        // is skipped on time), unless nothing can start without a permit:
        // then a finishing job wakes us and late slots start late.
        let wake = if permits.available_permits() > 0 {
            due.values().min().copied()
        } else {
            None
        };
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            changed = targets_rx.changed(), if watching => {
                if changed.is_err() {
                    tracing::debug!(probe = kind.name(), "Target publisher gone; keeping the last set");
                    watching = false;
                } else {
                    sync = true;
                }
            }
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(probe = kind.name(), error = %e, "Probe job panicked");
                        e.id()
                    }
                };
                if let Some(t) = ids.remove(&id) {
                    running.remove(&t);
                }
            }
            _ = sleep_until_opt(wake) => {}
        }
    }
    // Jobs see the cancelled token between steps; give them a moment.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while jobs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            probe = kind.name(),
            left = jobs.len(),
            "Leaving probes to finish alone"
        );
        jobs.detach_all();
    }
    tracing::debug!(probe = kind.name(), "Scheduled probe stopped");
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Wall clock, ns since the epoch (the sample guard's clock).
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Whether the sample guard excludes a probe in flight from `sent_ns` until
/// now; an excluded probe is counted as such and booked nowhere else.
fn excluded(ctx: &ProbeContext, target: &Target, protocol: Protocol, sent_ns: u64) -> bool {
    let Some(reason) = ctx.guard.exclude(&target.peer.node, sent_ns, unix_ns()) else {
        return false;
    };
    ctx.metrics.probe_excluded(protocol, target.path, reason);
    true
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One probe of `kind` to `target`, on a blocking thread; results go to
/// the metrics.
fn run_job(kind: Kind, ctx: &ProbeContext, target: &Target) {
    let peer = &target.peer;
    let path = target.path;
    let m = &ctx.metrics;
    let s = &ctx.settings;
    let at = |port: u16| SocketAddr::new(peer.address, port);
    match kind {
        Kind::TcpConnect => {
            let sent_ns = unix_ns();
            let r = connect::probe(at(peer.ports.tcp_echo), ctx.bind, s.tcp_connect.timeout);
            if excluded(ctx, target, Protocol::Tcp, sent_ns) {
                return;
            }
            match r {
                Ok(d) => m.observe_tcp_connect(path, d),
                Err(e) => {
                    tracing::debug!(peer = %peer.name, error = %e, "TCP connect probe failed");
                    m.probe_error(Protocol::Tcp, path, ProbeErrorReason::ConnectFailed);
                }
            }
        }
        Kind::Http => match (
            unix_ns(),
            http::probe(at(peer.ports.http), ctx.bind, s.http.timeout),
        ) {
            (sent_ns, _) if excluded(ctx, target, Protocol::Http, sent_ns) => {}
            // Phases are recorded for complete 2xx responses only, so the
            // three histograms describe the same probes.
            (_, Ok(p)) => {
                m.observe_http_phase(path, HttpPhase::FirstByte, p.first_byte);
                m.observe_http_phase(path, HttpPhase::Transfer, p.transfer);
                let total = p.connect + p.first_byte + p.transfer;
                m.observe_http_phase(path, HttpPhase::Total, total);
                tracing::trace!(peer = %peer.name, body = p.body_bytes, "HTTP probe done");
            }
            (_, Err(e)) => {
                tracing::debug!(peer = %peer.name, error = %e, "HTTP probe failed");
                let reason = match e {
                    http::HttpError::Connect(_) => ProbeErrorReason::ConnectFailed,
                    http::HttpError::Send(_) => ProbeErrorReason::SendFailed,
                    _ => ProbeErrorReason::BadReply,
                };
                m.probe_error(Protocol::Http, path, reason);
            }
        },
        Kind::Pmtu => match pmtu::search(at(peer.ports.udp_echo), ctx.bind, &s.pmtu, &ctx.shutdown)
        {
            Ok(r) => m.set_path_mtu(path, &peer.node, r.path_mtu, r.interface_mtu),
            Err(pmtu::PmtuError::Cancelled) => {}
            Err(e @ pmtu::PmtuError::NothingDelivered { .. }) => {
                // No size got through: the previous value (if any) stays;
                // the UDP latency probe reports the loss.
                tracing::warn!(peer = %peer.name, path = %path, error = %e, "Path MTU search found nothing");
            }
            Err(e) => {
                tracing::warn!(peer = %peer.name, error = %e, "Path MTU search failed");
                m.probe_error(Protocol::Udp, path, ProbeErrorReason::SendFailed);
            }
        },
        Kind::Bandwidth => {
            let b = &s.bandwidth;
            // Without a usable key there is no burst to count, not a failed
            // one: the key file's reader logged why, once, and
            // kubepulse_burst_key_state says so.
            let Some(keys) = ctx.burst_keys.current() else {
                tracing::debug!(peer = %peer.name, "No burst key; burst skipped");
                return;
            };
            // Both directions back to back under the same permit.
            for (mode, dir) in [
                (Mode::Sink, Direction::Send),
                (Mode::Source, Direction::Receive),
            ] {
                if ctx.shutdown.is_cancelled() {
                    return;
                }
                let r = bandwidth::burst(
                    at(peer.ports.bandwidth),
                    ctx.bind,
                    mode,
                    b.byte_cap(),
                    b.duration,
                    &keys,
                    &ctx.shutdown,
                );
                match r {
                    Ok(bandwidth::Burst::Done {
                        goodput,
                        retrans,
                        tcp,
                    }) => {
                        // srtt - min_rtt is the queueing the burst built up.
                        tracing::debug!(peer = %peer.name, direction = %dir,
                            bytes_per_sec = goodput.bytes_per_sec, total = goodput.total_bytes,
                            window = ?goodput.window, retrans,
                            srtt = ?tcp.map(|t| t.rtt), min_rtt = ?tcp.and_then(|t| t.min_rtt),
                            delivery_rate = ?tcp.and_then(|t| t.delivery_rate), "Burst done");
                        m.record_burst(
                            path,
                            &peer.node,
                            dir,
                            goodput.bytes_per_sec,
                            retrans,
                            unix_now(),
                        );
                    }
                    Ok(bandwidth::Burst::Busy) => m.burst_outcome(path, dir, BurstOutcome::Busy),
                    Err(bandwidth::BurstError::Cancelled) => return,
                    Err(e) => {
                        tracing::warn!(peer = %peer.name, direction = %dir, error = %e, "Burst failed");
                        m.burst_outcome(path, dir, BurstOutcome::Error);
                    }
                }
            }
        }
    }
}
