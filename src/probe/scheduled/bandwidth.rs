//! Bandwidth bursts over blocking TCP, bounded by time (a byte cap is only
//! a safety limit): `Send` measures the goodput of bytes the peer
//! acknowledged (sender `TCP_INFO.bytes_acked`, so bytes parked in the
//! local socket buffer never count), `Receive` the goodput of bytes the
//! kernel received (receiver `TCP_INFO.bytes_received`, so a descheduled
//! read does not shift them). Both over the second half of the burst (see
//! [`super::goodput`]).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::connect::{abort, timed_connect};
use super::goodput::{self, Goodput};
use crate::auth::KeySet;
use crate::proto::bandwidth::{self as wire, Mode, Request, Seal, Status};
use crate::sys::tcp_info::{tcp_info, TcpInfo};

/// Bound on connect and on waiting for the responder's status.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes per write: each write is followed by a TCP_INFO sample.
const CHUNK: usize = 128 << 10;
/// TCP_INFO polling period once everything is written.
const ACK_POLL: Duration = Duration::from_millis(1);
/// A `TCP_INFO` read that takes longer than this was descheduled: its
/// sample is not timed (a read takes a few microseconds).
const MAX_SAMPLE_GAP: Duration = Duration::from_micros(200);
/// Longest time between two `TCP_INFO` samples of a receiver.
const SAMPLE_PERIOD: Duration = Duration::from_millis(1);

/// A finished burst.
#[derive(Debug, Clone, Copy)]
pub(super) enum Burst {
    /// Goodput measured.
    Done {
        /// Second-half goodput.
        goodput: Goodput,
        /// Retransmitted segments during the burst (sender side only).
        retrans: u64,
        /// The sender's last TCP_INFO (RTTs, delivery rate), for logs.
        tcp: Option<TcpInfo>,
    },
    /// The responder was running another burst.
    Busy,
}

/// Why a burst failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum BurstError {
    /// Connect failed.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// IO failed during the handshake or the transfer.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The status did not parse.
    #[error("bad status: {0}")]
    BadStatus(#[from] crate::proto::DecodeError),
    /// The responder refused the request (limits, malformed).
    #[error("refused: {0:?}")]
    Refused(Status),
    /// Too few bytes or samples for a goodput.
    #[error("no goodput: {0} bytes transferred")]
    NoGoodput(u64),
    /// Shutdown interrupted the burst.
    #[error("cancelled")]
    Cancelled,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> BurstError {
    move |source| BurstError::Io { what, source }
}

fn left(deadline: Instant) -> Option<Duration> {
    let l = deadline.saturating_duration_since(Instant::now());
    (!l.is_zero()).then_some(l)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The responder closing mid-burst: it enforces `max_duration` with its
/// own clock, which started a little before ours, so this ends a capped
/// burst normally rather than failing it.
fn is_peer_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// A fresh seal: now, and a random nonce.
fn seal() -> Seal {
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Seal {
        timestamp_ms,
        nonce: rand::random(),
    }
}

/// Reads `TCP_INFO` with the time it describes: the middle of the call, or
/// `None` when the thread was descheduled during it (a late timestamp on
/// the window's first sample would inflate the goodput, on its last
/// deflate it). The counters are still returned, to track progress.
fn timed_info(s: &TcpStream) -> Result<(Option<Instant>, TcpInfo), BurstError> {
    let before = Instant::now();
    let info = tcp_info(s).map_err(io_err("TCP_INFO"))?;
    let took = before.elapsed();
    Ok(((took <= MAX_SAMPLE_GAP).then(|| before + took / 2), info))
}

/// Connects, sends the signed request and reads the status.
fn handshake(
    addr: SocketAddr,
    bind: IpAddr,
    req: Request,
    keys: &KeySet,
) -> Result<Result<TcpStream, Status>, BurstError> {
    let (mut s, _) = timed_connect(addr, bind, HANDSHAKE_TIMEOUT).map_err(BurstError::Connect)?;
    // The request must leave now, not wait for Nagle.
    s.set_nodelay(true).map_err(io_err("set_nodelay"))?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_err("set timeout"))?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_err("set timeout"))?;
    s.write_all(&req.encode(&seal(), keys))
        .map_err(io_err("sending the request"))?;
    let mut resp = [0u8; wire::RESPONSE_LEN];
    s.read_exact(&mut resp)
        .map_err(io_err("reading the status"))?;
    match Status::decode(&resp)? {
        Status::Ok => {
            // The burst is a bulk transfer, sent as iperf3 sends (Nagle
            // on). With TCP_NODELAY, 25 ms slices of a burst on the lab's
            // veth read 13-55 Gbit/s (bytes_acked advancing in jumps)
            // where iperf3 reads a steady 17-20; without, 12-21.
            s.set_nodelay(false).map_err(io_err("set_nodelay"))?;
            Ok(Ok(s))
        }
        other => {
            abort(s);
            Ok(Err(other))
        }
    }
}

/// Runs one burst in `mode` (seen from the responder: `Sink` = we send),
/// for `max_duration` or `bytes` (the safety cap), whichever comes first.
pub(super) fn burst(
    addr: SocketAddr,
    bind: IpAddr,
    mode: Mode,
    bytes: u64,
    max_duration: Duration,
    keys: &KeySet,
    shutdown: &CancellationToken,
) -> Result<Burst, BurstError> {
    let req = Request {
        mode,
        bytes,
        max_duration,
    };
    let s = match handshake(addr, bind, req, keys)? {
        Ok(s) => s,
        Err(Status::Busy) => return Ok(Burst::Busy),
        Err(other) => return Err(BurstError::Refused(other)),
    };
    match mode {
        Mode::Sink => send(s, bytes, max_duration, shutdown),
        Mode::Source => receive(s, bytes, max_duration, shutdown),
    }
}

fn send(
    mut s: TcpStream,
    bytes: u64,
    max_duration: Duration,
    shutdown: &CancellationToken,
) -> Result<Burst, BurstError> {
    let base = tcp_info(&s).map_err(io_err("TCP_INFO"))?;
    let chunk = vec![0u8; CHUNK];
    let t0 = Instant::now();
    let deadline = t0 + max_duration;
    // Capacity for one sample per chunk plus ~1 ms polling afterwards.
    let mut samples: Vec<(Instant, u64)> = Vec::with_capacity(4096);
    samples.push((t0, 0));
    let mut last = base;
    let mut sample =
        |s: &TcpStream, samples: &mut Vec<(Instant, u64)>| -> Result<u64, BurstError> {
            let (at, i) = timed_info(s)?;
            let acked = i.bytes_acked.saturating_sub(base.bytes_acked);
            if let Some(at) = at {
                samples.push((at, acked));
            }
            last = i;
            Ok(acked)
        };
    let mut sent: u64 = 0;
    let mut peer_closed = false;
    while sent < bytes {
        if shutdown.is_cancelled() {
            abort(s);
            return Err(BurstError::Cancelled);
        }
        let Some(l) = left(deadline) else { break };
        s.set_write_timeout(Some(l))
            .map_err(io_err("set timeout"))?;
        let n = usize::try_from(bytes - sent).unwrap_or(CHUNK).min(CHUNK);
        match s.write(&chunk[..n]) {
            Ok(0) => return Err(io_err("writing")(io::ErrorKind::WriteZero.into())),
            Ok(w) => sent += u64::try_from(w).unwrap_or(0),
            Err(e) if is_timeout(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_peer_close(&e) => {
                peer_closed = true;
                break;
            }
            Err(e) => return Err(io_err("writing")(e)),
        }
        sample(&s, &mut samples)?;
    }
    // Bytes in the socket buffer are not goodput yet: poll until the peer
    // has acknowledged everything written, or the deadline.
    let mut acked = samples.last().map_or(0, |x| x.1);
    if peer_closed {
        // No more ACKs will come; the counters still hold what got through.
        acked = sample(&s, &mut samples)?;
    }
    while !peer_closed && acked < sent && left(deadline).is_some() && !shutdown.is_cancelled() {
        std::thread::sleep(ACK_POLL);
        acked = sample(&s, &mut samples)?;
    }
    let retrans = u64::from(last.total_retrans.saturating_sub(base.total_retrans));
    if acked >= sent {
        // Everything written was delivered: a normal close lets the sink
        // see EOF.
        let _ = s.shutdown(Shutdown::Write);
        drop(s);
    } else {
        // Cut by the deadline: stop the data still queued.
        abort(s);
    }
    if shutdown.is_cancelled() {
        return Err(BurstError::Cancelled);
    }
    let goodput = goodput::second_half(&samples).ok_or(BurstError::NoGoodput(acked))?;
    Ok(Burst::Done {
        goodput,
        retrans,
        tcp: Some(last),
    })
}

fn receive(
    mut s: TcpStream,
    bytes: u64,
    duration: Duration,
    shutdown: &CancellationToken,
) -> Result<Burst, BurstError> {
    // Bytes are timed by the kernel's count on arrival, sampled at least
    // every SAMPLE_PERIOD: a read delayed by descheduling returns late, but
    // the counter it samples is still right for the moment it is read.
    let base = tcp_info(&s).map_err(io_err("TCP_INFO"))?.bytes_received;
    let mut buf = vec![0u8; CHUNK];
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut samples: Vec<(Instant, u64)> = Vec::with_capacity(4096);
    samples.push((t0, 0));
    let mut got: u64 = 0;
    let mut complete = false;
    s.set_read_timeout(Some(SAMPLE_PERIOD))
        .map_err(io_err("set timeout"))?;
    while got < bytes && left(deadline).is_some() {
        if shutdown.is_cancelled() {
            abort(s);
            return Err(BurstError::Cancelled);
        }
        match s.read(&mut buf) {
            Ok(0) => complete = true,
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_peer_close(&e) => complete = true,
            Err(e) => return Err(io_err("reading")(e)),
        }
        let (at, info) = timed_info(&s)?;
        got = info.bytes_received.saturating_sub(base);
        if let Some(at) = at {
            samples.push((at, got));
        }
        if complete {
            break;
        }
    }
    if complete {
        drop(s);
    } else {
        // Time is up: stop the source rather than drain what it queued.
        abort(s);
    }
    let goodput = goodput::second_half(&samples).ok_or(BurstError::NoGoodput(got))?;
    Ok(Burst::Done {
        goodput,
        retrans: 0,
        tcp: None,
    })
}
