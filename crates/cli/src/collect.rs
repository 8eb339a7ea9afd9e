//! `clickstream collect`: flags -> [`CollectorConfig`], then the HTTP collector until
//! Ctrl-C or SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clickstream_collector::{CollectorConfig, KafkaSettings, RateLimits};

/// Settings of `clickstream collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Address to listen on (loopback by default; put a TLS-terminating proxy in front
    /// and list it in --trusted-proxy to expose it).
    #[arg(
        long,
        env = "CLICKSTREAM_COLLECTOR_ADDR",
        default_value = "127.0.0.1:8090"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    kafka: crate::kafka_args::KafkaArgs,
    /// Topic events are produced to.
    #[arg(long, env = "CLICKSTREAM_RAW_TOPIC", default_value = "clickstream.raw")]
    topic: String,
    /// Dead-letter topic for refused events.
    #[arg(long, env = "CLICKSTREAM_DLQ_TOPIC", default_value = "clickstream.dlq")]
    dlq_topic: String,
    /// Write keys as `site=KEY`, comma-separated or repeated. Without any, no key is
    /// required (only sensible on loopback).
    #[arg(
        long = "write-key",
        env = "CLICKSTREAM_WRITE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    write_keys: Vec<String>,
    /// Browser origins allowed to send (`https://shop.example`), comma-separated or
    /// repeated; `*` allows any. The collector's own origin is always allowed.
    #[arg(
        long = "allowed-origin",
        env = "CLICKSTREAM_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Largest request body in bytes (compressed, and again once decompressed).
    #[arg(
        long,
        env = "CLICKSTREAM_COLLECTOR_MAX_BODY",
        default_value_t = 1_048_576
    )]
    max_body_bytes: usize,
    /// Most events in one request.
    #[arg(long, env = "CLICKSTREAM_COLLECTOR_MAX_EVENTS", default_value_t = 500)]
    max_events: usize,
    /// Deadline for a request's headers, and then for its body.
    #[arg(long, env = "CLICKSTREAM_COLLECTOR_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
    /// Requests per second one client address may send (bursts of twice that).
    #[arg(long, env = "CLICKSTREAM_COLLECTOR_RATE_PER_IP", default_value_t = 50)]
    rate_per_ip: u32,
    /// Events per second one write key may send (bursts of twice that).
    #[arg(
        long,
        env = "CLICKSTREAM_COLLECTOR_RATE_PER_KEY",
        default_value_t = 20_000
    )]
    rate_per_key: u32,
    /// How long Kafka may take to acknowledge before the request is answered 503.
    #[arg(long, env = "CLICKSTREAM_COLLECTOR_KAFKA_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    kafka_timeout: Duration,
    /// Proxies (CIDR) whose X-Forwarded-For and country header are believed.
    #[arg(
        long = "trusted-proxy",
        env = "CLICKSTREAM_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Header with the client's country set by a trusted proxy (e.g. `CF-IPCountry`).
    #[arg(long, env = "CLICKSTREAM_COUNTRY_HEADER")]
    country_header: Option<String>,
    /// MaxMind-format country database (GeoLite2-Country.mmdb or compatible).
    #[arg(long, env = "CLICKSTREAM_GEOIP_DB")]
    geoip_db: Option<PathBuf>,
    /// Serve the demo shop at /shop/ with its catalog from this (reader-role) database.
    #[arg(long, env = "READER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Serve the demo shop (needs --database-url).
    #[arg(long)]
    demo_shop: bool,
    #[command(flatten)]
    contract: crate::ContractArgs,
}

fn write_keys(list: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut keys = HashMap::new();
    for entry in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (site, key) = entry
            .split_once('=')
            .with_context(|| "a write key is `site=KEY`".to_string())?;
        let (site, key) = (site.trim(), key.trim());
        if key.len() < 8
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
        {
            anyhow::bail!(
                "the write key of site `{site}` must be 8+ characters of letters, digits, `-._~`"
            );
        }
        keys.insert(key.to_string(), site.to_string());
    }
    Ok(keys)
}

pub async fn run(args: CollectArgs) -> anyhow::Result<()> {
    let keys = write_keys(&args.write_keys)?;
    if keys.is_empty() {
        tracing::warn!(
            "no write keys configured: accepting events from anyone who can reach the collector"
        );
    }
    if args.demo_shop && args.database_url.is_none() {
        anyhow::bail!("--demo-shop needs --database-url (or READER_DATABASE_URL) for its catalog");
    }
    let config = CollectorConfig {
        listen: args.listen,
        kafka: KafkaSettings {
            connection: args.kafka.checked().await?,
            topic: args.topic,
            dlq_topic: args.dlq_topic,
            delivery_timeout: args.kafka_timeout,
        },
        demo_key: keys.keys().next().cloned(),
        write_keys: keys,
        allowed_origins: args.allowed_origins,
        max_body_bytes: args.max_body_bytes,
        max_events: args.max_events.max(1),
        read_timeout: args.read_timeout,
        rate: RateLimits {
            per_ip_rps: args.rate_per_ip,
            per_key_eps: args.rate_per_key,
        },
        trusted_proxies: args.trusted_proxies,
        country_header: args.country_header,
        geoip_db: args.geoip_db,
        limits: args.contract.limits(),
        demo_shop: args.database_url.filter(|_| args.demo_shop),
    };
    let demo = config.demo_shop.is_some();
    clickstream_collector::run(config, crate::signals::terminated(), |addr| {
        tracing::info!(url = %format!("http://{addr}/"), "collector listening");
        if demo {
            tracing::info!(shop = %format!("http://{addr}/shop/"), "demo shop");
        }
    })
    .await?;
    Ok(())
}
