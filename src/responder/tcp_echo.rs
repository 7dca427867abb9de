//! TCP request/response echo: fixed 64-byte echo messages on persistent
//! connections, each answered at once (TCP_NODELAY) with the responder's
//! wall-clock receive and send times.
//!
//! Latency-critical like the UDP echo, so it runs on its own OS thread: one
//! `ppoll` over the listener, a wake-up descriptor and every connection,
//! and a request is read and answered in the wake-up that saw it, with no
//! runtime between the socket and the reply. One thread serves up to
//! `max_connections` connections (a thread per connection would mean
//! hundreds of threads). The echo used to run on a current-thread tokio
//! runtime; its task wake-ups added tens of microseconds, and their jitter,
//! to every TCP RTT on the lab's 2-vCPU VM.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{idle_timeout, wall_ns, Admission, Slot, ACCEPT_BACKOFF, POLL_INTERVAL};
use crate::config::ResponderSettings;
use crate::metrics::labels::{RejectReason, ResponderKind};
use crate::metrics::AgentMetrics;
use crate::proto::echo;
use crate::sys::poll::{ppoll, PollFd, READABLE};
use crate::sys::thread::prefer_realtime;
use crate::sys::wake::Wake;

const KIND: ResponderKind = ResponderKind::TcpEcho;

/// Starts the echo thread on a bound listener.
pub(super) fn spawn(
    listener: TcpListener,
    offset_ns: u64,
    limits: &ResponderSettings,
    metrics: AgentMetrics,
    stop: CancellationToken,
) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let wake = Arc::new(Wake::new()?);
    // Shutdown must wake the poll. With a runtime at hand a task notifies
    // the wake-up descriptor; else the poll looks every POLL_INTERVAL.
    let longest_wait = match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let (wake, stop) = (wake.clone(), stop.clone());
            rt.spawn(async move {
                stop.cancelled().await;
                wake.notify();
            });
            Duration::from_secs(3600)
        }
        Err(_) => POLL_INTERVAL,
    };
    let echo = Echo {
        admission: Admission::new(limits, &metrics, KIND),
        listener,
        wake,
        conns: Vec::new(),
        idle: idle_timeout(limits),
        offset_ns,
        metrics,
        accept_after: None,
        longest_wait,
    };
    let realtime = limits.realtime_priority;
    std::thread::Builder::new()
        .name("kp-tcp-echo".into())
        .spawn(move || {
            if realtime {
                prefer_realtime("tcp echo");
            }
            echo.run(&stop);
        })
}

/// One connection: the request read so far, and its share of the limits.
struct Conn {
    stream: TcpStream,
    buf: [u8; echo::HEADER_LEN],
    filled: usize,
    last_active: Instant,
    _slot: Slot,
}

/// What became of a connection after serving it.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    Open,
    Closed,
}

struct Echo {
    admission: Admission,
    listener: TcpListener,
    wake: Arc<Wake>,
    conns: Vec<Conn>,
    idle: Duration,
    offset_ns: u64,
    metrics: AgentMetrics,
    /// After a failed accept (out of descriptors and the like) the listener
    /// stays readable: it leaves the poll set until then, so the thread
    /// neither spins nor stops answering.
    accept_after: Option<Instant>,
    longest_wait: Duration,
}

impl Echo {
    fn run(mut self, stop: &CancellationToken) {
        let mut fds: Vec<PollFd> = Vec::new();
        while !stop.is_cancelled() {
            let now = Instant::now();
            let accepting = self.accept_after.is_none_or(|t| t <= now);
            if accepting {
                self.accept_after = None;
            }
            fds.clear();
            fds.push(PollFd::new(self.wake.as_fd(), READABLE));
            fds.push(PollFd::new(
                self.listener.as_fd(),
                if accepting { READABLE } else { 0 },
            ));
            fds.extend(
                self.conns
                    .iter()
                    .map(|c| PollFd::new(c.stream.as_fd(), READABLE)),
            );
            if let Err(e) = ppoll(&mut fds, self.wait(now)) {
                tracing::warn!(error = %e, "ppoll failed in the TCP echo");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            if fds.first().is_some_and(|w| w.revents() != 0) {
                // Shutdown: the loop condition sees it.
                self.wake.clear();
                continue;
            }
            // Requests first: their turnaround is in every measured RTT.
            let mut i = 0;
            let mut fd = 2;
            while i < self.conns.len() {
                let ready = fds.get(fd).is_some_and(|f| f.revents() != 0);
                fd += 1;
                if ready && self.serve(i) == Served::Closed {
                    // Keeps the order of the rest in step with `fds`.
                    self.conns.remove(i);
                    continue;
                }
                i += 1;
            }
            let now = Instant::now();
            let idle = self.idle;
            self.conns.retain(|c| {
                let keep = now.saturating_duration_since(c.last_active) < idle;
                if !keep {
                    tracing::debug!("Closing an idle TCP echo connection");
                }
                keep
            });
            if accepting && fds.get(1).is_some_and(|f| f.revents() != 0) {
                self.accept(now);
            }
        }
        // Close the port first, then the connections.
        drop(self.listener);
        self.conns.clear();
    }

    /// How long to wait: until the first idle deadline or the end of an
    /// accept backoff, at most `longest_wait`.
    fn wait(&self, now: Instant) -> Duration {
        let idle_deadline = self.conns.iter().map(|c| c.last_active + self.idle).min();
        [idle_deadline, self.accept_after]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(now))
            .fold(self.longest_wait, Duration::min)
    }

    /// Reads what connection `i` sent and answers every whole request.
    fn serve(&mut self, i: usize) -> Served {
        let Some(c) = self.conns.get_mut(i) else {
            return Served::Closed;
        };
        loop {
            let Some(rest) = c.buf.get_mut(c.filled..) else {
                return Served::Closed;
            };
            match c.stream.read(rest) {
                // EOF (possibly mid-message): the prober went away.
                Ok(0) => return Served::Closed,
                Ok(n) => c.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Served::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Served::Closed,
            }
            if c.filled < echo::HEADER_LEN {
                continue;
            }
            let rx_ns = wall_ns(self.offset_ns);
            c.filled = 0;
            c.last_active = Instant::now();
            if echo::make_reply(&mut c.buf, rx_ns, wall_ns(self.offset_ns)).is_err() {
                self.metrics
                    .responder_rejected(KIND, RejectReason::Malformed);
                return Served::Closed;
            }
            // A 64-byte reply fits any send buffer a prober that reads its
            // replies leaves: one that does not is closed, never waited on.
            match c.stream.write(&c.buf) {
                Ok(n) if n == c.buf.len() => self.metrics.responder_request(KIND),
                _ => return Served::Closed,
            }
        }
    }

    /// Accepts every pending connection within the limits.
    fn accept(&mut self, now: Instant) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(responder = %KIND, error = %e, "Accept failed");
                    self.accept_after = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            let slot = match self.admission.admit(peer.ip()) {
                Ok(s) => s,
                Err(reason) => {
                    self.metrics.responder_rejected(KIND, reason);
                    continue;
                }
            };
            // Replies are single small segments that must leave at once.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "Cannot set TCP_NODELAY on a TCP echo connection");
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.conns.push(Conn {
                stream,
                buf: [0; echo::HEADER_LEN],
                filled: 0,
                last_active: now,
                _slot: slot,
            });
        }
    }
}
