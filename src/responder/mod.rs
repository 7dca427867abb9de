//! Probe responders: UDP echo, TCP request/response echo, TCP bandwidth
//! sink/source and HTTP. Bounded connections, bounded bursts, and budgets
//! per source address ([`budget`]): UDP echo requests per second, TCP
//! connections per second and open at once, bandwidth bytes per minute.
//! Malformed or over-budget input is rejected and counted, never a panic.
//!
//! Where each one runs, and why:
//! - UDP echo: a dedicated OS thread with a blocking socket. Its turnaround
//!   is part of every measured RTT, so it must not queue behind other tasks.
//! - TCP echo: a dedicated current-thread tokio runtime on its own OS thread
//!   (see `tcp_echo`), for the same reason.
//! - Bandwidth: accept and handshake on the shared runtime, the data
//!   transfer itself on a blocking thread.
//! - HTTP: hyper on the shared runtime (its numbers are coarse anyway).
//!
//! Every socket is bound before anything starts, so a bind error leaves
//! nothing running.

mod bandwidth;
pub mod budget;
mod http;
#[cfg(fuzzing)]
pub(crate) use http::fuzz_request;
mod tcp_echo;
mod udp_echo;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::BurstKeys;
use crate::config::ResponderSettings;
use crate::metrics::labels::{RejectReason, ResponderKind};
use crate::metrics::AgentMetrics;
use crate::peer::ProbePorts;

/// How often blocking loops wake up to notice shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Pause after a failed accept (out of file descriptors and the like), so a
/// persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Smallest idle timeout applied: zero would close every connection at once.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_millis(10);
/// Largest idle timeout applied: timers panic on deadlines past the end of
/// `Instant`, and an unvalidated config could ask for one.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Errors that stop the responders from starting.
#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    /// A listening socket could not be bound.
    #[error("cannot bind {what} responder on {addr}")]
    Bind {
        /// Which responder.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bound responder could not be started (thread, runtime or socket
    /// registration failed).
    #[error("cannot start {what} responder")]
    Start {
        /// Which responder.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The running responders of one agent.
pub struct Responders {
    ports: ProbePorts,
    threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Responders {
    /// The ports actually bound (port 0 in the settings picks a free port).
    pub fn ports(&self) -> ProbePorts {
        self.ports
    }

    /// Waits until every responder has stopped (after shutdown).
    pub async fn join(self) {
        for (what, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(responder = what, error = %e, "Responder task failed");
            }
        }
        for (what, thread) in self.threads {
            // std joins block; keep them off the async worker.
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!(responder = what, "Responder thread panicked"),
                Err(e) => {
                    tracing::error!(responder = what, error = %e, "Cannot join responder thread")
                }
            }
        }
    }
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, ResponderError> {
    std::net::UdpSocket::bind(addr).map_err(|source| ResponderError::Bind {
        what: "udp echo",
        addr,
        source,
    })
}

fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, ResponderError> {
    // std sets SO_REUSEADDR, so a restart is not blocked by TIME_WAIT.
    std::net::TcpListener::bind(addr).map_err(|source| ResponderError::Bind { what, addr, source })
}

fn bound_port(
    what: &'static str,
    addr: SocketAddr,
    local: std::io::Result<SocketAddr>,
) -> Result<u16, ResponderError> {
    local
        .map(|a| a.port())
        .map_err(|source| ResponderError::Bind { what, addr, source })
}

/// Registers a bound std listener with the current tokio runtime.
fn to_tokio(what: &'static str, l: std::net::TcpListener) -> Result<TcpListener, ResponderError> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(|source| ResponderError::Start { what, source })
}

/// Binds and starts every responder on `bind`. A port of 0 picks a free
/// port; [`Responders::ports`] tells which. Every socket is bound before any
/// responder starts, so an error leaves nothing running. The responders run
/// until `shutdown` is cancelled; then [`Responders::join`] waits for them.
pub async fn start(
    bind: IpAddr,
    ports: ProbePorts,
    limits: ResponderSettings,
    burst_keys: Arc<BurstKeys>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) -> Result<Responders, ResponderError> {
    let clock_offset = test_hooks::clock_offset_from_env();
    start_with_clock(
        bind,
        ports,
        limits,
        burst_keys,
        metrics,
        shutdown,
        clock_offset,
    )
    .await
}

/// Test-only (`testkit` feature): [`start`] with echo responders that report
/// a wall clock shifted by `clock_offset`, to check clock offset estimation.
#[cfg(feature = "testkit")]
pub async fn start_shifted(
    bind: IpAddr,
    ports: ProbePorts,
    limits: ResponderSettings,
    burst_keys: Arc<BurstKeys>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
    clock_offset: Duration,
) -> Result<Responders, ResponderError> {
    start_with_clock(
        bind,
        ports,
        limits,
        burst_keys,
        metrics,
        shutdown,
        clock_offset,
    )
    .await
}

/// Test hooks, compiled in only with the `testkit` cargo feature (set by the
/// test kit, never by a release build).
mod test_hooks {
    use std::time::Duration;

    /// Env var (a humantime duration) that shifts the echo responders'
    /// clock in a `testkit` build: how the process tests inject an offset.
    #[cfg(feature = "testkit")]
    pub(super) const CLOCK_OFFSET_ENV: &str = "KUBEPULSE_TEST_CLOCK_OFFSET";

    /// The shift of the echo responders' clock: from [`CLOCK_OFFSET_ENV`]
    /// in a `testkit` build, zero otherwise.
    #[cfg(feature = "testkit")]
    pub(super) fn clock_offset_from_env() -> Duration {
        let Ok(text) = std::env::var(CLOCK_OFFSET_ENV) else {
            return Duration::ZERO;
        };
        humantime::parse_duration(&text).unwrap_or_else(|e| {
            tracing::warn!(%text, error = %e, "Ignoring {CLOCK_OFFSET_ENV}");
            Duration::ZERO
        })
    }

    /// The shift of the echo responders' clock: none outside tests.
    #[cfg(not(feature = "testkit"))]
    pub(super) fn clock_offset_from_env() -> Duration {
        Duration::ZERO
    }
}

async fn start_with_clock(
    bind: IpAddr,
    ports: ProbePorts,
    limits: ResponderSettings,
    burst_keys: Arc<BurstKeys>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
    clock_offset: Duration,
) -> Result<Responders, ResponderError> {
    let udp_addr = SocketAddr::new(bind, ports.udp_echo);
    let tcp_addr = SocketAddr::new(bind, ports.tcp_echo);
    let bw_addr = SocketAddr::new(bind, ports.bandwidth);
    let http_addr = SocketAddr::new(bind, ports.http);

    let udp = bind_udp(udp_addr)?;
    let tcp = bind_tcp("tcp echo", tcp_addr)?;
    let bw = bind_tcp("bandwidth", bw_addr)?;
    let web = bind_tcp("http", http_addr)?;
    let bound = ProbePorts {
        udp_echo: bound_port("udp echo", udp_addr, udp.local_addr())?,
        tcp_echo: bound_port("tcp echo", tcp_addr, tcp.local_addr())?,
        bandwidth: bound_port("bandwidth", bw_addr, bw.local_addr())?,
        http: bound_port("http", http_addr, web.local_addr())?,
    };
    let bw = to_tokio("bandwidth", bw)?;
    let web = to_tokio("http", web)?;

    // A child token, so a failure half-way through stops what already runs
    // without cancelling the caller's token.
    let stop = shutdown.child_token();
    let mut r = Responders {
        ports: bound,
        threads: Vec::new(),
        tasks: Vec::new(),
    };
    let offset_ns = duration_ns(clock_offset);
    if offset_ns != 0 {
        tracing::warn!(offset = ?clock_offset,
            "Echo responders report a shifted clock (a test build); never use in production");
    }
    // Both echo threads start synchronously; the first failure stops here.
    let started = udp_echo::spawn(udp, offset_ns, &limits, metrics.clone(), stop.clone())
        .map_err(|source| ResponderError::Start {
            what: "udp echo",
            source,
        })
        .and_then(|h| {
            r.threads.push(("udp echo", h));
            tcp_echo::spawn(tcp, offset_ns, &limits, metrics.clone(), stop.clone()).map_err(
                |source| ResponderError::Start {
                    what: "tcp echo",
                    source,
                },
            )
        })
        .map(|h| r.threads.push(("tcp echo", h)));
    if let Err(e) = started {
        stop.cancel();
        r.join().await;
        return Err(e);
    }
    r.tasks.push((
        "bandwidth",
        tokio::spawn(bandwidth::serve(
            bw,
            limits,
            burst_keys,
            metrics.clone(),
            stop.clone(),
        )),
    ));
    r.tasks.push((
        "http",
        tokio::spawn(http::serve(web, limits, metrics, stop)),
    ));
    tracing::info!(%bind, udp_echo = bound.udp_echo, tcp_echo = bound.tcp_echo,
        bandwidth = bound.bandwidth, http = bound.http, "Probe responders listening");
    Ok(r)
}

/// A duration in nanoseconds, saturating.
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The wall clock in ns since the Unix epoch, plus `offset_ns` (the
/// test-only clock offset). A clock before 1970 reads as 0.
fn wall_ns(offset_ns: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ns)
        .unwrap_or(0);
    now.saturating_add(offset_ns)
}

/// The idle timeout actually applied.
fn idle_timeout(limits: &ResponderSettings) -> Duration {
    limits
        .idle_timeout
        .clamp(MIN_IDLE_TIMEOUT, MAX_IDLE_TIMEOUT)
}

/// The per-source budgets of one TCP responder, shared by its accept loop
/// and its connections.
struct SourceBudgets {
    connect_rate: Mutex<budget::TokenBuckets>,
    open: Mutex<budget::OpenConnections>,
    bytes: Mutex<budget::TokenBuckets>,
}

/// Locks a budget. A panic while holding the lock cannot leave a budget
/// inconsistent (every update is a single assignment), so a poisoned lock
/// is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SourceBudgets {
    fn new(limits: &ResponderSettings) -> Self {
        let now = Instant::now();
        let per_minute = limits.bandwidth_bytes_per_minute_per_source as f64;
        Self {
            connect_rate: Mutex::new(budget::TokenBuckets::new(
                budget::Rate::new(f64::from(limits.tcp_connections_per_second_per_source), 1.0),
                budget::DEFAULT_MAX_SOURCES,
                now,
            )),
            open: Mutex::new(budget::OpenConnections::new(
                limits.max_connections_per_source,
            )),
            bytes: Mutex::new(budget::TokenBuckets::new(
                budget::Rate::new(per_minute / 60.0, 60.0),
                budget::DEFAULT_MAX_SOURCES,
                now,
            )),
        }
    }

    /// Admits a new connection from `source`, or says why not.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<SourceGuard, RejectReason> {
        if !lock(&self.connect_rate).take(source, 1.0, Instant::now()) {
            return Err(RejectReason::SourceRate);
        }
        if !lock(&self.open).open(source) {
            return Err(RejectReason::SourceConnections);
        }
        Ok(SourceGuard {
            budgets: self.clone(),
            source,
        })
    }
}

/// Counts one open connection of a source while alive.
struct SourceGuard {
    budgets: Arc<SourceBudgets>,
    source: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        lock(&self.budgets.open).close(self.source);
    }
}

/// An accepted connection's share of its responder's limits: holds one
/// connection permit, one of its source's connections, and counts in the
/// connections gauge while alive. Fields drop in order: the permit is free
/// again before the gauge drops, so a connection is never refused while the
/// gauge shows room.
struct Slot {
    _permit: OwnedSemaphorePermit,
    source: SourceGuard,
    _gauge: GaugeGuard,
}

impl Slot {
    /// Charges `bytes` to the source's bandwidth bytes-per-minute budget.
    fn charge_bytes(&self, bytes: u64) -> Result<(), RejectReason> {
        let ok =
            lock(&self.source.budgets.bytes).take(self.source.source, bytes as f64, Instant::now());
        if ok {
            Ok(())
        } else {
            Err(RejectReason::SourceBytes)
        }
    }
}

/// What a TCP responder admits: at most `max_connections` connections,
/// each within its source's budgets, each counted in the connections gauge.
struct Admission {
    permits: Arc<Semaphore>,
    budgets: Arc<SourceBudgets>,
    gauge: IntGauge,
}

impl Admission {
    fn new(limits: &ResponderSettings, metrics: &AgentMetrics, kind: ResponderKind) -> Self {
        // Semaphore::new panics above MAX_PERMITS; a config cannot reach that.
        let max = limits.max_connections.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            budgets: Arc::new(SourceBudgets::new(limits)),
            gauge: metrics.responder_connections(kind),
        }
    }

    /// A slot for a new connection from `source`, or why it is refused
    /// (the caller counts the rejection and closes the connection).
    fn admit(&self, source: IpAddr) -> Result<Slot, RejectReason> {
        // Per source first: a source over its budget must not take a slot.
        let source = self.budgets.admit(source)?;
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| RejectReason::ConnectionLimit)?;
        Ok(Slot {
            _permit: permit,
            source,
            _gauge: GaugeGuard::new(self.gauge.clone()),
        })
    }
}

/// Keeps a connections gauge raised while alive.
struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts connections until `stop`, handing each to `handle` as a tracked
/// task on the current runtime, at most `max` at once (beyond that a
/// connection is closed at once and counted). Returns after the listener is
/// closed and every connection task has ended.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    kind: ResponderKind,
    limits: &ResponderSettings,
    metrics: AgentMetrics,
    stop: CancellationToken,
    mut handle: F,
) where
    F: FnMut(TcpStream, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admission = Admission::new(limits, &metrics, kind);
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(responder = %kind, error = %e, "Accept failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let (stream, peer) = stream;
        match admission.admit(peer.ip()) {
            Ok(slot) => {
                tracker.spawn(handle(stream, slot));
            }
            Err(reason) => {
                metrics.responder_rejected(kind, reason);
                drop(stream);
            }
        }
    }
    // Close the port first, then let connections notice `stop`.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Whether a blocking socket call ended on its read/write timeout (or a
/// signal) rather than an error: the caller checks shutdown and retries.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offset_is_added_and_saturates() {
        let base = wall_ns(0);
        let shifted = wall_ns(duration_ns(Duration::from_secs(1000)));
        let diff = shifted - base;
        assert!(
            (1_000_000_000_000..1_001_000_000_000).contains(&diff),
            "{diff}"
        );
        assert_eq!(wall_ns(u64::MAX), u64::MAX);
        assert_eq!(duration_ns(Duration::MAX), u64::MAX);
    }

    #[test]
    fn idle_timeout_is_clamped() {
        let mut s = ResponderSettings {
            idle_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(idle_timeout(&s), MIN_IDLE_TIMEOUT);
        s.idle_timeout = Duration::from_secs(3);
        assert_eq!(idle_timeout(&s), Duration::from_secs(3));
        s.idle_timeout = Duration::MAX;
        assert_eq!(idle_timeout(&s), MAX_IDLE_TIMEOUT);
    }
}
