//! Pod startup phases and outcomes from first sightings on one clock (pure).
//!
//! Every mark is the controller's monotonic [`Instant`] at the arrival of the
//! HTTP response or watch event that first showed the condition. Object
//! timestamps never enter these numbers.

use std::time::{Duration, Instant};

use super::metric_labels::{Outcome, Phase};

/// First sightings of one probe pod.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    /// POST sent.
    pub post_sent: Option<Instant>,
    /// POST response received (2xx).
    pub post_response: Option<Instant>,
    /// ADDED watch event received.
    pub added: Option<Instant>,
    /// First event with `spec.nodeName` set.
    pub scheduled: Option<Instant>,
    /// First event with `PodReadyToStartContainers=True`.
    pub sandbox: Option<Instant>,
    /// First event with every container started.
    pub started: Option<Instant>,
    /// First event with `Ready=True`.
    pub ready: Option<Instant>,
    /// DELETE sent.
    pub delete_sent: Option<Instant>,
    /// DELETED watch event received.
    pub deleted: Option<Instant>,
}

impl Marks {
    /// Records `at` in `slot` unless an earlier sighting is there.
    pub fn first(slot: &mut Option<Instant>, at: Instant) {
        if slot.is_none() {
            *slot = Some(at);
        }
    }

    /// "Created": the earlier of the POST response and the ADDED event (the
    /// event can overtake the response).
    pub fn created(&self) -> Option<Instant> {
        match (self.post_response, self.added) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The API-call phases (`create`, `delete`), observed whatever the outcome.
    pub fn api_phases(&self) -> Vec<(Phase, Duration)> {
        let mut v = Vec::new();
        push(&mut v, Phase::Create, self.post_sent, self.post_response);
        push(&mut v, Phase::Delete, self.delete_sent, self.deleted);
        v
    }

    /// The startup phases, observed only for [`Outcome::Ok`] probes. A later
    /// condition seen in the same event as an earlier one gives 0, never a
    /// negative value: a condition seen first implies its predecessors.
    pub fn startup_phases(&self) -> Vec<(Phase, Duration)> {
        let mut v = Vec::new();
        let created = self.created();
        push(&mut v, Phase::CreateToSchedule, created, self.scheduled);
        push(
            &mut v,
            Phase::ScheduleToSandbox,
            self.scheduled,
            self.sandbox,
        );
        push(&mut v, Phase::ScheduleToRun, self.scheduled, self.started);
        push(&mut v, Phase::PodStartup, created, self.started);
        push(&mut v, Phase::StartedToReady, self.started, self.ready);
        v
    }
}

fn push(v: &mut Vec<(Phase, Duration)>, p: Phase, from: Option<Instant>, to: Option<Instant>) {
    if let (Some(a), Some(b)) = (from, to) {
        v.push((p, b.saturating_duration_since(a)));
    }
}

/// What the probe saw besides the marks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Findings {
    /// The POST failed.
    pub create_failed: bool,
    /// The created pod's containers differ from what was sent.
    pub mutated: bool,
    /// The pod watch ended or errored during the probe.
    pub watch_broken: bool,
    /// A `Pulling` event, or a `Pulled` one that is not "already present".
    pub image_pulled: bool,
    /// `PodScheduled=False` with reason `Unschedulable`.
    pub unschedulable: bool,
    /// Phase Failed, a terminated container, or an image or config error.
    pub failed: bool,
    /// The probe deadline passed.
    pub timed_out: bool,
}

/// The outcome of a finished probe. Order matters: a reason that makes the
/// timing meaningless wins over one that merely excludes it.
pub(crate) fn classify(f: &Findings, m: &Marks) -> Outcome {
    if f.create_failed {
        Outcome::CreateError
    } else if f.mutated {
        Outcome::Mutated
    } else if f.failed {
        Outcome::Failed
    } else if f.unschedulable {
        Outcome::Unschedulable
    } else if f.watch_broken {
        Outcome::WatchRestarted
    } else if m.started.is_none() || m.ready.is_none() || f.timed_out {
        if f.image_pulled && m.started.is_some() {
            Outcome::ImagePulled
        } else {
            Outcome::Timeout
        }
    } else if f.image_pulled {
        Outcome::ImagePulled
    } else {
        Outcome::Ok
    }
}

/// Waiting reasons that mean the pod will not start on its own.
pub(crate) const FATAL_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// Whether a `Pulled` event message reports a real pull (not "already present").
pub(crate) fn pulled_message_is_pull(message: &str) -> bool {
    !message.contains("already present")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Option<Instant> {
        Some(base + Duration::from_millis(ms))
    }

    fn full(base: Instant) -> Marks {
        Marks {
            post_sent: at(base, 0),
            post_response: at(base, 30),
            added: at(base, 20),
            scheduled: at(base, 520),
            sandbox: at(base, 820),
            started: at(base, 1220),
            ready: at(base, 1520),
            delete_sent: at(base, 2000),
            deleted: at(base, 2100),
        }
    }

    fn get(v: &[(Phase, Duration)], p: Phase) -> Option<u128> {
        v.iter().find(|(q, _)| *q == p).map(|(_, d)| d.as_millis())
    }

    #[test]
    fn phases_use_the_earlier_of_response_and_added() {
        let m = full(Instant::now());
        let s = m.startup_phases();
        assert_eq!(get(&s, Phase::CreateToSchedule), Some(500));
        assert_eq!(get(&s, Phase::ScheduleToSandbox), Some(300));
        assert_eq!(get(&s, Phase::ScheduleToRun), Some(700));
        assert_eq!(get(&s, Phase::PodStartup), Some(1200));
        assert_eq!(get(&s, Phase::StartedToReady), Some(300));
        let a = m.api_phases();
        assert_eq!(get(&a, Phase::Create), Some(30));
        assert_eq!(get(&a, Phase::Delete), Some(100));
    }

    #[test]
    fn missing_marks_skip_phases_and_never_go_negative() {
        let base = Instant::now();
        let mut m = full(base);
        m.sandbox = None; // clusters before PodReadyToStartContainers
        m.scheduled = at(base, 1220); // scheduled and started in one event
        let s = m.startup_phases();
        assert_eq!(get(&s, Phase::ScheduleToSandbox), None);
        assert_eq!(get(&s, Phase::ScheduleToRun), Some(0));
        m.deleted = None;
        assert_eq!(get(&m.api_phases(), Phase::Delete), None);
    }

    #[test]
    fn first_keeps_the_earliest() {
        let base = Instant::now();
        let mut slot = None;
        Marks::first(&mut slot, base + Duration::from_secs(1));
        Marks::first(&mut slot, base + Duration::from_secs(2));
        assert_eq!(slot, Some(base + Duration::from_secs(1)));
    }

    #[test]
    fn outcomes() {
        let m = full(Instant::now());
        let ok = Findings::default();
        assert_eq!(classify(&ok, &m), Outcome::Ok);
        let f = |g: fn(&mut Findings)| {
            let mut x = Findings::default();
            g(&mut x);
            x
        };
        assert_eq!(
            classify(&f(|x| x.image_pulled = true), &m),
            Outcome::ImagePulled
        );
        assert_eq!(
            classify(&f(|x| x.create_failed = true), &Marks::default()),
            Outcome::CreateError
        );
        assert_eq!(classify(&f(|x| x.mutated = true), &m), Outcome::Mutated);
        assert_eq!(
            classify(&f(|x| x.watch_broken = true), &m),
            Outcome::WatchRestarted
        );
        let mut pending = m.clone();
        pending.started = None;
        pending.ready = None;
        assert_eq!(
            classify(&f(|x| x.timed_out = true), &pending),
            Outcome::Timeout
        );
        assert_eq!(
            classify(&f(|x| x.unschedulable = true), &pending),
            Outcome::Unschedulable
        );
        assert_eq!(
            classify(
                &f(|x| {
                    x.image_pulled = true;
                    x.failed = true
                }),
                &pending
            ),
            Outcome::Failed
        );
    }

    #[test]
    fn pulled_messages() {
        assert!(!pulled_message_is_pull(
            "Container image \"pause\" already present on machine"
        ));
        assert!(pulled_message_is_pull(
            "Successfully pulled image \"x\" in 1.2s (1.2s including waiting)"
        ));
    }
}
