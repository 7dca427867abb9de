//! The persistent TCP request/response connection of one target: a
//! non-blocking connect, 64-byte echo frames both ways, reconnect with
//! backoff. Probe deadlines that fall while it is down are not sent (and
//! not counted); every failed connect is counted as `connect_failed`.
//!
//! Replies carry the kernel's receive stamp (SO_TIMESTAMPNS, which TCP
//! reports for the last segment a read consumed), as UDP and ICMP replies
//! do: the RTT then excludes when this thread got to read it. Each read
//! stops at the end of a frame so that stamp belongs to that frame.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::stream::Arrival;
use crate::proto::echo;
use crate::schedule::Backoff;
use crate::sys::poll::{FAILED, READABLE, WRITABLE};
use crate::sys::timestamp::{enable_rx_timestamps, recv_timestamped, ControlBuf};

/// First reconnect delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Something the engine must book.
#[derive(Debug)]
pub(super) enum TcpEvent {
    /// A connect attempt failed.
    ConnectFailed(io::Error),
    /// A complete reply frame (`echo::HEADER_LEN` bytes).
    Frame([u8; echo::HEADER_LEN], Arrival),
    /// The stream broke (EOF, reset); in-flight probes will time out.
    Closed(Option<io::Error>),
}

enum State {
    Idle {
        retry_at: Instant,
    },
    Connecting {
        sock: Socket,
        deadline: Instant,
    },
    Up {
        sock: Socket,
        /// The part of the current frame read so far.
        partial: [u8; echo::HEADER_LEN],
        filled: usize,
        cmsg: ControlBuf,
    },
}

impl State {
    fn up(sock: Socket) -> Self {
        State::Up {
            sock,
            partial: [0; echo::HEADER_LEN],
            filled: 0,
            cmsg: ControlBuf::default(),
        }
    }
}

/// Why a probe could not be sent.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection: the probe is skipped.
    NotConnected,
    /// The write failed; the connection was dropped.
    Failed(io::Error),
}

/// One target's connection.
pub(super) struct TcpConn {
    dest: SocketAddr,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
    backoff: Backoff,
    state: State,
}

impl TcpConn {
    /// A connection to `dest` that will first connect at `now`.
    pub(super) fn new(
        dest: SocketAddr,
        bind: IpAddr,
        connect_timeout: Duration,
        now: Instant,
    ) -> Self {
        // Binding the source only makes sense when it is set and of the
        // destination's family.
        let bind = (!bind.is_unspecified() && bind.is_ipv4() == dest.is_ipv4()).then_some(bind);
        Self {
            dest,
            bind,
            connect_timeout,
            backoff: Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX),
            state: State::Idle { retry_at: now },
        }
    }

    /// The descriptor to poll and for what, if any.
    pub(super) fn interest(&self) -> Option<(BorrowedFd<'_>, i16)> {
        match &self.state {
            State::Idle { .. } => None,
            State::Connecting { sock, .. } => Some((sock.as_fd(), WRITABLE)),
            State::Up { sock, .. } => Some((sock.as_fd(), READABLE)),
        }
    }

    /// When the connection needs attention without any IO (retry, connect
    /// timeout).
    pub(super) fn next_timer(&self) -> Option<Instant> {
        match &self.state {
            State::Idle { retry_at } => Some(*retry_at),
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Up { .. } => None,
        }
    }

    /// Starts a connect when the retry time has come; fails one that took
    /// longer than the timeout.
    pub(super) fn tick(&mut self, now: Instant, events: &mut Vec<TcpEvent>) {
        match &self.state {
            State::Idle { retry_at } if *retry_at <= now => match self.connect(now) {
                Ok(state) => self.state = state,
                Err(e) => self.fail(now, TcpEvent::ConnectFailed(e), events),
            },
            State::Connecting { deadline, .. } if *deadline <= now => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                self.fail(now, TcpEvent::ConnectFailed(e), events);
            }
            _ => {}
        }
    }

    fn connect(&self, now: Instant) -> io::Result<State> {
        let sock = Socket::new(
            Domain::for_address(self.dest),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        // Probes are tiny and latency-bound: never wait for Nagle.
        sock.set_tcp_nodelay(true)?;
        enable_rx_timestamps(&sock)?;
        if let Some(ip) = self.bind {
            sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        match sock.connect(&SockAddr::from(self.dest)) {
            Ok(()) => Ok(State::up(sock)),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(State::Connecting {
                sock,
                deadline: now + self.connect_timeout,
            }),
            Err(e) => Err(e),
        }
    }

    /// Handles poll results for this connection's descriptor.
    pub(super) fn ready(&mut self, revents: i16, now: Instant, events: &mut Vec<TcpEvent>) {
        match &mut self.state {
            State::Idle { .. } => {}
            State::Connecting { sock, .. } => {
                if revents & (WRITABLE | FAILED) == 0 {
                    return;
                }
                let outcome = match sock.take_error() {
                    Ok(None) => sock.peer_addr().map(|_| ()),
                    Ok(Some(e)) | Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        let State::Connecting { sock, .. } =
                            std::mem::replace(&mut self.state, State::Idle { retry_at: now })
                        else {
                            return;
                        };
                        self.state = State::up(sock);
                    }
                    Err(e) => self.fail(now, TcpEvent::ConnectFailed(e), events),
                }
            }
            State::Up {
                sock,
                partial,
                filled,
                cmsg,
            } => {
                if revents & (READABLE | FAILED) == 0 {
                    return;
                }
                // Reads stop at each frame's end, so each frame gets its
                // own segment's kernel stamp; replies are read lazily (at
                // the engine's next wake-up), so several may be queued.
                let closed = loop {
                    let buf = partial.get_mut(*filled..).unwrap_or_default();
                    match recv_timestamped(sock.as_fd(), buf, cmsg) {
                        Ok(r) if r.len == 0 => break Some(None),
                        Ok(r) => {
                            *filled += r.len;
                            if *filled < echo::HEADER_LEN {
                                // The rest of the frame is not here yet.
                                break None;
                            }
                            *filled = 0;
                            let arrival = super::arrival_now(r.kernel_rx_ns);
                            events.push(TcpEvent::Frame(*partial, arrival));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => break Some(Some(e)),
                    }
                };
                if let Some(err) = closed {
                    self.fail(now, TcpEvent::Closed(err), events);
                }
            }
        }
    }

    /// Sends one request frame.
    pub(super) fn send(&mut self, frame: &[u8], now: Instant) -> Result<(), SendError> {
        let State::Up { sock, .. } = &mut self.state else {
            return Err(SendError::NotConnected);
        };
        match sock.send(frame) {
            Ok(n) if n == frame.len() => Ok(()),
            // A partial write would desynchronise the framing: start over.
            Ok(_) => {
                let e = io::Error::new(io::ErrorKind::WriteZero, "partial write");
                self.drop_connection(now);
                Err(SendError::Failed(e))
            }
            Err(e) => {
                self.drop_connection(now);
                Err(SendError::Failed(e))
            }
        }
    }

    /// Drops the connection after a protocol error (bad frame).
    pub(super) fn drop_connection(&mut self, now: Instant) {
        self.state = State::Idle {
            retry_at: now + self.backoff.next_delay(),
        };
    }

    /// A reply arrived: the peer is healthy again.
    pub(super) fn healthy(&mut self) {
        self.backoff.reset();
    }

    fn fail(&mut self, now: Instant, event: TcpEvent, events: &mut Vec<TcpEvent>) {
        events.push(event);
        self.drop_connection(now);
    }
}
