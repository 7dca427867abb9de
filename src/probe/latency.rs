//! The latency engine: one dedicated OS thread per agent, blocking in a
//! poll loop with absolute deadlines, never on the tokio runtime.

use super::{ProbeContext, ProbeError};

/// A running latency engine.
pub struct LatencyProber {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LatencyProber {
    /// Waits for the engine thread to exit (after the context's shutdown
    /// token is cancelled).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the engine thread.
pub fn start(ctx: ProbeContext) -> Result<LatencyProber, ProbeError> {
    let _ = ctx;
    Ok(LatencyProber { thread: None })
}
