//! apiserver latency sampler: a small safe cycle on one kubepulse-owned
//! ConfigMap (POST, GET, PUT, PATCH, LIST namespace, LIST cluster, WATCH,
//! DELETE), plus a long-lived watch on it for write-to-event latency.
//!
//! Requests go through the retry-less client (see [`super::client`]) and a
//! rate limiter; the timer starts after the limiter. The ConfigMap has a
//! fixed per-run name, so at most one exists at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams,
    WatchEvent as KubeWatchEvent, WatchParams,
};
use kube::core::Request;
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::metric_labels::{Resource, Verb, WatchEvent, WatchName};
use super::metrics::ControllerMetrics;
use super::objects::{sampler_config_map, sampler_seq, SAMPLER};
use super::timed::{self, Call, Timed};
use super::{label_keys, K8sError};
use crate::config::SamplerSettings;

/// Spaces requests at least `1 / max_qps` apart.
#[derive(Debug)]
pub struct Pacer {
    gap: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `max_qps` requests per second.
    pub fn new(max_qps: f64) -> Self {
        let gap = if max_qps > 0.0 {
            Duration::from_secs_f64(1.0 / max_qps)
        } else {
            Duration::from_secs(1)
        };
        Self { gap, next: None }
    }

    /// How long to wait before a request at `now`, and books the slot.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let at = self.next.map_or(now, |n| n.max(now));
        self.next = Some(at + self.gap);
        at - now
    }
}

type Pending = Arc<Mutex<HashMap<(WatchEvent, u64), Instant>>>;

/// The sampler of one controller run.
pub struct Sampler {
    client: Client,
    watch_client: Client,
    metrics: ControllerMetrics,
    namespace: String,
    run: String,
    name: String,
    settings: SamplerSettings,
    pacer: Pacer,
    seq: u64,
    pending: Pending,
}

impl Sampler {
    /// A sampler writing `kubepulse-sampler-<run>` in `namespace`.
    pub fn new(
        client: Client,
        watch_client: Client,
        metrics: ControllerMetrics,
        namespace: &str,
        run: &str,
        settings: SamplerSettings,
    ) -> Self {
        Self {
            pacer: Pacer::new(settings.max_qps),
            client,
            watch_client,
            metrics,
            namespace: namespace.to_string(),
            run: run.to_string(),
            name: format!("kubepulse-sampler-{run}"),
            settings,
            seq: 0,
            pending: Arc::default(),
        }
    }

    fn selector(&self) -> String {
        format!(
            "{}={SAMPLER},{}={}",
            label_keys::PROBE,
            label_keys::RUN,
            self.run
        )
    }

    /// Runs cycles every `interval` until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_loop(
            Api::namespaced(self.watch_client.clone(), &self.namespace),
            self.selector(),
            self.pending.clone(),
            self.metrics.clone(),
            token.clone(),
            ready_tx,
        ));
        // The first cycle's events need the watch open; don't wait forever.
        let _ = tokio::time::timeout(self.settings.request_timeout, ready_rx).await;
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = token.cancelled() => break,
            }
            let cycle = tokio::select! {
                r = self.cycle() => r,
                _ = token.cancelled() => Err(K8sError::Cancelled),
            };
            if let Err(e) = cycle {
                if !matches!(e, K8sError::Cancelled) {
                    tracing::warn!(error = %e, "apiserver sampler cycle failed");
                }
                // Never leave the object behind (ignore errors: a sweep retries).
                let _ = self.delete().await;
            }
            self.expire_pending();
        }
        let _ = self.delete().await;
        let _ = watch.await;
    }

    async fn req(
        &mut self,
        call: Call,
        req: hyper::Request<Vec<u8>>,
        expect: Option<(WatchEvent, u64)>,
    ) -> Result<Timed, K8sError> {
        let wait = self.pacer.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            self.metrics.client_wait(wait);
        }
        let pending = self.pending.clone();
        timed::send(
            &self.client,
            &self.metrics,
            call,
            req,
            self.settings.request_timeout,
            |at| {
                if let (Some(k), Ok(mut p)) = (expect, pending.lock()) {
                    p.insert(k, at);
                }
            },
        )
        .await
    }

    fn cm_call(verb: Verb, name_set: bool) -> Call {
        Call {
            verb,
            resource: Resource::ConfigMaps,
            name_set,
            namespaced: true,
        }
    }

    fn body(&self, seq: u64) -> Result<Vec<u8>, K8sError> {
        serde_json::to_vec(&sampler_config_map(&self.name, &self.run, seq)).map_err(|source| {
            K8sError::Decode {
                what: "configmap",
                source,
            }
        })
    }

    /// One cycle. A non-2xx status (other than a counted PUT 409) ends it.
    pub async fn cycle(&mut self) -> Result<(), K8sError> {
        let cms = Request::new(format!("/api/v1/namespaces/{}/configmaps", self.namespace));
        let name = self.name.clone();
        self.seq += 1;
        let seq = self.seq;
        let r = self
            .req(
                Self::cm_call(Verb::Post, false),
                cms.create(&PostParams::default(), self.body(seq)?)?,
                Some((WatchEvent::Added, seq)),
            )
            .await?;
        check("POST configmap", &r)?;
        let r = self
            .req(
                Self::cm_call(Verb::Get, true),
                cms.get(&name, &GetParams::default())?,
                None,
            )
            .await?;
        check("GET configmap", &r)?;
        let got: ConfigMap = r.json("configmap")?;
        self.seq += 1;
        let seq = self.seq;
        let mut put = sampler_config_map(&name, &self.run, seq);
        put.metadata.resource_version = got.metadata.resource_version;
        let put = serde_json::to_vec(&put).map_err(|source| K8sError::Decode {
            what: "configmap",
            source,
        })?;
        let r = self
            .req(
                Self::cm_call(Verb::Put, true),
                cms.replace(&name, &PostParams::default(), put)?,
                Some((WatchEvent::Modified, seq)),
            )
            .await?;
        // 409 is counted by the metrics and is not a failed cycle.
        if r.status != 409 {
            check("PUT configmap", &r)?;
        }
        self.seq += 1;
        let seq = self.seq;
        let patch = serde_json::json!({"data": {"seq": seq.to_string()}});
        let r = self
            .req(
                Self::cm_call(Verb::Patch, true),
                cms.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))?,
                Some((WatchEvent::Modified, seq)),
            )
            .await?;
        check("PATCH configmap", &r)?;
        let lp = ListParams::default().labels(&self.selector());
        let r = self
            .req(Self::cm_call(Verb::List, false), cms.list(&lp)?, None)
            .await?;
        check("LIST configmaps", &r)?;
        let ns = Request::new("/api/v1/namespaces");
        let r = self
            .req(
                Call {
                    verb: Verb::List,
                    resource: Resource::Namespaces,
                    name_set: false,
                    namespaced: false,
                },
                ns.list(&ListParams::default().limit(50))?,
                None,
            )
            .await?;
        check("LIST namespaces", &r)?;
        let wp = WatchParams::default().labels(&self.selector()).timeout(1);
        let r = self
            .req(
                Self::cm_call(Verb::Watch, false),
                cms.watch(&wp, "0")?,
                None,
            )
            .await?;
        check("WATCH configmaps", &r)?;
        self.delete().await
    }

    async fn delete(&mut self) -> Result<(), K8sError> {
        let cms = Request::new(format!("/api/v1/namespaces/{}/configmaps", self.namespace));
        let key = (WatchEvent::Deleted, self.seq);
        let r = self
            .req(
                Self::cm_call(Verb::Delete, true),
                cms.delete(&self.name, &DeleteParams::default())?,
                Some(key),
            )
            .await?;
        if r.status == 404 {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&key);
            }
            return Ok(());
        }
        check("DELETE configmap", &r)
    }

    fn expire_pending(&self) {
        // Events that never came (watch down) must not pile up.
        let horizon = self.settings.interval * 6;
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, at| at.elapsed() < horizon);
        }
    }
}

fn check(what: &'static str, r: &Timed) -> Result<(), K8sError> {
    if r.ok() {
        Ok(())
    } else {
        Err(K8sError::Status {
            what,
            status: r.status,
        })
    }
}

/// The long-lived watch: matches each event to the write that caused it by
/// the sequence number in the ConfigMap's data.
async fn watch_loop(
    api: Api<ConfigMap>,
    selector: String,
    pending: Pending,
    metrics: ControllerMetrics,
    token: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut first = true;
    while !token.is_cancelled() {
        if !first {
            metrics.watch_restart(WatchName::Sampler);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = token.cancelled() => return,
            }
        }
        first = false;
        let rv = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(l) => l.metadata.resource_version.unwrap_or_else(|| "0".into()),
            Err(e) => {
                tracing::debug!(error = %e, "sampler watch: list failed");
                continue;
            }
        };
        let wp = WatchParams::default().labels(&selector).timeout(290);
        let stream = match api.watch(&wp, &rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "sampler watch failed");
                continue;
            }
        };
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        let mut stream = stream.boxed();
        loop {
            let ev = tokio::select! {
                ev = stream.try_next() => ev,
                _ = token.cancelled() => return,
            };
            let at = Instant::now();
            let (kind, cm) = match ev {
                Ok(Some(KubeWatchEvent::Added(cm))) => (WatchEvent::Added, cm),
                Ok(Some(KubeWatchEvent::Modified(cm))) => (WatchEvent::Modified, cm),
                Ok(Some(KubeWatchEvent::Deleted(cm))) => (WatchEvent::Deleted, cm),
                Ok(Some(KubeWatchEvent::Bookmark(_))) => continue,
                Ok(Some(KubeWatchEvent::Error(_))) | Ok(None) | Err(_) => break,
            };
            let Some(seq) = sampler_seq(&cm) else {
                continue;
            };
            let sent = pending.lock().ok().and_then(|mut p| p.remove(&(kind, seq)));
            if let Some(sent) = sent {
                metrics.observe_watch_event(kind, at.saturating_duration_since(sent));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_requests() {
        let mut p = Pacer::new(4.0);
        let t = Instant::now();
        assert_eq!(p.reserve(t), Duration::ZERO);
        assert_eq!(p.reserve(t), Duration::from_millis(250));
        assert_eq!(p.reserve(t), Duration::from_millis(500));
        // After a pause, no debt is carried.
        assert_eq!(p.reserve(t + Duration::from_secs(5)), Duration::ZERO);
    }
}
