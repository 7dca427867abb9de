//! The crate-level error type; each module has its own `thiserror` enum and
//! converts into this one at role boundaries.

use crate::config::ConfigError;
use crate::metrics::MetricsError;
use crate::probe::ProbeError;
use crate::responder::ResponderError;

/// Top-level errors of kubepulse roles.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Metric registration or encoding failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The probe responders could not start.
    #[error("starting responders")]
    Responder(#[from] ResponderError),
    /// A prober could not start.
    #[error("starting probes")]
    Probe(#[from] ProbeError),
    /// No burst key could be generated for this run (a key file that is
    /// missing or invalid is not an error: the agent runs without bursts).
    #[error(transparent)]
    BurstKey(#[from] crate::auth::KeyError),
    /// Kubernetes discovery could not start.
    #[error("starting Kubernetes discovery")]
    Discovery(#[from] crate::discovery::kubernetes::KubernetesError),
    /// The controller's Kubernetes client or its parts could not start.
    #[error(transparent)]
    Controller(#[from] crate::controller::K8sError),
    /// Shutdown came before the work asked for was done.
    #[error("interrupted {0}")]
    Interrupted(&'static str),
    /// A socket could not be bound or configured.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an IO error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
