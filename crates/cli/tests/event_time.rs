//! Event time when the input misbehaves: a feed that stops (every session must close and
//! every flash-sale window be decided, also on a topic where only some partitions get
//! traffic) and a client with a wrong clock (one event an hour ahead must change nothing
//! else). Real Kafka, real PostgreSQL, compared with the independent reference.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clickstream_model::{Event, EventTime, EventType, Money, ValidationPolicy};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use support::reference::{self, Options, Semantics};
use support::tables::{actual, assert_tables_equal};
use support::*;
use uuid::Uuid;

const SEM: Semantics = reference::TEST_SEM;

/// [`reference::TEST_SEM`]'s flags and this file's own.
fn flags() -> Vec<&'static str> {
    let mut f = reference::TEST_SEM_FLAGS.to_vec();
    f.extend(["--audit", "--batch-max-wait=100ms"]);
    f
}

fn raw(records: &[Rec]) -> Vec<(i32, i64, Vec<u8>)> {
    records
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect()
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    connect(&db.admin_url)
        .await
        .query_one(sql, &[])
        .await
        .expect(sql)
        .get(0)
}

/// A shop's topic has 6 partitions but traffic on only 3. After the feed stops and the
/// idle timeout passes, every session is closed and the alerts equal a reference that
/// decides every window.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_feed_closes_every_session_and_decides_every_window() {
    let s = services();
    let db = TestDb::create(&s).await;
    // Simulated traffic (3 hours ago) on a 3-partition topic, copied partition for
    // partition onto 0-2 of a 6-partition one.
    let source = unique("src");
    create_topic(&s.bootstrap, &source, 3).await;
    let n = 20_000;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 3 * 3_600_000).to_string();
    let out = clickstream()
        .args(["generate", "--sink", "kafka", "--bootstrap", &s.bootstrap])
        .args(["--topic", &source, "--no-pacing", "--no-catalog"])
        .args(["--count", &n.to_string(), "--seed", "7", "--start", &start])
        .args(["--eps", "20", "--users", "3000", "--flash-sale-every", "5m"])
        .args(["--flash-sale-duration", "3m", "--flash-sale-share", "0.5"])
        .args(["--late-rate", "0.03", "--late-mean-secs", "25"])
        .args(["--progress", "never"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = read_topic(&s.bootstrap, &source, 3, n, Duration::from_secs(60));
    assert_eq!(src.len(), n);
    let topic = unique("raw");
    create_topic(&s.bootstrap, &topic, 6).await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut by_partition = src.clone();
    by_partition.sort_by_key(|r| (r.partition, r.offset));
    for r in &by_partition {
        let mut rec = BaseRecord::<[u8], [u8]>::to(&topic)
            .partition(r.partition)
            .payload(r.value.as_slice());
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        while let Err((e, back)) = producer.send(rec) {
            assert!(format!("{e}").contains("Queue full"), "{e}");
            producer.poll(Duration::from_millis(10));
            rec = back;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let records = read_topic(&s.bootstrap, &topic, 6, n, Duration::from_secs(60));
    assert_eq!(records.len(), n);

    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let mut flags = flags();
    flags.extend(["--idle-timeout", "5s"]);
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &flags);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &end_offsets(&records),
        Duration::from_secs(180),
    )
    .await;
    let policy = ValidationPolicy::new(EventTime::now());
    let drained = Options {
        drained: true,
        ..Options::default()
    };
    let want = reference::compute_with(&raw(&records), &policy, SEM, &drained);
    assert!(!want.alerts.is_empty(), "the feed has flash sales");
    // Idle timeout (5 s) + the next idle round (2 s) + commit, with room for a slow machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = scalar(&db, "SELECT count(*) FROM analytics.sessions WHERE is_open").await;
        let alerts = scalar(&db, "SELECT count(*) FROM analytics.flash_sale_alerts").await;
        if open == 0 && alerts == want.alerts.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the feed stopped: {open} sessions still open, {alerts} of {} alerts",
            want.alerts.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The empty partitions have watermarks too (they no longer hold event time back).
    let with_watermark = scalar(
        &db,
        "SELECT count(*) FROM analytics.consumer_offsets WHERE watermark IS NOT NULL",
    )
    .await;
    assert_eq!(with_watermark, 6);
    let idle = scalar(
        &db,
        "SELECT count(*) FROM analytics.consumer_offsets WHERE idle_since IS NOT NULL",
    )
    .await;
    assert_eq!(idle, 6, "every partition is marked idle");
    let status = clickstream()
        .args(["status", "--bootstrap", &s.bootstrap, "--topic", &topic])
        .args(["--group", &group, "--database-url", &db.reader_url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert_eq!(out.matches("idle for").count(), 6, "{out}");
    assert!(p
        .scrape_metrics()
        .contains("\nclickstream_processor_idle_partitions 6\n"));
    assert_tables_equal(&want, &actual(&db).await);
    // Every alert went through the outbox to the log sink, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while scalar(
        &db,
        "SELECT count(*) FROM analytics.flash_sale_alerts WHERE notified_at IS NULL",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "alerts left undelivered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert_eq!(log.matches("flash-sale alert").count(), want.alerts.len());
    p.stop();
    db.drop().await;
}

fn live_event(user: Uuid, at: EventTime, kind: EventType, product: &str) -> Event {
    let mut e = Event::new(Uuid::new_v4(), kind, at, user, user);
    e.product_id = Some(product.into());
    e.category = Some("toys".into());
    if kind != EventType::PageView {
        e.price = Some(Money(1000));
        e.quantity = Some(1);
    }
    if kind == EventType::Purchase {
        e.order_id = Some(Uuid::new_v4());
        e.amount = Some(Money(1000));
    }
    e
}

/// A live feed (events stamped when they are sent) with one event from a client whose
/// clock is 59 minutes ahead: nothing after it is late, no session is closed early, and
/// every table equals the reference in which that event drives the watermark only up to
/// the clock.
#[tokio::test(flavor = "multi_thread")]
async fn one_event_from_a_clock_an_hour_ahead_changes_nothing_else() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("live");
    create_topic(&s.bootstrap, &topic, 1).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &flags());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let users: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let skewed_user = Uuid::new_v4();
    let mut clock: HashMap<Uuid, i64> = HashMap::new();
    let n = 1200;
    let started = Instant::now();
    for i in 0..n {
        // 100 events a second, stamped now.
        let due = started + Duration::from_millis(10 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = EventTime::now();
        let kind = match i % 10 {
            9 => EventType::Purchase,
            7 | 8 => EventType::AddToCart,
            _ => EventType::PageView,
        };
        let e = live_event(users[i % users.len()], now, kind, &format!("P{}", i % 5));
        clock.insert(e.event_id, now.as_micros());
        let send = |e: &Event| {
            let bytes = e.to_json();
            producer
                .send(
                    BaseRecord::<[u8], [u8]>::to(&topic)
                        .key(e.user_id.as_bytes().as_slice())
                        .payload(bytes.as_slice()),
                )
                .unwrap();
            producer.poll(Duration::ZERO);
        };
        send(&e);
        if i == n / 3 {
            let ahead = now.add_micros(59 * 60 * 1_000_000);
            let skewed = live_event(skewed_user, ahead, EventType::PageView, "P0");
            clock.insert(skewed.event_id, now.as_micros());
            send(&skewed);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let records = read_topic(&s.bootstrap, &topic, 1, n + 1, Duration::from_secs(60));
    assert_eq!(records.len(), n + 1);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &end_offsets(&records),
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut opts = Options::default();
    for r in &records {
        let e = clickstream_model::parse_event(&r.value, &ValidationPolicy::new(EventTime::now()))
            .unwrap();
        opts.clock
            .insert((r.partition, r.offset), clock[&e.event_id]);
    }
    let policy = ValidationPolicy::new(EventTime::now());
    let want = reference::compute_with(&raw(&records), &policy, SEM, &opts);
    assert!(want.late.is_empty(), "the reference sees nothing late");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM analytics.late_events").await,
        0
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT coalesce(sum(future_events), 0)::int8 FROM analytics.metrics_minute"
        )
        .await,
        1,
        "the event ahead of the clock is counted as future"
    );
    let open = scalar(&db, "SELECT count(*) FROM analytics.sessions WHERE is_open").await;
    assert_eq!(open, users.len() as i64 + 1, "no session closed early");
    assert_tables_equal(&want, &actual(&db).await);
    p.stop();
    db.drop().await;
}

/// Partitions added to the topic while the processor runs are assigned and processed
/// (librdkafka notices them at its metadata refresh, 30 s here).
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_while_running_are_picked_up() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("grow");
    create_topic(&s.bootstrap, &topic, 2).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &flags());
    let send = |partitions: std::ops::Range<i32>| {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &s.bootstrap)
            .create()
            .unwrap();
        for partition in partitions {
            for _ in 0..10 {
                let e = live_event(
                    Uuid::new_v4(),
                    EventTime::from_micros(EventTime::now().as_micros() - 60_000_000),
                    EventType::PageView,
                    "P1",
                );
                let bytes = e.to_json();
                producer
                    .send(
                        BaseRecord::<[u8], [u8]>::to(&topic)
                            .partition(partition)
                            .payload(bytes.as_slice()),
                    )
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    send(0..2);
    let ends: HashMap<i32, i64> = (0..2).map(|p| (p, 10)).collect();
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;

    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_partitions([&NewPartitions::new(&topic, 4)], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    send(2..4);
    let ends: HashMap<i32, i64> = (0..4).map(|p| (p, 10)).collect();
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute"
        )
        .await,
        40
    );
    p.stop();
    db.drop().await;
}
