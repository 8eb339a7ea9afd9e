//! `clickstream`: the pipeline's single binary. Parses arguments, loads `.env`, sets up
//! logging and hands each subcommand to the crate that implements the stage.

mod batch;
mod collect;
mod generate;
mod kafka_args;
mod lake;
mod metrics_http;
mod migrate;
mod process;
mod serve;
mod signals;
mod status;

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

// The processor allocates a few small buffers per record (payload copy, event fields);
// glibc's malloc took about a third of its CPU time in a profile (see ARCHITECTURE.md,
// where the time goes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real-time e-commerce clickstream pipeline: simulate, stream, aggregate, serve.
///
/// Settings come from flags, then environment variables, then a `.env` file in the
/// working directory (see `.env.example`).
#[derive(Debug, Parser)]
#[command(name = "clickstream", version, about, long_about)]
struct Cli {
    /// Log filter (`info`, `debug`, `clickstream=debug,rdkafka=warn`, ...).
    #[arg(long, env = "CLICKSTREAM_LOG", default_value = "info", global = true)]
    log: String,
    /// Log format.
    #[arg(long, env = "CLICKSTREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate shoppers and send their events to Kafka (or a file, stdout, nowhere).
    Generate(Box<generate::GenerateArgs>),
    /// Create or upgrade the `analytics` schema and set the application roles' passwords.
    Migrate(migrate::MigrateArgs),
    /// Consume raw events and maintain the analytics tables in PostgreSQL, exactly once.
    Process(Box<process::ProcessArgs>),
    /// Show consumer lag per partition, last commits and processing rates.
    Status(status::StatusArgs),
    /// Serve the live dashboard (web page, JSON API, server-sent updates).
    Serve(serve::ServeArgs),
    /// Write every raw record to bronze and every distinct valid event to silver (Parquet).
    Lake(Box<lake::LakeArgs>),
    /// Receive events over HTTP from browsers and servers, enrich them, produce to Kafka.
    Collect(Box<collect::CollectArgs>),
    /// Compute a day's gold tables from silver (or run daily on a schedule).
    Batch(batch::BatchArgs),
    /// Compare the streaming aggregates of a day with the batch recomputation from silver.
    Verify(batch::VerifyArgs),
    /// Write a day's report (JSON, CSV, Markdown) from the gold tables.
    Report(batch::ReportArgs),
}

/// Where the processor reads from; shared by `process` and `status`.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    pub kafka: kafka_args::KafkaArgs,
    /// Consumer group; processor instances with the same group share the partitions.
    #[arg(
        long,
        env = "CLICKSTREAM_GROUP",
        default_value = "clickstream-processor"
    )]
    pub group: String,
    /// Topic of raw events.
    #[arg(long, env = "CLICKSTREAM_RAW_TOPIC", default_value = "clickstream.raw")]
    pub topic: String,
}

/// Where the lake is; shared by `lake`, `batch`, `verify` and `status`.
#[derive(Debug, clap::Args)]
pub(crate) struct LakeLocation {
    /// The lake (bronze/, silver/, gold/ below it): a directory, or an object store URL
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`, configured by the usual `AWS_*` /
    /// `GOOGLE_*` / `AZURE_*` variables).
    #[arg(
        long = "lake-dir",
        alias = "lake",
        env = "CLICKSTREAM_LAKE_DIR",
        default_value = "data"
    )]
    pub lake_dir: String,
}

impl LakeLocation {
    /// Opens the lake (an object store URL is checked, not contacted).
    pub(crate) fn open(&self) -> anyhow::Result<clickstream_lake::Lake> {
        Ok(clickstream_lake::Lake::open(&self.lake_dir)?)
    }
}

/// The contract's bounds, shared by `process` and `lake` so both accept the same records.
#[derive(Debug, clap::Args)]
pub(crate) struct ContractArgs {
    /// Reject events older than this (also how long event keys are remembered for dedup).
    #[arg(long, env = "CLICKSTREAM_MAX_EVENT_AGE", default_value = "7days", value_parser = humantime::parse_duration)]
    max_event_age: std::time::Duration,
    /// Reject events further in the future than this (clock skew).
    #[arg(long, env = "CLICKSTREAM_MAX_EVENT_FUTURE", default_value = "1h", value_parser = humantime::parse_duration)]
    max_event_future: std::time::Duration,
    /// Reject records larger than this many bytes.
    #[arg(long, env = "CLICKSTREAM_MAX_RECORD_BYTES", default_value_t = 65_536)]
    max_record_bytes: usize,
}

impl ContractArgs {
    /// The limits these flags set.
    pub(crate) fn limits(&self) -> clickstream_model::ContractLimits {
        clickstream_model::ContractLimits {
            max_age_micros: self.max_event_age.as_micros() as i64,
            max_future_micros: self.max_event_future.as_micros() as i64,
            max_bytes: self.max_record_bytes,
        }
    }
}

/// Parses `key=value` (librdkafka properties).
/// A Kafka error, with what to check when it is an authentication or TLS failure.
pub(crate) fn kafka_error(
    e: rdkafka::error::KafkaError,
    connection: &clickstream_kafka::KafkaConnection,
) -> anyhow::Error {
    match clickstream_kafka::explain(&e, connection) {
        Some(hint) => anyhow::Error::new(e).context(hint),
        None => e.into(),
    }
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is normal (compose passes real environment variables).
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format)?;
    match cli.command {
        Command::Generate(args) => generate::run(*args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Process(args) => process::run(*args).await,
        Command::Status(args) => status::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Lake(args) => lake::run(*args).await,
        Command::Collect(args) => collect::run(*args).await,
        Command::Batch(args) => batch::run(args).await,
        Command::Verify(args) => batch::verify(args).await,
        Command::Report(args) => batch::report(args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
