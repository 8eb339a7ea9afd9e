//! Measures end-to-end latency from Kafka produce time to the PostgreSQL commit that made
//! an event's effect visible, without trusting the processor's own numbers.
//!
//! While the pipeline runs, it polls `analytics.consumer_offsets` every few milliseconds
//! and notes when each partition's committed offset moved. Afterwards it reads the topic's
//! record timestamps (producer create time) and, for every record, takes the first poll at
//! which its offset was committed. Error: at most one poll interval.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::NoTls;

/// Latency probe settings.
#[derive(Debug, Parser)]
struct Args {
    /// PostgreSQL URL (reader role is enough).
    #[arg(long, env = "READER_DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: String,
    /// Topic the generator writes to.
    #[arg(long)]
    topic: String,
    /// Processor consumer group.
    #[arg(long)]
    group: String,
    /// How long to watch.
    #[arg(long, value_parser = humantime_secs)]
    duration: Duration,
    /// Ignore records produced in the first seconds (warm-up).
    #[arg(long, default_value = "5", value_parser = humantime_secs)]
    skip: Duration,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (client, conn) = tokio_postgres::connect(&args.database_url, NoTls).await?;
    tokio::spawn(conn);
    let started_ms = now_ms();
    // (partition) -> list of (wall ms, committed next offset), in time order.
    let mut timeline: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    let stmt = client
        .prepare("SELECT kafka_partition, next_offset FROM analytics.consumer_offsets WHERE consumer_group = $1 AND topic = $2")
        .await?;
    let t0 = Instant::now();
    while t0.elapsed() < args.duration {
        let at = now_ms();
        for r in client.query(&stmt, &[&args.group, &args.topic]).await? {
            let (p, o): (i32, i64) = (r.get(0), r.get(1));
            let tl = timeline.entry(p).or_default();
            if tl.last().is_none_or(|&(_, last)| o > last) {
                tl.push((at, o));
            }
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "latency-probe")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in timeline.keys() {
        tpl.add_partition_offset(&args.topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let skip_until = started_ms + args.skip.as_millis() as i64;
    let mut lat: Vec<i64> = Vec::new();
    let mut uncommitted = 0usize;
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        idle = Instant::now();
        let Some(ts) = m.timestamp().to_millis() else {
            continue;
        };
        if ts < skip_until || ts > started_ms + args.duration.as_millis() as i64 - 2000 {
            continue;
        }
        let tl = &timeline[&m.partition()];
        // First poll whose committed next offset is beyond this record.
        let i = tl.partition_point(|&(_, o)| o <= m.offset());
        match tl.get(i) {
            Some(&(at, _)) => lat.push(at - ts),
            None => uncommitted += 1,
        }
    }
    lat.sort_unstable();
    if lat.is_empty() {
        anyhow::bail!(
            "no records measured (is the generator writing to {}?)",
            args.topic
        );
    }
    let q = |f: f64| lat[((lat.len() as f64 - 1.0) * f).round() as usize];
    println!(
        "records={} p50_ms={} p90_ms={} p99_ms={} max_ms={} uncommitted={}",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        lat[lat.len() - 1],
        uncommitted
    );
    Ok(())
}
