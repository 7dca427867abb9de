//! Deletes leftover probe objects (pods and sampler ConfigMaps) of earlier
//! runs or older than the probe timeout, with their own grace period.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, Resource as KubeResource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::label_keys::RUN;
use super::metric_labels::Resource;
use super::metrics::ControllerMetrics;
use super::objects::managed_selector;
use super::sweep::decide;
use super::K8sError;

/// Sweeper settings.
#[derive(Clone)]
pub(crate) struct Sweeper {
    /// Client.
    pub client: Client,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// Probe namespace.
    pub namespace: String,
    /// This run's id.
    pub run: String,
    /// Objects of this run older than this are deleted.
    pub timeout: Duration,
    /// Objects of earlier runs younger than this are kept.
    pub min_age: Duration,
}

impl Sweeper {
    /// Sweeps now and then every `interval` until cancelled.
    pub(crate) async fn run(self, interval: Duration, token: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "Swept leftover probe objects"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Sweep failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = token.cancelled() => return,
            }
        }
    }

    /// One sweep; returns the number of objects deleted.
    pub(crate) async fn sweep(&self) -> Result<usize, K8sError> {
        let pods = self.sweep_kind::<Pod>(Resource::Pods).await?;
        let cms = self.sweep_kind::<ConfigMap>(Resource::ConfigMaps).await?;
        Ok(pods + cms)
    }

    async fn sweep_kind<K>(&self, res: Resource) -> Result<usize, K8sError>
    where
        K: KubeResource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default().labels(&managed_selector()))
            .await?;
        let mut n = 0;
        for obj in list.items {
            let meta: &ObjectMeta = obj.meta();
            if meta.deletion_timestamp.is_some() {
                continue; // already terminating with its grace period
            }
            let Some(name) = meta.name.as_deref() else {
                continue;
            };
            let run = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(RUN))
                .map(String::as_str);
            let age = meta
                .creation_timestamp
                .as_ref()
                .and_then(|t| {
                    let created = SystemTime::UNIX_EPOCH
                        + Duration::from_micros(u64::try_from(t.0.as_microsecond()).ok()?);
                    SystemTime::now().duration_since(created).ok()
                })
                .unwrap_or(Duration::ZERO);
            let Some(reason) = decide(run, &self.run, age, self.timeout, self.min_age) else {
                continue;
            };
            // Default DeleteParams: the object's own grace period, never force.
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    self.metrics.swept(res, reason);
                    n += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }
}
