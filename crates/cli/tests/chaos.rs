//! Chaos, bounded to a few minutes: three processor instances in one group on a live feed
//! concentrated on a few hot products, with the bad-record corpus mixed in; over twenty
//! `kill -9` at random moments, one PostgreSQL crash (immediate stop) and one `kill -9` of
//! the Kafka broker, each restarted after an instance was started during the outage. Afterwards every table equals the independent
//! reference, nothing deadlocked, and no batch was retried more than a few times.
//!
//! Alone in its test binary: it stops the shared broker and database.

mod support;

use std::time::{Duration, Instant};

use clickstream_model::{EventTime, ValidationPolicy};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use support::corpus::{self, Case, Outcome};
use support::reference::{self, Semantics};
use support::tables::{actual, assert_tables_equal};
use support::*;

const SEM: Semantics = reference::TEST_SEM;

/// [`reference::TEST_SEM`]'s flags and this file's own.
fn flags() -> Vec<&'static str> {
    let mut f = reference::TEST_SEM_FLAGS.to_vec();
    f.extend(["--audit", "--retry-max-backoff", "5s"]);
    f
}

/// Sends corpus cases to the given partitions of `topic`.
fn send_cases(s: &Services, topic: &str, cases: &[(i32, Case)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("message.max.bytes", "4194304")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    for (p, c) in cases {
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(*p)
            .payload(c.value.as_slice());
        if let Some(k) = &c.key {
            r = r.key(k.as_slice());
        }
        producer.send(r).expect("queue corpus record");
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("flush corpus");
}

fn max_failures(log: &str) -> u32 {
    log.lines()
        .filter_map(|l| l.split("failures=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survive_kills_a_database_crash_and_a_broker_crash_exactly() {
    let started = Instant::now();
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("chaos");
    create_topic(&s.bootstrap, &topic, 6).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");

    // About two minutes of live feed (100 events/s of event time at 3x), 3 hours ago, on
    // 30 products with a steep popularity curve: a few hot rows every instance writes.
    let n = 36_000usize;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 3 * 3_600_000).to_string();
    let mut feed = clickstream()
        .args(["generate", "--sink", "kafka", "--bootstrap", &s.bootstrap])
        .args(["--topic", &topic, "--no-catalog", "--progress", "never"])
        .args([
            "--count",
            &n.to_string(),
            "--seed",
            &random_u64().to_string(),
        ])
        .args(["--start", &start, "--eps", "100", "--speed", "3"])
        .args([
            "--products",
            "30",
            "--popularity-skew",
            "1.5",
            "--users",
            "3000",
        ])
        .args(["--late-rate", "0.03", "--late-mean-secs", "25"])
        .args(["--duplicate-rate", "0.02", "--malformed-rate", "0.01"])
        .args(["--flash-sale-every", "10m", "--flash-sale-duration", "3m"])
        .args(["--flash-sale-share", "0.5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start generator");

    let mut instances: Vec<Processor> = (0..3)
        .map(|_| Processor::start(&s, &db, &topic, &dlq, &group, &flags()))
        .collect();
    let mut logs = Vec::new();

    // The bad records go in during the feed, each to a partition of its own choosing.
    let cases = corpus::corpus();
    let (bad, valid): (Vec<Case>, Vec<Case>) = cases
        .into_iter()
        .partition(|c| matches!(c.outcome, Outcome::Rejected(_)));
    let bad_count = bad.len();
    let bad: Vec<(i32, Case)> = bad
        .into_iter()
        .enumerate()
        .map(|(i, c)| ((i % 6) as i32, c))
        .collect();
    let s2 = services();
    let topic2 = topic.clone();
    let corpus_feed = std::thread::spawn(move || {
        for chunk in bad.chunks(6) {
            std::thread::sleep(Duration::from_secs(8));
            send_cases(&s2, &topic2, chunk);
        }
    });

    let mut kills = 0;
    for round in 0..22 {
        let pause = 2_000 + random_u64() % 3_000;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        // Twice the replacement starts while a dependency is down: it must wait for it.
        if round == 7 {
            crash_postgres(&db.admin_url).await;
        }
        if round == 14 {
            kill_kafka();
        }
        let victim = (random_u64() % 3) as usize;
        let old = std::mem::replace(
            &mut instances[victim],
            Processor::start(&s, &db, &topic, &dlq, &group, &flags()),
        );
        logs.push(old.log.clone());
        old.kill9();
        kills += 1;
        if round == 7 || round == 14 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            restart_stack();
        }
    }
    assert!(kills >= 20);
    let status = feed.wait().unwrap();
    assert!(status.success(), "generator failed");
    corpus_feed.join().unwrap();
    // The valid edge cases last (their event time is now, far ahead of the feed's).
    let valid: Vec<(i32, Case)> = valid
        .into_iter()
        .enumerate()
        .map(|(i, c)| ((i % 6) as i32, c))
        .collect();
    send_cases(&s, &topic, &valid);

    let total = n + bad_count + valid.len();
    let records = read_topic(&s.bootstrap, &topic, 6, total, Duration::from_secs(120));
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &end_offsets(&records),
        Duration::from_secs(240),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raw: Vec<(i32, i64, Vec<u8>)> = records
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect();
    let want = reference::compute(&raw, &ValidationPolicy::new(EventTime::now()), SEM);
    assert_tables_equal(&want, &actual(&db).await);
    assert!(!want.alerts.is_empty(), "the feed has flash sales");
    assert!(
        want.rejected.len() > bad_count,
        "the corpus and the generator's bad records"
    );

    for p in &mut instances {
        assert!(p.is_running(), "an instance died: {}", p.log.display());
    }
    for p in &instances {
        logs.push(p.log.clone());
    }
    let mut worst = 0;
    for path in &logs {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            !log.contains("deadlock") && !log.contains("40P01"),
            "deadlock in {}",
            path.display()
        );
        worst = worst.max(max_failures(&log));
    }
    assert!(worst <= 10, "a batch was retried {worst} times in a row");
    for p in instances {
        p.stop();
    }
    db.drop().await;
    eprintln!("chaos test took {:?}", started.elapsed());
}
