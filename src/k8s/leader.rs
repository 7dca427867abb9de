//! Leader election on a coordination.k8s.io Lease, hand-written on kube-rs.
//!
//! kube-lease-manager 0.13 supports kube 5 but writes the Lease with
//! server-side apply; this loop uses GET and PUT with resourceVersion
//! (optimistic concurrency, 409 on a race), which any apiserver and our
//! test server implement. Expiry is judged on our monotonic clock since we
//! last saw the record change (as client-go does), so node clock skew
//! cannot make a live holder look expired.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderSettings;

/// Elects one leader among replicas sharing a Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    identity: String,
    settings: LeaderSettings,
}

/// Whether a record unchanged since `observed_at` has expired at `now`.
pub fn expired(observed_at: Instant, now: Instant, lease_duration: Duration) -> bool {
    now.saturating_duration_since(observed_at) >= lease_duration
}

impl LeaderElector {
    /// An elector for `identity` on Lease `settings.lease_name` in `namespace`.
    pub fn new(client: Client, namespace: &str, identity: &str, settings: LeaderSettings) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
            settings,
        }
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

    /// Runs until cancelled, publishing leadership on `leading`. On
    /// cancellation a leader releases the Lease so a peer takes over at once.
    pub async fn run(self, leading: watch::Sender<bool>, token: CancellationToken) {
        let name = self.settings.lease_name.clone();
        let mut observed: Option<(Option<String>, Option<MicroTime>)> = None;
        let mut observed_at = Instant::now();
        let mut last_renew: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let is_leader = *leading.borrow();
            match self.api.get_opt(&name).await {
                Err(e) => tracing::debug!(error = %e, "Leader lease GET failed"),
                Ok(None) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            ..Default::default()
                        },
                        spec: Some(self.spec(0, None)),
                    };
                    if self
                        .api
                        .create(&PostParams::default(), &lease)
                        .await
                        .is_ok()
                    {
                        last_renew = Some(now);
                    }
                }
                Ok(Some(mut lease)) => {
                    let spec = lease.spec.clone().unwrap_or_default();
                    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
                    let record = (holder.clone(), spec.renew_time.clone());
                    if observed.as_ref() != Some(&record) {
                        observed = Some(record);
                        observed_at = now;
                    }
                    let duration = spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map_or(self.settings.lease_duration, Duration::from_secs);
                    let mine = holder.as_deref() == Some(self.identity.as_str());
                    if !mine && is_leader {
                        tracing::warn!(holder = ?holder, "Leader lease taken by another replica");
                        last_renew = None;
                        leading.send_replace(false);
                    }
                    if mine || holder.is_none() || expired(observed_at, now, duration) {
                        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
                        let acquire = if mine {
                            spec.acquire_time.clone()
                        } else {
                            None
                        };
                        lease.spec = Some(self.spec(transitions, acquire));
                        match self
                            .api
                            .replace(&name, &PostParams::default(), &lease)
                            .await
                        {
                            Ok(_) => last_renew = Some(now),
                            Err(e) => tracing::debug!(error = %e, "Leader lease update failed"),
                        }
                    }
                }
            }
            let lead = last_renew.is_some_and(|t| t.elapsed() < self.settings.renew_deadline);
            if lead != *leading.borrow() {
                tracing::info!(identity = %self.identity, leading = lead, "Leadership changed");
                leading.send_replace(lead);
            }
            if !lead {
                last_renew = None;
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

    async fn release(&self, name: &str) {
        let Ok(Some(mut lease)) = self.api.get_opt(name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self.api.replace(name, &PostParams::default(), &lease).await {
            tracing::debug!(error = %e, "Leader lease release failed");
        }
    }
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
}
