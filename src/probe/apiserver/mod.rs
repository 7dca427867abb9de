//! kube-apiserver reachability from this node: TCP connect, TLS handshake
//! and `GET /livez` to the `kubernetes` Service ClusterIP (`service`) and
//! to each apiserver endpoint (`direct`). A node that reaches the
//! endpoints but not the Service points at kube-proxy; one that reaches
//! neither, at the node's network.
//!
//! Phase bookkeeping and the response check ([`phases`]) and the target
//! list ([`targets`]) are pure; [`exchange`] is the timed IO; `run` the
//! schedule.

pub(crate) mod exchange;
pub(crate) mod phases;
mod run;
pub(crate) mod targets;

pub(crate) use run::start;
