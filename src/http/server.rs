//! hyper 1 server with graceful shutdown: stop accepting on cancellation,
//! then let in-flight scrapes finish for a bounded time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::report::{
    self,
    snapshot::{Snapshot, Window},
};

/// How long in-flight requests may take after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Header read timeout, so idle connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves.
pub struct ServerState {
    /// Registries exported together on `/metrics`.
    pub registries: Vec<Registry>,
    /// Set once the role has started its probers and responders.
    pub ready: AtomicBool,
    /// One-line description shown on `/`.
    pub title: String,
    /// Asked by `/readyz` once ready: `Err` says why the role is not
    /// ready after all (the controller: it cannot reach the API).
    pub check: std::sync::OnceLock<ReadyCheck>,
}

/// A readiness check: `Ok` with a status line, or `Err` with the reason.
pub(crate) type ReadyCheck = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

impl ServerState {
    /// A state serving `registries`, not yet ready.
    pub fn new(registries: Vec<Registry>, title: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            registries,
            ready: AtomicBool::new(false),
            title: title.into(),
            check: std::sync::OnceLock::new(),
        })
    }

    /// Marks the role ready (`/readyz` answers 200).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn route(state: &ServerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let regs: Vec<&Registry> = state.registries.iter().collect();
            match metrics::encode(&regs) {
                Ok(body) => text(StatusCode::OK, metrics::TEXT_CONTENT_TYPE, body),
                Err(e) => {
                    tracing::error!(error = %e, "Cannot encode metrics");
                    text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n"))
                }
            }
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                match state.check.get().map(|c| c()) {
                    None => text(StatusCode::OK, PLAIN, "ready\n"),
                    Some(Ok(line)) => text(StatusCode::OK, PLAIN, format!("ready: {line}\n")),
                    Some(Err(why)) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        PLAIN,
                        format!("not ready: {why}\n"),
                    ),
                }
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n")
            }
        }
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", page(state)),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// The live page: this endpoint's own registries, since start.
fn page(state: &ServerState) -> String {
    let mut snap = Snapshot::default();
    for r in &state.registries {
        snap.merge(Snapshot::from_families(&r.gather()));
    }
    let report = report::build(&Window::since_start(&snap), &state.title);
    let title = format!("kubepulse {}: {}", env!("CARGO_PKG_VERSION"), state.title);
    report::page::render(&title, &report)
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        tracing::warn!(error = %e, "Metrics endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = route(&state, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "Metrics connection ended with an error");
                    }
                });
            }
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Metrics connections still open after the drain timeout");
    }
}
