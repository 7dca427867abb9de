//! The controller's plan publisher: while leading, watches the Nodes, the
//! agent Pods and the agents' Service, recomputes the probe plan
//! ([`crate::plan`]) at most once per `min_interval`, and writes one
//! ConfigMap per node, only where the plan changed (deleting the plans of
//! nodes that left). Agents read only their own ConfigMap, so a rollout of
//! N agents costs O(N · k) watch deliveries instead of O(N²).

use std::collections::{BTreeMap, BTreeSet};
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
use super::plan_inputs::{self, Inputs, DATA_KEY, PLAN_LABEL, PLAN_LABEL_VALUE};
use super::{label_keys, K8sError};
use crate::config::PlanSettings;

/// Field manager of the server-side applies.
pub const FIELD_MANAGER: &str = "kubepulse-controller";

/// A plan publisher for one leadership term.
pub struct PlanPublisher {
    client: Client,
    namespace: String,
    settings: PlanSettings,
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

/// What the plans are computed from, as last seen by the watches.
struct Watched<'a> {
    nodes: &'a Store<Node>,
    pods: &'a Store<Pod>,
    services: Option<&'a Store<Service>>,
    /// From the `default/kubernetes` EndpointSlices.
    apiserver: Vec<std::net::SocketAddr>,
}

impl PlanPublisher {
    /// A publisher writing into `namespace` (the agents' namespace).
    pub fn new(client: Client, namespace: &str, settings: PlanSettings) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            settings,
        }
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
        let mut written: Option<BTreeMap<String, String>> = None;
        let mut sticky: BTreeSet<String> = BTreeSet::new();
        let mut dirty = true;
        let mut next_allowed = Instant::now();
        loop {
            let ready =
                dirty && stores_ready(&nodes, &pods, services.as_ref()) && store_ready(&slices);
            let wake = if ready {
                next_allowed
            } else {
                Instant::now() + Duration::from_secs(3600)
            };
            tokio::select! {
                _ = token.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(())) => dirty = true,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Plan publisher: watch failed; retrying");
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(wake), if ready => {
                    next_allowed = Instant::now() + s.min_interval;
                    dirty = false;
                    if written.is_none() {
                        match existing(&cms).await {
                            Ok(w) => written = Some(w),
                            Err(e) => {
                                tracing::warn!(error = %e, "Plan publisher: cannot list plans; retrying");
                                dirty = true;
                                continue;
                            }
                        }
                    }
                    let w = written.get_or_insert_with(BTreeMap::new);
                    let watched = Watched {
                        nodes: &nodes,
                        pods: &pods,
                        services: services.as_ref(),
                        apiserver: apiserver_endpoints::endpoints(slices.state().iter().map(|s| s.as_ref())),
                    };
                    if let Err(e) = self.publish(&cms, &watched, &mut sticky, w).await {
                        tracing::warn!(error = %e, "Plan publisher: publishing failed; retrying");
                        dirty = true;
                    }
                }
            }
        }
    }

    async fn publish(
        &self,
        cms: &Api<ConfigMap>,
        watched: &Watched<'_>,
        sticky: &mut BTreeSet<String>,
        written: &mut BTreeMap<String, String>,
    ) -> Result<(), K8sError> {
        let node_objs = watched.nodes.state();
        let pod_objs = watched.pods.state();
        // A node keeps its place while its agents are replaced, until the
        // Node object itself is gone.
        let existing_nodes: BTreeSet<&str> = node_objs
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        sticky.retain(|n| existing_nodes.contains(n.as_str()));
        let plan_nodes = plan_inputs::plan_nodes(
            node_objs.iter().map(|n| n.as_ref()),
            pod_objs.iter().map(|p| p.as_ref()),
            sticky,
        );
        for n in &plan_nodes {
            if existing_nodes.contains(n.name.as_str()) {
                sticky.insert(n.name.clone());
            }
        }
        let svc = watched.services.and_then(|s| s.state().into_iter().next());
        let pod_refs: Vec<&Pod> = pod_objs.iter().map(|p| p.as_ref()).collect();
        let started = std::time::Instant::now();
        let mut computed = plan_inputs::compute(&Inputs {
            nodes: &plan_nodes,
            pods: &pod_refs,
            service: svc.as_deref(),
            fan_out: &self.settings.fan_out,
            slots: &self.settings.bandwidth,
        });
        for plan in computed.plans.values_mut() {
            plan.apiserver = watched.apiserver.clone();
        }
        let want = plan_inputs::documents(&computed.plans);
        let mut changed = 0usize;
        for (name, json) in &want {
            if written.get(name) == Some(json) {
                continue;
            }
            self.apply(cms, name, json).await?;
            written.insert(name.clone(), json.clone());
            changed += 1;
        }
        let stale: Vec<String> = written
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for name in stale {
            match cms.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            written.remove(&name);
            changed += 1;
        }
        if changed > 0 {
            let indeg = computed.fan.in_degree();
            tracing::info!(
                nodes = plan_nodes.len(),
                changed,
                max_targets = computed.fan.max_out_degree(),
                min_probers = indeg.values().copied().min().unwrap_or(0),
                compute_ms = started.elapsed().as_millis() as u64,
                "Probe plans published"
            );
        }
        Ok(())
    }

    async fn apply(&self, cms: &Api<ConfigMap>, name: &str, json: &str) -> Result<(), K8sError> {
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
            "data": { DATA_KEY: json },
        });
        cms.patch(
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
/// differs is rewritten, and plans of departed nodes are deleted.
async fn existing(cms: &Api<ConfigMap>) -> Result<BTreeMap<String, String>, K8sError> {
    let lp = ListParams::default().labels(&format!("{PLAN_LABEL}={PLAN_LABEL_VALUE}"));
    let list = cms.list(&lp).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|cm| {
            let name = cm.metadata.name?;
            let data = cm
                .data
                .and_then(|mut d| d.remove(DATA_KEY))
                .unwrap_or_default();
            Some((name, data))
        })
        .collect())
}
