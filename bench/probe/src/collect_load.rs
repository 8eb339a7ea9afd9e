//! `collect-load`: HTTP load for `clickstream collect` over keep-alive connections, flat
//! out or at a steady event rate; prints events/s and request latency percentiles.
//!
//! The client is a minimal HTTP/1.1 writer/reader on tokio sockets (requests with a
//! `Content-Length`, answers read by their `Content-Length`), so that it costs little of
//! the CPU it shares with the collector on a small machine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Args {
    /// Collector address (`host:port`).
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: String,
    /// Write key.
    #[arg(long)]
    key: String,
    /// Events per request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Run time.
    #[arg(long, default_value = "15s", value_parser = humantime_secs)]
    duration: Duration,
    /// Steady total rate in events per second (default: as fast as answers come).
    #[arg(long)]
    rate: Option<f64>,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| e.to_string())
}

/// Distinct request bodies cycled through (event ids repeat across cycles; the collector
/// does not deduplicate, the processor would).
const BODIES: usize = 512;

fn bodies(batch: usize) -> Vec<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let ts = chrono_like(now);
    (0..BODIES)
        .map(|b| {
            let events: Vec<String> = (0..batch)
                .map(|i| {
                    let n = b * batch + i;
                    format!(
                        r#"{{"event_id":"{n:08x}-0000-4000-8000-{b:012x}","event_type":"page_view","timestamp":"{ts}","sent_at":"{ts}","user_id":"{u:08x}-1111-4000-8000-000000000000","session_id":"{u:08x}-2222-4000-8000-000000000000","page":"product","product_id":"P{p:05}","category":"toys","price":19.99}}"#,
                        u = n % 5000,
                        p = n % 1000
                    )
                })
                .collect();
            format!("[{}]", events.join(",")).into_bytes()
        })
        .collect()
}

/// RFC 3339 for a Unix time, without a date library.
fn chrono_like(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct ConnStats {
    latencies_us: Vec<u32>,
    events: u64,
    failed: u64,
}

async fn connection(
    args: &Args,
    bodies: &[Vec<u8>],
    offset: usize,
    deadline: Instant,
) -> anyhow::Result<ConnStats> {
    let stream = TcpStream::connect(&args.addr)
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut stats = ConnStats {
        latencies_us: Vec::new(),
        events: 0,
        failed: 0,
    };
    let mut tick = args.rate.map(|rate| {
        let per_conn = rate / args.batch as f64 / args.connections as f64;
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut line = String::new();
    let mut n = offset;
    while Instant::now() < deadline {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let body = &bodies[n % bodies.len()];
        n += 1;
        let head = format!(
            "POST /v1/events?k={} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nContent-Length: {}\r\n\r\n",
            args.key,
            args.addr,
            body.len()
        );
        let started = Instant::now();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body).await?;
        // Status line, headers, then the body by its length.
        line.clear();
        r.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                bail!("connection closed");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut sink = vec![0u8; length];
        r.read_exact(&mut sink).await?;
        stats
            .latencies_us
            .push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if status == 200 {
            stats.events += args.batch as u64;
        } else {
            stats.failed += 1;
        }
    }
    Ok(stats)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bodies = bodies(args.batch.max(1));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    let args = std::sync::Arc::new(args);
    let bodies = std::sync::Arc::new(bodies);
    for c in 0..args.connections {
        let (args, bodies) = (args.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            connection(&args, &bodies, c * 7919, deadline).await
        }));
    }
    let mut lat = Vec::new();
    let (mut events, mut failed) = (0u64, 0u64);
    for t in tasks {
        let s = t.await??;
        lat.extend(s.latencies_us);
        events += s.events;
        failed += s.failed;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "requests={} events={} events_per_s={:.0} p50_ms={:.2} p99_ms={:.2} non_200={}",
        lat.len(),
        events,
        events as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        failed
    );
    Ok(())
}
