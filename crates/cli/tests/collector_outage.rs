//! The collector while Kafka is down: it answers 503 with `Retry-After` (never 2xx for
//! an event Kafka did not take), and once the broker is back every event it acknowledged
//! is in the topic exactly once. Its own file: it stops the shared broker.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickstream_model::EventTime;
use serde_json::{json, Value};
use support::collector::Collector;
use support::*;

/// Outcome of each request the load sent: status and its events' ids.
type Log = Arc<Mutex<Vec<(u16, Option<String>, Vec<String>)>>>;

fn batch(n: usize) -> (Vec<u8>, Vec<String>) {
    let now = EventTime::now().to_string();
    let user = uuid::Uuid::new_v4().to_string();
    let session = uuid::Uuid::new_v4().to_string();
    let events: Vec<Value> = (0..n)
        .map(|_| {
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "event_type": "page_view",
                   "timestamp": now, "user_id": user, "session_id": session, "page": "home"})
        })
        .collect();
    let ids = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    (serde_json::to_vec(&events).unwrap(), ids)
}

fn count(log: &Log, status: u16) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(s, _, _)| *s == status)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn while_kafka_is_down_the_collector_answers_503_and_loses_no_acknowledged_event() {
    let s = services();
    let topic = unique("collect_outage");
    let dlq = unique("collect_outage_dlq");
    create_topic(&s.bootstrap, &topic, 3).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let mut c = Collector::start(
        &s,
        &topic,
        &dlq,
        &["--kafka-timeout", "3s", "--rate-per-ip", "100000"],
    );

    // Steady load: batches of 20 from two clients, each on its own connections.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, log, addr) = (stop.clone(), log.clone(), c.addr.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (body, ids) = batch(20);
                    let key = format!("/v1/events?k={}", support::collector::KEY);
                    let r = support::collector::request(&addr, "POST", &key, &[], &body);
                    let retry = r.header("retry-after").map(str::to_string);
                    log.lock().unwrap().push((r.status, retry, ids));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();

    let wait_for = |what: &str, status: u16, at_least: usize, within: Duration| {
        let deadline = Instant::now() + within;
        while count(&log, status) < at_least {
            assert!(
                Instant::now() < deadline,
                "no {at_least} × {status} ({what}) within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("before the outage", 200, 20, Duration::from_secs(30));
    kill_kafka();
    wait_for("during the outage", 503, 4, Duration::from_secs(60));
    let ok_before = count(&log, 200);
    restart_stack();
    wait_for(
        "after the restart",
        200,
        ok_before + 20,
        Duration::from_secs(120),
    );
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    assert!(c.is_running());

    let log = log.lock().unwrap();
    let statuses = histogram(log.iter().map(|(s, _, _)| *s));
    assert_eq!(
        statuses.keys().filter(|s| **s != 200 && **s != 503).count(),
        0,
        "only 200 and 503: {statuses:?}"
    );
    for (status, retry, _) in log.iter() {
        if *status == 503 {
            assert_eq!(retry.as_deref(), Some("5"), "503 says when to come back");
        }
    }
    let acked: Vec<&String> = log
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .flat_map(|(_, _, ids)| ids)
        .collect();
    let refused: Vec<&String> = log
        .iter()
        .filter(|(s, _, _)| *s == 503)
        .flat_map(|(_, _, ids)| ids)
        .collect();

    // Everything acknowledged is in the topic exactly once; a refused event may be there
    // (Kafka took it but answered too late), never twice.
    let recs = read_topic(
        &s.bootstrap,
        &topic,
        3,
        acked.len(),
        Duration::from_secs(90),
    );
    let in_topic: HashMap<String, usize> = histogram(recs.iter().map(|r| {
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        v["event_id"].as_str().unwrap().to_string()
    }));
    let missing = acked
        .iter()
        .filter(|id| !in_topic.contains_key(id.as_str()))
        .count();
    let doubled = acked
        .iter()
        .filter(|id| in_topic.get(id.as_str()).copied().unwrap_or(0) > 1)
        .count();
    assert_eq!(
        (missing, doubled),
        (0, 0),
        "{} acknowledged events",
        acked.len()
    );
    assert!(refused
        .iter()
        .all(|id| in_topic.get(id.as_str()).copied().unwrap_or(0) <= 1));
    assert_eq!(
        in_topic.len(),
        acked.len()
            + refused
                .iter()
                .filter(|id| in_topic.contains_key(id.as_str()))
                .count()
    );
    println!(
        "{} acknowledged, {} refused with 503 ({} of those reached Kafka anyway)",
        acked.len(),
        refused.len(),
        refused
            .iter()
            .filter(|id| in_topic.contains_key(id.as_str()))
            .count()
    );
    let metrics =
        String::from_utf8_lossy(&c.request("GET", "/metrics", &[], b"").body).into_owned();
    assert!(
        !metrics.contains("clickstream_collector_unavailable_total 0\n"),
        "{metrics}"
    );
}
