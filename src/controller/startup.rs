//! The pod startup probe's event handling as a pure state machine: the
//! IO loop in [`super::pod_startup`] feeds it what arrives (pod and Event
//! watch events, timers, cancellation) with the arrival time, and it says
//! whether to go on, start the event grace period, or stop with an
//! [`Ending`]. Every ending has an explicit outcome ([`Ending::outcome`]):
//! a cancelled probe (leadership lost, shutdown) is not counted at all,
//! never as a timeout; the IO still deletes its pod.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Event, Pod};

use super::metric_labels::Outcome;
use super::phases::{classify, pulled_message_is_pull, Findings, Marks, FATAL_WAITING_REASONS};

/// Something that happened while following the probe pod.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a> {
    /// The pod watch's ADDED event.
    PodAdded(&'a Pod),
    /// A MODIFIED event.
    PodModified(&'a Pod),
    /// A DELETED event: someone else deleted the probe pod.
    PodDeleted,
    /// The pod watch ended or failed.
    PodWatchEnded,
    /// An Event (ADDED or MODIFIED) in the probe namespace.
    Event(&'a Event),
    /// The Event watch ended or failed.
    EventWatchEnded,
    /// The event grace period after Ready is over.
    GraceOver,
    /// The probe timeout passed.
    Deadline,
    /// The run was cancelled: leadership lost or shutdown.
    Cancelled,
}

/// What the IO does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep following.
    Continue,
    /// Ready was just seen: start the grace period for late Events (an
    /// image pull can be reported after Ready), then feed
    /// [`Input::GraceOver`].
    StartGrace,
    /// Stop following: delete the pod and record the ending.
    Stop(Ending),
}

/// How following the pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The POST failed: nothing to follow.
    CreateFailed,
    /// Ready, and the grace period for late Events is over.
    Settled,
    /// The pod failed or cannot be scheduled: no point waiting.
    Hopeless,
    /// Someone else deleted the probe pod.
    DeletedByOther,
    /// A watch broke, so first sightings may be missing.
    WatchBroken,
    /// The probe timeout passed.
    TimedOut,
    /// Leadership was lost or the controller shuts down.
    Cancelled,
}

/// The event handling of one probe.
#[derive(Debug, Clone)]
pub(crate) struct Startup {
    pod_name: String,
    /// First sightings, on the controller's monotonic clock.
    pub marks: Marks,
    /// What else was seen.
    pub findings: Findings,
    grace_started: bool,
    ended: Option<Ending>,
}

impl Startup {
    /// Follows the pod named `pod_name` (its Events are matched by name).
    pub(crate) fn new(pod_name: &str) -> Self {
        Self {
            pod_name: pod_name.to_string(),
            marks: Marks::default(),
            findings: Findings::default(),
            grace_started: false,
            ended: None,
        }
    }

    /// Handles one input that arrived at `at`. After a [`Step::Stop`]
    /// every further input gets the same stop and changes nothing.
    pub(crate) fn on(&mut self, input: Input<'_>, at: Instant) -> Step {
        if let Some(e) = self.ended {
            return Step::Stop(e);
        }
        let step = self.step(input, at);
        if let Step::Stop(e) = step {
            self.ended = Some(e);
        }
        step
    }

    fn step(&mut self, input: Input<'_>, at: Instant) -> Step {
        let f = &mut self.findings;
        match input {
            Input::PodAdded(p) => {
                Marks::first(&mut self.marks.added, at);
                observe_pod(p, at, &mut self.marks, f);
            }
            Input::PodModified(p) => observe_pod(p, at, &mut self.marks, f),
            Input::PodDeleted => {
                f.failed = true;
                return Step::Stop(Ending::DeletedByOther);
            }
            Input::PodWatchEnded | Input::EventWatchEnded => {
                // Without the Event watch an image pull would go unseen.
                f.watch_broken = true;
                return Step::Stop(Ending::WatchBroken);
            }
            Input::Event(e) => {
                observe_event(e, &self.pod_name, f);
                return Step::Continue;
            }
            Input::GraceOver => return Step::Stop(Ending::Settled),
            Input::Deadline => {
                f.timed_out = self.marks.ready.is_none();
                return Step::Stop(Ending::TimedOut);
            }
            Input::Cancelled => return Step::Stop(Ending::Cancelled),
        }
        // After a pod event.
        if f.failed || f.unschedulable {
            return Step::Stop(Ending::Hopeless);
        }
        if self.marks.ready.is_some() && !self.grace_started {
            self.grace_started = true;
            return Step::StartGrace;
        }
        Step::Continue
    }

    /// Notes that the POST failed (the IO then feeds nothing else).
    pub(crate) fn create_failed(&mut self) -> Ending {
        self.findings.create_failed = true;
        self.ended = Some(Ending::CreateFailed);
        Ending::CreateFailed
    }

    /// The outcome counted for `ending`: `None` for a cancelled probe,
    /// which is not counted at all.
    pub(crate) fn outcome(&self, ending: Ending) -> Option<Outcome> {
        match ending {
            Ending::Cancelled => None,
            Ending::CreateFailed
            | Ending::Settled
            | Ending::Hopeless
            | Ending::DeletedByOther
            | Ending::WatchBroken
            | Ending::TimedOut => Some(classify(&self.findings, &self.marks)),
        }
    }
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
    use crate::controller::objects::probe_pod;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };
    use std::time::Duration;

    fn cond(t: &str, s: &str) -> PodCondition {
        PodCondition {
            type_: t.into(),
            status: s.into(),
            ..Default::default()
        }
    }

    fn scheduled() -> Pod {
        let mut p = probe_pod("p", "r", "img", "n1", 60);
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some("n1".into());
        }
        p
    }

    fn ready() -> Pod {
        let mut p = scheduled();
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
        p
    }

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn ready_then_grace_is_ok() {
        let t = Instant::now();
        let mut s = Startup::new("p");
        assert_eq!(
            s.on(Input::PodAdded(&probe_pod("p", "r", "img", "n1", 60)), t),
            Step::Continue
        );
        assert_eq!(
            s.on(Input::PodModified(&scheduled()), ms(t, 10)),
            Step::Continue
        );
        assert_eq!(
            s.on(Input::PodModified(&ready()), ms(t, 900)),
            Step::StartGrace
        );
        // Grace starts once only.
        assert_eq!(
            s.on(Input::PodModified(&ready()), ms(t, 950)),
            Step::Continue
        );
        assert_eq!(
            s.on(Input::GraceOver, ms(t, 2000)),
            Step::Stop(Ending::Settled)
        );
        assert_eq!(s.marks.added, Some(t));
        assert_eq!(s.marks.scheduled, Some(ms(t, 10)));
        assert_eq!(s.marks.ready, Some(ms(t, 900)));
        assert_eq!(s.outcome(Ending::Settled), Some(Outcome::Ok));
    }

    #[test]
    fn cancellation_is_never_a_timeout() {
        let t = Instant::now();
        // Cancelled before anything was seen: not counted.
        let mut s = Startup::new("p");
        assert_eq!(s.on(Input::Cancelled, t), Step::Stop(Ending::Cancelled));
        assert_eq!(s.outcome(Ending::Cancelled), None);
        // A deadline after the cancellation changes nothing.
        assert_eq!(
            s.on(Input::Deadline, ms(t, 5)),
            Step::Stop(Ending::Cancelled)
        );
        assert!(!s.findings.timed_out);
        // Cancelled after Ready, in the grace period: not counted either.
        let mut s = Startup::new("p");
        s.on(Input::PodAdded(&scheduled()), t);
        assert_eq!(
            s.on(Input::PodModified(&ready()), ms(t, 5)),
            Step::StartGrace
        );
        assert_eq!(
            s.on(Input::Cancelled, ms(t, 6)),
            Step::Stop(Ending::Cancelled)
        );
        assert_eq!(s.outcome(Ending::Cancelled), None);
    }

    #[test]
    fn every_other_ending_has_its_outcome() {
        let t = Instant::now();
        let mut s = Startup::new("p");
        s.on(Input::PodAdded(&scheduled()), t);
        assert_eq!(
            s.on(Input::Deadline, ms(t, 60_000)),
            Step::Stop(Ending::TimedOut)
        );
        assert_eq!(s.outcome(Ending::TimedOut), Some(Outcome::Timeout));

        let mut s = Startup::new("p");
        s.on(Input::PodAdded(&scheduled()), t);
        assert_eq!(
            s.on(Input::PodDeleted, ms(t, 1)),
            Step::Stop(Ending::DeletedByOther)
        );
        assert_eq!(s.outcome(Ending::DeletedByOther), Some(Outcome::Failed));

        for input in [Input::PodWatchEnded, Input::EventWatchEnded] {
            let mut s = Startup::new("p");
            s.on(Input::PodAdded(&scheduled()), t);
            assert_eq!(s.on(input, ms(t, 1)), Step::Stop(Ending::WatchBroken));
            assert_eq!(
                s.outcome(Ending::WatchBroken),
                Some(Outcome::WatchRestarted)
            );
        }

        let mut s = Startup::new("p");
        assert_eq!(s.create_failed(), Ending::CreateFailed);
        assert_eq!(s.outcome(Ending::CreateFailed), Some(Outcome::CreateError));

        let mut bad = scheduled();
        bad.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "pause".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ErrImagePull".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mut s = Startup::new("p");
        assert_eq!(s.on(Input::PodAdded(&bad), t), Step::Stop(Ending::Hopeless));
        assert_eq!(s.outcome(Ending::Hopeless), Some(Outcome::Failed));

        let mut unsched = probe_pod("p", "r", "img", "n1", 60);
        unsched.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                reason: Some("Unschedulable".into()),
                ..cond("PodScheduled", "False")
            }]),
            ..Default::default()
        });
        let mut s = Startup::new("p");
        assert_eq!(
            s.on(Input::PodAdded(&unsched), t),
            Step::Stop(Ending::Hopeless)
        );
        assert_eq!(s.outcome(Ending::Hopeless), Some(Outcome::Unschedulable));
    }

    #[test]
    fn an_image_pull_event_in_the_grace_period_excludes_the_probe() {
        let t = Instant::now();
        let mut s = Startup::new("p");
        s.on(Input::PodAdded(&scheduled()), t);
        assert_eq!(
            s.on(Input::PodModified(&ready()), ms(t, 5)),
            Step::StartGrace
        );
        let mut e = Event::default();
        e.involved_object.name = Some("p".into());
        e.reason = Some("Pulling".into());
        assert_eq!(s.on(Input::Event(&e), ms(t, 6)), Step::Continue);
        assert_eq!(
            s.on(Input::GraceOver, ms(t, 7)),
            Step::Stop(Ending::Settled)
        );
        assert_eq!(s.outcome(Ending::Settled), Some(Outcome::ImagePulled));
    }
}
