//! Bandwidth sink/source: one burst at a time, per the handshake in
//! [`crate::proto::bandwidth`], for authenticated requests only
//! ([`crate::auth`]): anyone who can reach the port must not be able to
//! make this node send.
//!
//! The handshake runs on the shared runtime; the data transfer runs with
//! blocking IO on a blocking-pool thread, so runtime scheduling does not
//! shape the throughput being measured.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{accept_loop, Slot, POLL_INTERVAL};
use crate::auth::{BurstKeys, Freshness};
use crate::config::ResponderSettings;
use crate::metrics::labels::{RejectReason, ResponderKind};
use crate::metrics::AgentMetrics;
use crate::proto::bandwidth::{Mode, Request, SealedRequest, Status, REQUEST_LEN};

const KIND: ResponderKind = ResponderKind::Bandwidth;
/// How long a prober has to send its request after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Added to the requested duration before the responder gives up: covers
/// the prober's own start-up and the last bytes in flight.
const GRACE: Duration = Duration::from_millis(250);
/// Size of each read and write of the transfer.
const CHUNK: usize = 128 * 1024;
/// What a source burst sends: the content does not matter, only the size.
static SOURCE_DATA: [u8; CHUNK] = [0u8; CHUNK];

/// The burst limits of the responder.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: u64,
    max_duration: Duration,
}

/// Checks a request against the limits: a burst must move at least one
/// byte, take some time, and stay within both limits.
fn check(req: &Request, limits: Limits) -> Result<(), RejectReason> {
    if req.bytes == 0
        || req.bytes > limits.max_bytes
        || req.max_duration.is_zero()
        || req.max_duration > limits.max_duration
    {
        return Err(RejectReason::OverLimit);
    }
    Ok(())
}

/// Set while a burst runs; the [`BurstGuard`] clears it.
#[derive(Clone, Default)]
struct BurstFlag(Arc<AtomicBool>);

/// Proof that this connection owns the responder's single burst.
struct BurstGuard(Arc<AtomicBool>);

impl BurstFlag {
    fn try_take(&self) -> Option<BurstGuard> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| BurstGuard(self.0.clone()))
    }
}

impl Drop for BurstGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a request must pass before its burst starts, in order.
struct Gate {
    limits: Limits,
    keys: Arc<BurstKeys>,
    fresh: Mutex<Freshness>,
    flag: BurstFlag,
}

/// A refusal: what the prober is told and how it is counted.
type Refused = (Status, RejectReason);

const UNAUTHENTICATED: Refused = (Status::Unauthenticated, RejectReason::Unauthenticated);

impl Gate {
    /// Decides on a request: the burst it may run, or why not.
    fn admit(&self, buf: &[u8; REQUEST_LEN]) -> Result<(Request, BurstGuard), Refused> {
        let sealed = Request::decode_sealed(buf)
            .map_err(|_| (Status::Malformed, RejectReason::Malformed))?;
        self.authenticate(&sealed)?;
        let req = sealed.request;
        check(&req, self.limits).map_err(|reason| (Status::OverLimit, reason))?;
        let guard = self
            .flag
            .try_take()
            .ok_or((Status::Busy, RejectReason::Busy))?;
        Ok((req, guard))
    }

    /// MAC under a current key, timestamp within ±30 s, nonce unseen.
    fn authenticate(&self, sealed: &SealedRequest) -> Result<(), Refused> {
        // Without a usable key nothing verifies (logged once by the key
        // file's reader, not per request).
        let keys = self.keys.current().ok_or(UNAUTHENTICATED)?;
        if !keys.verify(&sealed.signed, &sealed.mac) {
            return Err(UNAUTHENTICATED);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.check(&sealed.seal, now_ms).map_err(|e| {
            tracing::debug!(error = %e, "Bandwidth request refused");
            UNAUTHENTICATED
        })
    }
}

/// Serves bursts until `stop`, then waits for running ones to end.
pub(super) async fn serve(
    listener: TcpListener,
    limits: ResponderSettings,
    keys: Arc<BurstKeys>,
    metrics: AgentMetrics,
    stop: CancellationToken,
) {
    let gate = Arc::new(Gate {
        limits: Limits {
            max_bytes: limits.max_burst_bytes,
            max_duration: limits.max_burst_duration,
        },
        keys,
        fresh: Mutex::new(Freshness::new()),
        flag: BurstFlag::default(),
    });
    let conn_stop = stop.clone();
    accept_loop(listener, KIND, &limits, metrics.clone(), stop, |s, slot| {
        connection(s, slot, gate.clone(), metrics.clone(), conn_stop.clone())
    })
    .await;
}

/// What the handshake read produced.
enum Received {
    /// A full request.
    Request([u8; REQUEST_LEN]),
    /// The peer closed before sending anything (a port check): not counted.
    Nothing,
    /// A partial request, or none within the timeout.
    Incomplete,
}

async fn read_request(stream: &mut TcpStream) -> Received {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = [0u8; REQUEST_LEN];
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match tokio::time::timeout_at(deadline, stream.read(rest)).await {
            Ok(Ok(0)) if got == 0 => return Received::Nothing,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Received::Incomplete,
            Ok(Ok(n)) => got += n,
        }
    }
    Received::Request(buf)
}

/// Answers the handshake and, on `Ok`, hands the transfer to a blocking
/// thread.
async fn connection(
    mut stream: TcpStream,
    slot: Slot,
    gate: Arc<Gate>,
    metrics: AgentMetrics,
    stop: CancellationToken,
) {
    let received = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        r = read_request(&mut stream) => r,
    };
    let decided = match received {
        Received::Nothing => return,
        Received::Incomplete => Err((Status::Malformed, RejectReason::Malformed)),
        // Bytes are charged to the source once the burst is granted, so a
        // refusal (busy, unauthenticated) costs it nothing.
        Received::Request(buf) => gate.admit(&buf).and_then(|(req, guard)| {
            slot.charge_bytes(req.bytes)
                .map(|()| (req, guard))
                .map_err(|reason| (Status::OverLimit, reason))
        }),
    };
    let (req, guard) = match decided {
        Ok(go) => go,
        Err((status, reason)) => {
            metrics.responder_rejected(KIND, reason);
            // Best effort: the prober may already be gone.
            let _ = stream.write_all(&status.encode()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    if stream.write_all(&Status::Ok.encode()).await.is_err() {
        return;
    }
    metrics.responder_request(KIND);
    // The deadline starts with the go-ahead, as the prober's does.
    let deadline = Instant::now() + req.max_duration + GRACE;
    let std_stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot hand a bandwidth connection to a blocking thread");
            return;
        }
    };
    let transfer = tokio::task::spawn_blocking(move || {
        let mut s = std_stream;
        let moved = transfer(&mut s, req, deadline, &stop);
        // Free the burst and the slot before the prober sees the close, so
        // it can start its next burst at once.
        drop((guard, slot));
        drop(s);
        moved
    });
    match transfer.await {
        Ok(Ok(moved)) => {
            tracing::debug!(mode = ?req.mode, requested = req.bytes, moved, "Bandwidth burst done")
        }
        Ok(Err(e)) => {
            tracing::debug!(mode = ?req.mode, error = %e, "Bandwidth burst ended with an error")
        }
        Err(e) => tracing::error!(error = %e, "Bandwidth transfer thread failed"),
    }
}

/// Moves the burst's bytes; returns how many moved. Stops at the byte count,
/// the deadline, shutdown, or the first IO error.
fn transfer(
    s: &mut std::net::TcpStream,
    req: Request,
    deadline: Instant,
    stop: &CancellationToken,
) -> io::Result<u64> {
    // Timeouts only serve to notice the deadline and shutdown; the
    // deadline may be overrun by at most one of them.
    s.set_read_timeout(Some(POLL_INTERVAL))?;
    s.set_write_timeout(Some(POLL_INTERVAL))?;
    let go_on = || !stop.is_cancelled() && Instant::now() < deadline;
    let mut moved = 0u64;
    match req.mode {
        Mode::Sink => {
            let mut buf = vec![0u8; CHUNK];
            while moved < req.bytes && go_on() {
                // Never read past the burst: what follows is not ours.
                let want = chunk_len(req.bytes - moved);
                match s.read(buf.get_mut(..want).unwrap_or_default()) {
                    Ok(0) => break,
                    Ok(n) => moved += n as u64,
                    Err(e) if super::is_timeout(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Mode::Source => {
            while moved < req.bytes && go_on() {
                let n = chunk_len(req.bytes - moved);
                match s.write(SOURCE_DATA.get(..n).unwrap_or_default()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => moved += n as u64,
                    Err(e) if super::is_timeout(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            s.shutdown(Shutdown::Write)?;
            // Wait for the prober to close: closing with unread input
            // would reset the connection and could drop data still queued.
            let mut sink = [0u8; 1024];
            while go_on() {
                match s.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if super::is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        }
    }
    Ok(moved)
}

fn chunk_len(remaining: u64) -> usize {
    usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1000,
        max_duration: Duration::from_secs(1),
    };

    fn req(bytes: u64, ms: u64) -> Request {
        Request {
            mode: Mode::Sink,
            bytes,
            max_duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn limits_are_inclusive_and_zero_is_refused() {
        assert_eq!(check(&req(1000, 1000), LIMITS), Ok(()));
        assert_eq!(check(&req(1, 1), LIMITS), Ok(()));
        for bad in [req(1001, 10), req(0, 10), req(10, 0), req(10, 1001)] {
            assert_eq!(check(&bad, LIMITS), Err(RejectReason::OverLimit), "{bad:?}");
        }
    }

    #[test]
    fn only_one_burst_at_a_time() {
        let flag = BurstFlag::default();
        let first = flag.try_take().expect("free");
        assert!(flag.try_take().is_none());
        drop(first);
        assert!(flag.try_take().is_some());
    }

    #[test]
    fn chunks_never_exceed_the_remainder() {
        assert_eq!(chunk_len(5), 5);
        assert_eq!(chunk_len(u64::MAX), CHUNK);
    }
}
