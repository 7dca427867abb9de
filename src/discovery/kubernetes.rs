//! Discovery through the Kubernetes API: the agent reads only its own
//! node's probe plan, one ConfigMap written by the controller's plan
//! publisher ([`crate::plan::config_map`]), through a watch on that one
//! object.
//! No agent lists or watches the other agents, so the apiserver's load does
//! not grow with the square of the cluster.
//!
//! The watch re-lists after `410 Gone` and backs off on errors (kube's
//! default backoff). While the controller or the API is down the last plan
//! goes on being probed; the API's state is exported as
//! `kubepulse_discovery_up` and logged on every transition.
//!
//! Three things are published: the peers to probe
//! ([`Discovery::subscribe`], also [`Discovery::subscribe_all`]) and the
//! plan itself ([`Discovery::subscribe_plan`]: the bandwidth schedule, and
//! the lifecycle of its nodes and agents, read from the ConfigMap's second
//! key when a controller of this version wrote one).

pub mod facts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Discovery;
use crate::config::{KubernetesDiscoverySettings, Settings};
use crate::metrics::{DiscoveryMetrics, MetricsError};
use crate::peer::{Identity, Peer, PeerSet, ProbePorts};
use crate::plan::config_map::{config_map_name, DATA_KEY, LIFECYCLE_KEY};
use crate::plan::node_plan::PlanDecodeError;
use crate::plan::{NodePlan, PlanWatch};

/// One RBAC rule the agent needs: exactly the API calls this module makes.
/// The chart's `agent-rbac.yaml` must grant these and nothing else (a test
/// compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group (`""` is the core group).
    pub api_group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// Every API call of the agent, in its own namespace: its plan ConfigMap
/// is listed and watched by name (field selector) and read by name while
/// the API is down. RBAC cannot limit these to one name the agent only
/// learns at run time (its node), so the grant covers the namespace's
/// ConfigMaps, which hold nothing but kubepulse's own configuration.
pub const API_ACCESS: &[ApiAccess] = &[ApiAccess {
    api_group: "",
    resource: "configmaps",
    verbs: &["get", "list", "watch"],
}];

/// How often the API is re-checked while discovery is down: a re-established
/// watch is silent until something changes, so recovery needs a positive
/// signal of its own.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Errors starting Kubernetes discovery.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// A downward-API variable is missing.
    #[error("environment variable {0} is not set; expose it through the downward API")]
    MissingEnv(&'static str),
    /// No namespace in the settings or the environment.
    #[error(
        "no namespace: set discovery.kubernetes.namespace or {}",
        facts::ENV_NAMESPACE
    )]
    NoNamespace,
    /// A setting is out of range.
    #[error("invalid configuration: discovery.kubernetes.{key}: {reason}")]
    Invalid {
        /// Key below `discovery.kubernetes`.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The client could not be configured (no kubeconfig, no in-cluster env).
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// The discovery metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// What Kubernetes discovery watches and for whom.
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// The local agent (pod name, node, kind).
    pub identity: Identity,
    /// Namespace of the agent pods and Service.
    pub namespace: String,
    /// Settings (plan ConfigMap name).
    pub settings: KubernetesDiscoverySettings,
    /// Unused since the controller names every peer's ports; kept so
    /// callers need not change.
    pub default_ports: ProbePorts,
}

impl KubernetesOptions {
    /// The plan ConfigMap this agent reads.
    pub fn plan_name(&self) -> String {
        if self.settings.plan_config_map.is_empty() {
            config_map_name(&self.identity.node)
        } else {
            self.settings.plan_config_map.clone()
        }
    }
}

/// A running Kubernetes discovery.
pub struct KubernetesDiscovery {
    probe: watch::Sender<PeerSet>,
    plan: watch::Sender<PlanWatch>,
    task: JoinHandle<()>,
}

impl Discovery for KubernetesDiscovery {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.probe.subscribe()
    }

    fn subscribe_plan(&self) -> watch::Receiver<PlanWatch> {
        self.plan.subscribe()
    }
}

impl KubernetesDiscovery {
    /// Starts watching. Peers are published once the first list completes.
    pub fn start(
        client: Client,
        opts: KubernetesOptions,
        metrics: DiscoveryMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, KubernetesError> {
        let (probe, _) = watch::channel(PeerSet::default());
        let (plan, _) = watch::channel(None);
        let task = tokio::spawn(run(
            client,
            opts,
            metrics,
            probe.clone(),
            plan.clone(),
            shutdown,
        ));
        Ok(Self { probe, plan, task })
    }

    /// Waits for the watch task to end (after the shutdown token fires).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Reads the downward-API identity from `env` into `settings.agent`,
/// creates the in-cluster (or kubeconfig) client, registers the discovery
/// metrics in `registry` and starts discovery.
pub async fn start_in_cluster(
    settings: &mut Settings,
    env: &HashMap<String, String>,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<KubernetesDiscovery, KubernetesError> {
    let id = facts::downward_identity(env).map_err(KubernetesError::MissingEnv)?;
    settings.agent.name = id.pod_name;
    settings.agent.node = id.node_name;
    let k = &settings.discovery.kubernetes;
    let namespace = Some(k.namespace.clone())
        .filter(|n| !n.is_empty())
        .or(id.namespace)
        .ok_or(KubernetesError::NoNamespace)?;
    let client = Client::try_default().await?;
    let opts = KubernetesOptions {
        identity: Identity {
            name: settings.agent.name.clone(),
            node: settings.agent.node.clone(),
            kind: settings.agent.kind,
        },
        namespace,
        settings: k.clone(),
        default_ports: settings.agent.ports,
    };
    let metrics = DiscoveryMetrics::new(registry)?;
    KubernetesDiscovery::start(client, opts, metrics, shutdown)
}

/// `true` for events that carry data from the API; `Init` is emitted
/// before the list request, so it proves nothing.
fn answered<K>(e: &watcher::Event<K>) -> bool {
    !matches!(e, watcher::Event::Init)
}

/// The discovery's view of the API's health, exported and logged on change.
struct Health {
    metrics: DiscoveryMetrics,
    up: Option<bool>,
}

impl Health {
    fn synced(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.set_last_sync(now);
        if self.up != Some(true) {
            if self.up.is_some() {
                tracing::info!("Kubernetes API reachable again; probe plan in sync");
            }
            self.up = Some(true);
            self.metrics.set_up(true);
        }
    }

    /// The one place a kube error of the plan reader is logged, named (403
    /// with verb and resource, 404, refused, TLS...) rather than "unreachable".
    fn failed(&mut self, e: &watcher::Error, namespace: &str, peers: usize) {
        // A watch expiring (410 Gone) is routine: the watcher re-lists at once.
        if watch_code(e) == Some(410) {
            tracing::info!("Plan watch expired; re-listing");
            return;
        }
        if self.up != Some(false) {
            let f = crate::api_error::describe_watcher(e, "configmaps", Some(namespace));
            tracing::warn!(reason = %f.reason, status = ?f.status, peers,
                "Reading the probe plan failed: {f}; probing the last plan");
            self.up = Some(false);
            self.metrics.set_up(false);
        } else {
            tracing::debug!(error = %e, "Reading the probe plan still failing");
        }
    }
}

fn watch_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

async fn run(
    client: Client,
    opts: KubernetesOptions,
    metrics: DiscoveryMetrics,
    probe_tx: watch::Sender<PeerSet>,
    plan_tx: watch::Sender<PlanWatch>,
    shutdown: CancellationToken,
) {
    let name = opts.plan_name();
    let api: Api<ConfigMap> = Api::namespaced(client, &opts.namespace);
    let by_name = format!("metadata.name={name}");
    let mut events = watcher(api.clone(), watcher::Config::default().fields(&by_name))
        .default_backoff()
        .boxed();
    let mut health = Health { metrics, up: None };
    let mut kind_warned = false;
    let mut waiting_logged = false;
    let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.next() => match e { Some(e) => e, None => break },
            _ = recheck.tick(), if health.up == Some(false) => {
                // Bounded, because the client has no read timeout and this
                // loop must stay responsive.
                let check = tokio::time::timeout(RECHECK_INTERVAL, api.get_opt(&name));
                if matches!(check.await, Ok(Ok(_))) {
                    health.synced();
                }
                continue;
            }
        };
        let peers_now = probe_tx.borrow().len();
        let event = match event {
            Ok(ev) => ev,
            Err(e) => {
                health.failed(&e, &opts.namespace, peers_now);
                continue;
            }
        };
        if answered(&event) {
            health.synced();
        }
        let cm = match event {
            watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) => cm,
            watcher::Event::InitDone if plan_tx.borrow().is_none() && !waiting_logged => {
                tracing::info!(config_map = %name, "No probe plan yet; waiting for the controller");
                waiting_logged = true;
                continue;
            }
            watcher::Event::Delete(_) => {
                tracing::warn!(config_map = %name, peers = peers_now,
                    "Probe plan deleted; probing the last plan");
                continue;
            }
            _ => continue,
        };
        let Some(plan) = decode(&cm, &name) else {
            continue;
        };
        let own_kind = plan
            .peers
            .iter()
            .find(|p| p.name == opts.identity.name)
            .map(|p| p.kind);
        if own_kind.is_some_and(|k| k != opts.identity.kind) && !kind_warned {
            // Path labels would be wrong: e.g. the hostNetwork DaemonSet
            // without KUBEPULSE__AGENT__KIND=host.
            tracing::warn!(configured = %opts.identity.kind, pod = ?own_kind,
                "agent.kind disagrees with this pod's spec.hostNetwork; path labels will be wrong");
            kind_warned = true;
        }
        publish(plan, &probe_tx, &plan_tx);
    }
}

/// The plan in `cm` with its lifecycle, or `None` (logged) when the plan
/// is missing or unreadable: the last good plan stays in force. A
/// lifecycle that cannot be read is logged and left out (every peer then
/// reads as ready); the plan itself is still followed.
fn decode(cm: &ConfigMap, name: &str) -> Option<NodePlan> {
    let empty = Default::default();
    let data = cm.data.as_ref().unwrap_or(&empty);
    match NodePlan::from_data(data) {
        Ok((p, None)) => Some(p),
        Ok((p, Some(e))) => {
            tracing::warn!(config_map = %name, key = LIFECYCLE_KEY, error = %e,
                "Unreadable plan lifecycle; following the plan without it");
            Some(p)
        }
        Err(PlanDecodeError::NoPlan) => {
            tracing::warn!(config_map = %name, key = DATA_KEY, "Probe plan has no data; keeping the last plan");
            None
        }
        Err(e) => {
            tracing::warn!(config_map = %name, error = %e, "Unreadable probe plan; keeping the last plan");
            None
        }
    }
}

/// Publishes the plan; peer subscribers are woken only when the peers
/// actually changed.
fn publish(plan: NodePlan, probe_tx: &watch::Sender<PeerSet>, plan_tx: &watch::Sender<PlanWatch>) {
    let n = plan.peers.len();
    let targets = plan.target_nodes.len();
    let probers = plan.probers;
    let peers = plan.peers.clone();
    // The plan first: whoever wakes on the peers sees the matching plan.
    plan_tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(&plan) {
            return false;
        }
        *cur = Some(Arc::new(plan));
        true
    });
    if probe_tx.send_if_modified(|cur| replace_if_changed(cur, peers)) {
        tracing::info!(
            peers = n,
            target_nodes = targets,
            probers,
            "Probe plan changed"
        );
    }
}

fn replace_if_changed(cur: &mut PeerSet, new: Vec<Peer>) -> bool {
    if **cur == new {
        return false;
    }
    *cur = Arc::new(new);
    true
}
