//! The latency engine: one dedicated OS thread per agent, blocking in a
//! `ppoll` loop with absolute deadlines, never on the tokio runtime (a busy
//! runtime inflates p99 RTT several times; see the measurement notes).
//!
//! It probes every target over UDP echo, ICMP echo and TCP request/response
//! on a persistent connection, open loop, and records RTT, loss, jitter and
//! the windowed minimum RTT per stream.

mod engine;
mod stream;
mod tcp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::labels::Protocol;

use crate::peer::PathKind;
use crate::sys::clock::realtime_ns;
use stream::Arrival;

use super::{ProbeContext, ProbeError};

/// The log target of one trace event per kept RTT sample, with fields
/// `protocol`, `path`, `peer` and `rtt_ns`
/// (`log.level: info,kubepulse::rtt_samples=trace`).
pub const RTT_SAMPLES_TARGET: &str = "kubepulse::rtt_samples";

/// One RTT sample as recorded in the metrics.
#[derive(Debug, Clone)]
pub struct RttSample {
    /// The probe protocol.
    pub protocol: Protocol,
    /// The path kind.
    pub path: PathKind,
    /// The peer's agent name.
    pub peer: Arc<str>,
    /// Full round-trip time.
    pub rtt: Duration,
}

/// Called on the engine thread for every recorded RTT sample. Must be cheap
/// and must not block: it runs inside the probe loop.
pub type SampleHook = Arc<dyn Fn(&RttSample) + Send + Sync>;

/// A reply read just now, stamped by the kernel if `kernel_rx_ns` is set;
/// both clocks are read here, together, so a clock step can be told from
/// a slow reply.
fn arrival_now(kernel_rx_ns: Option<u64>) -> Arrival {
    let now_mono = Instant::now();
    match kernel_rx_ns {
        Some(rx_real_ns) => Arrival::Kernel {
            rx_real_ns,
            now_real_ns: realtime_ns(),
            now_mono,
        },
        None => Arrival::Mono(now_mono),
    }
}

/// A running latency engine.
pub struct LatencyProber {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LatencyProber {
    /// Waits for the engine thread to exit (after the context's shutdown
    /// token is cancelled).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("Latency engine thread panicked");
            }
        }
    }
}

/// Starts the engine thread.
pub fn start(ctx: ProbeContext) -> Result<LatencyProber, ProbeError> {
    start_with_hook(ctx, None)
}

/// Starts the engine thread, calling `hook` with every RTT sample (tests and
/// diagnostics use it to compute exact quantiles; the metrics histograms
/// have 2x buckets).
pub fn start_with_hook(
    ctx: ProbeContext,
    hook: Option<SampleHook>,
) -> Result<LatencyProber, ProbeError> {
    // Sockets are opened here so that failures reach the caller.
    let engine = engine::Engine::new(ctx, hook)?;
    let name = format!("kp-lat-{}", engine.agent_name());
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || engine.run())
        .map_err(|source| ProbeError::Io {
            what: "spawning the latency engine thread",
            source,
        })?;
    Ok(LatencyProber {
        thread: Some(thread),
    })
}
