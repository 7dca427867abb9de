//! Probers: the latency engine (UDP, TCP request/response, ICMP on one
//! dedicated thread, see [`latency`]) and the scheduled probes (TCP
//! connect, HTTP, path MTU, bandwidth, see [`scheduled`]), and the cluster
//! reachability probes towards cluster DNS (`dns`) and the kube-apiserver
//! (`apiserver`).
//!
//! Every prober gets a [`ProbeContext`] and follows the current target set
//! through its `watch` channel, so peers come and go without restarts.

pub(crate) mod apiserver;
pub mod burst_guard;
pub(crate) mod dns;
pub mod guard;
pub mod latency;
mod rounds;
pub mod scheduled;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::BurstKeys;
use crate::config::ProbeSettings;
use crate::metrics::AgentMetrics;
use crate::peer::{Identity, PeerSet, Target};
use crate::plan::PlanWatch;
use guard::SampleGuard;

/// The current probe targets of one agent.
pub type TargetSet = Arc<Vec<Target>>;

/// Everything a prober needs.
#[derive(Clone)]
pub struct ProbeContext {
    /// The local agent.
    pub identity: Identity,
    /// Source address of probes (unspecified = let the kernel choose).
    pub bind: IpAddr,
    /// Probe schedules.
    pub settings: ProbeSettings,
    /// Where results go.
    pub metrics: AgentMetrics,
    /// Current targets.
    pub targets: watch::Receiver<TargetSet>,
    /// Every known agent, not fanned out (input of the bandwidth slots
    /// when there is no controller plan).
    pub all_peers: watch::Receiver<PeerSet>,
    /// The controller's plan, if any: its bandwidth schedule replaces the
    /// one computed from `all_peers`.
    pub plan: watch::Receiver<PlanWatch>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Keeps outcomes that overlap our own bandwidth bursts out of the
    /// statistics ([`guard::KeepAll`] when nothing can interfere).
    pub guard: Arc<dyn SampleGuard>,
    /// Signs bandwidth burst requests.
    pub burst_keys: Arc<BurstKeys>,
}

/// Errors that stop a prober from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A socket or thread could not be created.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
