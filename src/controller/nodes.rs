//! Node readiness, node Lease heartbeats and control-plane leader changes,
//! kept as state from watches and exported at scrape time by
//! [`NodeCollector`] (lease ages are computed when scraped).
//!
//! Heartbeats come from Leases in kube-node-lease, never from NodeCondition
//! `lastHeartbeatTime` (posted only every 5 minutes since lease heartbeats).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

mod collector;

pub use collector::NodeCollector;

use super::clock::OffsetFilter;
use super::metric_labels::{Component, WatchName};
use super::metrics::ControllerMetrics;

/// Namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Namespace of control-plane leader Leases.
pub const CONTROL_PLANE_NAMESPACE: &str = "kube-system";

#[derive(Debug, Default)]
struct NodeInfo {
    ready: Option<bool>,
    unschedulable: bool,
    transitions: u64,
}

#[derive(Debug)]
struct LeaseInfo {
    renew_micros: Option<i64>,
    changed_at: Instant,
    /// `changed_at` is a live event's arrival (not the initial list's).
    changed_live: bool,
    offset: OffsetFilter,
    regressions: u64,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, NodeInfo>,
    leases: BTreeMap<String, LeaseInfo>,
    holders: BTreeMap<Component, String>,
    leader_changes: BTreeMap<Component, u64>,
}

/// Shared, watched node state.
#[derive(Clone, Default)]
pub struct NodeView {
    state: Arc<Mutex<State>>,
    offset_samples: usize,
}

impl NodeView {
    /// An empty view; the offset filter keeps `offset_samples` renewals.
    pub fn new(offset_samples: usize) -> Self {
        Self {
            state: Arc::default(),
            offset_samples,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every node, Lease and leader observation. Called when this
    /// replica stops leading: a follower must not keep exporting node state
    /// that nobody updates any more (lease ages would grow without bound).
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    /// Names of Ready, schedulable nodes, sorted.
    pub fn schedulable(&self) -> Vec<String> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, n)| n.ready == Some(true) && !n.unschedulable)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Names of every watched node, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().nodes.keys().cloned().collect()
    }

    /// Applies a node state.
    pub fn apply_node(&self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let mut st = self.lock();
        let n = st.nodes.entry(name).or_default();
        if n.ready.is_some() && ready.is_some() && n.ready != ready {
            n.transitions += 1;
        }
        if ready.is_some() {
            n.ready = ready;
        }
        n.unschedulable = unschedulable;
    }

    fn retain_nodes(&self, names: &BTreeSet<String>) {
        self.lock().nodes.retain(|k, _| names.contains(k));
    }

    fn remove_node(&self, name: &str) {
        self.lock().nodes.remove(name);
    }

    /// Applies a node Lease received at (`mono`, `wall`). `live` is false
    /// for the initial list, whose renewals happened at unknown times.
    pub fn apply_node_lease(
        &self,
        lease: &Lease,
        mono: Instant,
        wall: SystemTime,
        live: bool,
        m: &ControllerMetrics,
    ) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let renew = lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.as_microsecond());
        let cap = self.offset_samples;
        let mut st = self.lock();
        let info = st.leases.entry(name).or_insert_with(|| LeaseInfo {
            renew_micros: None,
            changed_at: mono,
            changed_live: false,
            offset: OffsetFilter::new(cap),
            regressions: 0,
        });
        let Some(r) = renew else { return };
        match info.renew_micros {
            Some(prev) if r == prev => return,
            Some(prev) => {
                if r < prev {
                    info.regressions += 1;
                }
                // A gap needs two observed renewals, not a list and a renewal.
                if live && info.changed_live {
                    m.observe_lease_gap(mono.saturating_duration_since(info.changed_at));
                }
            }
            None => {}
        }
        info.renew_micros = Some(r);
        info.changed_at = mono;
        info.changed_live = live;
        if live {
            let wall_micros = wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_micros() as f64)
                .unwrap_or(0.0);
            info.offset.push((r as f64 - wall_micros) / 1e6);
        }
    }

    fn retain_leases(&self, names: &BTreeSet<String>) {
        self.lock().leases.retain(|k, _| names.contains(k));
    }

    fn remove_lease(&self, name: &str) {
        self.lock().leases.remove(name);
    }

    /// Applies a kube-system Lease; counts holder changes of known components.
    pub fn apply_control_plane_lease(&self, lease: &Lease) {
        let Some(c) = lease
            .metadata
            .name
            .as_deref()
            .and_then(Component::from_lease)
        else {
            return;
        };
        let Some(holder) = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()) else {
            return;
        };
        let mut st = self.lock();
        let prev = st.holders.insert(c, holder.clone());
        if prev.is_some_and(|p| p != holder) {
            *st.leader_changes.entry(c).or_default() += 1;
        }
    }

    /// Leader changes counted for `c`.
    pub fn leader_changes(&self, c: Component) -> u64 {
        self.lock().leader_changes.get(&c).copied().unwrap_or(0)
    }
}

/// Runs the three watches until cancelled.
pub async fn watch_all(
    client: Client,
    view: NodeView,
    m: ControllerMetrics,
    token: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let cp: Api<Lease> = Api::namespaced(client, CONTROL_PLANE_NAMESPACE);
    let cfg = watcher::Config::default();
    let v = view.clone();
    let node_task = drive(
        watcher(nodes, cfg.clone()).default_backoff(),
        WatchName::Nodes,
        m.clone(),
        token.clone(),
        move |ev, seen| match ev {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                if let Some(name) = &n.metadata.name {
                    seen.insert(name.clone());
                }
                v.apply_node(&n);
            }
            watcher::Event::InitDone => v.retain_nodes(seen),
            watcher::Event::Delete(n) => {
                if let Some(name) = &n.metadata.name {
                    v.remove_node(name);
                }
            }
        },
    );
    let v = view.clone();
    let m2 = m.clone();
    let lease_task = drive(
        watcher(leases, cfg.clone()).default_backoff(),
        WatchName::NodeLeases,
        m.clone(),
        token.clone(),
        move |ev, seen| {
            let (mono, wall) = (Instant::now(), SystemTime::now());
            match ev {
                watcher::Event::Init => seen.clear(),
                watcher::Event::InitApply(l) => {
                    if let Some(name) = &l.metadata.name {
                        seen.insert(name.clone());
                    }
                    v.apply_node_lease(&l, mono, wall, false, &m2);
                }
                watcher::Event::Apply(l) => v.apply_node_lease(&l, mono, wall, true, &m2),
                watcher::Event::InitDone => v.retain_leases(seen),
                watcher::Event::Delete(l) => {
                    if let Some(name) = &l.metadata.name {
                        v.remove_lease(name);
                    }
                }
            }
        },
    );
    let v = view;
    let cp_task = drive(
        watcher(cp, cfg).default_backoff(),
        WatchName::ControlPlaneLeases,
        m,
        token,
        move |ev, _| match ev {
            watcher::Event::InitApply(l) | watcher::Event::Apply(l) => {
                v.apply_control_plane_lease(&l)
            }
            _ => {}
        },
    );
    tokio::join!(node_task, lease_task, cp_task);
}

async fn drive<K, S, F>(
    stream: S,
    name: WatchName,
    m: ControllerMetrics,
    token: CancellationToken,
    mut f: F,
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    F: FnMut(watcher::Event<K>, &mut BTreeSet<String>),
{
    let mut stream = std::pin::pin!(stream);
    let mut seen = BTreeSet::new();
    // Warn once per failing spell, naming the failure; retries are debug.
    let mut failing = false;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = token.cancelled() => return,
        };
        match ev {
            Some(Ok(ev)) => {
                failing = false;
                f(ev, &mut seen)
            }
            Some(Err(e)) => {
                // The watcher re-lists with backoff; count it.
                if failing {
                    tracing::debug!(watch = %name, error = %e, "Watch failed");
                } else {
                    let (resource, ns) = watched(name);
                    let why = crate::api_error::describe_watcher(&e, resource, ns);
                    tracing::warn!(watch = %name, reason = %why.reason, status = ?why.status,
                        "Watch failed, retrying with backoff: {why}");
                    failing = true;
                }
                m.watch_restart(name);
            }
            None => return,
        }
    }
}

/// The resource and namespace a watch reads, to name its failures.
fn watched(name: WatchName) -> (&'static str, Option<&'static str>) {
    match name {
        WatchName::Nodes => ("nodes", None),
        WatchName::NodeLeases => ("leases.coordination.k8s.io", Some(NODE_LEASE_NAMESPACE)),
        WatchName::ControlPlaneLeases => {
            ("leases.coordination.k8s.io", Some(CONTROL_PLANE_NAMESPACE))
        }
        WatchName::Sampler => ("configmaps", None),
    }
}

/// Time since the lease of `node` was seen to change, if known (tests).
pub fn lease_age(view: &NodeView, node: &str) -> Option<Duration> {
    view.lock().leases.get(node).map(|l| l.changed_at.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::Timestamp;
    use prometheus::core::Collector;

    fn node(name: &str, ready: &str, cordoned: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(cordoned),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn clear_forgets_every_node() {
        let view = NodeView::new(4);
        view.apply_node(&node("a", "True", false));
        assert_eq!(view.names(), vec!["a".to_string()]);
        view.clear();
        assert!(view.names().is_empty());
        assert!(view.schedulable().is_empty());
    }

    fn lease(name: &str, micros: i64, holder: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Timestamp::from_microsecond(micros).ok().map(MicroTime),
                ..Default::default()
            }),
        }
    }

    fn metrics() -> ControllerMetrics {
        ControllerMetrics::new(prometheus::Registry::new()).expect("metrics")
    }

    #[test]
    fn ready_transitions_and_targets() {
        let v = NodeView::new(4);
        v.apply_node(&node("b", "True", false));
        v.apply_node(&node("a", "True", false));
        v.apply_node(&node("c", "True", true));
        assert_eq!(v.schedulable(), vec!["a".to_string(), "b".to_string()]);
        v.apply_node(&node("a", "False", false));
        v.apply_node(&node("a", "True", false));
        assert_eq!(v.lock().nodes["a"].transitions, 2);
        assert_eq!(v.lock().nodes["b"].transitions, 0);
    }

    #[test]
    fn lease_offset_regressions_and_leader_changes() {
        let v = NodeView::new(4);
        let m = metrics();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let wall_us = 1_000_000_000_000i64;
        let t0 = Instant::now();
        // Node clock 3 s ahead; the event arrives 20 ms after the renewal.
        v.apply_node_lease(
            &lease("n", wall_us + 3_000_000 - 20_000, "n"),
            t0,
            wall,
            true,
            &m,
        );
        let o = v.lock().leases["n"].offset.estimate().expect("offset");
        assert!((o - 2.98).abs() < 1e-6, "{o}");
        // Backwards renewTime is a regression.
        v.apply_node_lease(
            &lease("n", wall_us, "n"),
            t0 + Duration::from_secs(10),
            wall + Duration::from_secs(10),
            true,
            &m,
        );
        assert_eq!(v.lock().leases["n"].regressions, 1);
        // The same renewTime again changes nothing.
        v.apply_node_lease(
            &lease("n", wall_us, "n"),
            t0 + Duration::from_secs(20),
            wall,
            true,
            &m,
        );
        assert_eq!(
            v.lock().leases["n"].changed_at,
            t0 + Duration::from_secs(10)
        );

        v.apply_control_plane_lease(&lease("kube-scheduler", 0, "a"));
        v.apply_control_plane_lease(&lease("kube-scheduler", 0, "a"));
        v.apply_control_plane_lease(&lease("kube-scheduler", 0, "b"));
        v.apply_control_plane_lease(&lease("something-else", 0, "x"));
        assert_eq!(v.leader_changes(Component::Scheduler), 1);
        assert_eq!(v.leader_changes(Component::ControllerManager), 0);

        let c = NodeCollector::new(v).expect("collector");
        let names: BTreeSet<String> = c.collect().iter().map(|f| f.name().to_string()).collect();
        assert!(names.contains("kubepulse_node_lease_clock_offset_seconds"));
        assert!(names.contains("kubepulse_control_plane_leader_changes_total"));
    }
}
