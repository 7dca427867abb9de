//! Command line: one binary, several roles.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::report::Format;

/// kubepulse: continuous network and control-plane performance monitor for
/// Kubernetes, exposed as a Prometheus exporter.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, env = "KUBEPULSE_LOG_FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Log level or EnvFilter directive (RUST_LOG takes precedence).
    #[arg(long, global = true, env = "KUBEPULSE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// Roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one agent: responders plus probes to its peers.
    Agent {
        /// Configuration file (YAML or TOML); `KUBEPULSE__*` env vars override it.
        #[arg(long, short, env = "KUBEPULSE_CONFIG")]
        config: Option<PathBuf>,
        /// `/metrics` address (overrides agent.metrics_listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run several agents on loopback in one process, no cluster needed.
    Local {
        /// Number of agents (2 to 200).
        #[arg(long, short = 'n', default_value_t = crate::roles::local::DEFAULT_AGENTS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=200))]
        agents: usize,
        /// `/metrics` address [default: 127.0.0.1:9477; with --report, an
        /// ephemeral port].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Also run bandwidth bursts (off by default in local mode).
        #[arg(long)]
        bandwidth: bool,
        /// Configuration file for probe schedules and limits.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Run for this long (e.g. `30s`), print the report and exit.
        #[arg(long, value_parser = humantime::parse_duration)]
        report: Option<Duration>,
        /// Format of the --report output.
        #[arg(long, value_enum, default_value_t = Format::Table, requires = "report")]
        format: Format,
    },
    /// Print the comparison tables of the seed reports (per path kind, with
    /// the overhead against host-to-host; pod startup and apiserver
    /// latency against their SLOs) from agents' `/metrics` or Prometheus.
    Report {
        /// `/metrics` URLs to scrape twice, --window apart.
        #[arg(long, num_args = 1.., required_unless_present = "prometheus", conflicts_with = "prometheus")]
        scrape: Vec<String>,
        /// A Prometheus server (e.g. `http://prometheus:9090`) to ask for
        /// increase() over --window.
        #[arg(long)]
        prometheus: Option<String>,
        /// The window [default: 30s between scrapes; 1h from Prometheus].
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        /// End of the Prometheus window, Unix seconds [default: now].
        #[arg(long, requires = "prometheus")]
        at: Option<f64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run the leader-elected cluster controller: pod startup probes,
    /// apiserver latency sampling, node and control-plane health.
    Controller {
        /// Configuration file (its `controller` section); `KUBEPULSE__*` env vars override it.
        #[arg(long, short, env = "KUBEPULSE_CONFIG")]
        config: Option<PathBuf>,
        /// `/metrics` address (overrides controller.metrics_listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Upper bound on the apiserver sampler's request rate, requests per
        /// second (overrides controller.sampler.max_qps).
        #[arg(long)]
        sampler_max_qps: Option<f64>,
    },
}
