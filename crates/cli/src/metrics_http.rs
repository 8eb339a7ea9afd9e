//! The Prometheus `/metrics` endpoint that long-running commands (`process`, `lake`) serve.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Serves `registry` on `addr` (port 0 picks a free one) in the background; logs and
/// returns the bound address.
pub async fn serve(addr: SocketAddr, registry: Registry) -> anyhow::Result<SocketAddr> {
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving Prometheus metrics on /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let r = registry.clone();
            async move {
                let mut s = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut s, &r);
                s
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
