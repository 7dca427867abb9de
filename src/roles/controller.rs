//! `kubepulse controller`: leader election, and while leading the node
//! watches, the sweeper, the pod startup probe, the apiserver sampler and
//! the probe plan publisher.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ControllerSettings, Settings};
use crate::controller::apiserver_latency::Sampler;
use crate::controller::client::{self, Clients};
use crate::controller::leader::{ApiReachability, LeaderElector};
use crate::controller::metrics::ControllerMetrics;
use crate::controller::nodes::{self, NodeCollector, NodeView};
use crate::controller::plan_publisher::PlanPublisher;
use crate::controller::pod_startup::PodProbe;
use crate::controller::sweeper::Sweeper;
use crate::controller::K8sError;
use crate::roles::Endpoint;

/// Runs the controller until `shutdown`: metrics, the Kubernetes client,
/// leader election and, while leading, the measurements; ready once the
/// API answers.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> crate::Result<()> {
    let c = &settings.controller;
    let registry = prometheus::Registry::new();
    crate::metrics::register_process_metrics(&registry)?;
    let m = ControllerMetrics::new(registry.clone())?;
    let kube_config = client::config(&c.api_url).await?;
    let clients = Clients::new(&kube_config)?;
    let endpoint = Endpoint::serve(
        c.metrics_listen,
        vec![registry],
        format!("controller {}", c.name),
        shutdown.clone(),
    )
    .await?;
    let running = start(c, clients, m, shutdown.clone())?;
    // Ready means serving and reaching the API; only the leader measures.
    let (api, leading) = (running.api.clone(), running.leading.clone());
    let _ = endpoint.state().check.set(Box::new(move || {
        let role = if *leading.borrow() {
            "leader"
        } else {
            "standby"
        };
        match api.get() {
            None => Err("no Kubernetes API call has completed yet".into()),
            Some(Ok(())) => Ok(format!("{role}, Kubernetes API reachable")),
            Some(Err(why)) => Err(format!("cannot reach the Kubernetes API: {why}")),
        }
    }));
    endpoint.set_ready();
    println!(
        "kubepulse controller {} (run {}): metrics at http://{}/metrics",
        c.name,
        running.run,
        endpoint.addr()
    );
    shutdown.cancelled().await;
    running.join().await;
    endpoint.stopped().await;
    Ok(())
}

/// A random run id (8 hex digits): labels every object this run creates.
pub fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A running controller.
pub struct Running {
    /// This run's id.
    pub run: String,
    /// Leadership as published by the elector.
    pub leading: watch::Receiver<bool>,
    /// Node state (also exported by the collector).
    pub nodes: NodeView,
    /// Whether the elector reached the API on its last call (`/readyz`).
    pub api: ApiReachability,
    elector: JoinHandle<()>,
    supervisor: JoinHandle<()>,
}

impl Running {
    /// Waits for a graceful stop (after the token was cancelled).
    pub async fn join(self) {
        let _ = self.supervisor.await;
        let _ = self.elector.await;
    }

    /// Simulates a crash: every task stops where it is, nothing is cleaned
    /// up and the Lease is not released.
    pub fn abort(self) {
        // Supervisor first: once the elector is gone its sender is dropped,
        // which a still-running supervisor would take as a graceful stop.
        self.supervisor.abort();
        self.elector.abort();
    }
}

/// Starts the controller: registers the node collector in the metrics'
/// registry, then measures whenever this replica leads.
pub fn start(
    settings: &ControllerSettings,
    clients: Clients,
    metrics: ControllerMetrics,
    token: CancellationToken,
) -> Result<Running, K8sError> {
    let run = new_run_id();
    let view = NodeView::new(settings.nodes.offset_samples);
    let collector = NodeCollector::new(view.clone()).map_err(crate::metrics::MetricsError::from)?;
    metrics
        .registry()
        .register(Box::new(collector))
        .map_err(crate::metrics::MetricsError::from)?;
    let (tx, rx) = watch::channel(false);
    let identity = format!("{}_{run}", settings.name);
    let elector = LeaderElector::new(
        clients.main.clone(),
        &settings.namespace,
        &identity,
        settings.leader.clone(),
    )
    .with_metrics(metrics.clone());
    let api = elector.reachability();
    let elector = tokio::spawn(elector.run(tx, token.clone()));
    let supervisor = tokio::spawn(supervise(
        settings.clone(),
        clients,
        metrics,
        view.clone(),
        run.clone(),
        rx.clone(),
        token,
    ));
    Ok(Running {
        run,
        leading: rx,
        nodes: view,
        api,
        elector,
        supervisor,
    })
}

async fn supervise(
    s: ControllerSettings,
    clients: Clients,
    metrics: ControllerMetrics,
    view: NodeView,
    run: String,
    mut leading: watch::Receiver<bool>,
    token: CancellationToken,
) {
    loop {
        // Wait to lead.
        loop {
            if *leading.borrow_and_update() {
                break;
            }
            tokio::select! {
                r = leading.changed() => if r.is_err() { return },
                _ = token.cancelled() => return,
            }
        }
        metrics.set_leader(true);
        tracing::info!(run = %run, "Leading: measuring");
        let child = token.child_token();
        // A JoinSet aborts its tasks when dropped, so aborting the
        // supervisor (a simulated crash) stops every measurement too.
        let mut tasks = tokio::task::JoinSet::new();
        if s.nodes.enabled {
            tasks.spawn(nodes::watch_all(
                clients.main.clone(),
                view.clone(),
                metrics.clone(),
                child.clone(),
            ));
        }
        let sweeper = Sweeper {
            client: clients.main.clone(),
            metrics: metrics.clone(),
            namespace: s.probe_namespace.clone(),
            run: run.clone(),
            timeout: s.pod_startup.timeout * 2 + s.pod_startup.delete_timeout,
            min_age: s.pod_startup.sweep_min_age,
        };
        tasks.spawn(sweeper.run(s.pod_startup.sweep_interval, child.clone()));
        if s.pod_startup.enabled {
            let probe = PodProbe::new(
                clients.main.clone(),
                clients.sampler.clone(),
                metrics.clone(),
                &s.probe_namespace,
                &run,
                s.pod_startup.clone(),
                view.clone(),
            );
            tasks.spawn(probe.run(child.clone()));
        }
        if s.sampler.enabled {
            let sampler = Sampler::new(
                clients.sampler.clone(),
                clients.main.clone(),
                metrics.clone(),
                &s.probe_namespace,
                &run,
                s.sampler.clone(),
            );
            tasks.spawn(sampler.run(child.clone()));
        }
        if s.plan.enabled {
            let ns = Some(s.plan.agent_namespace.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or(&s.namespace);
            let publisher = PlanPublisher::new(clients.main.clone(), ns, s.plan.clone())
                .with_metrics(metrics.clone());
            tasks.spawn(publisher.run(child.clone()));
        }
        // Lead until told otherwise.
        loop {
            if !*leading.borrow_and_update() {
                break;
            }
            tokio::select! {
                r = leading.changed() => if r.is_err() { break },
                _ = token.cancelled() => break,
            }
        }
        child.cancel();
        // In-flight probes finish their cleanup, bounded.
        let stop = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), stop)
            .await
            .is_err()
        {
            tracing::warn!("Measurement tasks did not stop in time");
        }
        metrics.set_leader(false);
        view.clear();
        tracing::info!("Not leading: stopped measuring");
        if token.is_cancelled() {
            return;
        }
    }
}
