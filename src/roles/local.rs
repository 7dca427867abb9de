//! Local mode: N agents in one process on loopback addresses, probing each
//! other, with one `/metrics`. No cluster needed.
//!
//! The agents are laid out on two simulated nodes: a host agent on each,
//! then pod agents alternating between them, so 4 agents cover every direct
//! path kind except pod_same_node and 5 or more cover all five. Each agent
//! has its own registry with a constant `agent` label (local mode only: in a
//! cluster each agent is its own scrape target).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{BandwidthSchedule, Settings};
use crate::discovery::static_peers::StaticDiscovery;
use crate::metrics::{self, AgentMetrics};
use crate::peer::AgentKind;
use crate::peer::{Peer, ProbePorts};
use crate::report::{self, snapshot::Window, Format};
use crate::roles::{agent, Endpoint};
use crate::{Error, Result};

/// Default `/metrics` address of local mode.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9477);
/// Default number of local agents.
pub const DEFAULT_AGENTS: usize = 5;
/// First loopback address used: 127.0.0.11, .12, ...
const FIRST_HOST_OCTET: u8 = 11;

/// Options of `kubepulse local`.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Number of agents (2..=200).
    pub agents: usize,
    /// `/metrics` address.
    pub listen: SocketAddr,
    /// Whether bandwidth bursts run.
    pub bandwidth: bool,
    /// Base settings (probe schedules, limits); identity and peers are set
    /// per agent.
    pub settings: Settings,
}

/// One simulated agent of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAgent {
    /// Agent name.
    pub name: String,
    /// Simulated node.
    pub node: String,
    /// Pod or host.
    pub kind: AgentKind,
    /// Its loopback address.
    pub address: IpAddr,
}

/// The layout of `n` local agents (pure, so it can be tested).
pub fn layout(n: usize) -> Vec<LocalAgent> {
    (0..n)
        .map(|i| {
            let node = if i % 2 == 0 { "local-a" } else { "local-b" };
            let (kind, name) = if i < 2 {
                (AgentKind::Host, format!("{node}-host"))
            } else {
                (AgentKind::Pod, format!("{node}-pod-{}", (i - 2) / 2 + 1))
            };
            // n is capped at 200 by the CLI, so the octet fits.
            let octet = FIRST_HOST_OCTET.saturating_add(u8::try_from(i).unwrap_or(u8::MAX));
            LocalAgent {
                name,
                node: node.to_string(),
                kind,
                address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)),
            }
        })
        .collect()
}

/// A running local mode.
pub struct LocalRun {
    /// The address `/metrics` is served on.
    pub metrics_addr: SocketAddr,
    /// The agents' layout.
    pub agents: Vec<LocalAgent>,
    /// Every registry served (process metrics, then one per agent).
    pub registries: Vec<Registry>,
    running: Vec<agent::RunningAgent>,
    endpoint: Endpoint,
    /// Kept so peers stay published while the run lasts.
    _discovery: StaticDiscovery,
}

impl LocalRun {
    /// What every agent has exported so far.
    pub fn snapshot(&self) -> crate::report::snapshot::Snapshot {
        let mut snap = crate::report::snapshot::Snapshot::default();
        for r in &self.registries {
            snap.merge(crate::report::snapshot::Snapshot::from_families(
                &r.gather(),
            ));
        }
        snap
    }

    /// Waits for everything to stop after `shutdown` is cancelled.
    pub async fn join(self) {
        for a in self.running {
            a.join().await;
        }
        self.endpoint.stopped().await;
    }
}

/// Runs local mode until `shutdown` or, with `report`, for that window:
/// then prints the report of what the agents measured in it (in `format`)
/// and stops.
pub async fn run(
    opts: LocalOptions,
    report: Option<Duration>,
    format: Format,
    shutdown: CancellationToken,
) -> Result<()> {
    let run = start(opts, shutdown.clone()).await?;
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
            () = tokio::time::sleep(d) => {}
            () = shutdown.cancelled() => {}
        }
        let w = Window::between(&first, &run.snapshot(), start.elapsed().as_secs_f64());
        let source = format!("kubepulse local, {} agents on loopback", run.agents.len());
        print!("{}", report::render(&report::build(&w, &source), format));
        if shutdown.is_cancelled() {
            result = Err(Error::Interrupted("before the report window ended"));
        }
        shutdown.cancel();
    }
    shutdown.cancelled().await;
    run.join().await;
    result
}

/// Starts local mode; returns once `/metrics` is bound and every agent runs.
pub async fn start(opts: LocalOptions, shutdown: CancellationToken) -> Result<LocalRun> {
    let agents = layout(opts.agents);
    let process = Registry::new();
    metrics::register_process_metrics(&process)?;
    let mut registries = vec![process];

    // Peers are published only once every agent's responders are bound, so
    // no probe is lost to an agent that has not started yet.
    let discovery = StaticDiscovery::new(Vec::new());

    let mut running = Vec::new();
    for a in &agents {
        let registry = Registry::new_custom(
            None,
            Some(HashMap::from([("agent".to_string(), a.name.clone())])),
        )
        .map_err(metrics::MetricsError::from)?;
        let m = AgentMetrics::new(registry.clone())?;
        registries.push(registry);
        let mut s = opts.settings.clone();
        s.agent.name = a.name.clone();
        s.agent.node = a.node.clone();
        s.agent.kind = a.kind;
        s.agent.bind_address = a.address;
        s.probes.bandwidth.enabled = opts.bandwidth;
        // A demo should show bandwidth within a minute; the cluster slot
        // schedule (1% duty cycle) would take minutes between bursts.
        s.probes.bandwidth.schedule = BandwidthSchedule::Interval;
        // Ephemeral ports: the peers are in this process, so their real
        // ports are known once bound, and nothing clashes with another
        // kubepulse on the same machine.
        s.agent.ports = ProbePorts {
            udp_echo: 0,
            tcp_echo: 0,
            bandwidth: 0,
            http: 0,
        };
        running.push(agent::start(&s, m, &discovery, shutdown.clone()).await?);
    }
    let peers: Vec<Peer> = agents
        .iter()
        .zip(&running)
        .map(|(a, r)| Peer {
            name: a.name.clone(),
            address: a.address,
            node: a.node.clone(),
            kind: a.kind,
            ports: r.ports,
            path: None,
        })
        .collect();
    discovery.replace(peers);

    let endpoint = Endpoint::serve(
        opts.listen,
        registries.clone(),
        format!("local mode: {} agents on loopback", agents.len()),
        shutdown,
    )
    .await?;
    endpoint.set_ready();
    Ok(LocalRun {
        metrics_addr: endpoint.addr(),
        agents,
        registries,
        running,
        endpoint,
        _discovery: discovery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PathKind;
    use crate::peer::{targets, Identity};
    use std::collections::BTreeSet;

    fn paths(n: usize) -> BTreeSet<PathKind> {
        let l = layout(n);
        let peers: Vec<Peer> = l
            .iter()
            .map(|a| Peer {
                name: a.name.clone(),
                address: a.address,
                node: a.node.clone(),
                kind: a.kind,
                ports: ProbePorts::default(),
                path: None,
            })
            .collect();
        l.iter()
            .flat_map(|a| {
                let me = Identity {
                    name: a.name.clone(),
                    node: a.node.clone(),
                    kind: a.kind,
                };
                targets(&me, &peers).into_iter().map(|t| t.path)
            })
            .collect()
    }

    #[test]
    fn layout_covers_path_kinds() {
        let four = paths(4);
        assert_eq!(four.len(), 4, "{four:?}");
        assert!(!four.contains(&PathKind::PodSameNode));
        let five = paths(5);
        assert_eq!(five.len(), 5, "{five:?}");
        let l = layout(5);
        let addrs: BTreeSet<_> = l.iter().map(|a| a.address).collect();
        assert_eq!(addrs.len(), 5);
        let names: BTreeSet<_> = l.iter().map(|a| a.name.clone()).collect();
        assert_eq!(names.len(), 5);
    }
}
