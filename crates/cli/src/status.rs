//! `clickstream status`: consumer lag per partition (Kafka high watermark minus the offset
//! committed in PostgreSQL), watermarks, and each processor instance's last commit and rates.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Settings of `clickstream status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    source: crate::SourceArgs,
    /// PostgreSQL URL (the read-only role is enough).
    #[arg(long, env = "READER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Lake root; its writer's progress and retention gaps are shown when it exists.
    #[arg(long, env = "CLICKSTREAM_LAKE_DIR", default_value = "data")]
    lake_dir: std::path::PathBuf,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = clickstream_db::connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let rows = client
        .query(
            "SELECT kafka_partition, next_offset, coalesce(watermark::text, '-'),
                    extract(epoch FROM now() - updated_at)::float8
               FROM analytics.consumer_offsets
              WHERE consumer_group = $1 AND topic = $2 ORDER BY 1",
            &[&args.source.group, &args.source.topic],
        )
        .await
        .context("reading analytics.consumer_offsets (has `clickstream migrate` run?)")?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.source.bootstrap)
        .create()
        .context("creating a Kafka client")?;
    let md = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(&args.source.topic), Duration::from_secs(5))
    })
    .with_context(|| {
        format!(
            "reading metadata of {} from {}",
            args.source.topic, args.source.bootstrap
        )
    })?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == args.source.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    println!("topic {}  group {}", args.source.topic, args.source.group);
    println!(
        "{:>9} {:>12} {:>12} {:>10}  {:<32} {:>12}",
        "partition", "committed", "end", "lag", "watermark", "last commit"
    );
    let mut total_lag = 0i64;
    for p in &partitions {
        let (_, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(&args.source.topic, *p, Duration::from_secs(5))
        })?;
        let row = rows.iter().find(|r| r.get::<_, i32>(0) == *p);
        let committed: i64 = row.map_or(0, |r| r.get(1));
        let wm: String = row.map_or("-".into(), |r| r.get(2));
        let age = row.map_or("never".into(), |r| {
            format!("{:.1}s ago", r.get::<_, f64>(3))
        });
        let lag = (high - committed).max(0);
        total_lag += lag;
        println!("{p:>9} {committed:>12} {high:>12} {lag:>10}  {wm:<32} {age:>12}");
    }
    println!("total lag: {total_lag} records");
    if args.lake_dir.join("bronze").is_dir() {
        let lake = clickstream_lake::Lake::new(&args.lake_dir);
        let committed = lake.committed_offsets().context("reading the lake")?;
        let gaps = lake
            .retention_gaps()
            .context("reading the lake's retention gaps")?;
        let mut lake_lag = 0i64;
        for p in &partitions {
            let (_, high) = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(&args.source.topic, *p, Duration::from_secs(5))
            })?;
            lake_lag += (high - committed.get(p).copied().unwrap_or(0)).max(0);
        }
        let lost: i64 = gaps.values().sum();
        println!(
            "lake {}: {lake_lag} records not yet committed to bronze/silver{}",
            args.lake_dir.display(),
            if lost > 0 {
                format!(
                    "; {lost} RECORDS LOST TO KAFKA RETENTION before the lake read them (see {})",
                    args.lake_dir
                        .join(clickstream_lake::layout::GAPS_FILE)
                        .display()
                )
            } else {
                String::new()
            }
        );
    }
    let inst = client
        .query(
            "SELECT instance_id, extract(epoch FROM now() - last_commit_at)::float8,
                    extract(epoch FROM last_seen_at - started_at)::float8,
                    batches, records, events, rejected, duplicates, late,
                    extract(epoch FROM now() - last_seen_at)::float8, stopped_at IS NOT NULL,
                    consecutive_failures, extract(epoch FROM now() - stalled_since)::float8,
                    last_error
               FROM analytics.processor_heartbeat WHERE consumer_group = $1
              ORDER BY last_seen_at DESC",
            &[&args.source.group],
        )
        .await?;
    for r in inst {
        let up: f64 = r.get(2);
        let events: i64 = r.get(5);
        let last_commit = r
            .get::<_, Option<f64>>(1)
            .map_or("never".to_string(), |s| format!("{s:.1}s ago"));
        let stopped = if r.get::<_, bool>(10) {
            " (stopped)"
        } else {
            ""
        };
        println!(
            "instance {}{stopped}: seen {:.1}s ago, last commit {}, {} batches, {} records, {} events ({:.0}/s since start), {} rejected, {} duplicates, {} late",
            r.get::<_, String>(0),
            r.get::<_, f64>(9),
            last_commit,
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            events,
            events as f64 / up.max(1e-3),
            r.get::<_, i64>(6),
            r.get::<_, i64>(7),
            r.get::<_, i64>(8),
        );
        let failures: i32 = r.get(11);
        if failures > 0 {
            println!(
                "  STALLED for {:.0}s: {failures} failed attempts in a row; last error: {}",
                r.get::<_, Option<f64>>(12).unwrap_or(0.0),
                r.get::<_, Option<String>>(13).unwrap_or_default(),
            );
        }
    }
    Ok(())
}
