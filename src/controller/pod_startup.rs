//! The pod startup probe: one bare pod at a time, aimed round-robin at each
//! schedulable node, every phase timed on the controller's monotonic clock
//! at the arrival of the event that first showed it (see `phases`).

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

use super::label_keys::PROBE_ID;
use super::metric_labels::{Outcome, Phase, Resource, Verb};
use super::metrics::ControllerMetrics;
use super::nodes::NodeView;
use super::objects::{is_mutated, probe_pod};
use super::phases::Marks;
use super::round_robin::next_target;
pub use super::startup::{observe_event, observe_pod};
use super::startup::{Ending, Input, Startup, Step};
use super::timed::{self, Call};
use super::K8sError;
use crate::api_error::{self, ApiCall};
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
                Err(K8sError::Cancelled) => {
                    tracing::info!(target_node = %target, "Pod startup probe cancelled (leadership lost or shutdown): pod deleted, not counted")
                }
                Err(e) => {
                    tracing::warn!(target_node = %target, error = %e, "Pod startup probe could not start")
                }
            }
        }
    }

    /// One probe of `target`: watch, create, follow, delete, record.
    /// `Err` means the watches could not be opened (nothing was created), or
    /// [`K8sError::Cancelled`]: the run was cancelled mid-probe (leadership
    /// lost or shutdown): the pod was deleted and nothing was counted.
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

        let mut st = Startup::new(&name);
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
        let ending = match created {
            Ok(r) if r.ok() => {
                st.marks.post_sent = Some(r.sent);
                st.marks.post_response = Some(r.received);
                st.findings.mutated = match r.json::<Pod>("created pod") {
                    Ok(p) => is_mutated(&sent_pod, &p),
                    Err(_) => true,
                };
                self.follow(&mut st, &mut pod_w, &mut ev_w).await
            }
            Ok(r) => {
                let call = ApiCall {
                    verb: "create",
                    resource: "pods",
                    namespace: Some(&self.namespace),
                    name: None,
                };
                let f = api_error::from_response(r.status, &r.body, &call);
                tracing::warn!(status = r.status, reason = %f.reason, "Probe pod POST rejected: {f}");
                st.create_failed()
            }
            Err(e) => {
                tracing::warn!(error = %e, "Probe pod POST failed");
                st.create_failed()
            }
        };
        // Always delete, cancelled or not: a failed POST may still have
        // created the pod.
        let quiet_404 = ending == Ending::CreateFailed;
        self.delete(&name, &mut pod_w, &mut st.marks, quiet_404)
            .await;
        match st.outcome(ending) {
            Some(outcome) => Ok(self.record(target, outcome, &st.marks)),
            None => Err(K8sError::Cancelled),
        }
    }

    /// Feeds the watches, the timers and cancellation to the state machine
    /// until it stops.
    async fn follow(
        &self,
        st: &mut Startup,
        pod_w: &mut Watch<Pod>,
        ev_w: &mut Option<Watch<Event>>,
    ) -> Ending {
        let start = st.marks.post_sent.unwrap_or_else(Instant::now);
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
            let step = tokio::select! {
                // Cancellation first: a probe interrupted by lost leadership
                // or shutdown must end as cancelled, whatever else is ready.
                biased;
                _ = self.cancel.cancelled() => st.on(Input::Cancelled, Instant::now()),
                ev = pod_w.next() => {
                    let at = Instant::now();
                    match ev {
                        Some(Ok(KubeWatchEvent::Added(p))) => st.on(Input::PodAdded(&p), at),
                        Some(Ok(KubeWatchEvent::Modified(p))) => st.on(Input::PodModified(&p), at),
                        Some(Ok(KubeWatchEvent::Bookmark(_))) => Step::Continue,
                        Some(Ok(KubeWatchEvent::Deleted(_))) => st.on(Input::PodDeleted, at),
                        Some(Ok(KubeWatchEvent::Error(_))) | Some(Err(_)) | None => {
                            st.on(Input::PodWatchEnded, at)
                        }
                    }
                }
                ev = next_event => match ev {
                    Some(Ok(KubeWatchEvent::Added(e))) | Some(Ok(KubeWatchEvent::Modified(e))) => {
                        st.on(Input::Event(&e), Instant::now())
                    }
                    Some(Ok(_)) => Step::Continue,
                    Some(Err(_)) | None => {
                        *ev_w = None;
                        st.on(Input::EventWatchEnded, Instant::now())
                    }
                },
                _ = grace => st.on(Input::GraceOver, Instant::now()),
                _ = tokio::time::sleep_until(deadline) => st.on(Input::Deadline, Instant::now()),
            };
            match step {
                Step::Continue => {}
                Step::StartGrace => {
                    grace_end = Some(tokio::time::Instant::now() + self.settings.event_grace);
                }
                Step::Stop(ending) => return ending,
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
                let call = ApiCall {
                    verb: "delete",
                    resource: "pods",
                    namespace: Some(&self.namespace),
                    name: Some(name),
                };
                let f = api_error::from_response(r.status, &r.body, &call);
                tracing::warn!(
                    status = r.status,
                    reason = %f.reason,
                    pod = name,
                    "Probe pod DELETE rejected; the sweeper will retry: {f}"
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

    fn record(&mut self, target: &str, outcome: Outcome, marks: &Marks) -> ProbeResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::phases::Findings;
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
