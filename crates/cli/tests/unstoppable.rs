//! The processor keeps going, and keeps the numbers right, through what stops naive
//! pipelines: a corpus of bad records, a record PostgreSQL refuses, a database that keeps
//! failing, missing topics and a dead-letter topic that disappears. Real Kafka, real
//! PostgreSQL, the real binary.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use support::corpus::{self, Case, Outcome};
use support::*;

async fn scalar(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_record_is_dead_lettered_and_every_valid_one_counted() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("corpus");
    let dlq = unique("dlq");
    create_topic(&s.bootstrap, &topic, 1).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let cases = corpus::corpus();
    let bad = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Rejected(_)))
        .count();
    assert!(bad >= 40, "{bad} kinds of bad record");
    let records: Vec<_> = cases
        .iter()
        .map(|c| (c.key.clone(), c.value.clone()))
        .collect();
    produce(&s, &topic, &records);

    let group = unique("g");
    let mut p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let ends = HashMap::from([(0, cases.len() as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(120),
    )
    .await;
    assert!(p.is_running(), "bad input must not stop the processor");
    let m = p.scrape_metrics();
    assert_eq!(
        metric(&m, "clickstream_processor_batches_abandoned_total"),
        0.0,
        "no batch was retried: bad input is rejected up front"
    );

    let c = connect(&db.admin_url).await;
    let rows = c
        .query(
            "SELECT kafka_offset, reason, detail, payload_bytes, length(payload), length(record_key)
               FROM analytics.rejected_events ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(i64, String)> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c.outcome {
            Outcome::Rejected(r) => Some((i as i64, r.to_string())),
            Outcome::Valid => None,
        })
        .collect();
    let named = |list: &[(i64, String)]| -> Vec<String> {
        list.iter()
            .map(|(o, r)| format!("{} -> {r}", cases[*o as usize].name))
            .collect()
    };
    assert_eq!(named(&got), named(&want));
    for r in &rows {
        let detail: String = r.get(2);
        assert!(
            !detail.is_empty() && !detail.chars().any(char::is_control),
            "{detail:?}"
        );
        // The original size is recorded; the payload kept is its first 64 KiB.
        let size: i32 = r.get(3);
        let stored: i32 = r.get(4);
        let case = &cases[r.get::<_, i64>(0) as usize];
        assert_eq!(size as usize, case.value.len(), "{}", case.name);
        assert_eq!(
            stored as usize,
            case.value.len().min(64 * 1024),
            "{}",
            case.name
        );
        assert!(r.get::<_, Option<i32>>(5).unwrap_or(0) <= 64 * 1024);
    }

    let valid: Vec<&Case> = cases
        .iter()
        .filter(|c| c.outcome == Outcome::Valid)
        .collect();
    let events = scalar(
        &c,
        "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute",
    )
    .await;
    assert_eq!(
        events,
        valid.len() as i64,
        "every valid edge case is counted once"
    );
    let sessions = scalar(&c, "SELECT count(*) FROM analytics.sessions").await;
    assert_eq!(
        sessions,
        valid.len() as i64,
        "each valid case is its own user"
    );
    for product in ["Ü-雨-🛒", &"é".repeat(64)] {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM analytics.product_minute WHERE product_id = $1",
                &[&product],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{product} stored as sent");
    }
    let cafe: i64 = c
        .query_one(
            "SELECT count(*) FROM analytics.category_minute WHERE category = $1",
            &[&"café 😀"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cafe, 1, "escapes decoded");

    let dead = read_topic(&s.bootstrap, &dlq, 1, bad, Duration::from_secs(30));
    assert_eq!(dead.len(), bad, "one dead letter per bad record");
    for (d, case) in dead
        .iter()
        .zip(cases.iter().filter(|c| c.outcome != Outcome::Valid))
    {
        let h: HashMap<&str, &str> = d
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let Outcome::Rejected(reason) = case.outcome else {
            unreachable!()
        };
        assert_eq!(h["reason"], reason, "{}", case.name);
        assert!(!h["detail"].chars().any(char::is_control));
        let limit = clickstream_processor::kafka::DLQ_MAX_PAYLOAD;
        assert_eq!(
            d.value,
            case.value[..case.value.len().min(limit)],
            "{}",
            case.name
        );
        if case.value.len() > limit {
            assert_eq!(h["original.size"], case.value.len().to_string());
        }
    }
    p.stop();
    db.drop().await;
}

/// A record the contract accepts but PostgreSQL refuses (here: a CHECK constraint the
/// test adds, standing in for any data error) is split out of its batch, dead-lettered as
/// `unstorable`, and everything around it commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_postgres_refuses_is_split_out_and_dead_lettered() {
    let s = services();
    let db = TestDb::create(&s).await;
    let c = connect(&db.admin_url).await;
    c.batch_execute(
        "ALTER TABLE analytics.product_minute
           ADD CONSTRAINT test_no_poison CHECK (product_id <> 'POISON')",
    )
    .await
    .unwrap();
    let topic = unique("poison");
    let dlq = unique("dlq");
    create_topic(&s.bootstrap, &topic, 1).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let n = 3000usize;
    let poison_at = 1234usize;
    let records: Vec<_> = (0..n)
        .map(|i| {
            let mut v = corpus::purchase(5 + (i % 7) as i64);
            if i == poison_at {
                v["product_id"] = serde_json::json!("POISON");
            }
            (Some(b"k".to_vec()), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    produce(&s, &topic, &records);

    let group = unique("g");
    let mut p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let ends = HashMap::from([(0, n as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(120),
    )
    .await;
    assert!(p.is_running());
    let rows = c
        .query(
            "SELECT kafka_offset, reason, detail FROM analytics.rejected_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "only the refused record is dead-lettered");
    assert_eq!(rows[0].get::<_, i64>(0), poison_at as i64);
    assert_eq!(rows[0].get::<_, String>(1), "unstorable");
    let detail: String = rows[0].get(2);
    assert!(detail.contains("test_no_poison"), "{detail}");
    let events = scalar(
        &c,
        "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute",
    )
    .await;
    assert_eq!(events, n as i64 - 1, "everything else is counted once");
    let m = p.scrape_metrics();
    assert!(metric(&m, "clickstream_processor_batches_split_total") >= 1.0);
    assert_eq!(
        metric(&m, "clickstream_processor_consecutive_failures"),
        0.0
    );
    let dead = read_topic(&s.bootstrap, &dlq, 1, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, records[poison_at].1);
    p.stop();
    db.drop().await;
}

/// While every batch fails for a reason that is not the data's (the writer lost a
/// privilege), the processor backs off exponentially and says it is stalled, in
/// `/metrics`, the heartbeat and `status`; once fixed it recovers without loss.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_database_is_retried_with_backoff_and_reported_as_stalled() {
    let s = services();
    let db = TestDb::create(&s).await;
    let c = connect(&db.admin_url).await;
    let writer = clickstream_db::migrate::WRITER_ROLE;
    c.batch_execute(&format!(
        "REVOKE INSERT ON analytics.metrics_minute FROM {writer}"
    ))
    .await
    .unwrap();
    let topic = unique("stall");
    let dlq = unique("dlq");
    create_topic(&s.bootstrap, &topic, 1).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let n = 200usize;
    let records: Vec<_> = (0..n)
        .map(|_| {
            (
                Some(b"k".to_vec()),
                serde_json::to_vec(&corpus::purchase(5)).unwrap(),
            )
        })
        .collect();
    produce(&s, &topic, &records);
    let group = unique("g");
    let mut p = Processor::start(
        &s,
        &db,
        &topic,
        &dlq,
        &group,
        &["--retry-max-backoff", "4s"],
    );

    // Failing for 20 s: with backoff (0.2, 0.4, 0.8, 1.6, 3.2, then 4 s) that is about a
    // dozen attempts; without it, hundreds.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(p.is_running());
    let m = p.scrape_metrics();
    let failures = metric(&m, "clickstream_processor_consecutive_failures");
    assert!(
        (4.0..=16.0).contains(&failures),
        "{failures} attempts in 20 s"
    );
    assert!(metric(&m, "clickstream_processor_stalled_since_timestamp_seconds") > 0.0);
    let row = c
        .query_one(
            "SELECT consecutive_failures, stalled_since IS NOT NULL, last_error
               FROM analytics.processor_heartbeat WHERE consumer_group = $1",
            &[&group],
        )
        .await
        .unwrap();
    assert!(row.get::<_, i32>(0) >= 4);
    assert!(row.get::<_, bool>(1));
    let last_error: String = row.get(2);
    assert!(last_error.contains("permission denied"), "{last_error}");
    let status = clickstream()
        .args([
            "status",
            "--bootstrap",
            &s.bootstrap,
            "--topic",
            &topic,
            "--group",
            &group,
        ])
        .args(["--database-url", &db.reader_url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("STALLED"), "{out}");
    assert!(out.contains("permission denied"), "{out}");

    c.batch_execute(&format!(
        "GRANT INSERT ON analytics.metrics_minute TO {writer}"
    ))
    .await
    .unwrap();
    let ends = HashMap::from([(0, n as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    let events = scalar(
        &c,
        "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute",
    )
    .await;
    assert_eq!(events, n as i64);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failures: i32 = c
            .query_one(
                "SELECT consecutive_failures FROM analytics.processor_heartbeat WHERE consumer_group = $1",
                &[&group],
            )
            .await
            .unwrap()
            .get(0);
        // The row is committed with the batch; the gauge is reset just after the commit.
        let gauge = metric(
            &p.scrape_metrics(),
            "clickstream_processor_consecutive_failures",
        );
        if failures == 0 && gauge == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "stall state not cleared");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.contains("committing again after failures"), "{log}");
    p.stop();
    db.drop().await;
}

/// A source topic that does not exist stops the processor at once with a message naming
/// it and how to create it; a missing dead-letter topic is created.
#[tokio::test(flavor = "multi_thread")]
async fn missing_topics_fail_once_with_a_clear_message_or_are_created() {
    let s = services();
    let db = TestDb::create(&s).await;
    let missing = unique("mine_raw");
    let dlq = unique("mine_dlq");
    let started = Instant::now();
    let mut child = clickstream()
        .args(["process", "--bootstrap", &s.bootstrap, "--topic", &missing])
        .args(["--dlq-topic", &dlq, "--group", &unique("g")])
        .args([
            "--database-url",
            &db.writer_url,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("a missing source topic must stop the processor at once");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing) && err.contains("kafka-topics"),
        "{err}"
    );
    assert_eq!(err.matches("does not exist").count(), 1, "said once: {err}");

    let topic = unique("raw");
    create_topic(&s.bootstrap, &topic, 2).await;
    produce(&s, &topic, &[(None, b"not json".to_vec())]);
    let group = unique("g");
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    // Created with the cluster's default partition count.
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        let md = rdkafka::consumer::Consumer::fetch_metadata(
            &consumer,
            Some(&dlq),
            Duration::from_secs(10),
        )
        .unwrap();
        let n = md.topics()[0].partitions().len() as i32;
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "dead-letter topic not created");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let dead = read_topic(&s.bootstrap, &dlq, partitions, 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "the dead-letter topic was created and used");
    p.stop();
    db.drop().await;
}

/// The dead-letter topic disappears while running: batches keep committing with their
/// rejects recorded as pending in PostgreSQL; when the topic is back they are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_outage_never_holds_up_the_stream() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("raw");
    let dlq = unique("dlq");
    create_topic(&s.bootstrap, &topic, 1).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let group = unique("g");
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    produce(&s, &topic, &[(None, b"bad 0".to_vec())]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &HashMap::from([(0, 1)]),
        Duration::from_secs(60),
    )
    .await;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .unwrap();
    for r in admin
        .delete_topics(&[&dlq], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let mut records = Vec::new();
    for i in 0..20 {
        records.push((None, format!("bad {}", i + 1).into_bytes()));
        records.push((None, serde_json::to_vec(&corpus::purchase(3)).unwrap()));
    }
    produce(&s, &topic, &records);
    let ends = HashMap::from([(0, 1 + records.len() as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(90),
    )
    .await;
    let c = connect(&db.admin_url).await;
    assert_eq!(
        scalar(
            &c,
            "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute"
        )
        .await,
        20
    );
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM analytics.rejected_events").await,
        21
    );
    assert!(
        scalar(
            &c,
            "SELECT count(*) FROM analytics.rejected_events WHERE dlq_pending"
        )
        .await
            > 0,
        "rejects of the outage are recorded as pending"
    );

    create_topic(&s.bootstrap, &dlq, 1).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while scalar(
        &c,
        "SELECT count(*) FROM analytics.rejected_events WHERE dlq_pending",
    )
    .await
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "pending dead letters not delivered"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dead = read_topic(&s.bootstrap, &dlq, 1, 20, Duration::from_secs(30));
    let mut offsets: Vec<i64> = dead
        .iter()
        .filter_map(|d| {
            d.headers
                .iter()
                .find(|(k, _)| k == "source.offset")
                .and_then(|(_, v)| v.parse().ok())
        })
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    let want: Vec<i64> = (0..20).map(|i| 1 + 2 * i).collect();
    assert_eq!(
        offsets, want,
        "every reject of the outage reached the new topic"
    );
    p.stop();
    db.drop().await;
}

/// Alerts are an outbox: one committed but never handed to the sinks (the instance died
/// in between) is delivered by the next instance, once, and marked notified.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_committed_but_not_notified_is_delivered_after_a_restart() {
    let s = services();
    let db = TestDb::create(&s).await;
    let c = connect(&db.admin_url).await;
    c.batch_execute(
        "INSERT INTO analytics.flash_sale_alerts
                (window_start, window_end, product_id, views, purchases, notified_at)
         VALUES (now() - interval '20 minutes', now() - interval '10 minutes', 'P-OUTBOX', 250, 1, NULL),
                (now() - interval '30 minutes', now() - interval '20 minutes', 'P-DONE', 300, 0, now())",
    )
    .await
    .unwrap();
    let topic = unique("raw");
    create_topic(&s.bootstrap, &topic, 1).await;
    let dlq = dead_letter_topic(&s).await;
    let p = Processor::start(&s, &db, &topic, &dlq, &unique("g"), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &c,
        "SELECT count(*) FROM analytics.flash_sale_alerts WHERE notified_at IS NULL",
    )
    .await
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "undelivered alert left in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert_eq!(log.matches("P-OUTBOX").count(), 1, "{log}");
    assert!(
        !log.contains("P-DONE"),
        "a delivered alert is not delivered again"
    );
    p.stop();
    db.drop().await;
}

/// Records Kafka's retention deleted while the processor was down are reported (log and
/// metric) when it resumes at the log's start, and everything after them is processed.
#[tokio::test(flavor = "multi_thread")]
async fn records_lost_to_retention_while_down_are_reported() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("retention");
    create_topic(&s.bootstrap, &topic, 1).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let batch = |n: usize| -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        (0..n)
            .map(|_| (None, serde_json::to_vec(&corpus::purchase(4)).unwrap()))
            .collect()
    };
    produce(&s, &topic, &batch(100));
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let ends = HashMap::from([(0, 100)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    p.stop();

    produce(&s, &topic, &batch(100));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(150))
        .unwrap();
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();

    let p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let ends = HashMap::from([(0, 200)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    let c = connect(&db.admin_url).await;
    assert_eq!(
        scalar(
            &c,
            "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute"
        )
        .await,
        150
    );
    assert_eq!(
        metric(
            &p.scrape_metrics(),
            "clickstream_processor_lost_to_retention_total"
        ),
        50.0
    );
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.contains("deleted by Kafka retention"), "{log}");
    p.stop();
    db.drop().await;
}
