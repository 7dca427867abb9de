//! Roles: wiring only, each assembled the same way. `run` loads nothing and
//! parses nothing (the binary does): it starts the role's parts, serves its
//! [`Endpoint`], prints where, and returns after shutdown. `start` (used by
//! `run` and by the tests) starts the parts and returns handles.
//!
//! - [`agent`]: one agent (responders, probes, discovery);
//! - [`controller`]: the leader-elected controller;
//! - [`local`]: several agents on loopback in one process, one `/metrics`.

pub mod agent;
pub mod controller;
mod endpoint;
pub mod local;

pub use endpoint::Endpoint;
