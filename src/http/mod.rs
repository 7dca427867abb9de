//! The exporter's own HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and a
//! small landing page at `/`.

pub(crate) mod server;

pub(crate) use server::{serve, ServerState};
