//! Discovery through the Kubernetes API: a reflector over the agent pods
//! (label selector, own namespace) and one over the agents' Service.
//!
//! The watchers re-list after `410 Gone` and back off on errors (kube's
//! default backoff). While the API is unreachable the reflector stores keep
//! their contents, so the last known peers go on being probed; the state is
//! exported as `kubepulse_discovery_up` and logged on every transition.
//!
//! Two peer sets are published: the fanned-out set this agent probes
//! ([`Discovery::subscribe`]) and every agent ([`Discovery::subscribe_all`],
//! the input of the bandwidth schedule).

pub mod facts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use prometheus::{Gauge, IntGauge, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Discovery, Identity, PeerSet, ProbePorts};
use crate::config::{KubernetesDiscoverySettings, Settings};
use crate::metrics::{catalog, MetricsError};

/// One RBAC rule the agent needs: exactly the API calls this module makes.
/// `deploy/rbac.yaml` must grant these and nothing else (a test compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group (`""` is the core group).
    pub api_group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// Every API call of the agent, in its own namespace: pods are listed and
/// watched (reflector and the recovery check), the Service is listed and
/// watched by name (field selector).
pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        api_group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        api_group: "",
        resource: "services",
        verbs: &["list", "watch"],
    },
];

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

/// The discovery health metrics.
#[derive(Clone)]
pub struct DiscoveryMetrics {
    up: IntGauge,
    last_sync: Gauge,
}

impl DiscoveryMetrics {
    /// Registers `kubepulse_discovery_up` and
    /// `kubepulse_discovery_last_sync_timestamp_seconds` in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let d = &catalog::DISCOVERY_UP;
        let up = IntGauge::new(d.name, d.help).map_err(MetricsError::Register)?;
        let d = &catalog::DISCOVERY_LAST_SYNC;
        let last_sync = Gauge::new(d.name, d.help).map_err(MetricsError::Register)?;
        registry
            .register(Box::new(up.clone()))
            .map_err(MetricsError::Register)?;
        registry
            .register(Box::new(last_sync.clone()))
            .map_err(MetricsError::Register)?;
        Ok(Self { up, last_sync })
    }
}

/// What Kubernetes discovery watches and for whom.
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// The local agent (pod name, node, kind).
    pub identity: Identity,
    /// Namespace of the agent pods and Service.
    pub namespace: String,
    /// Settings (selector, Service name, fan-out).
    pub settings: KubernetesDiscoverySettings,
    /// Ports assumed for pods that do not name theirs.
    pub default_ports: ProbePorts,
}

/// A running Kubernetes discovery.
pub struct KubernetesDiscovery {
    probe: watch::Sender<PeerSet>,
    all: watch::Sender<PeerSet>,
    task: JoinHandle<()>,
}

impl Discovery for KubernetesDiscovery {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.probe.subscribe()
    }

    /// Every agent pod, sorted by name and not fanned out: the common input
    /// of the bandwidth schedule ([`crate::schedule::slots::my_bursts`]).
    fn subscribe_all(&self) -> watch::Receiver<PeerSet> {
        self.all.subscribe()
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
        if opts.settings.max_peers == 0 {
            return Err(KubernetesError::Invalid {
                key: "max_peers",
                reason: "must be at least 1",
            });
        }
        if opts.settings.label_selector.trim().is_empty() {
            return Err(KubernetesError::Invalid {
                key: "label_selector",
                reason: "must not be empty (it would select every pod)",
            });
        }
        let (probe, _) = watch::channel(PeerSet::default());
        let (all, _) = watch::channel(PeerSet::default());
        let task = tokio::spawn(run(
            client,
            opts,
            metrics,
            probe.clone(),
            all.clone(),
            shutdown,
        ));
        Ok(Self { probe, all, task })
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

/// Which watcher an update came from, and whether it proves the API answered.
enum Update {
    Pods(Result<bool, watcher::Error>),
    Service(Result<bool, watcher::Error>),
}

/// `true` for events that carry data from the API; `Init` is emitted
/// before the list request, so it proves nothing.
fn answered<K>(e: &watcher::Event<K>) -> bool {
    !matches!(e, watcher::Event::Init)
}

fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (Store<K>, impl Stream<Item = watcher::Result<bool>>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .default_backoff()
        // Managed fields are large and unused: keep the cache small.
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .map(|r| r.map(|e| answered(&e)));
    (store, stream)
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
        self.metrics.last_sync.set(now);
        if self.up != Some(true) {
            if self.up.is_some() {
                tracing::info!("Kubernetes API reachable again; peer discovery in sync");
            }
            self.up = Some(true);
            self.metrics.up.set(1);
        }
    }

    fn failed(&mut self, what: &str, e: &watcher::Error, peers: usize) {
        // A watch expiring (410 Gone) is routine: the watcher re-lists at once.
        if let watcher::Error::WatchError(s) = e {
            if s.code == 410 {
                tracing::info!(resource = what, "Watch expired; re-listing");
                return;
            }
        }
        if self.up != Some(false) {
            let f = crate::k8s::api_error::describe_watcher(e, what, None);
            tracing::warn!(resource = what, reason = %f.reason, status = ?f.status, peers,
                "Peer discovery failing: {f}; probing the last known peers");
            self.up = Some(false);
            self.metrics.up.set(0);
        } else {
            tracing::debug!(resource = what, error = %e, "Peer discovery still failing");
        }
    }
}

async fn run(
    client: Client,
    opts: KubernetesOptions,
    metrics: DiscoveryMetrics,
    probe_tx: watch::Sender<PeerSet>,
    all_tx: watch::Sender<PeerSet>,
    shutdown: CancellationToken,
) {
    let s = &opts.settings;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &opts.namespace);
    let (pods, pod_stream) = reflect(
        pods_api.clone(),
        watcher::Config::default().labels(&s.label_selector),
    );
    let (services, svc_stream) = if s.service_name.is_empty() {
        (None, futures::stream::pending().boxed())
    } else {
        let api: Api<Service> = Api::namespaced(client.clone(), &opts.namespace);
        let by_name = format!("metadata.name={}", s.service_name);
        let (store, stream) = reflect(api, watcher::Config::default().fields(&by_name));
        (Some(store), stream.map(Update::Service).boxed())
    };
    let mut updates = futures::stream::select(pod_stream.map(Update::Pods).boxed(), svc_stream);
    let mut health = Health { metrics, up: None };
    let mut pods_ready = false;
    let mut kind_warned = false;
    let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let update = tokio::select! {
            _ = shutdown.cancelled() => break,
            u = updates.next() => match u { Some(u) => u, None => break },
            _ = recheck.tick(), if health.up == Some(false) => {
                // Cheapest call the RBAC already allows; bounded, because the
                // client has no read timeout and this loop must stay responsive.
                let lp = ListParams::default().labels(&s.label_selector).limit(1);
                let check = tokio::time::timeout(RECHECK_INTERVAL, pods_api.list(&lp));
                if matches!(check.await, Ok(Ok(_))) {
                    health.synced();
                }
                continue;
            }
        };
        let peers_now = probe_tx.borrow().len();
        match update {
            Update::Pods(Ok(answered)) | Update::Service(Ok(answered)) => {
                if answered {
                    health.synced();
                }
            }
            Update::Pods(Err(e)) => health.failed("pods", &e, peers_now),
            Update::Service(Err(e)) => health.failed("services", &e, peers_now),
        }
        if !pods_ready {
            // Publish only once the first list is complete, never a partial set.
            pods_ready = pods
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok());
            if !pods_ready {
                continue;
            }
        }
        let own_kind = publish(&opts, &pods, services.as_ref(), &probe_tx, &all_tx);
        if own_kind.is_some_and(|k| k != opts.identity.kind) && !kind_warned {
            // Path labels would be wrong: e.g. the hostNetwork DaemonSet
            // without KUBEPULSE__AGENT__KIND=host.
            tracing::warn!(configured = %opts.identity.kind, pod = ?own_kind,
                "agent.kind disagrees with this pod's spec.hostNetwork; path labels will be wrong");
            kind_warned = true;
        }
    }
}

/// Recomputes both peer sets from the stores; subscribers are woken only
/// when a set actually changed. Returns the kind of this agent's own pod,
/// if it is among the peers.
fn publish(
    opts: &KubernetesOptions,
    pods: &Store<Pod>,
    services: Option<&Store<Service>>,
    probe_tx: &watch::Sender<PeerSet>,
    all_tx: &watch::Sender<PeerSet>,
) -> Option<crate::labels::AgentKind> {
    let pods = pods.state();
    let svc = services.and_then(|s| s.state().into_iter().next());
    let (all, probe) = facts::peer_sets(
        &opts.identity,
        pods.iter().map(|p| p.as_ref()),
        svc.as_deref(),
        opts.settings.max_peers,
        opts.default_ports,
    );
    let own_kind = all
        .iter()
        .find(|p| p.name == opts.identity.name)
        .map(|p| p.kind);
    all_tx.send_if_modified(|cur| replace_if_changed(cur, all));
    let n = probe.len();
    if probe_tx.send_if_modified(|cur| replace_if_changed(cur, probe)) {
        tracing::info!(peers = n, "Peer set changed");
    }
    own_kind
}

fn replace_if_changed(cur: &mut PeerSet, new: Vec<super::Peer>) -> bool {
    if **cur == new {
        return false;
    }
    *cur = Arc::new(new);
    true
}
