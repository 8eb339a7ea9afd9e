//! `clickstream lake`: flags -> [`WriterConfig`], then the bronze / silver writer on a
//! blocking thread until Ctrl-C or SIGTERM (which commits every open range first).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clickstream_lake::{LakeWriter, WriterConfig};

/// Settings of `clickstream lake`.
#[derive(Debug, Args)]
pub struct LakeArgs {
    #[command(flatten)]
    kafka: crate::kafka_args::KafkaArgs,
    /// Topic of raw events.
    #[arg(long, env = "CLICKSTREAM_RAW_TOPIC", default_value = "clickstream.raw")]
    topic: String,
    /// Consumer group of the lake writer (its own, so it never competes with processors).
    #[arg(
        long,
        env = "CLICKSTREAM_LAKE_GROUP",
        default_value = "clickstream-lake"
    )]
    group: String,
    #[command(flatten)]
    lake: crate::LakeLocation,
    /// Close a partition's files after this many records...
    #[arg(
        long,
        env = "CLICKSTREAM_LAKE_ROLL_RECORDS",
        default_value_t = 2_000_000
    )]
    roll_records: usize,
    /// ... or when they are this old.
    #[arg(long, env = "CLICKSTREAM_LAKE_ROLL_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    roll_interval: Duration,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 65_536)]
    row_group_rows: usize,
    /// Re-sent events whose event time is within this much of the partition's newest
    /// event are kept out of silver (the batch deduplicates whole days again).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// The same bounds as the processor's (the same flags and variables).
    #[command(flatten)]
    contract: crate::ContractArgs,
    /// Exit (after committing) once the topic's end offsets at start are written: a
    /// one-shot backfill rather than a service.
    #[arg(long)]
    stop_at_end: bool,
    /// Address of the Prometheus `/metrics` endpoint (port 0 picks a free one).
    #[arg(
        long,
        env = "CLICKSTREAM_LAKE_METRICS_ADDR",
        default_value = "127.0.0.1:9188"
    )]
    metrics_addr: std::net::SocketAddr,
}

pub async fn run(args: LakeArgs) -> anyhow::Result<()> {
    if args.roll_records == 0 || args.row_group_rows == 0 {
        anyhow::bail!("--roll-records and --row-group-rows must be positive");
    }
    let metrics = clickstream_lake::LakeMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    crate::metrics_http::serve(args.metrics_addr, registry).await?;
    let cfg = WriterConfig {
        location: args.lake.lake_dir,
        kafka: args.kafka.checked().await?,
        topic: args.topic,
        group: args.group,
        roll_records: args.roll_records,
        roll_interval: args.roll_interval,
        row_group_rows: args.row_group_rows,
        dedup_window: args.dedup_window,
        limits: args.contract.limits(),
        metrics: metrics.clone(),
        stop_at_end: args.stop_at_end,
    };
    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::stop_on_signal(stop.clone());
    let report =
        tokio::task::spawn_blocking(move || LakeWriter::open(cfg).and_then(|w| w.run(&stop)))
            .await
            .context("lake writer thread")??;
    tracing::info!(
        records = report.records,
        events = report.events,
        duplicates = report.duplicates,
        invalid = report.invalid,
        ranges = report.ranges,
        lost_to_retention = report.lost_to_retention,
        "lake writer done"
    );
    Ok(())
}
