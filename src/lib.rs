//! kubepulse: a continuous network and control-plane performance monitor for
//! Kubernetes, exposed as a Prometheus exporter.
//!
//! The crate is split by concern: pure logic (`proto`, `stats`, `schedule`,
//! `peer`, `plan`) has no IO and is unit-tested directly; IO lives in
//! `probe`, `responder`, `http` and `roles`; all `unsafe` is in `sys`.
//! Modules name only modules of lower layers (`STYLE.md`, "Layout").

pub(crate) mod api_error;
pub mod auth;
pub mod cli;
pub mod config;
pub mod controller;
pub mod discovery;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod label_enum;
pub mod metrics;
pub mod peer;
pub mod plan;
pub mod probe;
pub mod proto;
pub mod report;
pub mod responder;
pub mod roles;
pub mod schedule;
pub mod shutdown;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
pub mod telemetry;

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing;

pub use error::{Error, Result};

/// The git revision baked in at build time (`KUBEPULSE_REVISION`), or
/// `unknown`.
pub const fn build_revision() -> &'static str {
    match option_env!("KUBEPULSE_REVISION") {
        Some(r) => r,
        None => "unknown",
    }
}
