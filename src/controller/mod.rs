//! `kubepulse controller`: the probe plan publisher, pod startup timing,
//! apiserver latency sampling, node and control-plane health, leader
//! election.
//!
//! Pure logic has no IO and is unit-tested: `startup` (the pod startup
//! probe as a state machine with an outcome for every ending), `phases`,
//! the leader election core (`leader::LeaderCore::decide`), `scope`,
//! `sweep`, `clock`, `rbac`, `node_lifecycle` (a node's lifecycle state
//! from its Node object) and `plan_inputs`; failed API calls are named by
//! `crate::api_error`. The rest talks to the apiserver through kube-rs.

pub(crate) mod apiserver_endpoints;
pub mod apiserver_latency;
pub(crate) mod buckets;
pub mod client;
pub(crate) mod clock;
pub(crate) mod leader;
pub mod metric_labels;
pub mod metrics;
pub mod node_lifecycle;
pub mod nodes;
pub(crate) mod objects;
pub(crate) mod phases;
pub mod plan_inputs;
pub mod plan_publisher;
pub(crate) mod plan_writes;
pub mod pod_startup;
pub mod rbac;
pub(crate) mod round_robin;
pub(crate) mod scope;
pub(crate) mod startup;
pub(crate) mod sweep;
pub(crate) mod sweeper;
pub(crate) mod timed;

/// Errors of the controller's Kubernetes IO.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// kube-rs failed (transport, or an API error it decoded).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A request could not be built.
    #[error("building a request: {0}")]
    Request(#[from] kube::core::request::Error),
    /// The client configuration could not be inferred or is invalid.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// A request got no answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The apiserver answered with an unexpected status.
    #[error("{what}: HTTP {status}")]
    Status {
        /// The request.
        what: &'static str,
        /// Its status.
        status: u16,
    },
    /// A body was not the JSON expected.
    #[error("decoding {what}: {source}")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Stopped by cancellation (shutdown or lost leadership).
    #[error("cancelled")]
    Cancelled,
    /// Metric registration failed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Labels every kubepulse-owned object carries.
pub mod label_keys {
    /// `app.kubernetes.io/managed-by`, value [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "kubepulse";
    /// Probe kind: `pod-startup` or `sampler`.
    pub const PROBE: &str = "kubepulse.io/probe";
    /// The run id of the controller that created the object.
    pub const RUN: &str = "kubepulse.io/run";
    /// Unique per probe pod, so its watch selects only it.
    pub const PROBE_ID: &str = "kubepulse.io/probe-id";
}
