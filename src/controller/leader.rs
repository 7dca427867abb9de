//! Leader election on a coordination.k8s.io Lease, hand-written on kube-rs.
//!
//! kube-lease-manager 0.13 supports kube 5 but writes the Lease with
//! server-side apply; this loop uses GET and PUT with resourceVersion
//! (optimistic concurrency, 409 on a race), which any apiserver and our
//! test server implement. Expiry is judged on our monotonic clock since we
//! last saw the record change (as client-go does), so node clock skew
//! cannot make a live holder look expired.
//!
//! The decisions are pure ([`LeaderCore::decide`], [`WarnLimiter`]); the
//! loop in [`LeaderElector::run`] only does the IO. Every failed call is
//! named ([`crate::api_error`]), logged at `warn` (rate-limited) and
//! counted in `kubepulse_controller_leader_errors_total{reason}`, so a
//! controller that cannot lead says why. Each round's calls end by
//! [`LeaderCore::round_deadline`]: a call that hangs (the API server's
//! packets dropped) cannot keep a replica leading past its renew deadline,
//! as client-go bounds a renewal by `RenewDeadline`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::ControllerMetrics;
use crate::api_error::{self, ApiCall, ApiFailure};
use crate::config::{LeaderSettings, DEFAULT_LEASE_NAME};

/// Whether a record unchanged since `observed_at` has expired at `now`.
pub(crate) fn expired(observed_at: Instant, now: Instant, lease_duration: Duration) -> bool {
    now.saturating_duration_since(observed_at) >= lease_duration
}

/// What one read of the Lease showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The Lease does not exist.
    Missing,
    /// The Lease exists.
    Held {
        /// Its holder (`None`: released).
        holder: Option<String>,
        /// When we first saw its current (holder, renewTime) record, on our
        /// monotonic clock.
        unchanged_since: Instant,
        /// Its lease duration.
        duration: Duration,
    },
    /// The read failed: nothing is known.
    Unknown,
}

/// What the elector does after a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Create the Lease, holding it.
    Create,
    /// Renew our own Lease.
    Renew,
    /// Take over a released or expired Lease.
    TakeOver,
    /// Nothing to write: another replica holds it, or the read failed.
    Wait,
}

/// The pure core of leader election: what to write after a read, and
/// whether we lead. Leadership lasts `renew_deadline` after our last
/// successful write, so a replica that cannot reach the API stops
/// measuring before its Lease can expire and a peer takes over.
#[derive(Debug, Clone)]
pub(crate) struct LeaderCore {
    identity: String,
    renew_deadline: Duration,
    last_write: Option<Instant>,
}

impl LeaderCore {
    /// A core for `identity`, leading for `renew_deadline` after each write.
    pub(crate) fn new(identity: &str, renew_deadline: Duration) -> Self {
        Self {
            identity: identity.to_string(),
            renew_deadline,
            last_write: None,
        }
    }

    /// Decides what to do about `observed` at `now`. Seeing another holder
    /// ends our leadership at once.
    pub(crate) fn decide(&mut self, observed: &Observed, now: Instant) -> Action {
        match observed {
            Observed::Missing => Action::Create,
            Observed::Unknown => Action::Wait,
            Observed::Held {
                holder,
                unchanged_since,
                duration,
            } => {
                if holder.as_deref() == Some(self.identity.as_str()) {
                    Action::Renew
                } else if holder.is_none() || expired(*unchanged_since, now, *duration) {
                    Action::TakeOver
                } else {
                    self.last_write = None;
                    Action::Wait
                }
            }
        }
    }

    /// When a round of calls started at `now` must have ended: the moment
    /// our leadership lapses while we lead, else `renew_deadline` from now.
    pub(crate) fn round_deadline(&self, now: Instant) -> Instant {
        self.last_write
            .map_or(now + self.renew_deadline, |t| t + self.renew_deadline)
    }

    /// Notes a successful write (create, renew or take-over) at `now`.
    pub(crate) fn wrote(&mut self, now: Instant) {
        self.last_write = Some(now);
    }

    /// Whether we lead at `now`. Once the deadline has passed, leadership is
    /// gone for good: only a new write brings it back.
    pub(crate) fn leading(&mut self, now: Instant) -> bool {
        let lead = self
            .last_write
            .is_some_and(|t| now.saturating_duration_since(t) < self.renew_deadline);
        if !lead {
            self.last_write = None;
        }
        lead
    }
}

/// Lets one warning through per `interval`, counting those held back; a
/// warning of a new kind goes through at once (the problem changed).
#[derive(Debug, Clone)]
pub(crate) struct WarnLimiter {
    interval: Duration,
    last: Option<Instant>,
    last_kind: Option<&'static str>,
    held_back: u64,
}

impl WarnLimiter {
    /// At most one warning per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            last_kind: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when a warning of `kind` may be logged at `now` (`n` were
    /// held back since the last one), `None` when it must be held back.
    pub(crate) fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        let recent = self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval);
        if recent && self.last_kind == Some(kind) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        self.last_kind = Some(kind);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Whether this replica reached the API on its last attempt, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct ApiReachability(Arc<Mutex<Option<Result<(), String>>>>);

impl ApiReachability {
    /// Records the result of the latest call.
    pub fn set(&self, r: Result<(), String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    /// `None` before the first call, else the latest result.
    pub fn get(&self) -> Option<Result<(), String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// At most one leader-election warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Elects one leader among replicas sharing a Lease.
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    settings: LeaderSettings,
    metrics: Option<ControllerMetrics>,
    reachability: ApiReachability,
    warnings: WarnLimiter,
}

impl LeaderElector {
    /// An elector for `identity` on Lease `settings.lease_name` in `namespace`.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        settings: LeaderSettings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            settings,
            metrics: None,
            reachability: ApiReachability::default(),
            warnings: WarnLimiter::new(WARN_INTERVAL),
        }
    }

    /// Counts failures in `kubepulse_controller_leader_errors_total`.
    pub(crate) fn with_metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Where this elector publishes whether it reaches the API.
    pub(crate) fn reachability(&self) -> ApiReachability {
        self.reachability.clone()
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.settings.lease_duration.as_secs().max(1))
                .ok(),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Names, counts and (rate-limited) logs a failed call on the Lease.
    fn failed(&mut self, verb: &str, e: &kube::Error) -> ApiFailure {
        let call = ApiCall {
            verb,
            resource: "leases.coordination.k8s.io",
            namespace: Some(&self.namespace),
            name: Some(&self.settings.lease_name),
        };
        let f = api_error::describe(e, &call);
        if let Some(m) = &self.metrics {
            m.leader_error(f.reason);
        }
        // A lost update race is part of normal operation, not a reason to
        // worry; a create conflict is: the GET said the Lease is missing.
        if f.reason != api_error::ApiFailureReason::Conflict || verb != "update" {
            if let Some(held_back) = self.warnings.allow(f.reason.as_str(), Instant::now()) {
                tracing::warn!(
                    reason = %f.reason,
                    status = ?f.status,
                    api_reason = ?f.api_reason,
                    held_back,
                    "Leader election failed: {f}"
                );
            }
        } else {
            tracing::debug!("Leader lease update lost a race: {f}");
        }
        f
    }

    /// Records whether the last call reached the API at all (any HTTP
    /// answer does; a transport failure does not).
    fn reached(&self, r: Result<(), &ApiFailure>) {
        self.reachability.set(match r {
            Ok(()) => Ok(()),
            Err(f) if f.status.is_some() => Ok(()),
            Err(f) => Err(f.message.clone()),
        });
    }

    /// Runs until cancelled, publishing leadership on `leading`. On
    /// cancellation a leader releases the Lease so a peer takes over at once.
    pub(crate) async fn run(mut self, leading: watch::Sender<bool>, token: CancellationToken) {
        let name = self.settings.lease_name.clone();
        if name != DEFAULT_LEASE_NAME {
            // The shipped Role names the default Lease (see rbac::grants_for).
            tracing::info!(lease = %name,
                "Leader Lease renamed: the Role kubepulse-controller-leader must grant get and update on this name (resourceNames)");
        }
        let mut core = LeaderCore::new(&self.identity, self.settings.renew_deadline);
        let mut seen: Option<(Option<String>, Option<MicroTime>)> = None;
        let mut unchanged_since = Instant::now();
        loop {
            let now = Instant::now();
            let deadline = core.round_deadline(now);
            let read = bounded(deadline, self.api.get_opt(&name)).await;
            let (observed, lease) = match read {
                Err(e) => {
                    let f = self.failed("get", &e);
                    self.reached(Err(&f));
                    (Observed::Unknown, None)
                }
                Ok(None) => {
                    self.reached(Ok(()));
                    (Observed::Missing, None)
                }
                Ok(Some(lease)) => {
                    self.reached(Ok(()));
                    let spec = lease.spec.clone().unwrap_or_default();
                    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
                    let record = (holder.clone(), spec.renew_time.clone());
                    if seen.as_ref() != Some(&record) {
                        seen = Some(record);
                        unchanged_since = now;
                    }
                    let duration = spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map_or(self.settings.lease_duration, Duration::from_secs);
                    (
                        Observed::Held {
                            holder,
                            unchanged_since,
                            duration,
                        },
                        Some(lease),
                    )
                }
            };
            let was_leading = *leading.borrow();
            let action = core.decide(&observed, now);
            if let (true, Action::Wait, Observed::Held { holder, .. }) =
                (was_leading, &action, &observed)
            {
                tracing::warn!(holder = ?holder, "Leader lease taken by another replica");
            }
            let written = match (&action, lease) {
                (Action::Create, _) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            ..Default::default()
                        },
                        spec: Some(self.spec(0, None)),
                    };
                    Some(
                        bounded(deadline, self.api.create(&PostParams::default(), &lease))
                            .await
                            .map(drop)
                            .map_err(|e| ("create", e)),
                    )
                }
                (Action::Renew | Action::TakeOver, Some(mut lease)) => {
                    let spec = lease.spec.clone().unwrap_or_default();
                    let mine = action == Action::Renew;
                    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
                    let acquire = if mine {
                        spec.acquire_time.clone()
                    } else {
                        None
                    };
                    lease.spec = Some(self.spec(transitions, acquire));
                    Some(
                        bounded(
                            deadline,
                            self.api.replace(&name, &PostParams::default(), &lease),
                        )
                        .await
                        .map(drop)
                        .map_err(|e| ("update", e)),
                    )
                }
                _ => None,
            };
            match written {
                Some(Ok(())) => core.wrote(now),
                Some(Err((verb, e))) => {
                    let f = self.failed(verb, &e);
                    self.reached(Err(&f));
                }
                None => {}
            }
            let lead = core.leading(Instant::now());
            if lead != *leading.borrow() {
                tracing::info!(identity = %self.identity, leading = lead, "Leadership changed");
                leading.send_replace(lead);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry_period) => {}
                _ = token.cancelled() => break,
            }
        }
        if *leading.borrow() {
            self.release(&name).await;
            leading.send_replace(false);
        }
    }

    async fn release(&mut self, name: &str) {
        let mut lease = match self.api.get_opt(name).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                self.failed("get", &e);
                return;
            }
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self.api.replace(name, &PostParams::default(), &lease).await {
            self.failed("update", &e);
        }
    }
}

/// `call`, or a timeout error once `deadline` has passed without an answer.
async fn bounded<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = kube::Result<T>>,
) -> kube::Result<T> {
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer before the renew deadline (timed out)",
            ))))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_on_our_clock() {
        let t = Instant::now();
        let d = Duration::from_secs(15);
        assert!(!expired(t, t + Duration::from_secs(14), d));
        assert!(expired(t, t + d, d));
        assert!(!expired(t + d, t, d));
    }

    fn held(holder: Option<&str>, since: Instant) -> Observed {
        Observed::Held {
            holder: holder.map(str::to_string),
            unchanged_since: since,
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn decide_creates_renews_takes_over_or_waits() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut c = LeaderCore::new("me", s(10));
        assert_eq!(c.decide(&Observed::Missing, t), Action::Create);
        assert_eq!(c.decide(&held(None, t), t), Action::TakeOver);
        assert_eq!(c.decide(&held(Some("other"), t), t + s(14)), Action::Wait);
        assert_eq!(
            c.decide(&held(Some("other"), t), t + s(15)),
            Action::TakeOver
        );
        assert_eq!(c.decide(&held(Some("me"), t), t), Action::Renew);
        assert_eq!(c.decide(&Observed::Unknown, t), Action::Wait);
        assert!(!c.leading(t), "no write yet");
    }

    #[test]
    fn leadership_lasts_the_renew_deadline_after_a_write() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut c = LeaderCore::new("me", s(10));
        c.wrote(t);
        assert!(c.leading(t + s(9)));
        // The API cannot be read: still leading until the deadline...
        assert_eq!(c.decide(&Observed::Unknown, t + s(9)), Action::Wait);
        assert!(c.leading(t + s(9)));
        // ...and not after it, for good.
        assert!(!c.leading(t + s(10)));
        assert!(!c.leading(t + s(9)));
    }

    #[test]
    fn a_round_ends_when_leadership_would_lapse() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut c = LeaderCore::new("me", s(10));
        // Not leading: a round may take the renew deadline.
        assert_eq!(c.round_deadline(t), t + s(10));
        // Leading since a write at t: the round ends when leadership would.
        c.wrote(t);
        assert_eq!(c.round_deadline(t + s(4)), t + s(10));
    }

    #[test]
    fn another_holder_ends_leadership_at_once() {
        let t = Instant::now();
        let mut c = LeaderCore::new("me", Duration::from_secs(10));
        c.wrote(t);
        assert_eq!(c.decide(&held(Some("other"), t), t), Action::Wait);
        assert!(!c.leading(t));
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_was_held_back() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut w = WarnLimiter::new(s(30));
        assert_eq!(w.allow("forbidden", t), Some(0));
        assert_eq!(w.allow("forbidden", t + s(1)), None);
        assert_eq!(w.allow("forbidden", t + s(29)), None);
        assert_eq!(w.allow("forbidden", t + s(30)), Some(2));
        assert_eq!(w.allow("forbidden", t + s(31)), None);
        // A new kind of failure is told at once.
        assert_eq!(w.allow("tls", t + s(32)), Some(1));
        assert_eq!(w.allow("tls", t + s(33)), None);
    }
}
