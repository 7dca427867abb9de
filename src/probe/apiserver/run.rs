//! The apiserver probe's schedule and bookkeeping: every round, the
//! Service and each endpoint (configured, and from the controller's plan),
//! each on its own blocking thread.

use std::net::SocketAddr;
use std::sync::Arc;

use pki_types::ServerName;
use tokio::task::{JoinHandle, JoinSet};

use super::exchange::{client_config, probe, ProbeSetup};
use super::targets::{service_from_env, targets};
use crate::metrics::labels::ApiserverOutcome;
use crate::probe::{rounds, ProbeContext};

/// Starts the apiserver probe, or explains in the log why it does not run.
pub(crate) fn start(ctx: &ProbeContext) -> Option<JoinHandle<()>> {
    let s = &ctx.settings.apiserver;
    if !s.enabled {
        return None;
    }
    let service = s.service.or_else(|| {
        service_from_env(
            std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
        )
    });
    // In a cluster the kubelet always sets KUBERNETES_SERVICE_HOST; the
    // plan's endpoints only come along with it.
    if service.is_none() && s.endpoints.is_empty() {
        tracing::info!("apiserver probe off: no probes.apiserver.service, no KUBERNETES_SERVICE_HOST and no endpoints (not in a cluster?)");
        return None;
    }
    let tls = match client_config(&s.ca_file) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "apiserver probe off: cannot set up TLS");
            return None;
        }
    };
    let server_name = match ServerName::try_from(s.server_name.clone()) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "apiserver probe off: bad server_name");
            return None;
        }
    };
    let setup = Arc::new(ProbeSetup {
        tls,
        server_name,
        path: s.livez_path.clone(),
        timeout: s.timeout,
        bind: ctx.bind,
    });
    let network = ctx.identity.kind;
    ctx.metrics.precreate_apiserver(network);
    tracing::info!(service = ?service, endpoints = ?s.endpoints, interval = ?s.interval,
        "apiserver probe started");
    let ctx = ctx.clone();
    Some(tokio::spawn(async move {
        let interval = ctx.settings.apiserver.interval;
        let shutdown = ctx.shutdown.clone();
        rounds::every(interval, shutdown, || {
            let ctx = ctx.clone();
            let setup = setup.clone();
            async move {
                let planned: Vec<SocketAddr> = ctx
                    .plan
                    .borrow()
                    .as_ref()
                    .map(|p| p.apiserver.clone())
                    .unwrap_or_default();
                let mut jobs = JoinSet::new();
                for (target, addr) in targets(service, &ctx.settings.apiserver.endpoints, &planned) {
                    let (ctx, setup) = (ctx.clone(), setup.clone());
                    jobs.spawn_blocking(move || {
                        let p = probe(addr, &setup);
                        let m = &ctx.metrics;
                        for (phase, d) in &p.done {
                            m.observe_apiserver_phase(network, target, *phase, *d);
                        }
                        if p.outcome != ApiserverOutcome::Ok {
                            tracing::debug!(%addr, target = %target, outcome = %p.outcome, "apiserver probe failed");
                        }
                        m.apiserver_probe(network, target, p.outcome);
                    });
                }
                while jobs.join_next().await.is_some() {}
            }
        })
        .await;
    }))
}
