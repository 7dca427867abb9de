//! Shutdown: SIGTERM (what Kubernetes sends) and ctrl-c both cancel one
//! token that every task and prober thread watches.

use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT, then cancels `token`. Returns early if the
/// token is cancelled by someone else.
pub async fn on_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM; only ctrl-c stops kubepulse");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received, shutting down"),
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "Cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
            tracing::info!("Interrupt received, shutting down");
        }
        _ = token.cancelled() => return,
    }
    token.cancel();
}
