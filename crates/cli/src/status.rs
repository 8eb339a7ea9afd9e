//! `clickstream status`: consumer lag per partition (Kafka high watermark minus the offset
//! committed in PostgreSQL), watermarks, and each processor instance's last commit and rates.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Settings of `clickstream status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    source: crate::SourceArgs,
    /// PostgreSQL URL (the read-only role is enough).
    #[arg(long, env = "READER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    lake: crate::LakeLocation,
}

/// An instance counts as running if seen this recently (as the dashboard's default).
const STALE_AFTER_SECS: f64 = 15.0;

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = clickstream_db::connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let health = clickstream_db::health::group_health(
        &client,
        &args.source.group,
        &args.source.topic,
        STALE_AFTER_SECS,
    )
    .await
    .context("reading the group's progress (has `clickstream migrate` run?)")?;
    let kafka = args.source.kafka.checked().await?;
    let consumer: BaseConsumer = kafka
        .client_config()
        .create()
        .context("creating a Kafka client")?;
    let md = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(&args.source.topic), Duration::from_secs(5))
    })
    .map_err(|e| crate::kafka_error(e, &kafka))
    .with_context(|| {
        format!(
            "reading metadata of {} from {}",
            args.source.topic,
            kafka.describe()
        )
    })?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == args.source.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = Vec::with_capacity(partitions.len());
    for p in &partitions {
        let (_, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(&args.source.topic, *p, Duration::from_secs(5))
        })?;
        ends.push((*p, high));
    }
    println!("topic {}  group {}", args.source.topic, args.source.group);
    println!(
        "{:>9} {:>12} {:>12} {:>10}  {:<24} {:>12}",
        "partition", "committed", "end", "lag", "watermark (UTC)", "last commit"
    );
    let mut total_lag = 0i64;
    for l in health.lag(&ends) {
        let wm = l.watermark_ms.map_or("-".into(), |ms| {
            clickstream_model::EventTime::from_millis(ms).to_string()
        });
        let stored = health
            .partitions
            .iter()
            .find(|p| p.partition == l.partition);
        let age = stored.map_or("never".into(), |p| {
            format!("{:.1}s ago", p.updated_seconds_ago)
        });
        let idle = stored
            .and_then(|p| p.idle_seconds)
            .map_or(String::new(), |s| format!("  idle for {s:.0}s"));
        let lag = l.lag.unwrap_or(0);
        total_lag += lag;
        let end = l.end.map_or("-".into(), |e| e.to_string());
        println!(
            "{:>9} {:>12} {:>12} {lag:>10}  {wm:<24} {age:>12}{idle}",
            l.partition, l.committed, end
        );
    }
    println!("total lag: {total_lag} records");
    for i in &health.instances {
        let last_commit = i
            .commit_seconds_ago
            .map_or("never".to_string(), |s| format!("{s:.1}s ago"));
        let state = if i.stopped {
            " (stopped)"
        } else if !i.running {
            " (silent)"
        } else {
            ""
        };
        println!(
            "instance {}{state}: seen {:.1}s ago, last commit {}, {} batches, {} records, {} events ({:.0}/s since start), {} rejected, {} duplicates, {} late",
            i.instance_id,
            i.seen_seconds_ago,
            last_commit,
            i.batches,
            i.records,
            i.events,
            i.events as f64 / i.uptime_seconds.max(1e-3),
            i.rejected,
            i.duplicates,
            i.late,
        );
        if i.is_stalled() {
            println!(
                "  STALLED for {:.0}s: {} failed attempts in a row; last error: {}",
                i.stalled_seconds.unwrap_or(0.0),
                i.consecutive_failures,
                i.last_error.as_deref().unwrap_or(""),
            );
        }
    }
    let lake = args.lake.open()?;
    let committed = lake.committed_offsets().context("reading the lake")?;
    if !committed.is_empty() {
        let gaps = lake
            .retention_gaps()
            .context("reading the lake's retention gaps")?;
        let lake_lag: i64 = ends
            .iter()
            .map(|(p, high)| (high - committed.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        let lost: i64 = gaps.values().sum();
        println!(
            "lake {}: {lake_lag} records not yet committed to bronze/silver{}",
            lake.location(),
            if lost > 0 {
                format!(
                    "; {lost} RECORDS LOST TO KAFKA RETENTION before the lake read them (see {}/{})",
                    lake.location(),
                    clickstream_lake::layout::GAPS_DIR
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
