//! The `kubepulse` binary: parses the command line and runs a role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use kubepulse::cli::{Cli, Command, LogFormatArg};
use kubepulse::config::{self, DiscoveryMode, LogFormat, Settings};
use kubepulse::discovery::{kubernetes, static_peers::StaticDiscovery, Discovery};
use kubepulse::http::{self, ServerState};
use kubepulse::metrics::{self, AgentMetrics};
use kubepulse::report::{self, snapshot::Window};
use kubepulse::roles::{agent, local};
use kubepulse::{shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubepulse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubepulse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(cli: &Cli, settings: &Settings) {
    let mut log = settings.log.clone();
    if let Some(f) = cli.log_format {
        log.format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    if let Some(l) = &cli.log_level {
        log.level = l.clone();
    }
    telemetry::init(&log);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    match &cli.command {
        Command::Agent {
            config: path,
            listen,
        } => {
            let mut settings = config::load(path.as_deref())?;
            if let Some(l) = listen {
                settings.agent.metrics_listen = *l;
            }
            init_logs(&cli, &settings);
            run_agent(settings, path.clone(), token).await
        }
        Command::Local {
            agents,
            listen,
            bandwidth,
            config: path,
            report,
            format,
        } => {
            let settings = config::load(path.as_deref())?;
            init_logs(&cli, &settings);
            let listen = listen.unwrap_or(if report.is_some() {
                SocketAddr::new(local::DEFAULT_LISTEN.ip(), 0)
            } else {
                local::DEFAULT_LISTEN
            });
            let opts = local::LocalOptions {
                agents: *agents,
                listen,
                bandwidth: *bandwidth,
                settings,
            };
            let signals = tokio::spawn(shutdown::on_signal(token.clone()));
            let run = local::start(opts, token.clone()).await?;
            if report.is_none() {
                println!(
                    "kubepulse local: {} agents on loopback, metrics at http://{}/metrics",
                    run.agents.len(),
                    run.metrics_addr
                );
            }
            tracing::info!(addr = %run.metrics_addr, agents = run.agents.len(), "Local mode running");
            let mut result = Ok(());
            if let Some(d) = report {
                let first = run.snapshot();
                let start = tokio::time::Instant::now();
                tokio::select! {
                    () = tokio::time::sleep(*d) => {}
                    () = token.cancelled() => {}
                }
                let w = Window::between(&first, &run.snapshot(), start.elapsed().as_secs_f64());
                let source = format!("kubepulse local, {} agents on loopback", run.agents.len());
                print!("{}", report::render(&report::build(&w, &source), *format));
                if token.is_cancelled() {
                    result = Err(anyhow::anyhow!(
                        "interrupted before the report window ended"
                    ));
                }
                token.cancel();
            }
            token.cancelled().await;
            run.join().await;
            signals.abort();
            tracing::info!("Stopped");
            result
        }
        Command::Report {
            scrape,
            prometheus,
            window,
            at,
            format,
        } => {
            let settings = Settings::default();
            init_logs(&cli, &settings);
            let (w, source) = match prometheus {
                Some(url) => {
                    let window = window.unwrap_or(Duration::from_secs(3600));
                    let at = match at {
                        Some(a) => *a,
                        None => std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .context("the system clock is before 1970")?
                            .as_secs_f64(),
                    };
                    let w = report::source::prometheus_window(url, window, at).await?;
                    (w, format!("Prometheus {url}"))
                }
                None => {
                    let window = window.unwrap_or(Duration::from_secs(30));
                    let w = report::source::scrape_window(scrape, window).await?;
                    (w, format!("scrapes of {}", scrape.join(", ")))
                }
            };
            print!("{}", report::render(&report::build(&w, &source), *format));
            Ok(())
        }
        Command::Controller {
            config: path,
            listen,
            sampler_max_qps,
        } => {
            let mut settings = config::load(path.as_deref())?;
            if let Some(l) = listen {
                settings.controller.metrics_listen = *l;
            }
            if let Some(q) = sampler_max_qps {
                settings.controller.sampler.max_qps = *q;
                config::validate::validate(&settings)?;
            }
            init_logs(&cli, &settings);
            run_controller(settings, token).await
        }
    }
}

async fn run_controller(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    use kubepulse::controller::{client, metrics::ControllerMetrics};
    let c = &settings.controller;
    let registry = prometheus::Registry::new();
    metrics::register_process_metrics(&registry)?;
    let m = ControllerMetrics::new(registry.clone())?;
    let kube_config = client::config(&c.api_url).await?;
    let clients = client::Clients::new(&kube_config)?;
    let listener = tokio::net::TcpListener::bind(c.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {}", c.metrics_listen))?;
    let metrics_addr = listener
        .local_addr()
        .context("reading the metrics endpoint address")?;
    let state = ServerState::new(vec![registry], format!("controller {}", c.name));
    let server = tokio::spawn(http::serve(listener, state.clone(), token.clone()));
    let signals = tokio::spawn(shutdown::on_signal(token.clone()));
    let running = kubepulse::roles::controller::start(c, clients, m, token.clone())?;
    // Ready means serving and reaching the API; only the leader measures.
    let (api, leading) = (running.api.clone(), running.leading.clone());
    let _ = state.check.set(Box::new(move || {
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
    state.set_ready();
    println!(
        "kubepulse controller {} (run {}): metrics at http://{}/metrics",
        c.name, running.run, metrics_addr
    );
    token.cancelled().await;
    running.join().await;
    let _ = server.await;
    signals.abort();
    tracing::info!("Stopped");
    Ok(())
}

/// Re-reads the static peer list from the config file on every SIGHUP, so
/// peers can be added or removed without a restart. A bad file is logged
/// and the current peers are kept.
async fn reload_on_sighup(
    path: Option<PathBuf>,
    discovery: Arc<StaticDiscovery>,
    token: CancellationToken,
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
            _ = token.cancelled() => return,
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

async fn run_agent(
    mut settings: Settings,
    path: Option<PathBuf>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    metrics::register_process_metrics(&registry)?;
    let m = AgentMetrics::new(registry.clone())?;
    // Kept alive for the agent's lifetime: dropping it closes the channel.
    let mut reload = None;
    let discovery: Box<dyn Discovery + Send> = match settings.discovery.mode {
        DiscoveryMode::Static => {
            let d = Arc::new(StaticDiscovery::new(settings.discovery.peers.clone()));
            reload = Some(tokio::spawn(reload_on_sighup(
                path,
                d.clone(),
                token.clone(),
            )));
            Box::new(d)
        }
        DiscoveryMode::Kubernetes => {
            let env = std::env::vars().collect();
            Box::new(
                kubernetes::start_in_cluster(&mut settings, &env, &registry, token.clone())
                    .await
                    .context("starting Kubernetes discovery")?,
            )
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.agent.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics endpoint {}",
                settings.agent.metrics_listen
            )
        })?;
    let metrics_addr = listener
        .local_addr()
        .context("reading the metrics endpoint address")?;
    let state = ServerState::new(vec![registry], format!("agent {}", settings.agent.name));
    let server = tokio::spawn(http::serve(listener, state.clone(), token.clone()));
    let signals = tokio::spawn(shutdown::on_signal(token.clone()));
    let running = agent::start(&settings, m, discovery.as_ref(), token.clone()).await?;
    state.set_ready();
    println!(
        "kubepulse agent {}: metrics at http://{}/metrics",
        settings.agent.name, metrics_addr
    );
    token.cancelled().await;
    running.join().await;
    let _ = server.await;
    if let Some(r) = reload {
        let _ = r.await;
    }
    signals.abort();
    tracing::info!("Stopped");
    Ok(())
}
