//! The collector's routes and the checks in front of them.
//!
//! Order of checks on `POST /v1/events`: per-address rate limit, origin, write key,
//! declared length, body (read under a deadline and a size limit), decompression,
//! splitting into events, per-key event rate, then the events themselves. Refusals before
//! the events are looked at produce nothing; per-event refusals go to the dead-letter topic
//! and come back by index.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clickstream_model::EventTime;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::enrich::{valid_country, Enricher, RequestFacts};
use crate::ingest::{self, BodyError, Rejected};
use crate::metrics::{Metrics, StatusLabel};
use crate::produce::{letter_headers, Events, Outgoing, ProduceError};
use crate::CollectorConfig;

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_UNAVAILABLE: &str = "5";

/// Shared state of every route.
pub struct App {
    /// Settings.
    pub config: CollectorConfig,
    /// The Kafka producer.
    pub events: Events,
    /// Enrichment.
    pub enricher: Enricher,
    /// Counters.
    pub metrics: Metrics,
    /// What `/metrics` encodes.
    pub registry: Registry,
    /// Requests per client address.
    pub ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Events per write key.
    pub key_limiter: DefaultKeyedRateLimiter<String>,
    /// The demo shop, when enabled.
    pub shop: Option<crate::shop::Shop>,
}

impl App {
    /// Builds the rate limiters from the configuration.
    pub fn limiters(
        config: &CollectorConfig,
    ) -> (
        DefaultKeyedRateLimiter<IpAddr>,
        DefaultKeyedRateLimiter<String>,
    ) {
        let quota = |per_s: u32| {
            let n = NonZeroU32::new(per_s.max(1)).unwrap_or(NonZeroU32::MIN);
            let burst = n.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
            Quota::per_second(n).allow_burst(burst)
        };
        (
            RateLimiter::keyed(quota(config.rate.per_ip_rps)),
            RateLimiter::keyed(quota(config.rate.per_key_eps)),
        )
    }
}

/// A refusal of a whole request: status, machine-readable code, message.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: impl Into<String>) -> Self {
        self.retry_after = Some(secs.into());
        self
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        let status = match e {
            BodyError::TooLarge { .. } | BodyError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BodyError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, s);
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// The collector's routes.
pub fn router(app: Arc<App>) -> Router {
    let cors_app = app.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            origin_allowed(&cors_app.config, origin, parts.headers.get(header::HOST))
        }))
        .allow_methods([Method::POST, Method::GET])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
        ])
        .max_age(Duration::from_secs(86_400));
    let ingest = Router::new()
        .route("/v1/events", post(collect))
        .route("/v1/p.gif", get(pixel))
        .layer(axum::middleware::from_fn_with_state(app.clone(), per_ip))
        .layer(cors);
    let mut r = Router::new()
        .merge(ingest)
        .route("/tracker.js", get(tracker))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if app.shop.is_some() {
        r = r.merge(crate::shop::routes());
    }
    r.layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Whether a browser at `origin` may send: listed, `*`, or the collector's own origin.
fn origin_allowed(
    config: &CollectorConfig,
    origin: &HeaderValue,
    host: Option<&HeaderValue>,
) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/') == origin)
    {
        return true;
    }
    let own = host.and_then(|h| h.to_str().ok());
    own.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(h)
    })
}

/// Counts every answer by status and times it.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let r = next.run(req).await;
    app.metrics
        .requests
        .get_or_create(&StatusLabel {
            status: r.status().as_u16(),
        })
        .inc();
    app.metrics.latency.observe(started.elapsed().as_secs_f64());
    r
}

/// The client's address: the peer, or for a trusted proxy the last untrusted hop of
/// `X-Forwarded-For`.
fn client_ip(config: &CollectorConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| config.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted(ip))
        .unwrap_or(peer)
}

/// The address a request came from, as seen by the connection.
#[derive(Debug, Clone, Copy)]
struct ClientIp(IpAddr);

/// Requests per address.
async fn per_ip(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = client_ip(&app.config, peer.ip(), req.headers());
    if let Err(not_until) = app.ip_limiter.check_key(&ip) {
        app.metrics.rate_limited.inc();
        app.metrics.refuse("rate_limited");
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address",
        )
        .retry_after(wait.as_secs().max(1).to_string())
        .into_response();
    }
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

/// The site a request's write key belongs to.
fn site(app: &App, headers: &HeaderMap, query_key: Option<&str>) -> Result<String, Refusal> {
    if app.config.write_keys.is_empty() {
        return Ok("default".into());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = bearer.or(query_key) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "send the site's write key as `Authorization: Bearer KEY` or `?k=KEY`",
        ));
    };
    app.config.write_keys.get(key).cloned().ok_or_else(|| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unknown_write_key",
            "the write key is not configured on this collector",
        )
    })
}

fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get(header::ORIGIN) {
        // Not a browser (server-side senders, curl): the write key is the check.
        None => Ok(()),
        Some(o) if origin_allowed(&app.config, o, headers.get(header::HOST)) => Ok(()),
        Some(o) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "origin {} is not in the collector's allowed origins",
                clickstream_model::printable(o.to_str().unwrap_or("(not text)"), 100)
            ),
        )),
    }
}

/// Reads at most `limit` bytes of body within `timeout` (a slow sender is cut off).
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Refusal> {
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("reading the body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(BodyError::TooLarge { limit }.into());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {} s", timeout.as_secs()),
            ))
        })
}

fn request_facts(
    app: &App,
    ip: Option<IpAddr>,
    peer_trusted: bool,
    headers: &HeaderMap,
) -> RequestFacts {
    let country = app
        .config
        .country_header
        .as_deref()
        .filter(|_| peer_trusted)
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| valid_country(c))
        .map(str::to_ascii_uppercase);
    RequestFacts {
        ip,
        user_agent: headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        country,
        received_at: EventTime::now(),
    }
}

/// Query parameters of the ingest routes.
#[derive(Debug, serde::Deserialize)]
pub struct KeyQuery {
    /// Write key (for `sendBeacon` and the pixel, which cannot set headers).
    k: Option<String>,
}

/// What a request's events came to.
struct Outcome {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// Validates, enriches and produces `events`; errors only when Kafka did not acknowledge.
async fn ingest_events(
    app: &App,
    site: &str,
    events: &[&[u8]],
    facts: &RequestFacts,
) -> Result<Outcome, Refusal> {
    let sorted = ingest::sort(events, &app.config.limits, &app.enricher, facts);
    let outgoing: Vec<Outgoing<'_>> = sorted
        .accepted
        .iter()
        .map(|a| Outgoing {
            key: a.key.as_bytes(),
            value: &a.value,
            headers: None,
        })
        .collect();
    let letters: Vec<Outgoing<'_>> = sorted
        .rejected
        .iter()
        .map(|(r, raw)| Outgoing {
            key: b"",
            value: raw,
            headers: Some(letter_headers(r.reason, &r.detail, site, raw.len())),
        })
        .collect();
    let sent = app.events.send_all(&outgoing, &letters).await;
    app.metrics
        .kafka_in_flight
        .set(i64::from(app.events.in_flight()));
    if let Err(e) = sent {
        app.metrics.unavailable.inc();
        tracing::warn!(error = %e, events = events.len(), "answering 503: Kafka did not acknowledge");
        let code = match e {
            ProduceError::QueueFull => "queue_full",
            ProduceError::Delivery(_) => "kafka_unavailable",
        };
        return Err(
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
                .retry_after(RETRY_AFTER_UNAVAILABLE),
        );
    }
    app.metrics.events_accepted.inc_by(outgoing.len() as u64);
    app.metrics
        .clock_corrected
        .inc_by(sorted.corrections.len() as u64);
    for (r, _) in &sorted.rejected {
        app.metrics.reject(r.reason, 1);
    }
    Ok(Outcome {
        accepted: outgoing.len(),
        rejected: sorted.rejected.into_iter().map(|(r, _)| r).collect(),
    })
}

fn peer_trusted(app: &App, peer: IpAddr) -> bool {
    app.config.trusted_proxies.iter().any(|n| n.contains(&peer))
}

/// `POST /v1/events`.
async fn collect(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(ClientIp(ip)): axum::Extension<ClientIp>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match collect_inner(&app, peer, ip, q, &headers, body).await {
        Ok(r) => r,
        Err(refusal) => {
            app.metrics.refuse(refusal.code);
            refusal.into_response()
        }
    }
}

async fn collect_inner(
    app: &App,
    peer: SocketAddr,
    ip: IpAddr,
    q: KeyQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    check_origin(app, headers)?;
    let site = site(app, headers, q.k.as_deref())?;
    let limit = app.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit }.into());
    }
    let body = read_body(body, limit, app.config.read_timeout).await?;
    let decoded;
    let bytes: &[u8] = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") | Some("") => &body,
        Some("gzip") => {
            decoded = ingest::gunzip(&body, limit)?;
            &decoded
        }
        Some(other) => {
            return Err(BodyError::Encoding(clickstream_model::printable(other, 40)).into())
        }
    };
    let events = ingest::split(bytes, app.config.max_events)?;
    let n = NonZeroU32::new(events.len() as u32).unwrap_or(NonZeroU32::MIN);
    match app.key_limiter.check_key_n(&site, n) {
        Ok(Ok(())) => {}
        _ => {
            app.metrics.rate_limited.inc();
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("site `{site}` is over its event rate"),
            )
            .retry_after("1"));
        }
    }
    let facts = request_facts(app, Some(ip), peer_trusted(app, peer.ip()), headers);
    let outcome = ingest_events(app, &site, &events, &facts).await?;
    let status = match (outcome.accepted, outcome.rejected.len()) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::BAD_REQUEST,
        _ => StatusCode::MULTI_STATUS,
    };
    Ok((
        status,
        Json(json!({"accepted": outcome.accepted, "rejected": outcome.rejected})),
    )
        .into_response())
}

/// A transparent 1x1 GIF.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

const PIXEL_UID: &str = "_cs_uid";
const PIXEL_SID: &str = "_cs_sid";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The pixel's query as a contract event: numbers where the contract has numbers, the
/// ids from cookies (or new ones), the receive time if no `timestamp`.
fn pixel_event(
    params: &[(String, String)],
    headers: &HeaderMap,
    now: EventTime,
) -> (Map<String, Value>, String, String) {
    let mut m = Map::new();
    for (k, v) in params {
        let value = match k.as_str() {
            "k" => continue,
            "price" | "amount" => v
                .parse::<f64>()
                .map(Value::from)
                .unwrap_or_else(|_| v.clone().into()),
            "quantity" | "schema_version" => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| v.clone().into()),
            _ => Value::from(v.clone()),
        };
        m.insert(k.clone(), value);
    }
    let mut id = |field: &str, cookie_name: &str| -> String {
        let v = m
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| cookie(headers, cookie_name).map(str::to_string))
            .filter(|v| uuid::Uuid::try_parse(v).is_ok())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        m.insert(field.to_string(), Value::from(v.clone()));
        v
    };
    let uid = id("user_id", PIXEL_UID);
    let sid = id("session_id", PIXEL_SID);
    m.entry("event_id")
        .or_insert_with(|| uuid::Uuid::new_v4().to_string().into());
    m.entry("event_type").or_insert_with(|| "page_view".into());
    m.entry("timestamp")
        .or_insert_with(|| now.to_string().into());
    (m, uid, sid)
}

/// `GET /v1/p.gif?k=KEY&event_type=page_view&page=home...`: one event, for pages without
/// JavaScript. Answers the GIF with 200, 400 (invalid event), 401/403/429 or 503.
async fn pixel(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(ClientIp(ip)): axum::Extension<ClientIp>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let key = params
        .iter()
        .find(|(k, _)| k == "k")
        .map(|(_, v)| v.as_str());
    let result = async {
        check_origin(&app, &headers)?;
        let site = site(&app, &headers, key)?;
        app.key_limiter.check_key(&site).map_err(|_| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "over the event rate",
            )
        })?;
        let facts = request_facts(&app, Some(ip), peer_trusted(&app, peer.ip()), &headers);
        let (event, uid, sid) = pixel_event(&params, &headers, facts.received_at);
        let raw = serde_json::to_vec(&event).unwrap_or_default();
        let outcome = ingest_events(&app, &site, &[&raw], &facts).await?;
        Ok::<_, Refusal>((outcome, uid, sid))
    }
    .await;
    let (status, cookies) = match result {
        Ok((o, uid, sid)) if o.rejected.is_empty() => (StatusCode::OK, Some((uid, sid))),
        Ok(_) => (StatusCode::BAD_REQUEST, None),
        Err(r) => {
            app.metrics.refuse(r.code);
            (r.status, None)
        }
    };
    let mut r = (status, [(header::CONTENT_TYPE, "image/gif")], GIF).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some((uid, sid)) = cookies {
        for c in [
            format!("{PIXEL_UID}={uid}; Max-Age=63072000; Path=/; SameSite=Lax; HttpOnly"),
            format!("{PIXEL_SID}={sid}; Max-Age=1800; Path=/; SameSite=Lax; HttpOnly"),
        ] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(header::SET_COOKIE, v);
            }
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_UNAVAILABLE),
        );
    }
    r
}

/// The browser tracker (see `assets/tracker.js`).
pub const TRACKER_JS: &str = include_str!("../assets/tracker.js");

async fn tracker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        TRACKER_JS,
    )
        .into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    Json(json!({"status": "ok", "kafka_in_flight": app.events.in_flight()})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics
        .kafka_in_flight
        .set(i64::from(app.events.in_flight()));
    let mut s = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut s, &app.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s,
    )
        .into_response()
}
