//! Ctrl-C and SIGTERM handling shared by the long-running commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sets `stop` on Ctrl-C or SIGTERM, so the command finishes its current unit of work,
/// flushes or commits, and exits cleanly.
pub fn stop_on_signal(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("stop requested; finishing the current batch");
        stop.store(true, Ordering::Relaxed);
    });
}

/// Resolves on the first Ctrl-C or SIGTERM.
pub async fn terminated() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
