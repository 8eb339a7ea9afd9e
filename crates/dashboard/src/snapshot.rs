//! The whole dashboard in one JSON document, and the hub that recomputes it about once a
//! second while someone watches, pushing it to every open page over server-sent events.
//! However many pages are open, the database sees one set of queries per refresh.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::error::ApiError;
use crate::queries::{self, Alerts, ConversionPoint, Funnel, Health, Hourly, Overview, RankBy};
use crate::queries::{ThroughputPoint, TopProduct};
use crate::AppState;

/// Window of the trend charts and top products in the snapshot.
pub const SNAPSHOT_MINUTES: i32 = 60;
/// Rows of the top-products table in the snapshot.
pub const SNAPSHOT_TOP: i64 = 10;
/// Alerts in the snapshot's feed.
pub const SNAPSHOT_ALERTS: i64 = 20;

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When this was computed (wall clock), epoch milliseconds.
    pub generated_at_ms: i64,
    /// Newest minute with data, epoch milliseconds (`None`: nothing processed yet).
    pub as_of_minute_ms: Option<i64>,
    /// Headline numbers of the anchor's day.
    pub overview: Overview,
    /// Events per minute and type, last hour.
    pub throughput: Vec<ThroughputPoint>,
    /// Conversion per session-start minute, last hour.
    pub conversion: Vec<ConversionPoint>,
    /// Today's funnel.
    pub funnel: Funnel,
    /// Today's hours and peak hour.
    pub hourly: Hourly,
    /// Top products by views, last hour.
    pub top_by_views: Vec<TopProduct>,
    /// Top products by revenue, last hour.
    pub top_by_revenue: Vec<TopProduct>,
    /// Flash-sale alert feed.
    pub alerts: Alerts,
    /// Lag, instances, dead letters.
    pub health: Health,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Computes a snapshot (all panels' queries run concurrently on the shared connection).
pub async fn build(app: &AppState) -> Result<Snapshot, ApiError> {
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    let ends = app.end_offsets.fetch();
    let (
        overview,
        throughput,
        conversion,
        funnel,
        hourly,
        top_by_views,
        top_by_revenue,
        alerts,
        ends,
    ) = tokio::join!(
        queries::overview(&c, anchor, None),
        queries::throughput(&c, anchor, SNAPSHOT_MINUTES),
        queries::conversion(&c, anchor, SNAPSHOT_MINUTES),
        queries::funnel(&c, anchor, None),
        queries::hourly(&c, anchor, None),
        queries::top_products(&c, anchor, SNAPSHOT_MINUTES, SNAPSHOT_TOP, RankBy::Views),
        queries::top_products(&c, anchor, SNAPSHOT_MINUTES, SNAPSHOT_TOP, RankBy::Revenue),
        queries::alerts(&c, SNAPSHOT_ALERTS),
        ends,
    );
    let health = queries::health(&c, &app.group, &app.topic, ends, app.stale_after_secs).await?;
    Ok(Snapshot {
        generated_at_ms: now_ms(),
        as_of_minute_ms: anchor.map(|a| (a * 1000.0) as i64),
        overview: overview?,
        throughput: throughput?,
        conversion: conversion?,
        funnel: funnel?,
        hourly: hourly?,
        top_by_views: top_by_views?,
        top_by_revenue: top_by_revenue?,
        alerts: alerts?,
        health,
    })
}

/// What the hub publishes: the snapshot as JSON, or an error document the page shows
/// (`{"error": ...}`) while the database is away.
pub type Published = Option<Arc<str>>;

/// Owner of the publishing side; the router holds [`Hub::subscribe`]rs only, so when the
/// hub stops (shutdown) every event stream ends and the server can close.
pub struct Hub {
    tx: watch::Sender<Published>,
    wake: Arc<Notify>,
}

/// Handle kept in the app state to subscribe and to ask for an immediate refresh.
#[derive(Clone)]
pub struct HubHandle {
    rx: watch::Receiver<Published>,
    wake: Arc<Notify>,
}

impl Hub {
    /// A hub and the handle the router keeps.
    pub fn new() -> (Hub, HubHandle) {
        let (tx, rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        (
            Hub {
                tx,
                wake: wake.clone(),
            },
            HubHandle { rx, wake },
        )
    }

    /// Recomputes every `refresh` while pages are connected, until `stop` resolves.
    pub async fn run(
        self,
        app: AppState,
        refresh: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        // Previous (time, events applied) for the live events/s figure.
        let mut prev: Option<(Instant, i64)> = None;
        let mut failing = false;
        loop {
            // The handle in the app state is one receiver; more means open pages.
            if self.tx.receiver_count() > 1 {
                let doc = match build(&app).await {
                    Ok(mut s) => {
                        failing = false;
                        let now = Instant::now();
                        if let Some((t, n)) = prev {
                            let dt = now.duration_since(t).as_secs_f64();
                            if dt > 0.0 {
                                s.health.events_per_second =
                                    Some((s.health.events_applied - n).max(0) as f64 / dt);
                            }
                        }
                        prev = Some((now, s.health.events_applied));
                        serde_json::to_string(&s)
                    }
                    Err(e) => {
                        // Clients only learn that the database is unavailable; the reason
                        // is logged once per outage.
                        if !failing {
                            if let ApiError::Database(detail) = &e {
                                tracing::warn!(error = %detail, "dashboard refresh failed");
                            }
                        }
                        failing = true;
                        prev = None;
                        serde_json::to_string(&serde_json::json!({
                            "error": e.to_string(),
                            "generated_at_ms": now_ms(),
                        }))
                    }
                };
                match doc {
                    Ok(doc) => {
                        self.tx.send_replace(Some(doc.into()));
                    }
                    Err(e) => tracing::error!(error = %e, "serialising the snapshot failed"),
                }
            } else if prev.is_some() || self.tx.borrow().is_some() {
                // Nobody watches: drop the old document so a page opened later does not
                // flash stale numbers before the fresh ones.
                prev = None;
                self.tx.send_replace(None);
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(refresh) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

impl HubHandle {
    /// A new subscriber; the hub is woken so the first document comes at once.
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        let rx = self.rx.clone();
        self.wake.notify_one();
        rx
    }
}
