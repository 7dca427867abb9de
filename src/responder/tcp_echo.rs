//! TCP request/response echo: fixed 64-byte echo messages on persistent
//! connections, each answered at once (TCP_NODELAY) with the responder's
//! wall-clock receive and send times.
//!
//! Latency-critical like the UDP echo, so it runs on its own OS thread with a
//! current-thread tokio runtime: one thread serves up to `max_connections`
//! connections (a thread per connection would mean hundreds of threads), and
//! no task of the shared multi-thread runtime can delay a reply
//! (measurement.md §5: current_thread p99 50 us vs 334 us on a noisy shared
//! runtime).

use crate::sys::thread::prefer_realtime;
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{accept_loop, idle_timeout, to_tokio, wall_ns, Slot};
use crate::config::ResponderSettings;
use crate::metrics::labels::{RejectReason, ResponderKind};
use crate::metrics::AgentMetrics;
use crate::proto::echo;

const KIND: ResponderKind = ResponderKind::TcpEcho;

/// Starts the echo thread on a bound listener. Returns once the listener is
/// registered with the thread's runtime, or the reason it could not be.
pub(super) async fn spawn(
    listener: std::net::TcpListener,
    offset_ns: u64,
    limits: &ResponderSettings,
    metrics: AgentMetrics,
    stop: CancellationToken,
) -> io::Result<JoinHandle<()>> {
    let limits = *limits;
    let idle = idle_timeout(&limits);
    let realtime = limits.realtime_priority;
    let (ready_tx, ready_rx) = oneshot::channel::<io::Result<()>>();
    // The runtime is built and dropped on its own thread: dropping a runtime
    // inside the caller's async context would panic.
    let thread = std::thread::Builder::new()
        .name("kp-tcp-echo".into())
        .spawn(move || {
            if realtime {
                prefer_realtime("tcp echo");
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match to_tokio("tcp echo", listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::other(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let conn_stop = stop.clone();
                accept_loop(listener, KIND, &limits, metrics.clone(), stop, |s, slot| {
                    connection(s, slot, idle, offset_ns, metrics.clone(), conn_stop.clone())
                })
                .await;
            });
        })?;
    // On failure the thread is already on its way out: no need to join it.
    match ready_rx.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("tcp echo thread exited during start")),
    }
}

/// Serves one connection until the peer closes it, it idles for `idle`, it
/// sends a malformed message, or shutdown.
async fn connection(
    mut stream: TcpStream,
    _slot: Slot,
    idle: Duration,
    offset_ns: u64,
    metrics: AgentMetrics,
    stop: CancellationToken,
) {
    // Replies are single small segments that must leave at once.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "Cannot set TCP_NODELAY on a TCP echo connection");
    }
    let mut buf = [0u8; echo::HEADER_LEN];
    loop {
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = tokio::time::timeout(idle, stream.read_exact(&mut buf)) => r,
        };
        match read {
            Ok(Ok(_)) => {}
            // EOF (possibly mid-message) or a reset: the prober went away.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("Closing an idle TCP echo connection");
                return;
            }
        }
        let rx_ns = wall_ns(offset_ns);
        if echo::make_reply(&mut buf, rx_ns, wall_ns(offset_ns)).is_err() {
            metrics.responder_rejected(KIND, RejectReason::Malformed);
            return;
        }
        if stream.write_all(&buf).await.is_err() {
            return;
        }
        metrics.responder_request(KIND);
    }
}
