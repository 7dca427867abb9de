//! The controller's plan publisher: while leading, watches the Nodes, the
//! agent Pods and the agents' Service, recomputes the probe plan
//! ([`crate::plan`]) at most once per `min_interval`, and writes one
//! ConfigMap per node, only where the plan changed (deleting the plans of
//! nodes that left). Agents read only their own ConfigMap, so a rollout of
//! N agents costs O(N · k) watch deliveries instead of O(N²).
//!
//! At scale (seconds of computation and thousands of writes at 5,000
//! nodes) a publication runs as its own task while the watches keep being
//! read: the computation on the blocking pool, the writes with at most
//! `write_concurrency` in flight. Only writes that succeeded are recorded
//! (`plan_writes`); the rest are retried at the next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::apiserver_endpoints;
use super::metrics::{ControllerMetrics, PlanShape};
use super::node_lifecycle;
use super::plan_inputs::{self, Inputs};
use super::plan_writes::{self, PlanWrite};
use super::{label_keys, K8sError};
use crate::config::PlanSettings;
use crate::peer::NodeState;
use crate::plan::config_map::{DATA_KEY, LIFECYCLE_KEY, PLAN_LABEL, PLAN_LABEL_VALUE};

/// A plan ConfigMap's data: [`DATA_KEY`] and [`LIFECYCLE_KEY`] to their
/// JSON.
type PlanData = BTreeMap<String, String>;

/// Field manager of the server-side applies.
pub const FIELD_MANAGER: &str = "kubepulse-controller";

/// A plan publisher for one leadership term.
pub struct PlanPublisher {
    client: Client,
    namespace: String,
    settings: PlanSettings,
    metrics: Option<ControllerMetrics>,
}

impl PlanPublisher {
    /// A publisher writing into `namespace` (the agents' namespace).
    pub fn new(client: Client, namespace: &str, settings: PlanSettings) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            settings,
            metrics: None,
        }
    }

    /// Exports the `kubepulse_plan_*` metrics into `metrics`.
    pub fn with_metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Publishes until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let s = &self.settings;
        let (nodes, node_stream) =
            reflect(Api::<Node>::all(self.client.clone()), Default::default());
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let (pods, pod_stream) = reflect(
            pods_api,
            watcher::Config::default().labels(&s.label_selector),
        );
        let (services, svc_stream) = if s.service_name.is_empty() {
            (None, futures::stream::pending().boxed())
        } else {
            let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
            let by_name = format!("metadata.name={}", s.service_name);
            let (store, stream) = reflect(api, watcher::Config::default().fields(&by_name));
            (Some(store), stream.boxed())
        };
        // The apiserver endpoints every agent probes directly.
        let slices_api: Api<EndpointSlice> =
            Api::namespaced(self.client.clone(), apiserver_endpoints::NAMESPACE);
        let (slices, slice_stream) = reflect(
            slices_api,
            watcher::Config::default().labels(apiserver_endpoints::SELECTOR),
        );
        let mut events = futures::stream::select_all([
            node_stream.boxed(),
            pod_stream.boxed(),
            svc_stream,
            slice_stream.boxed(),
        ]);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut written: Option<BTreeMap<String, PlanData>> = None;
        let mut sticky: BTreeSet<String> = BTreeSet::new();
        let mut dirty = true;
        let mut next_allowed = Instant::now();
        // The publication in flight; the watches are read meanwhile.
        let mut pass: Option<tokio::task::JoinHandle<PassResult>> = None;
        loop {
            let ready = dirty
                && pass.is_none()
                && stores_ready(&nodes, &pods, services.as_ref())
                && store_ready(&slices);
            let wake = if ready {
                next_allowed
            } else {
                Instant::now() + Duration::from_secs(3600)
            };
            tokio::select! {
                _ = token.cancelled() => {
                    if let Some(p) = pass.take() {
                        p.abort();
                    }
                    return;
                }
                ev = events.next() => match ev {
                    Some(Ok(())) => dirty = true,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Plan publisher: watch failed; retrying");
                    }
                    None => {
                        if let Some(p) = pass.take() {
                            p.abort();
                        }
                        return;
                    }
                },
                Some(done) = futures::future::OptionFuture::from(pass.as_mut()), if pass.is_some() => {
                    pass = None;
                    match done {
                        Ok(r) => {
                            written = r.written;
                            sticky = r.sticky;
                            if !r.complete {
                                dirty = true;
                            }
                        }
                        Err(e) => {
                            // A panicked pass: nothing it did is known.
                            tracing::warn!(error = %e, "Plan publisher: publication failed; retrying");
                            written = None;
                            dirty = true;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake), if ready => {
                    next_allowed = Instant::now() + s.min_interval;
                    dirty = false;
                    let snapshot = Snapshot {
                        nodes: nodes.state(),
                        pods: pods.state(),
                        service: services.as_ref().and_then(|s| s.state().into_iter().next()),
                        apiserver: apiserver_endpoints::endpoints(slices.state().iter().map(|s| s.as_ref())),
                        sticky: std::mem::take(&mut sticky),
                        settings: self.settings.clone(),
                    };
                    let writer = Writer {
                        cms: cms.clone(),
                        namespace: self.namespace.clone(),
                        concurrency: self.settings.write_concurrency.max(1),
                        metrics: self.metrics.clone(),
                    };
                    pass = Some(tokio::spawn(writer.publish(snapshot, written.take())));
                }
            }
        }
    }
}

fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = watcher::Result<()>> + Send,
)
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
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .map(|r| r.map(|_| ()));
    (store, stream)
}

/// What the plans are computed from: a snapshot of the watches' stores,
/// owned so that the computation can run on the blocking pool.
struct Snapshot {
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<Pod>>,
    service: Option<Arc<Service>>,
    /// From the `default/kubernetes` EndpointSlices.
    apiserver: Vec<std::net::SocketAddr>,
    /// Nodes that keep their place while their agents are replaced.
    sticky: BTreeSet<String>,
    settings: PlanSettings,
}

/// What a computation produced.
struct Planned {
    /// ConfigMap name to plan data.
    want: BTreeMap<String, PlanData>,
    sticky: BTreeSet<String>,
    shape: PlanShape,
    /// Planned nodes by lifecycle state.
    states: BTreeMap<NodeState, usize>,
    /// Agent pods of planned nodes not probed.
    agents_not_ready: usize,
    took: Duration,
}

impl Snapshot {
    /// The plan documents (CPU-bound: seconds at 5,000 nodes).
    fn plan(mut self) -> Planned {
        let started = std::time::Instant::now();
        // A node keeps its place while its agents are replaced, until the
        // Node object itself is gone.
        let existing_nodes: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        self.sticky.retain(|n| existing_nodes.contains(n.as_str()));
        let plan_nodes = plan_inputs::plan_nodes(
            self.nodes.iter().map(|n| n.as_ref()),
            self.pods.iter().map(|p| p.as_ref()),
            &self.sticky,
        );
        for n in &plan_nodes {
            if existing_nodes.contains(n.name.as_str()) {
                self.sticky.insert(n.name.clone());
            }
        }
        let lifecycle = node_lifecycle::lifecycle(
            self.nodes.iter().map(|n| n.as_ref()),
            plan_nodes.iter().map(|n| n.name.as_str()),
        );
        let pod_refs: Vec<&Pod> = self.pods.iter().map(|p| p.as_ref()).collect();
        let mut computed = plan_inputs::compute(&Inputs {
            nodes: &plan_nodes,
            lifecycle: &lifecycle,
            pods: &pod_refs,
            service: self.service.as_deref(),
            fan_out: &self.settings.fan_out,
            slots: &self.settings.bandwidth,
        });
        for plan in computed.plans.values_mut() {
            plan.apiserver = self.apiserver.clone();
        }
        let want = plan_inputs::documents(&computed.plans);
        let indeg = computed.fan.in_degree();
        let shape = PlanShape {
            nodes: plan_nodes.len(),
            min_probers: indeg.values().copied().min().unwrap_or(0),
            max_peer_nodes: computed.fan.max_out_degree(),
        };
        Planned {
            want,
            sticky: self.sticky,
            shape,
            states: computed.states,
            agents_not_ready: computed.agents_not_ready,
            took: started.elapsed(),
        }
    }
}

/// What a publication hands back to the next one.
struct PassResult {
    /// What is known to be written; `None`: unknown (list again).
    written: Option<BTreeMap<String, PlanData>>,
    sticky: BTreeSet<String>,
    /// Everything wanted is written.
    complete: bool,
}

/// Writes one publication's plans.
struct Writer {
    cms: Api<ConfigMap>,
    namespace: String,
    concurrency: usize,
    metrics: Option<ControllerMetrics>,
}

impl Writer {
    async fn publish(
        self,
        snapshot: Snapshot,
        written: Option<BTreeMap<String, PlanData>>,
    ) -> PassResult {
        let sticky_before = snapshot.sticky.clone();
        let planned = match tokio::task::spawn_blocking(move || snapshot.plan()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "Plan publisher: plan computation failed; retrying");
                return PassResult {
                    written,
                    sticky: sticky_before,
                    complete: false,
                };
            }
        };
        if let Some(m) = &self.metrics {
            m.observe_plan(planned.took, planned.shape);
            m.observe_plan_lifecycle(&planned.states, planned.agents_not_ready);
        }
        let mut written = match written {
            Some(w) => w,
            None => match existing(&self.cms).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "Plan publisher: cannot list plans; retrying");
                    // Nothing can be written until the list succeeds: every
                    // plan waits, and the alert on this gauge sees it.
                    if let Some(m) = &self.metrics {
                        m.set_plan_pending(planned.want.len());
                    }
                    return PassResult {
                        written: None,
                        sticky: sticky_before,
                        complete: false,
                    };
                }
            },
        };
        let todo = plan_writes::writes(&planned.want, &written);
        let total = todo.len();
        let results: Vec<(PlanWrite<PlanData>, Result<(), K8sError>)> = futures::stream::iter(todo)
            .map(|w| async {
                let r = self.write(&w).await;
                (w, r)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut failed = 0usize;
        let mut first_error: Option<String> = None;
        for (w, r) in results {
            if let Some(m) = &self.metrics {
                m.plan_write(w.op(), r.is_ok());
            }
            match r {
                Ok(()) => plan_writes::record(&mut written, w),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{}: {e}", w.name()));
                }
            }
        }
        if let Some(m) = &self.metrics {
            m.set_plan_pending(failed);
        }
        if let Some(e) = first_error {
            tracing::warn!(
                failed,
                of = total,
                first = %e,
                "Plan publisher: some plan writes failed; retrying them at the next publication"
            );
        }
        if total > failed {
            tracing::info!(
                nodes = planned.shape.nodes,
                changed = total - failed,
                max_targets = planned.shape.max_peer_nodes,
                min_probers = planned.shape.min_probers,
                compute_ms = planned.took.as_millis() as u64,
                "Probe plans published"
            );
        }
        PassResult {
            written: Some(written),
            sticky: planned.sticky,
            complete: failed == 0,
        }
    }

    async fn write(&self, w: &PlanWrite<PlanData>) -> Result<(), K8sError> {
        match w {
            PlanWrite::Apply { name, data } => self.apply(name, data).await,
            PlanWrite::Delete { name } => {
                match self.cms.delete(name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn apply(&self, name: &str, data: &PlanData) -> Result<(), K8sError> {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    label_keys::MANAGED_BY: label_keys::MANAGED_BY_VALUE,
                    PLAN_LABEL: PLAN_LABEL_VALUE,
                },
            },
            "data": data,
        });
        self.cms
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await?;
        Ok(())
    }
}

fn store_ready<K: Resource<DynamicType = ()> + Clone + 'static>(s: &Store<K>) -> bool {
    s.wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

fn stores_ready(nodes: &Store<Node>, pods: &Store<Pod>, svc: Option<&Store<Service>>) -> bool {
    let ready = |f: Option<Result<(), _>>| f.is_some_and(|r: Result<(), _>| r.is_ok());
    ready(nodes.wait_until_ready().now_or_never())
        && ready(pods.wait_until_ready().now_or_never())
        && svc.is_none_or(|s| ready(s.wait_until_ready().now_or_never()))
}

/// The plan ConfigMaps already there (from an earlier leader): only what
/// differs is rewritten, and plans of departed nodes are deleted. Only the
/// keys a publication writes are compared (a previous version's plans lack
/// the lifecycle, so they are rewritten once).
async fn existing(cms: &Api<ConfigMap>) -> Result<BTreeMap<String, PlanData>, K8sError> {
    let lp = ListParams::default().labels(&format!("{PLAN_LABEL}={PLAN_LABEL_VALUE}"));
    let list = cms.list(&lp).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|cm| {
            let name = cm.metadata.name?;
            let mut data = cm.data.unwrap_or_default();
            data.retain(|k, _| k == DATA_KEY || k == LIFECYCLE_KEY);
            Some((name, data))
        })
        .collect())
}
