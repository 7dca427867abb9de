//! One agent: responders, the latency engine, the scheduled probes, and the
//! task that turns discovered peers into probe targets.

mod run;

pub use run::run;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::BurstKeys;
use crate::config::{BandwidthSchedule, BandwidthSettings, DiscoveryMode, Settings};
use crate::discovery::Discovery;
use crate::metrics::labels::Protocol;
use crate::metrics::{budget, AgentMetrics};
use crate::peer::PathKind;
use crate::peer::{self, Identity, PeerSet, ProbePorts, Target};
use crate::plan::{lifecycle, AgentLifecycle, PlanOrComputed, PlanWatch};
use crate::probe::burst_guard::{BurstGuard, BurstWindows};
use crate::probe::guard::{KeepAll, SampleGuard};
use crate::probe::{self, latency::LatencyProber, ProbeContext, TargetSet};
use crate::responder::{self, Responders};
use crate::schedule::computed::ComputedSchedule;
use crate::Result;

/// A running agent.
pub struct RunningAgent {
    /// The agent's identity.
    pub identity: Identity,
    /// The ports its responders actually bound.
    pub ports: ProbePorts,
    responders: Responders,
    latency: LatencyProber,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// Waits for every part to stop; call after cancelling the shutdown token.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.responders.join().await;
        let latency = self.latency;
        // The engine thread exits within one poll interval of cancellation.
        let _ = tokio::task::spawn_blocking(move || latency.join()).await;
    }
}

/// The protocols whose series are created for every target.
pub fn enabled_protocols(s: &Settings) -> Vec<Protocol> {
    let p = &s.probes;
    [
        (Protocol::Udp, p.udp.enabled),
        (Protocol::Tcp, p.tcp.enabled),
        (Protocol::Icmp, p.icmp.enabled),
        (Protocol::Http, p.http.enabled),
    ]
    .into_iter()
    .filter_map(|(proto, on)| on.then_some(proto))
    .collect()
}

/// The per-peer series keys a target set uses.
fn series_keys(targets: &[Target]) -> HashSet<(PathKind, String)> {
    targets
        .iter()
        .map(|t| (t.path, t.peer.node.clone()))
        .collect()
}

/// Keys present in `old` and gone from `new`: their series are removed.
/// Two peers can share a key (a pod replaced on the same node), so a key is
/// removed only when no remaining target uses it.
pub fn departed_keys(old: &[Target], new: &[Target]) -> Vec<(PathKind, String)> {
    let keep = series_keys(new);
    let mut gone: Vec<_> = series_keys(old).difference(&keep).cloned().collect();
    gone.sort();
    gone
}

fn path_counts(targets: &[Target]) -> Vec<(PathKind, usize)> {
    PathKind::ALL
        .iter()
        .map(|p| (*p, targets.iter().filter(|t| t.path == *p).count()))
        .collect()
}

/// Follows `peers`, publishing this agent's targets and keeping the per-peer
/// series in step (created at zero on arrival, removed on departure), and
/// `plan`, exporting what the plan's lifecycle means for those targets
/// (peers not Ready, peer nodes expected down).
#[allow(clippy::too_many_arguments)]
fn spawn_target_publisher(
    identity: Identity,
    protocols: Vec<Protocol>,
    max_series: usize,
    metrics: AgentMetrics,
    mut peers: watch::Receiver<PeerSet>,
    mut plan: watch::Receiver<PlanWatch>,
    tx: watch::Sender<TargetSet>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut over_budget = 0;
        let mut peers_changed = true;
        // Sources without a controller drop their plan sender at once.
        let mut plan_open = true;
        let mut shown = AgentLifecycle::default();
        loop {
            if peers_changed {
                let snapshot = peers.borrow_and_update().clone();
                let (new, dropped) = budget::fit(peer::targets(&identity, &snapshot), max_series);
                if dropped != over_budget && dropped > 0 {
                    tracing::warn!(agent = %identity.name, dropped, max_series,
                        "Series budget reached: some targets are not probed (raise metrics.max_series or lower the fan-out)");
                }
                over_budget = dropped;
                metrics.set_targets_over_budget(dropped);
                let old = tx.borrow().clone();
                for (path, node) in departed_keys(&old, &new) {
                    tracing::info!(path = %path, peer_node = %node, "Peer left; removing its series");
                    metrics.remove_peer(path, &node);
                }
                for t in &new {
                    metrics.precreate_peer(t.path, &t.peer.node, &protocols);
                }
                metrics.set_peer_counts(&path_counts(&new));
                tracing::info!(agent = %identity.name, targets = new.len(), "Probe targets updated");
                tx.send_replace(Arc::new(new));
            }
            let current = plan.borrow_and_update().clone();
            let view = current
                .as_deref()
                .map_or_else(AgentLifecycle::default, |p| {
                    lifecycle::agent_lifecycle(&identity, &tx.borrow(), &p.peers, &p.lifecycle)
                });
            if view != shown {
                log_lifecycle(&identity, &shown, &view);
                metrics.set_peers_not_ready(view.peers_not_ready);
                metrics.set_expected_down(&view.expected_down);
                shown = view;
            }
            tokio::select! {
                changed = peers.changed() => {
                    if changed.is_err() { break }
                    peers_changed = true;
                }
                changed = plan.changed(), if plan_open => {
                    plan_open = changed.is_ok();
                    peers_changed = false;
                }
                _ = shutdown.cancelled() => break,
            }
        }
    })
}

/// How often the key watch looks at the burst key file. Bursts and burst
/// requests look too, as they come; this keeps the state metric current
/// when none come, well within the kubelet's own delay in updating a
/// mounted Secret (a minute or more).
const KEY_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `kubepulse_burst_key_state` current: set now, before the agent
/// reports ready, then after every look. A look also logs a change of
/// state, once (`BurstKeys`).
fn spawn_key_watch(
    keys: Arc<BurstKeys>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    metrics.set_burst_key_state(keys.state());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(KEY_WATCH_INTERVAL) => {}
                _ = shutdown.cancelled() => break,
            }
            // A stat, and a read of a few bytes when the file changed.
            metrics.set_burst_key_state(keys.state());
        }
    })
}

/// Logs what changed in the lifecycle view: peer nodes newly expected down
/// (or down for another reason), back, and the not-Ready count.
fn log_lifecycle(me: &Identity, old: &AgentLifecycle, new: &AgentLifecycle) {
    for (node, reason) in &new.expected_down {
        if old.expected_down.get(node) != Some(reason) {
            tracing::info!(agent = %me.name, peer_node = %node, %reason,
                "Peer node expected down: still probed, not for the per-peer alerts to judge");
        }
    }
    for node in old.expected_down.keys() {
        if !new.expected_down.contains_key(node) {
            tracing::info!(agent = %me.name, peer_node = %node, "Peer node no longer expected down");
        }
    }
    if old.peers_not_ready != new.peers_not_ready {
        tracing::info!(agent = %me.name, peers_not_ready = new.peers_not_ready,
            "Peers not probed because not Ready");
    }
}

/// The sample guard for this agent's bursts: on the slot schedule every
/// agent knows when either end of a path bursts; with `schedule: interval`
/// (local mode, small static setups) bursts are unscheduled and nothing is
/// excluded.
fn sample_guard(
    me: &Identity,
    all_peers: watch::Receiver<PeerSet>,
    plan: watch::Receiver<PlanWatch>,
    b: &BandwidthSettings,
) -> Arc<dyn SampleGuard> {
    if !b.enabled || b.schedule != BandwidthSchedule::Slots {
        return Arc::new(KeepAll);
    }
    let slot = b.slots.slot;
    // Pod agents burst from the slot start, host agents from its middle
    // (`schedule::slots`).
    let windows = BurstWindows::new(
        slot,
        &[Duration::ZERO, slot / 2],
        b.slot_span(),
        b.guard_drain,
    );
    let computed = ComputedSchedule::new(me.clone(), all_peers, b.slots);
    let busy = PlanOrComputed::new(plan, computed);
    Arc::new(BurstGuard::new(Arc::new(busy), me.node.clone(), windows))
}

/// How long the responders outlive the probers at shutdown: with
/// Kubernetes discovery, `agent.shutdown_grace`, the time peers need to
/// learn that this pod is terminating; static peers are never told.
fn responder_grace(settings: &Settings) -> Duration {
    match settings.discovery.mode {
        DiscoveryMode::Kubernetes => settings.agent.shutdown_grace,
        DiscoveryMode::Static => Duration::ZERO,
    }
}

/// A token cancelled `grace` after `shutdown` is.
fn delayed(shutdown: &CancellationToken, grace: Duration) -> CancellationToken {
    if grace.is_zero() {
        return shutdown.clone();
    }
    let later = CancellationToken::new();
    let (first, then) = (shutdown.clone(), later.clone());
    tokio::spawn(async move {
        first.cancelled().await;
        tracing::info!(grace = %humantime::format_duration(grace), "Answering peers' probes for the shutdown grace");
        tokio::time::sleep(grace).await;
        then.cancel();
    });
    later
}

/// Starts an agent: binds responders, then probers. Returns once everything
/// is bound, so a caller can report readiness.
pub async fn start(
    settings: &Settings,
    metrics: AgentMetrics,
    discovery: &dyn Discovery,
    shutdown: CancellationToken,
) -> Result<RunningAgent> {
    let peers = discovery.subscribe();
    let a = &settings.agent;
    let identity = Identity {
        name: a.name.clone(),
        node: a.node.clone(),
        kind: a.kind,
    };
    if a.burst_key_file.is_none() && settings.probes.bandwidth.enabled {
        tracing::warn!("No agent.burst_key_file: bandwidth bursts use a key of this process only, so agents in other processes refuse them");
    }
    // A missing or invalid key file is logged and exported, not fatal: the
    // agent runs without bursts until the file holds keys.
    let burst_keys = Arc::new(BurstKeys::new(a.burst_key_file.clone())?);
    let key_watch = spawn_key_watch(burst_keys.clone(), metrics.clone(), shutdown.clone());
    let responders = responder::start(
        a.bind_address,
        a.ports,
        settings.responder,
        burst_keys.clone(),
        metrics.clone(),
        delayed(&shutdown, responder_grace(settings)),
    )
    .await?;
    let ports = responders.ports();

    let (tx, targets) = watch::channel::<TargetSet>(Arc::new(Vec::new()));
    let publisher = spawn_target_publisher(
        identity.clone(),
        enabled_protocols(settings),
        settings.metrics.max_series,
        metrics.clone(),
        peers,
        discovery.subscribe_plan(),
        tx,
        shutdown.clone(),
    );
    let mut probes = settings.probes.clone();
    // Outside a cluster (local mode, static peers) only named servers.
    if settings.discovery.mode != DiscoveryMode::Kubernetes {
        crate::config::reach::explicit_only(&mut probes.dns, &mut probes.apiserver);
    }
    let ctx = ProbeContext {
        identity: identity.clone(),
        bind: a.bind_address,
        settings: probes,
        metrics,
        targets,
        all_peers: discovery.subscribe_all(),
        plan: discovery.subscribe_plan(),
        shutdown,
        burst_keys,
        guard: sample_guard(
            &identity,
            discovery.subscribe_all(),
            discovery.subscribe_plan(),
            &settings.probes.bandwidth,
        ),
    };
    let latency = probe::latency::start(ctx.clone())?;
    let mut tasks: Vec<JoinHandle<()>> = [probe::dns::start(&ctx), probe::apiserver::start(&ctx)]
        .into_iter()
        .flatten()
        .collect();
    tasks.extend(probe::scheduled::start(ctx));
    tasks.push(publisher);
    tasks.push(key_watch);
    tracing::info!(agent = %identity.name, node = %identity.node, kind = %identity.kind,
        udp_echo = ports.udp_echo, tcp_echo = ports.tcp_echo, bandwidth = ports.bandwidth,
        http = ports.http, "Agent started");
    Ok(RunningAgent {
        identity,
        ports,
        responders,
        latency,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::AgentKind;
    use crate::peer::Peer;

    fn target(name: &str, node: &str, path: PathKind) -> Target {
        Target {
            peer: Peer {
                name: name.into(),
                address: "127.0.0.1".parse().expect("ip"),
                node: node.into(),
                kind: AgentKind::Pod,
                ports: ProbePorts::default(),
                path: None,
            },
            path,
        }
    }

    #[test]
    fn departed_keys_keep_shared_series() {
        let old = vec![
            target("b-1", "b", PathKind::PodCrossNode),
            target("c-1", "c", PathKind::PodCrossNode),
        ];
        // b-1 replaced by b-2 on the same node: the series stays; c left.
        let new = vec![target("b-2", "b", PathKind::PodCrossNode)];
        assert_eq!(
            departed_keys(&old, &new),
            vec![(PathKind::PodCrossNode, "c".to_string())]
        );
        assert!(departed_keys(&new, &new).is_empty());
    }
}
