//! The `kubepulse agent` process: metrics, discovery (static peers,
//! reloaded on SIGHUP, or the controller's plan), the agent, its endpoint.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{self, DiscoveryMode, Settings};
use crate::discovery::{kubernetes, static_peers::StaticDiscovery, Discovery};
use crate::metrics::{self, AgentMetrics};
use crate::roles::Endpoint;
use crate::Result;

/// Runs an agent until `shutdown`. `config_path` is re-read on SIGHUP for a
/// new static peer list.
pub async fn run(
    mut settings: Settings,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<()> {
    let registry = prometheus::Registry::new();
    metrics::register_process_metrics(&registry)?;
    let m = AgentMetrics::new(registry.clone())?;
    // Kept alive for the agent's lifetime: dropping it closes the channel.
    let mut reload = None;
    let discovery: Box<dyn Discovery + Send> = match settings.discovery.mode {
        DiscoveryMode::Static => {
            let d = Arc::new(StaticDiscovery::new(settings.discovery.peers.clone()));
            reload = Some(tokio::spawn(reload_on_sighup(
                config_path,
                d.clone(),
                shutdown.clone(),
            )));
            Box::new(d)
        }
        DiscoveryMode::Kubernetes => {
            let env = std::env::vars().collect();
            Box::new(
                kubernetes::start_in_cluster(&mut settings, &env, &registry, shutdown.clone())
                    .await?,
            )
        }
    };
    let endpoint = Endpoint::serve(
        settings.agent.metrics_listen,
        vec![registry],
        format!("agent {}", settings.agent.name),
        shutdown.clone(),
    )
    .await?;
    let running = super::start(&settings, m, discovery.as_ref(), shutdown.clone()).await?;
    endpoint.set_ready();
    println!(
        "kubepulse agent {}: metrics at http://{}/metrics",
        settings.agent.name,
        endpoint.addr()
    );
    shutdown.cancelled().await;
    running.join().await;
    endpoint.stopped().await;
    if let Some(r) = reload {
        let _ = r.await;
    }
    Ok(())
}

/// Re-reads the static peer list from the config file on every SIGHUP, so
/// peers can be added or removed without a restart. A bad file is logged
/// and the current peers are kept.
async fn reload_on_sighup(
    path: Option<PathBuf>,
    discovery: Arc<StaticDiscovery>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP; peer reload disabled");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            () = shutdown.cancelled() => return,
        }
        match config::load(path.as_deref()) {
            Ok(s) => {
                tracing::info!(
                    peers = s.discovery.peers.len(),
                    "SIGHUP: peer list reloaded"
                );
                discovery.replace(s.discovery.peers);
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration rejected, keeping current peers")
            }
        }
    }
}
