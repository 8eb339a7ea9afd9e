//! PostgreSQL itself crashes (immediate shutdown: no checkpoint, the last asynchronously
//! committed batches may be lost) while the processor runs with its default asynchronous
//! commits. After PostgreSQL is back, the processor must reload state and offsets and end
//! with exactly the tables of an undisturbed run with durable commits.
//!
//! This file is its own test binary, so the crash does not hit the other tests (cargo runs
//! test binaries one after another).

mod support;

use std::time::{Duration, Instant};

use clickstream_model::EventTime;
use support::*;

/// Tables and the columns that must match (wall-clock columns left out).
const TABLES: [(&str, &str); 10] = [
    ("metrics_minute", "minute, event_type, events, units, revenue_cents, late_events, bot_events"),
    ("product_minute", "minute, product_id, category, views, cart_adds, purchases, units, revenue_cents"),
    ("category_minute", "minute, category, views, cart_adds, purchases, units, revenue_cents"),
    ("product_window", "window_start, window_end, product_id, views, purchases, late_views, late_purchases"),
    ("flash_sale_alerts", "window_start, window_end, product_id, views, purchases"),
    ("sessions", "session_key, user_id, session_start, session_end, events, page_views, cart_adds, purchases, revenue_cents, device, country, is_bot, is_open"),
    ("late_events", "event_id, event_type, event_time, watermark, kafka_partition, kafka_offset, absorbed_by_session"),
    ("rejected_events", "topic, kafka_partition, kafka_offset, reason, detail, payload_bytes"),
    ("consumer_offsets", "topic, kafka_partition, next_offset, watermark, max_event_time"),
    ("hourly_users", "hour, event_type, user_id"),
];

/// An order-independent fingerprint of each table: row count and md5 of the sorted rows.
async fn fingerprint(db: &TestDb) -> Vec<(String, i64, String)> {
    let c = connect(&db.admin_url).await;
    let mut out = Vec::new();
    for (table, cols) in TABLES {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(x, E'\\n' ORDER BY x)), '')
                       FROM (SELECT ({cols})::text AS x FROM analytics.{table}) t"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        out.push((table.to_string(), r.get(0), r.get(1)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_asynchronous_commits_changes_nothing() {
    let s = services();
    let crashed = TestDb::create(&s).await;
    let calm = TestDb::create(&s).await;
    let topic = unique("pgcrash");
    create_topic(&s.bootstrap, &topic, 6).await;
    let dlq = dead_letter_topic(&s).await;
    let count = 150_000;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 3 * 3_600_000);
    generate_seeded(
        &s,
        &topic,
        count,
        random_u64(),
        &start.to_string(),
        100,
        None,
    );
    let recs = read_topic(&s.bootstrap, &topic, 6, count, Duration::from_secs(60));
    let ends = end_offsets(&recs);
    let flags = ["--batch-max-records", "5000"];

    // Asynchronous commits (the default); PostgreSQL crashes mid-run.
    let group = unique("g");
    let p = Processor::start(&s, &crashed, &topic, &dlq, &group, &flags);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&crashed.writer_url, &group, &topic).await < (count / 4) as i64 {
        assert!(Instant::now() < deadline, "processor made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crash_postgres(&s.admin_url).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_stack();
    wait_caught_up(
        &crashed.writer_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(300),
    )
    .await;
    p.stop();

    // The same records, durable commits, no crash.
    let group2 = unique("g");
    let mut calm_flags = flags.to_vec();
    calm_flags.push("--durable-commits");
    let q = Processor::start(&s, &calm, &topic, &dlq, &group2, &calm_flags);
    wait_caught_up(
        &calm.writer_url,
        &group2,
        &topic,
        &ends,
        Duration::from_secs(300),
    )
    .await;
    q.stop();

    let a = fingerprint(&crashed).await;
    let b = fingerprint(&calm).await;
    for (table, rows, _) in &a {
        if [
            "metrics_minute",
            "product_minute",
            "sessions",
            "consumer_offsets",
        ]
        .contains(&table.as_str())
        {
            assert!(
                *rows > 0,
                "{table} is empty: the comparison would prove nothing"
            );
        }
    }
    assert_eq!(
        a, b,
        "tables after a PostgreSQL crash differ from an undisturbed run"
    );
    crashed.drop().await;
    calm.drop().await;
}
