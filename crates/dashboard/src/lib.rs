//! The live dashboard behind `clickstream serve`: one embedded page, a small JSON API (one
//! endpoint per panel, documented in `docs/dashboard-api.md`) and a server-sent event
//! stream that pushes the whole dashboard about once a second.
//!
//! # Layout
//!
//! - [`queries`]: the panels' SQL (parameterised, bounded) and their JSON shapes.
//! - [`snapshot`]: the whole dashboard in one document and the hub that refreshes it.
//! - [`auth`]: the optional token (bearer header, or a cookie the page gets once).
//! - [`db`]: the reconnecting read-only connection; [`kafka`]: end offsets for lag.
//!
//! The server reads PostgreSQL with the reader role only; it never writes.

pub mod auth;
pub mod db;
pub mod error;
pub mod kafka;
pub mod queries;
pub mod snapshot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use thiserror::Error;

pub use error::ApiError;
use queries::RankBy;
use snapshot::{Hub, HubHandle};

/// Settings of the dashboard server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (loopback by default: put a proxy in front to expose it).
    pub listen: SocketAddr,
    /// Reader-role PostgreSQL URL.
    pub database_url: String,
    /// How to reach Kafka (for lag).
    pub kafka: clickstream_kafka::KafkaConnection,
    /// Consumer group whose progress is shown.
    pub group: String,
    /// Raw topic.
    pub topic: String,
    /// If set, the page and API require this token.
    pub token: Option<String>,
    /// How often open pages get a new snapshot.
    pub refresh: Duration,
    /// A processor not seen for this long counts as not running.
    pub stale_after: Duration,
}

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum DashboardError {
    /// The token has characters that cannot travel in a URL or cookie unescaped.
    #[error("the dashboard token may only contain letters, digits and - . _ ~ (got {0} characters, some not allowed)")]
    BadToken(usize),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The Kafka client could not be configured.
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The server failed while running.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    db: Arc<db::Db>,
    end_offsets: kafka::EndOffsets,
    group: Arc<str>,
    topic: Arc<str>,
    token: Option<Arc<str>>,
    stale_after_secs: f64,
    hub: HubHandle,
    failures: Arc<auth::Failures>,
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON: &str = include_str!("../assets/favicon.svg");

/// The page may only load what this server serves.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Runs the server until `shutdown` resolves; open event streams are closed first so the
/// graceful stop does not wait on them.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DashboardError> {
    if let Some(t) = &cfg.token {
        let ok = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !ok {
            return Err(DashboardError::BadToken(t.len()));
        }
    }
    let (hub, handle) = Hub::new();
    let app = AppState {
        db: Arc::new(db::Db::new(cfg.database_url.clone())),
        end_offsets: kafka::EndOffsets::new(&cfg.kafka, &cfg.topic)?,
        group: cfg.group.as_str().into(),
        topic: cfg.topic.as_str().into(),
        token: cfg.token.as_deref().map(Into::into),
        stale_after_secs: cfg.stale_after.as_secs_f64(),
        hub: handle,
        failures: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DashboardError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(DashboardError::Serve)?;
    tracing::info!(url = %format!("http://{addr}/"), token = cfg.token.is_some(), "dashboard listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let hub_task = tokio::spawn(hub.run(app.clone(), cfg.refresh, stopped(stop_rx.clone())));
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx))
    .await
    .map_err(DashboardError::Serve)?;
    let _ = hub_task.await;
    tracing::info!("dashboard stopped");
    Ok(())
}

/// The routes: public assets and liveness, token-guarded page and API.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/api/snapshot", get(api_snapshot))
        .route("/api/stream", get(api_stream))
        .route("/api/overview", get(api_overview))
        .route("/api/throughput", get(api_throughput))
        .route("/api/conversion", get(api_conversion))
        .route("/api/funnel", get(api_funnel))
        .route("/api/hourly", get(api_hourly))
        .route("/api/top-products", get(api_top_products))
        .route("/api/alerts", get(api_alerts))
        .route("/api/health", get(api_health))
        .layer(middleware::map_response(no_store));
    let guarded = Router::new().route("/", get(index)).merge(api).route_layer(
        middleware::from_fn_with_state(app.clone(), auth::require_token),
    );
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/assets/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .route(
            "/assets/favicon.svg",
            get(|| asset("image/svg+xml", FAVICON)),
        )
        .merge(guarded)
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// Endpoints without parameters still accept `token` (and reject anything else).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {
    #[allow(dead_code)]
    token: Option<String>,
}

/// Query parameters of a day panel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DayParams {
    /// `YYYY-MM-DD`; default: the day of the newest data.
    date: Option<String>,
    #[allow(dead_code)]
    token: Option<String>,
}

/// Query parameters of a trend panel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowParams {
    minutes: Option<i32>,
    #[allow(dead_code)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopParams {
    minutes: Option<i32>,
    limit: Option<i64>,
    by: Option<RankBy>,
    #[allow(dead_code)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParams {
    limit: Option<i64>,
    #[allow(dead_code)]
    token: Option<String>,
}

/// Turns axum's query rejection into our 400 with a JSON body.
fn params<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn api_snapshot(
    State(app): State<AppState>,
    q: Result<Query<NoParams>, QueryRejection>,
) -> ApiResult<snapshot::Snapshot> {
    params(q)?;
    Ok(Json(snapshot::build(&app).await?))
}

async fn api_stream(State(app): State<AppState>) -> impl IntoResponse {
    let rx = app.hub.subscribe();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            // Ends when the hub stops (server shutdown).
            rx.changed().await.ok()?;
            let doc = rx.borrow_and_update().clone();
            if let Some(doc) = doc {
                let ev = Event::default().event("snapshot").data(&*doc);
                return Some((Ok::<_, Infallible>(ev), rx));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn api_overview(
    State(app): State<AppState>,
    q: Result<Query<DayParams>, QueryRejection>,
) -> ApiResult<queries::Overview> {
    let p = params(q)?;
    let date = p.date.as_deref().map(queries::parse_date).transpose()?;
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    Ok(Json(queries::overview(&c, anchor, date.as_deref()).await?))
}

async fn api_funnel(
    State(app): State<AppState>,
    q: Result<Query<DayParams>, QueryRejection>,
) -> ApiResult<queries::Funnel> {
    let p = params(q)?;
    let date = p.date.as_deref().map(queries::parse_date).transpose()?;
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    Ok(Json(queries::funnel(&c, anchor, date.as_deref()).await?))
}

async fn api_hourly(
    State(app): State<AppState>,
    q: Result<Query<DayParams>, QueryRejection>,
) -> ApiResult<queries::Hourly> {
    let p = params(q)?;
    let date = p.date.as_deref().map(queries::parse_date).transpose()?;
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    Ok(Json(queries::hourly(&c, anchor, date.as_deref()).await?))
}

async fn api_throughput(
    State(app): State<AppState>,
    q: Result<Query<WindowParams>, QueryRejection>,
) -> ApiResult<Vec<queries::ThroughputPoint>> {
    let minutes = queries::check_minutes(params(q)?.minutes)?;
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    Ok(Json(queries::throughput(&c, anchor, minutes).await?))
}

async fn api_conversion(
    State(app): State<AppState>,
    q: Result<Query<WindowParams>, QueryRejection>,
) -> ApiResult<Vec<queries::ConversionPoint>> {
    let minutes = queries::check_minutes(params(q)?.minutes)?;
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    Ok(Json(queries::conversion(&c, anchor, minutes).await?))
}

async fn api_top_products(
    State(app): State<AppState>,
    q: Result<Query<TopParams>, QueryRejection>,
) -> ApiResult<Vec<queries::TopProduct>> {
    let p = params(q)?;
    let minutes = queries::check_minutes(p.minutes)?;
    let limit = queries::check_limit(p.limit, 10, queries::MAX_TOP)?;
    let c = app.db.client().await?;
    let anchor = queries::anchor(&c).await?;
    Ok(Json(
        queries::top_products(&c, anchor, minutes, limit, p.by.unwrap_or_default()).await?,
    ))
}

async fn api_alerts(
    State(app): State<AppState>,
    q: Result<Query<LimitParams>, QueryRejection>,
) -> ApiResult<queries::Alerts> {
    let limit = queries::check_limit(params(q)?.limit, 20, queries::MAX_ALERTS)?;
    let c = app.db.client().await?;
    Ok(Json(queries::alerts(&c, limit).await?))
}

async fn api_health(
    State(app): State<AppState>,
    q: Result<Query<NoParams>, QueryRejection>,
) -> ApiResult<queries::Health> {
    params(q)?;
    let c = app.db.client().await?;
    let ends = app.end_offsets.fetch().await;
    Ok(Json(
        queries::health(&c, &app.group, &app.topic, ends, app.stale_after_secs).await?,
    ))
}
