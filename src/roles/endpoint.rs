//! The HTTP endpoint every role serves (`/metrics`, `/healthz`, `/readyz`,
//! `/`), bound the same way for the agent, the controller and local mode.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{self, ServerState};
use crate::{Error, Result};

/// A bound, serving endpoint.
pub struct Endpoint {
    addr: SocketAddr,
    state: Arc<ServerState>,
    server: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `listen` and serves `registries` until `shutdown`; `title`
    /// names the process on `/`. Not ready until [`Endpoint::set_ready`].
    pub async fn serve(
        listen: SocketAddr,
        registries: Vec<Registry>,
        title: String,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("binding the metrics endpoint {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the metrics endpoint address", e))?;
        let state = ServerState::new(registries, title);
        let server = tokio::spawn(http::serve(listener, state.clone(), shutdown));
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// The address it listens on (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its shared state (readiness, the readiness check).
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// Marks the role ready on `/readyz`.
    pub fn set_ready(&self) {
        self.state.set_ready();
    }

    /// Waits for the server to stop (after shutdown).
    pub async fn stopped(self) {
        let _ = self.server.await;
    }
}
