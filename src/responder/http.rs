//! HTTP responder: `GET` on any path returns 200 with a fixed body of
//! `http_body_bytes` bytes (612 by default, the size of nginx's welcome
//! page), with keep-alive. Other methods get 405.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{accept_loop, idle_timeout, Slot};
use crate::config::ResponderSettings;
use crate::metrics::labels::{RejectReason, ResponderKind};
use crate::metrics::AgentMetrics;

const KIND: ResponderKind = ResponderKind::Http;
/// Largest body served, whatever the settings say (validation caps it too).
const MAX_BODY: usize = 1 << 20;
/// How long an in-flight request may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves until `stop`, then lets in-flight requests finish (bounded).
pub(super) async fn serve(
    listener: TcpListener,
    limits: ResponderSettings,
    metrics: AgentMetrics,
    stop: CancellationToken,
) {
    let body = Bytes::from(vec![b'x'; limits.http_body_bytes.min(MAX_BODY)]);
    let mut builder = http1::Builder::new();
    // hyper restarts the header read timer whenever it waits for a request,
    // including between keep-alive requests: it is our idle timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout(&limits))
        .keep_alive(true);
    let conn_stop = stop.clone();
    accept_loop(listener, KIND, &limits, metrics.clone(), stop, |s, slot| {
        connection(
            s,
            slot,
            builder.clone(),
            body.clone(),
            metrics.clone(),
            conn_stop.clone(),
        )
    })
    .await;
}

fn respond(method: &Method, body: &Bytes, metrics: &AgentMetrics) -> Response<Full<Bytes>> {
    if method != Method::GET {
        metrics.responder_rejected(KIND, RejectReason::Malformed);
        let mut r = Response::new(Full::new(Bytes::from_static(b"only GET\n")));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    metrics.responder_request(KIND);
    // Full has an exact size, so hyper sends Content-Length.
    let mut r = Response::new(Full::new(body.clone()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

async fn connection(
    stream: TcpStream,
    _slot: Slot,
    builder: http1::Builder,
    body: Bytes,
    metrics: AgentMetrics,
    stop: CancellationToken,
) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = respond(req.method(), &body, &metrics);
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP responder connection ended with an error");
    }
}

/// Fuzz entry: serves one connection whose client sends `data` and closes,
/// over an in-memory pipe, with the responder's real service.
#[cfg(fuzzing)]
pub(crate) fn fuzz_request(data: &[u8]) {
    use std::sync::OnceLock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("fuzz runtime");
    }
    let metrics = METRICS
        .get_or_init(|| AgentMetrics::new(prometheus::Registry::new()).expect("metrics"))
        .clone();
    RT.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let body = Bytes::from_static(b"x");
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.method(), &body, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(20))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(server), svc);
            let talk = async {
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                let (_, ()) = tokio::join!(conn, talk);
            })
            .await;
        });
    });
}
