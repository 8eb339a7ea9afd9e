//! `clickstream generate`: flags -> [`SimConfig`], sink selection, catalog upsert, and the
//! blocking simulator loop on its own thread with Ctrl-C / SIGTERM wired to a stop flag.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use clickstream_generator::config::{parse_mix, FaultConfig, FlashSaleConfig, FunnelConfig, Mix};
use clickstream_generator::sink::{ensure_topic, KafkaSettings};
use clickstream_generator::{
    KafkaSink, NullSink, RunOptions, SimConfig, Simulator, Sink, WriterSink,
};
use clickstream_model::EventTime;

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// The Kafka topic `--topic`.
    Kafka,
    /// JSON lines to `--file`.
    File,
    /// JSON lines to standard output.
    Stdout,
    /// Nowhere (measures the simulator alone).
    Null,
}

/// When to show the live progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Settings of `clickstream generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Seed for users, visits and faults; same seed and settings give the same bytes.
    #[arg(long, env = "CLICKSTREAM_SEED", default_value_t = 42)]
    seed: u64,
    /// Seed for the product catalog (names, categories, prices, popularity).
    #[arg(long, env = "CLICKSTREAM_CATALOG_SEED", default_value_t = 7)]
    catalog_seed: u64,
    /// Number of products in the catalog.
    #[arg(long, env = "CLICKSTREAM_PRODUCTS", default_value_t = 500)]
    products: usize,
    /// Size of the user population.
    #[arg(long, env = "CLICKSTREAM_USERS", default_value_t = 50_000)]
    users: usize,
    /// Target events per second (event time advances at this rate, and so does the wall
    /// clock unless --no-pacing).
    #[arg(long, env = "CLICKSTREAM_EPS", default_value_t = 1000.0)]
    eps: f64,
    /// Stop after this many records (events + duplicates + malformed).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Stop after this much wall-clock time (`90s`, `10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Send as fast as the sink accepts instead of in real time (event times are unchanged).
    #[arg(long)]
    no_pacing: bool,
    /// Replay speed when pacing: event time runs this many times faster than the wall
    /// clock (`60` plays an hour of traffic in a minute).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Event time of the first event: RFC 3339, or `now`.
    #[arg(long, default_value = "now")]
    start: String,
    /// Modulate traffic over the UTC day (peak 20:00, trough 08:00).
    #[arg(long, env = "CLICKSTREAM_DAILY_CYCLE")]
    daily_cycle: bool,
    /// Zipf exponent of product popularity (higher = a few products get most views).
    #[arg(long, default_value_t = 1.1)]
    popularity_skew: f64,
    /// Share of visits by users who visited before.
    #[arg(long, default_value_t = 0.6)]
    returning_share: f64,
    /// Device mix of users, `label=weight,...`.
    #[arg(long, default_value = "desktop=45,mobile=45,tablet=10", value_parser = parse_mix)]
    device_mix: Mix,
    /// Country mix of users, `code=weight,...`.
    #[arg(long, default_value = "US=35,GB=10,DE=10,IN=10,FR=8,BR=7,CA=6,JP=5,NL=5,AU=4", value_parser = parse_mix)]
    country_mix: Mix,
    /// Share of visits made by bots (fast, many pages, never buy).
    #[arg(long, default_value_t = 0.02)]
    bot_share: f64,
    /// P(a visit is a single page view).
    #[arg(long, default_value_t = 0.35)]
    bounce_rate: f64,
    /// P(a product view is followed by adding the product to the cart).
    #[arg(long, default_value_t = 0.12)]
    cart_rate: f64,
    /// P(a visit that carted something ends in a purchase).
    #[arg(long, default_value_t = 0.35)]
    purchase_rate: f64,
    /// P(leaving after each page past the landing page); 0.18 gives ~6-page visits.
    #[arg(long, default_value_t = 0.18)]
    exit_rate: f64,
    /// Median seconds between a shopper's pages.
    #[arg(long, default_value_t = 25.0)]
    dwell_median_secs: f64,
    /// A flash-sale campaign starts this often in event time (`0` disables).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    flash_sale_every: Duration,
    /// How long each campaign lasts.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    flash_sale_duration: Duration,
    /// Long-tail products promoted per campaign.
    #[arg(long, default_value_t = 2)]
    flash_sale_products: usize,
    /// Share of new visits during a campaign that come for it.
    #[arg(long, default_value_t = 0.25)]
    flash_sale_share: f64,
    /// P(an event is re-sent with the same event_id).
    #[arg(long, env = "CLICKSTREAM_DUPLICATE_RATE", default_value_t = 0.01)]
    duplicate_rate: f64,
    /// Share of duplicates re-sent 1-15 minutes later rather than within seconds.
    #[arg(long, default_value_t = 0.3)]
    late_duplicate_share: f64,
    /// P(an event is delivered late, out of order).
    #[arg(long, env = "CLICKSTREAM_LATE_RATE", default_value_t = 0.02)]
    late_rate: f64,
    /// Mean delivery delay of a late event, in seconds (exponential).
    #[arg(long, default_value_t = 45.0)]
    late_mean_secs: f64,
    /// P(a malformed record is sent next to an event).
    #[arg(long, env = "CLICKSTREAM_MALFORMED_RATE", default_value_t = 0.005)]
    malformed_rate: f64,
    /// Where records go.
    #[arg(long, env = "CLICKSTREAM_SINK", value_enum, default_value_t = SinkKind::Kafka)]
    sink: SinkKind,
    /// Output file for `--sink file`.
    #[arg(long, required_if_eq("sink", "file"))]
    file: Option<PathBuf>,
    #[command(flatten)]
    kafka: crate::kafka_args::KafkaArgs,
    /// Topic for raw events.
    #[arg(long, env = "CLICKSTREAM_RAW_TOPIC", default_value = "clickstream.raw")]
    topic: String,
    /// Partitions when the topic has to be created.
    #[arg(long, env = "CLICKSTREAM_PARTITIONS", default_value_t = 6)]
    partitions: i32,
    /// Replication factor when the topic has to be created.
    #[arg(long, env = "CLICKSTREAM_REPLICATION", default_value_t = 1)]
    replication: i32,
    /// Producer compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, env = "CLICKSTREAM_COMPRESSION", default_value = "lz4")]
    compression: String,
    /// Producer linger (batching delay) in milliseconds.
    #[arg(long, default_value_t = 20)]
    linger_ms: u32,
    /// Writer connection used to upsert the catalog into `analytics.dim_product`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Do not write the catalog to PostgreSQL even if DATABASE_URL is set.
    #[arg(long)]
    no_catalog: bool,
    /// Live progress line on stderr.
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    progress: Progress,
}

impl GenerateArgs {
    fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let start = if self.start == "now" {
            // Whole milliseconds keep the first timestamps short and readable.
            EventTime::from_millis(EventTime::now().as_millis())
        } else {
            EventTime::parse_rfc3339(&self.start)
                .with_context(|| format!("--start `{}` is not RFC 3339 or `now`", self.start))?
        };
        let cfg = SimConfig {
            seed: self.seed,
            catalog_seed: self.catalog_seed,
            products: self.products,
            popularity_skew: self.popularity_skew,
            users: self.users,
            returning_share: self.returning_share,
            device_mix: self.device_mix.clone(),
            country_mix: self.country_mix.clone(),
            eps: self.eps,
            start,
            daily_cycle: self.daily_cycle,
            bot_share: self.bot_share,
            funnel: FunnelConfig {
                bounce_rate: self.bounce_rate,
                cart_rate: self.cart_rate,
                purchase_rate: self.purchase_rate,
                exit_rate: self.exit_rate,
                dwell_median_secs: self.dwell_median_secs,
            },
            flash_sale: FlashSaleConfig {
                every_secs: self.flash_sale_every.as_secs(),
                duration_secs: self.flash_sale_duration.as_secs(),
                products: self.flash_sale_products,
                share: self.flash_sale_share,
            },
            faults: FaultConfig {
                duplicate_rate: self.duplicate_rate,
                late_duplicate_share: self.late_duplicate_share,
                late_rate: self.late_rate,
                late_mean_secs: self.late_mean_secs,
                malformed_rate: self.malformed_rate,
            },
        };
        if let Err(e) = cfg.validate() {
            bail!("{e}");
        }
        Ok(cfg)
    }
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let cfg = args.sim_config()?;
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number, got {}", args.speed);
    }
    let sim = tokio::task::spawn_blocking(move || Simulator::new(cfg))
        .await?
        .map_err(anyhow::Error::msg)?;

    if let (Some(url), false) = (&args.database_url, args.no_catalog) {
        let client = clickstream_db::connect(url).await.context(
            "connecting with DATABASE_URL to write the catalog (use --no-catalog to skip)",
        )?;
        let changed = clickstream_db::catalog::upsert_products(&client, sim.catalog())
            .await
            .context("writing analytics.dim_product (has `clickstream migrate` run?)")?;
        tracing::info!(products = sim.catalog().len(), changed, "catalog written");
    }

    let mut sink: Box<dyn Sink + Send> = match args.sink {
        SinkKind::Kafka => {
            let connection = args.kafka.checked().await?;
            ensure_topic(&connection, &args.topic, args.partitions, args.replication)
                .await
                .map_err(|e| crate::kafka_error(e, &connection))
                .with_context(|| {
                    format!("creating topic {} on {}", args.topic, connection.describe())
                })?;
            Box::new(KafkaSink::new(&KafkaSettings {
                connection,
                topic: args.topic.clone(),
                compression: args.compression.clone(),
                linger_ms: args.linger_ms,
            })?)
        }
        SinkKind::File => {
            let path = args
                .file
                .clone()
                .context("--file is required with --sink file")?;
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            Box::new(WriterSink::new(std::io::BufWriter::with_capacity(
                1 << 20,
                f,
            )))
        }
        SinkKind::Stdout => Box::new(WriterSink::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        ))),
        SinkKind::Null => Box::new(NullSink::default()),
    };

    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::stop_on_signal(stop.clone());
    let opts = RunOptions {
        count: args.count,
        duration: args.duration,
        pace: !args.no_pacing,
        speed: args.speed,
        progress: match args.progress {
            Progress::Always => true,
            Progress::Never => false,
            Progress::Auto => std::io::stderr().is_terminal(),
        },
        stop,
        flush_timeout: Duration::from_secs(60),
    };
    tracing::info!(sink = ?args.sink, eps = args.eps, count = ?args.count, duration = ?args.duration, pacing = opts.pace, "generating");
    let mut sim = sim;
    let summary = tokio::task::spawn_blocking(move || {
        clickstream_generator::run(&mut sim, sink.as_mut(), &opts)
    })
    .await??;
    tracing::info!("{summary}");
    Ok(())
}
