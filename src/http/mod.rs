//! The exporter's own HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and a
//! small landing page at `/`.

pub mod server;

pub use server::{serve, ServerState};
