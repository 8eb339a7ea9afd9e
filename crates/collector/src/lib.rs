//! The HTTP collector (`clickstream collect`): the front door through which real sites
//! send their visitors' events into `clickstream.raw`.
//!
//! # Layout
//!
//! - [`http`]: the routes (`POST /v1/events`, `GET /v1/p.gif`, `/tracker.js`, `/healthz`,
//!   `/metrics`, the demo shop), and the checks every request passes: origin, write key,
//!   rate limits, body size and read timeout.
//! - [`ingest`]: bodies into events (gzip, JSON array or NDJSON) and each event through
//!   validation, [`enrich`]ment and validation again.
//! - [`enrich`]: user agent, bot, anonymised address, country, clock skew.
//! - [`produce`]: the Kafka producer; a request is answered 2xx only once Kafka has
//!   acknowledged all of its events.
//! - [`shop`]: the demo shop and its catalog (from `analytics.dim_product`).
//! - [`server`]: the connection loop (header read timeout, graceful shutdown).

pub mod enrich;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod produce;
pub mod server;
pub mod shop;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clickstream_model::ContractLimits;

pub use produce::KafkaSettings;

/// Errors that stop the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A setting is wrong, or something it names is missing.
    #[error("{0}")]
    Config(String),
    /// The Kafka client could not be created or reached.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Binding or serving the socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How many requests, and how many events, a client may send.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Requests per second per client address (bursts up to twice that).
    pub per_ip_rps: u32,
    /// Events per second per write key (bursts up to twice that).
    pub per_key_eps: u32,
}

/// Everything the collector is configured with.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Where to listen (loopback by default; put a TLS-terminating proxy in front).
    pub listen: SocketAddr,
    /// Kafka producer settings.
    pub kafka: KafkaSettings,
    /// Write key -> site name. Empty means no key is required (only for local use).
    pub write_keys: HashMap<String, String>,
    /// Origins allowed to send from browsers (`*` allows any). The collector's own origin
    /// (the demo shop) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Largest request body, compressed and decompressed.
    pub max_body_bytes: usize,
    /// Most events in one request.
    pub max_events: usize,
    /// Time allowed to read a request's headers, and then its body.
    pub read_timeout: Duration,
    /// Rate limits.
    pub rate: RateLimits,
    /// Peers whose `X-Forwarded-For` and country header are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Header carrying the client's country from a trusted proxy (`CF-IPCountry`).
    pub country_header: Option<String>,
    /// MaxMind-format country database.
    pub geoip_db: Option<PathBuf>,
    /// The contract's bounds (the processor's and the lake writer's).
    pub limits: ContractLimits,
    /// Serve the demo shop at `/shop/`, with its catalog from this PostgreSQL URL.
    pub demo_shop: Option<String>,
    /// The write key the demo shop's tracker uses.
    pub demo_key: Option<String>,
}

/// Starts the collector on `config.listen` and serves until `shutdown` completes. Calls
/// `on_bound` with the bound address once it accepts connections.
pub async fn run(
    config: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()>,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), CollectorError> {
    use std::sync::Arc;

    let events = produce::Events::new(&config.kafka)?;
    events.check(Duration::from_secs(15)).await?;
    let enricher = enrich::Enricher {
        agents: enrich::AgentParser::new()?,
        geoip: config
            .geoip_db
            .as_deref()
            .map(enrich::GeoIp::open)
            .transpose()?,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    let (ip_limiter, key_limiter) = http::App::limiters(&config);
    let shop = match (&config.demo_shop, &config.demo_key) {
        (Some(url), key) => {
            let key = key
                .clone()
                .or_else(|| config.write_keys.keys().next().cloned())
                .unwrap_or_default();
            Some(shop::Shop::new(url.clone(), key))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| CollectorError::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| CollectorError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let header_timeout = config.read_timeout;
    let app = Arc::new(http::App {
        config,
        events,
        enricher,
        metrics,
        registry,
        ip_limiter,
        key_limiter,
        shop,
    });
    // Keyed limiters keep a cell per address; forget the quiet ones now and then.
    let housekeeping = {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                app.ip_limiter.retain_recent();
                app.ip_limiter.shrink_to_fit();
                app.key_limiter.retain_recent();
            }
        })
    };
    on_bound(bound);
    server::serve(
        listener,
        http::router(app.clone()),
        header_timeout,
        shutdown,
    )
    .await;
    housekeeping.abort();
    app.events.flush(Duration::from_secs(10));
    Ok(())
}
