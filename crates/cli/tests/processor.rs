//! End-to-end tests of `clickstream process` against real Kafka and PostgreSQL: exact
//! results against an independent reference, kill -9 restarts, a rebalance with an
//! instance killed, three instances on hot products, and re-sends across restarts. Bad
//! input is in `unstoppable.rs`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clickstream_model::{EventTime, ValidationPolicy};
use support::reference::{self, Expected, Semantics};
use support::tables::{actual, assert_tables_equal};
use support::*;

const SEM: Semantics = reference::TEST_SEM;

fn processor_flags() -> Vec<&'static str> {
    let mut f = reference::TEST_SEM_FLAGS.to_vec();
    // The exactness test also checks the optional audit table.
    f.push("--audit");
    f
}

fn policy() -> ValidationPolicy {
    // The processor validates against its wall clock; the data is a few hours old, far from
    // both bounds, so a fixed "now" here classifies every record the same way.
    ValidationPolicy::new(EventTime::now())
}

/// A topic being filled by the simulator (event time starting 3 hours ago).
struct Feed {
    topic: String,
    partitions: i32,
    n: usize,
    child: std::process::Child,
}

/// Starts streaming `n` simulated records into a new topic: flat out, or paced at
/// `speed` times real time (100 events per second of event time) so that processors
/// consume them live.
async fn start_feed(
    s: &Services,
    partitions: i32,
    n: usize,
    seed: u64,
    speed: Option<f64>,
) -> Feed {
    let topic = unique("raw");
    create_topic(&s.bootstrap, &topic, partitions).await;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 3 * 3_600_000).to_string();
    let mut cmd = clickstream();
    cmd.args([
        "generate",
        "--sink",
        "kafka",
        "--bootstrap",
        &s.bootstrap,
        "--topic",
        &topic,
    ])
    .args(["--count", &n.to_string()])
    .args([
        "--seed",
        &seed.to_string(),
        "--start",
        &start,
        "--eps",
        "100",
        "--no-catalog",
    ])
    .args([
        "--late-rate",
        "0.03",
        "--late-mean-secs",
        "25",
        "--duplicate-rate",
        "0.02",
    ])
    .args([
        "--malformed-rate",
        "0.01",
        "--flash-sale-every",
        "10m",
        "--flash-sale-duration",
        "3m",
    ])
    .args([
        "--flash-sale-share",
        "0.5",
        "--users",
        "5000",
        "--progress",
        "never",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    match speed {
        Some(x) => cmd.args(["--speed", &x.to_string()]),
        None => cmd.arg("--no-pacing"),
    };
    Feed {
        topic,
        partitions,
        n,
        child: cmd.spawn().expect("start generator"),
    }
}

/// Waits for the generator and reads back everything it produced.
fn finish_feed(s: &Services, mut feed: Feed) -> (String, Vec<Rec>) {
    let status = feed.child.wait().unwrap();
    assert!(status.success(), "generator failed");
    let records = read_topic(
        &s.bootstrap,
        &feed.topic,
        feed.partitions,
        feed.n,
        Duration::from_secs(60),
    );
    assert_eq!(records.len(), feed.n);
    (feed.topic, records)
}

/// A fresh single-partition dead-letter topic.
/// Waits until the processors committed every record, plus one idle round so alert
/// evaluation sees the final global watermark.
async fn settle(db: &TestDb, group: &str, topic: &str, ends: &HashMap<i32, i64>) {
    wait_caught_up(&db.admin_url, group, topic, ends, Duration::from_secs(300)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn expected_for(records: &[Rec]) -> Expected {
    let raw: Vec<(i32, i64, Vec<u8>)> = records
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect();
    reference::compute(&raw, &policy(), SEM)
}

/// Every table equals the reference; also checks the data exercised every path.
fn assert_exact(want: &Expected, got: &Expected) {
    assert_tables_equal(want, got);
    // The run must have exercised what it claims to check.
    assert!(
        want.late.values().any(|a| *a) && want.late.values().any(|a| !*a),
        "late events of both kinds"
    );
    assert!(!want.alerts.is_empty(), "some flash-sale alerts");
    assert!(
        want.sessions.values().any(|s| !s.8) && want.sessions.values().any(|s| s.8),
        "open and closed sessions"
    );
    assert!(want.rejected.len() > 100);
}

/// `clickstream status` of `group` on `topic`, as the reader role.
fn run_status(s: &Services, db: &TestDb, group: &str, topic: &str) -> std::process::Output {
    clickstream()
        .args(["status", "--database-url", &db.reader_url])
        .args([
            "--bootstrap",
            &s.bootstrap,
            "--group",
            group,
            "--topic",
            topic,
        ])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn results_equal_an_independent_reference() {
    let s = services();
    let db = TestDb::create(&s).await;
    let (topic, records) = finish_feed(&s, start_feed(&s, 4, 200_000, 101, None).await);
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags());
    settle(&db, &group, &topic, &end_offsets(&records)).await;
    let want = expected_for(&records);

    // The operational views agree with the data: Prometheus counters and `status`.
    let metrics = p.scrape_metrics();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(
        value("clickstream_processor_records_in_total"),
        records.len() as f64
    );
    assert_eq!(
        value("clickstream_processor_events_valid_total"),
        want.distinct_events as f64
    );
    assert_eq!(
        value("clickstream_processor_rejected_total"),
        want.rejected.len() as f64
    );
    assert_eq!(
        value("clickstream_processor_late_events_total"),
        want.late.len() as f64
    );
    assert_eq!(
        value("clickstream_processor_flash_sale_alerts_total"),
        want.alerts.len() as f64
    );
    // Re-sends of the in-flight batch are caught in memory, not by a failed COPY and a
    // retry: an undisturbed run abandons nothing.
    assert!(metrics.contains("\nclickstream_processor_batches_abandoned_total "));
    assert_eq!(value("clickstream_processor_batches_abandoned_total"), 0.0);
    let status = run_status(&s, &db, &group, &topic);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("total lag: 0 records"), "{text}");
    assert!(
        text.contains(&format!("{} events", want.distinct_events)),
        "{text}"
    );

    p.stop();
    assert_exact(&want, &actual(&db).await);
    let after = run_status(&s, &db, &group, &topic);
    let text = String::from_utf8_lossy(&after.stdout);
    assert!(
        text.contains("(stopped)"),
        "a clean stop shows in status: {text}"
    );

    // Every rejected record is in the dead-letter topic, untouched, with its reason.
    let dead = read_topic(
        &s.bootstrap,
        &dlq,
        1,
        want.rejected.len(),
        Duration::from_secs(30),
    );
    let by_source: HashMap<(i32, i64), &Rec> = records
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let mut dlq_seen = BTreeMap::new();
    for d in &dead {
        let h: HashMap<&str, &str> = d
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let src = (
            h["source.partition"].parse().unwrap(),
            h["source.offset"].parse().unwrap(),
        );
        assert_eq!(
            by_source[&src].value, d.value,
            "dead letters carry the payload untouched"
        );
        dlq_seen.insert(src, h["reason"].to_string());
    }
    assert_eq!(dlq_seen, want.rejected);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_changes_nothing() {
    let s = services();
    let db = TestDb::create(&s).await;
    // The simulator streams live (~2,000 records/s for ~75 s) while the processor is
    // killed and restarted every 8-10 s (longer than the 6 s group session timeout, so
    // a new instance usually gets its partitions and works before it is killed).
    let feed = start_feed(&s, 4, 150_000, 202, Some(20.0)).await;
    let topic = feed.topic.clone();
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let mut progress = Vec::new();
    let mut p = Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags());
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(8000 + random_u64() % 2000)).await;
        assert!(p.is_running(), "processor died on its own");
        p.kill9();
        progress.push(committed(&db.admin_url, &group, &topic).await);
        p = Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags());
    }
    let (_, records) = finish_feed(&s, feed);
    let ends = end_offsets(&records);
    let total: i64 = ends.values().sum();
    let mid_run = progress.iter().filter(|&&c| c > 0 && c < total).count();
    assert!(
        mid_run >= 5,
        "kills must land mid-run; committed at each kill: {progress:?} of {total}"
    );
    let worked = progress.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        worked >= 3,
        "restarted instances must commit before the next kill: {progress:?}"
    );
    settle(&db, &group, &topic, &ends).await;
    p.stop();
    let want = expected_for(&records);
    assert_exact(&want, &actual(&db).await);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_with_an_instance_killed_is_exact() {
    let s = services();
    let db = TestDb::create(&s).await;
    let feed = start_feed(&s, 6, 150_000, 303, Some(50.0)).await;
    let topic = feed.topic.clone();
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let a = Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags());
    let b = Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags());
    let c = Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = committed(&db.admin_url, &group, &topic).await;
    b.kill9();
    let (_, records) = finish_feed(&s, feed);
    let ends = end_offsets(&records);
    let total: i64 = ends.values().sum();
    assert!(
        before > 0 && before < total,
        "the kill must land mid-run: {before} of {total} committed"
    );
    settle(&db, &group, &topic, &ends).await;
    a.stop();
    c.stop();
    let want = expected_for(&records);
    assert_exact(&want, &actual(&db).await);
    db.drop().await;
}

/// Three instances on a feed concentrated on a few hot products, so every batch of every
/// instance upserts the same product, category and window rows: they wait for each other
/// (rows in key order) instead of deadlocking, nothing is retried, and the tables are exact.
#[tokio::test(flavor = "multi_thread")]
async fn three_instances_on_hot_products_never_deadlock_or_retry() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("hot");
    create_topic(&s.bootstrap, &topic, 6).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let instances: Vec<Processor> = (0..3)
        .map(|_| Processor::start(&s, &db, &topic, &dlq, &group, &processor_flags()))
        .collect();
    // The group settles on the empty topic first: a rebalance in mid-stream fences a batch
    // on purpose, and that retry is not what this test is about.
    wait_settled(&instances).await;
    let n = 80_000;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 3 * 3_600_000).to_string();
    let out = clickstream()
        .args(["generate", "--sink", "kafka", "--bootstrap", &s.bootstrap])
        .args([
            "--topic",
            &topic,
            "--no-pacing",
            "--no-catalog",
            "--progress",
            "never",
        ])
        .args(["--count", &n.to_string(), "--seed", "11", "--start", &start])
        .args(["--eps", "150", "--products", "8", "--popularity-skew", "2"])
        .args([
            "--users",
            "4000",
            "--late-rate",
            "0.03",
            "--late-mean-secs",
            "25",
        ])
        .args(["--flash-sale-every", "10m", "--flash-sale-duration", "3m"])
        .args(["--flash-sale-share", "0.5", "--malformed-rate", "0.01"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = read_topic(&s.bootstrap, &topic, 6, n, Duration::from_secs(60));
    let ends = end_offsets(&records);
    settle(&db, &group, &topic, &ends).await;
    for p in &instances {
        let m = p.scrape_metrics();
        assert!(
            m.contains("\nclickstream_processor_batches_abandoned_total 0\n"),
            "a batch was retried: {}",
            p.log.display()
        );
        let log = std::fs::read_to_string(&p.log).unwrap();
        assert!(!log.contains("deadlock") && !log.contains("40P01"), "{log}");
    }
    for p in instances {
        p.stop();
    }
    let want = expected_for(&records);
    assert_exact(&want, &actual(&db).await);
    db.drop().await;
}

/// Waits until every instance's last assignment change gave it partitions.
async fn wait_settled(instances: &[Processor]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let owners = instances
            .iter()
            .filter(|p| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                log.lines()
                    .rev()
                    .find(|l| l.contains("assigned;") || l.contains("revoked"))
                    .is_some_and(|l| l.contains("assigned;"))
            })
            .count();
        if owners == instances.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group did not settle"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// A re-send reaching a partition that another instance owns, after both started: that
/// instance never staged the key and its view of the ledger is older, so it skips the
/// probe; the ledger's primary key refuses the second recording and the retried batch
/// probes the key. Counted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_resend_to_another_instances_partition_counts_once() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("cross");
    create_topic(&s.bootstrap, &topic, 2).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let instances: Vec<Processor> = (0..2)
        .map(|_| Processor::start(&s, &db, &topic, &dlq, &group, &[]))
        .collect();
    wait_settled(&instances).await;
    let caught_up = |ends: HashMap<i32, i64>| {
        let url = db.admin_url.clone();
        let (group, topic) = (group.clone(), topic.clone());
        async move { wait_caught_up(&url, &group, &topic, &ends, Duration::from_secs(60)).await }
    };
    // Partition 1's owner reads the ledger's newest time with its first batch: before the
    // event below exists.
    produce_to(&s, &topic, 1, &[(Some(b"b".to_vec()), good_event(6))]);
    caught_up(HashMap::from([(1, 1)])).await;
    let event = good_event(5);
    produce_to(&s, &topic, 0, &[(Some(b"a".to_vec()), event.clone())]);
    caught_up(HashMap::from([(0, 1), (1, 1)])).await;
    // The same record under another key: a producer that keys records differently, or none.
    produce_to(&s, &topic, 1, &[(Some(b"b".to_vec()), event)]);
    caught_up(HashMap::from([(0, 1), (1, 2)])).await;
    // A second crossing re-send: the instance now probes every key for a while, so this
    // one costs no retried batch.
    let second = good_event(4);
    produce_to(&s, &topic, 0, &[(Some(b"a".to_vec()), second.clone())]);
    caught_up(HashMap::from([(0, 2), (1, 2)])).await;
    produce_to(&s, &topic, 1, &[(Some(b"b".to_vec()), second)]);
    caught_up(HashMap::from([(0, 2), (1, 3)])).await;

    // Counted after the commit, so give the counters a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let records: Vec<f64> = instances
            .iter()
            .map(|p| {
                metric(
                    &p.scrape_metrics(),
                    "clickstream_processor_records_in_total",
                )
            })
            .collect();
        if records.iter().all(|n| *n >= 1.0) && records.iter().sum::<f64>() >= 5.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "each instance reads its partition's records: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The first crossing re-send's recording was refused by the ledger and its batch
    // retried (the path this test is about ran); the second was probed.
    let abandoned: f64 = instances
        .iter()
        .map(|p| {
            metric(
                &p.scrape_metrics(),
                "clickstream_processor_batches_abandoned_total",
            )
        })
        .sum();
    assert_eq!(abandoned, 1.0);
    for p in instances {
        p.stop();
    }
    let c = connect(&db.admin_url).await;
    let row = c
        .query_one(
            "SELECT (SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute),
                    (SELECT coalesce(sum(purchases), 0)::int8 FROM analytics.product_minute),
                    (SELECT count(*) FROM analytics.purchases),
                    (SELECT count(*) FROM analytics.seen_events)",
            &[],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        counts,
        (3, 3, 3, 3),
        "events, product purchases, lines, keys"
    );
    db.drop().await;
}

fn good_event(minutes_ago: i64) -> Vec<u8> {
    serde_json::to_vec(&support::corpus::purchase(minutes_ago)).unwrap()
}

/// Produces `payloads` to partition 0 of `topic`, all with one key.
fn produce_all(s: &Services, topic: &str, payloads: &[Vec<u8>]) {
    let records: Vec<_> = payloads
        .iter()
        .map(|p| (Some(b"k".to_vec()), p.clone()))
        .collect();
    produce(s, topic, &records);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resend_counts_once_after_a_restart_and_a_reused_id_at_another_time_twice() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("dedup");
    let dlq = dead_letter_topic(&s).await;
    create_topic(&s.bootstrap, &topic, 1).await;
    let original = good_event(10);
    let mut reused: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let t = EventTime::now().as_micros() - 9 * 60_000_000;
    reused["timestamp"] = serde_json::json!(EventTime::from_micros(t).to_string());
    let reused = serde_json::to_vec(&reused).unwrap();

    let group = unique("g");
    // The second run knows the first run's event only from the ledger in PostgreSQL.
    let runs = [vec![original.clone()], vec![original, reused]];
    let mut end = 0;
    for payloads in &runs {
        produce_all(&s, &topic, payloads);
        end += payloads.len() as i64;
        let p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
        let ends = HashMap::from([(0, end)]);
        wait_caught_up(
            &db.admin_url,
            &group,
            &topic,
            &ends,
            Duration::from_secs(60),
        )
        .await;
        p.stop();
    }

    let c = connect(&db.admin_url).await;
    let row = c
        .query_one(
            "SELECT (SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute),
                    (SELECT count(*) FROM analytics.seen_events),
                    (SELECT count(DISTINCT event_id) FROM analytics.seen_events),
                    (SELECT coalesce(sum(duplicates), 0)::int8 FROM analytics.processor_heartbeat)",
            &[],
        )
        .await
        .unwrap();
    let (events, keys, ids, dups): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(events, 2, "the original and the reused id at another time");
    assert_eq!((keys, ids), (2, 1), "two ledger keys, one id");
    assert_eq!(dups, 1, "the re-send is counted as a duplicate");
    db.drop().await;
}
