//! The `kubepulse` binary: parses the command line and runs a role.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use kubepulse::cli::{Cli, Command, LogFormatArg};
use kubepulse::config::{self, LogFormat, Settings};
use kubepulse::report;
use kubepulse::roles::{agent, controller, local};
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
            until_signal(agent::run(settings, path.clone(), token.clone()), token).await
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
            let run = local::run(opts, *report, *format, token.clone());
            until_signal(run, token).await
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
            until_signal(controller::run(settings, token.clone()), token).await
        }
    }
}

/// Runs a role with SIGTERM and SIGINT cancelling `token`, its shutdown.
async fn until_signal(
    role: impl std::future::Future<Output = kubepulse::Result<()>>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let signals = tokio::spawn(shutdown::on_signal(token));
    let result = role.await;
    signals.abort();
    if result.is_ok() {
        tracing::info!("Stopped");
    }
    Ok(result?)
}
