//! The pod startup probe: one bare pod at a time, aimed round-robin at each
//! schedulable node, every phase timed on the controller's monotonic clock
//! at the arrival of the event that first showed it (see [`super::phases`]).

use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, PostParams, WatchEvent as KubeWatchEvent, WatchParams,
};
use kube::core::Request;
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::clock::next_target;
use super::label_keys::PROBE_ID;
use super::labels::{Outcome, Phase, Resource, Verb};
use super::metrics::ControllerMetrics;
use super::nodes::NodeView;
use super::objects::{is_mutated, probe_pod};
use super::phases::{classify, pulled_message_is_pull, Findings, Marks, FATAL_WAITING_REASONS};
use super::timed::{self, Call};
use super::K8sError;
use crate::config::PodStartupSettings;

type Watch<T> = BoxStream<'static, Result<KubeWatchEvent<T>, kube::Error>>;

/// The result of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Outcome counted.
    pub outcome: Outcome,
    /// Phases observed (startup phases only when `ok`).
    pub phases: Vec<(Phase, Duration)>,
}

/// The pod startup prober of one controller run.
pub struct PodProbe {
    /// Client for watches (kube's retries on).
    pub client: Client,
    /// Client for the timed POST and DELETE (retries off).
    pub api_client: Client,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// Probe namespace.
    pub namespace: String,
    /// This run's id.
    pub run: String,
    /// Settings.
    pub settings: PodStartupSettings,
    /// Watched nodes, for targets.
    pub nodes: NodeView,
    seq: u64,
    last_target: Option<String>,
    cancel: CancellationToken,
    /// Nodes with a `pod_startup_last` series, removed when the node leaves.
    exported: std::collections::BTreeSet<String>,
}

impl PodProbe {
    /// A prober; nothing is sent until [`PodProbe::run`] or [`PodProbe::probe`].
    pub fn new(
        client: Client,
        api_client: Client,
        metrics: ControllerMetrics,
        namespace: &str,
        run: &str,
        settings: PodStartupSettings,
        nodes: NodeView,
    ) -> Self {
        Self {
            client,
            api_client,
            metrics,
            namespace: namespace.to_string(),
            run: run.to_string(),
            settings,
            nodes,
            seq: 0,
            last_target: None,
            cancel: CancellationToken::new(),
            exported: Default::default(),
        }
    }

    /// Probes every `interval` until cancelled. Cancellation mid-probe still
    /// deletes the pod (an abort does not: the next leader's sweep does).
    pub async fn run(mut self, token: CancellationToken) {
        self.cancel = token.clone();
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = token.cancelled() => return,
            }
            self.forget_gone_nodes();
            let nodes = self.nodes.schedulable();
            let Some(target) = next_target(&nodes, self.last_target.as_deref()).cloned() else {
                tracing::debug!("No schedulable node to probe");
                continue;
            };
            self.last_target = Some(target.clone());
            match self.probe(&target).await {
                Ok(r) => {
                    tracing::info!(target_node = %target, outcome = %r.outcome, phases = ?r.phases, "Pod startup probe")
                }
                Err(e) => {
                    tracing::warn!(target_node = %target, error = %e, "Pod startup probe could not start")
                }
            }
        }
    }

    /// One probe of `target`: watch, create, follow, delete, record.
    /// `Err` means the watches could not be opened (nothing was created), or
    /// the run was cancelled mid-probe (the pod was deleted, nothing counted).
    pub async fn probe(&mut self, target: &str) -> Result<ProbeResult, K8sError> {
        self.seq += 1;
        let name = format!("kubepulse-startup-{}-{}", self.run, self.seq);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let sel = format!("{PROBE_ID}={name}");
        let watch_secs =
            u32::try_from((self.settings.timeout + self.settings.delete_timeout).as_secs() + 30)
                .unwrap_or(u32::MAX)
                .min(3600);
        // Open both watches before creating, so no first sighting is missed.
        let rv = pods
            .list(&ListParams::default().labels(&sel))
            .await?
            .metadata
            .resource_version
            .unwrap_or_else(|| "0".into());
        let mut pod_w: Watch<Pod> = pods
            .watch(
                &WatchParams::default().labels(&sel).timeout(watch_secs),
                &rv,
            )
            .await?
            .boxed();
        let erv = events
            .list(&ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .unwrap_or_else(|| "0".into());
        let mut ev_w: Option<Watch<Event>> = Some(
            events
                .watch(&WatchParams::default().timeout(watch_secs), &erv)
                .await?
                .boxed(),
        );

        let mut marks = Marks::default();
        let mut f = Findings::default();
        let sent_pod = probe_pod(
            &name,
            &self.run,
            &self.settings.image,
            target,
            active_deadline(self.settings.timeout),
        );
        let body = serde_json::to_vec(&sent_pod).map_err(|source| K8sError::Decode {
            what: "pod",
            source,
        })?;
        let path = Request::new(format!("/api/v1/namespaces/{}/pods", self.namespace));
        let call = Call {
            verb: Verb::Post,
            resource: Resource::Pods,
            name_set: false,
            namespaced: true,
        };
        let created = timed::send(
            &self.api_client,
            &self.metrics,
            call,
            path.create(&PostParams::default(), body)?,
            self.settings.timeout,
            |_| {},
        )
        .await;
        match created {
            Ok(r) if r.ok() => {
                marks.post_sent = Some(r.sent);
                marks.post_response = Some(r.received);
                match r.json::<Pod>("created pod") {
                    Ok(p) => f.mutated = is_mutated(&sent_pod, &p),
                    Err(_) => f.mutated = true,
                }
            }
            Ok(r) => {
                tracing::warn!(status = r.status, "Probe pod POST rejected");
                f.create_failed = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Probe pod POST failed");
                f.create_failed = true;
            }
        }
        if !f.create_failed {
            self.follow(&name, &mut pod_w, &mut ev_w, &mut marks, &mut f)
                .await;
        }
        // Always delete: a failed POST may still have created the pod.
        self.delete(&name, &mut pod_w, &mut marks, f.create_failed)
            .await;
        Ok(self.record(target, &f, &marks))
    }

    async fn follow(
        &self,
        name: &str,
        pod_w: &mut Watch<Pod>,
        ev_w: &mut Option<Watch<Event>>,
        marks: &mut Marks,
        f: &mut Findings,
    ) -> bool {
        let start = marks.post_sent.unwrap_or_else(Instant::now);
        let deadline = tokio::time::Instant::from_std(start + self.settings.timeout);
        let mut grace_end: Option<tokio::time::Instant> = None;
        loop {
            let grace = async {
                match grace_end {
                    Some(g) => tokio::time::sleep_until(g).await,
                    None => std::future::pending().await,
                }
            };
            let next_event = async {
                match ev_w.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = pod_w.next() => {
                    let at = Instant::now();
                    match ev {
                        Some(Ok(KubeWatchEvent::Added(p))) => {
                            Marks::first(&mut marks.added, at);
                            observe_pod(&p, at, marks, f);
                        }
                        Some(Ok(KubeWatchEvent::Modified(p))) => observe_pod(&p, at, marks, f),
                        Some(Ok(KubeWatchEvent::Bookmark(_))) => {}
                        Some(Ok(KubeWatchEvent::Deleted(_))) => {
                            // Someone else deleted the probe pod.
                            f.failed = true;
                            return false;
                        }
                        Some(Ok(KubeWatchEvent::Error(_))) | Some(Err(_)) | None => {
                            f.watch_broken = true;
                            return false;
                        }
                    }
                    if f.failed || f.unschedulable {
                        return false;
                    }
                    if marks.ready.is_some() && grace_end.is_none() {
                        grace_end = Some(tokio::time::Instant::now() + self.settings.event_grace);
                    }
                }
                ev = next_event => match ev {
                    Some(Ok(KubeWatchEvent::Added(e))) | Some(Ok(KubeWatchEvent::Modified(e))) => observe_event(&e, name, f),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        // Without events an image pull would go unseen.
                        f.watch_broken = true;
                        *ev_w = None;
                        return false;
                    }
                },
                _ = grace => return false,
                _ = self.cancel.cancelled() => return true,
                _ = tokio::time::sleep_until(deadline) => {
                    f.timed_out = marks.ready.is_none();
                    return false;
                }
            }
        }
    }

    async fn delete(&self, name: &str, pod_w: &mut Watch<Pod>, marks: &mut Marks, quiet_404: bool) {
        let path = Request::new(format!("/api/v1/namespaces/{}/pods", self.namespace));
        let call = Call {
            verb: Verb::Delete,
            resource: Resource::Pods,
            name_set: true,
            namespaced: true,
        };
        // The pod's own grace period: never 0, never force.
        let Ok(req) = path.delete(name, &DeleteParams::default()) else {
            return;
        };
        match timed::send(
            &self.api_client,
            &self.metrics,
            call,
            req,
            self.settings.delete_timeout,
            |_| {},
        )
        .await
        {
            Ok(r) if r.ok() => marks.delete_sent = Some(r.sent),
            Ok(r) if r.status == 404 && quiet_404 => return,
            Ok(r) => {
                tracing::warn!(
                    status = r.status,
                    pod = name,
                    "Probe pod DELETE rejected; the sweeper will retry"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, pod = name, "Probe pod DELETE failed; the sweeper will retry");
                return;
            }
        }
        let wait = async {
            while let Some(ev) = pod_w.next().await {
                match ev {
                    Ok(KubeWatchEvent::Deleted(_)) => return Some(Instant::now()),
                    Ok(KubeWatchEvent::Error(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            None
        };
        if let Ok(Some(at)) = tokio::time::timeout(self.settings.delete_timeout, wait).await {
            marks.deleted = Some(at);
        }
    }

    fn forget_gone_nodes(&mut self) {
        let present: std::collections::BTreeSet<String> = self.nodes.names().into_iter().collect();
        let gone: Vec<String> = self.exported.difference(&present).cloned().collect();
        for n in gone {
            self.metrics.remove_node(&n);
            self.exported.remove(&n);
        }
    }

    fn record(&mut self, target: &str, f: &Findings, marks: &Marks) -> ProbeResult {
        let outcome = classify(f, marks);
        self.metrics.probe_outcome(outcome);
        let mut phases = marks.api_phases();
        if outcome == Outcome::Ok {
            phases.extend(marks.startup_phases());
        }
        for (p, d) in &phases {
            self.metrics.observe_phase(*p, *d);
            if *p == Phase::PodStartup {
                self.metrics.set_last_startup(target, *d);
                self.exported.insert(target.to_string());
            }
        }
        ProbeResult { outcome, phases }
    }
}

/// `activeDeadlineSeconds`: twice the probe timeout, so a pod the
/// controller lost still ends on its own.
fn active_deadline(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_secs().saturating_mul(2).max(30)).unwrap_or(i64::MAX)
}

/// Updates first sightings from one pod state received at `at`.
pub fn observe_pod(p: &Pod, at: Instant, marks: &mut Marks, f: &mut Findings) {
    let spec_containers = p.spec.as_ref().map_or(1, |s| s.containers.len());
    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
        Marks::first(&mut marks.scheduled, at);
    }
    let Some(status) = &p.status else { return };
    for c in status.conditions.iter().flatten() {
        match (c.type_.as_str(), c.status.as_str()) {
            ("PodReadyToStartContainers", "True") => Marks::first(&mut marks.sandbox, at),
            ("Ready", "True") => Marks::first(&mut marks.ready, at),
            ("PodScheduled", "False") if c.reason.as_deref() == Some("Unschedulable") => {
                f.unschedulable = true
            }
            _ => {}
        }
    }
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    let started = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.started == Some(true) || c.state.as_ref().is_some_and(|s| s.running.is_some())
    };
    if statuses.len() >= spec_containers && statuses.iter().all(started) {
        Marks::first(&mut marks.started, at);
    }
    for c in statuses {
        if let Some(s) = &c.state {
            if s.terminated.is_some() {
                f.failed = true;
            }
            if let Some(w) = &s.waiting {
                if w.reason
                    .as_deref()
                    .is_some_and(|r| FATAL_WAITING_REASONS.contains(&r))
                {
                    f.failed = true;
                }
            }
        }
    }
    if matches!(status.phase.as_deref(), Some("Failed") | Some("Succeeded")) {
        f.failed = true;
    }
}

/// Notes an image pull from the probe pod's events.
pub fn observe_event(e: &Event, pod_name: &str, f: &mut Findings) {
    if e.involved_object.name.as_deref() != Some(pod_name) {
        return;
    }
    match e.reason.as_deref() {
        Some("Pulling") => f.image_pulled = true,
        Some("Pulled") if pulled_message_is_pull(e.message.as_deref().unwrap_or_default()) => {
            f.image_pulled = true
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, PodCondition, PodStatus,
    };

    fn cond(t: &str, s: &str) -> PodCondition {
        PodCondition {
            type_: t.into(),
            status: s.into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_event_can_show_several_conditions() {
        let mut p = probe_pod("p", "r", "img", "n1", 60);
        let base = Instant::now();
        let (mut m, mut f) = (Marks::default(), Findings::default());
        observe_pod(&p, base, &mut m, &mut f);
        assert!(m.scheduled.is_none());
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some("n1".into());
        }
        p.status = Some(PodStatus {
            conditions: Some(vec![
                cond("PodReadyToStartContainers", "True"),
                cond("Ready", "True"),
            ]),
            container_statuses: Some(vec![ContainerStatus {
                name: "pause".into(),
                started: Some(true),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let later = base + Duration::from_millis(700);
        observe_pod(&p, later, &mut m, &mut f);
        for mark in [m.scheduled, m.sandbox, m.started, m.ready] {
            assert_eq!(mark, Some(later));
        }
        assert_eq!(f, Findings::default());
    }

    #[test]
    fn unschedulable_and_image_errors() {
        let mut p = probe_pod("p", "r", "img", "n1", 60);
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                reason: Some("Unschedulable".into()),
                ..cond("PodScheduled", "False")
            }]),
            ..Default::default()
        });
        let (mut m, mut f) = (Marks::default(), Findings::default());
        observe_pod(&p, Instant::now(), &mut m, &mut f);
        assert!(f.unschedulable && !f.failed);
        let mut e = Event::default();
        e.involved_object.name = Some("other".into());
        e.reason = Some("Pulling".into());
        let mut f = Findings::default();
        observe_event(&e, "p", &mut f);
        assert!(!f.image_pulled);
        e.involved_object.name = Some("p".into());
        observe_event(&e, "p", &mut f);
        assert!(f.image_pulled);
    }

    #[test]
    fn active_deadline_is_twice_the_timeout() {
        assert_eq!(active_deadline(Duration::from_secs(60)), 120);
        assert_eq!(active_deadline(Duration::from_secs(1)), 30);
    }
}
