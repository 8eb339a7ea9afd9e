//! `clickstream process`: flags -> [`ProcessorConfig`], the `/metrics` endpoint, and the
//! batch loop on its own thread with Ctrl-C / SIGTERM wired to a stop flag.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use clickstream_processor::clock::ClockMode;
use clickstream_processor::metrics::{Metrics, Registry};
use clickstream_processor::retention::Retention;
use clickstream_processor::store::AlertRule;
use clickstream_processor::{AlertSink, EngineConfig, LogAlertSink, ProcessorConfig};

fn micros(d: Duration) -> i64 {
    d.as_micros() as i64
}

/// Settings of `clickstream process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    #[command(flatten)]
    source: crate::SourceArgs,
    /// Dead-letter topic for rejected records.
    #[arg(long, env = "CLICKSTREAM_DLQ_TOPIC", default_value = "clickstream.dlq")]
    dlq_topic: String,
    /// Writer-role PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// A micro-batch closes at this many records...
    #[arg(long, env = "CLICKSTREAM_BATCH_MAX_RECORDS", default_value_t = 50_000)]
    batch_max_records: usize,
    /// ... or this long after its first record.
    #[arg(long, env = "CLICKSTREAM_BATCH_MAX_WAIT", default_value = "250ms", value_parser = humantime::parse_duration)]
    batch_max_wait: Duration,
    /// Allowed lateness: the watermark trails the largest event time by this much.
    #[arg(long, env = "CLICKSTREAM_ALLOWED_LATENESS", default_value = "2m", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
    /// Session inactivity gap (event time).
    #[arg(long, env = "CLICKSTREAM_SESSION_GAP", default_value = "30m", value_parser = humantime::parse_duration)]
    session_gap: Duration,
    /// Flash-sale window length.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    alert_window: Duration,
    /// Flash-sale window slide (must divide the length).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    alert_slide: Duration,
    /// Alert when a product has more views than this in a window...
    #[arg(long, env = "CLICKSTREAM_ALERT_MIN_VIEWS", default_value_t = 100)]
    alert_min_views: i64,
    /// ... and fewer purchases than this.
    #[arg(long, env = "CLICKSTREAM_ALERT_MAX_PURCHASES", default_value_t = 5)]
    alert_max_purchases: i64,
    #[command(flatten)]
    contract: crate::ContractArgs,
    /// Also keep every distinct valid event in `analytics.events` (off by default: the
    /// lake's bronze and silver layers are the audit trail, and this table costs about a
    /// third of the processor's throughput).
    #[arg(long, env = "CLICKSTREAM_AUDIT")]
    audit: bool,
    /// Wait for every batch commit to be flushed to PostgreSQL's WAL. Off by default: the
    /// results and offsets of a batch are one transaction, so a PostgreSQL crash loses
    /// them together and they are processed again (exactly once either way; ~15% faster).
    #[arg(long, env = "CLICKSTREAM_DURABLE_COMMITS")]
    durable_commits: bool,
    /// Kafka group session timeout: how fast a dead instance's partitions move on.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    /// Name of this instance in heartbeats and Kafka's client.id.
    #[arg(long, env = "CLICKSTREAM_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint (port 0 picks a free one).
    #[arg(
        long,
        env = "CLICKSTREAM_METRICS_ADDR",
        default_value = "127.0.0.1:9187"
    )]
    metrics_addr: SocketAddr,
    /// Longest wait between retries while batches fail (the wait starts at 200 ms and
    /// doubles per consecutive failure).
    #[arg(long, env = "CLICKSTREAM_RETRY_MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    retry_max_backoff: Duration,
    /// A partition that is caught up and gets no records for this long stops holding event
    /// time back: its watermark follows the clock, so a stopped feed closes its sessions and
    /// decides its flash-sale windows (`0s`: never).
    #[arg(long, env = "CLICKSTREAM_IDLE_TIMEOUT", default_value = "1m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How long event keys are remembered to drop re-sent events (default: the maximum
    /// event age, which makes dedup exact). Shorter keeps the ledger smaller (it holds
    /// every event of the horizon), but an event re-sent after it is counted twice.
    #[arg(long, env = "CLICKSTREAM_DEDUP_HORIZON", value_parser = humantime::parse_duration)]
    dedup_horizon: Option<Duration>,
    /// Days of per-minute and per-window aggregates kept (`0s`: forever).
    #[arg(long, env = "CLICKSTREAM_RETAIN_AGGREGATES", default_value = "90days", value_parser = humantime::parse_duration)]
    retain_aggregates: Duration,
    /// Days of sessions, purchase lines and audit events kept (`0s`: forever).
    #[arg(long, env = "CLICKSTREAM_RETAIN_DETAILS", default_value = "90days", value_parser = humantime::parse_duration)]
    retain_details: Duration,
    /// Days of rejected and late records kept (`0s`: forever).
    #[arg(long, env = "CLICKSTREAM_RETAIN_ERRORS", default_value = "30days", value_parser = humantime::parse_duration)]
    retain_errors: Duration,
    /// The clock event times are judged by: `wall`, or `event-time` (event time itself: the
    /// median event time of the batches consumed so far) to replay recorded traffic or
    /// compress days into minutes, with the age bound, idle partitions, the dedup horizon
    /// and retention following the data.
    #[arg(long, env = "CLICKSTREAM_CLOCK", value_enum, default_value_t = Clock::Wall)]
    clock: Clock,
}

/// `--clock` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Clock {
    Wall,
    EventTime,
}

pub async fn run(args: ProcessArgs) -> anyhow::Result<()> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let limits = args.contract.limits();
    let forever = |d: Duration| (!d.is_zero()).then_some(d);
    let retention = Retention {
        dedup_horizon: args
            .dedup_horizon
            .unwrap_or(Duration::from_micros(limits.max_age_micros.max(0) as u64)),
        aggregates: forever(args.retain_aggregates),
        details: forever(args.retain_details),
        errors: forever(args.retain_errors),
    };
    retention.check(&limits).map_err(anyhow::Error::msg)?;
    let cfg = ProcessorConfig {
        kafka: args.source.kafka.checked().await?,
        group: args.source.group,
        topic: args.source.topic,
        dlq_topic: args.dlq_topic,
        database_url: args.database_url,
        batch_max_records: args.batch_max_records.max(1),
        batch_max_wait: args.batch_max_wait,
        engine: EngineConfig {
            lateness_micros: micros(args.allowed_lateness),
            session_gap_micros: micros(args.session_gap),
            window_micros: micros(args.alert_window),
            slide_micros: micros(args.alert_slide).max(1),
        },
        alert: AlertRule {
            min_views: args.alert_min_views,
            max_purchases: args.alert_max_purchases,
        },
        limits,
        retention,
        clock: match args.clock {
            Clock::Wall => ClockMode::Wall,
            Clock::EventTime => ClockMode::EventTime,
        },
        audit_events: args.audit,
        durable_commits: args.durable_commits,
        session_timeout: args.session_timeout,
        instance_id: args
            .instance_id
            .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        retry_max_backoff: args.retry_max_backoff,
        idle_timeout: args.idle_timeout,
    };

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    crate::metrics_http::serve(args.metrics_addr, registry).await?;

    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::stop_on_signal(stop.clone());
    let handle = tokio::runtime::Handle::current();
    let sinks: Vec<Box<dyn AlertSink>> = vec![Box::new(LogAlertSink)];
    let report = tokio::task::spawn_blocking(move || {
        clickstream_processor::run(&cfg, handle, metrics, sinks, stop)
    })
    .await??;
    let t = report.totals;
    tracing::info!(
        batches = t.batches,
        records = t.records,
        events = t.events,
        rejected = t.rejected,
        duplicates = t.duplicates,
        late = t.late,
        "processor stopped cleanly"
    );
    Ok(())
}
