//! Day partitions and retention against real PostgreSQL and Kafka: migration 0008 moves
//! the rows of schema 7 into day partitions unchanged, retention drops the expired days of
//! every table family and nothing newer (rolling hourly users up first, deleting no row),
//! partitions of the tables updated in place leave room on their pages (0009), and the
//! dedup ledger drops re-sends across a day boundary and a restart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use clickstream_model::{Event, EventTime, EventType, Money, ValidationPolicy};
use support::reference;
use support::tables::{actual, assert_tables_equal};
use support::*;
use tokio_postgres::Client;
use uuid::Uuid;

/// The day partitions of `analytics.<table>` and the rows in each.
async fn partitions(c: &Client, table: &str) -> BTreeMap<NaiveDate, i64> {
    let names: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = format('analytics.%I', $1::text)::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        let day = NaiveDate::parse_from_str(&name[name.len() - 8..], "%Y%m%d")
            .unwrap_or_else(|_| panic!("partition name {name}"));
        let rows: i64 = c
            .query_one(&format!("SELECT count(*) FROM analytics.{name}"), &[])
            .await
            .unwrap()
            .get(0);
        out.insert(day, rows);
    }
    out
}

/// The `fillfactor` of each partition of `analytics.<table>` (`None`: the default, full
/// pages).
async fn fillfactors(c: &Client, table: &str) -> BTreeSet<Option<String>> {
    c.query(
        "SELECT (SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) AS o
                  WHERE o LIKE 'fillfactor=%')
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = format('analytics.%I', $1::text)::regclass",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Partitions of the tables the processor updates in place keep 30% of each page free;
/// append-only ones stay full.
async fn assert_fillfactors(c: &Client, rewritten: &[&str], append_only: &[&str]) {
    let seventy = BTreeSet::from([Some("70".to_string())]);
    for table in rewritten {
        assert_eq!(fillfactors(c, table).await, seventy, "{table}");
    }
    for table in append_only {
        assert_eq!(
            fillfactors(c, table).await,
            BTreeSet::from([None]),
            "{table}"
        );
    }
}

/// Row count and a digest of every row of a query's result, in a stable order.
async fn digest(c: &Client, select: &str) -> (i64, Option<String>) {
    let r = c
        .query_one(
            &format!(
                "SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM ({select}) x"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{select}: {e}"));
    (r.get(0), r.get(1))
}

/// What each table and view holds, in a form that does not depend on the schema version
/// (sessions gain `opened_at` in 0008).
const SNAPSHOT: &[&str] = &[
    "SELECT * FROM analytics.seen_events",
    "SELECT * FROM analytics.metrics_minute",
    "SELECT * FROM analytics.product_minute",
    "SELECT * FROM analytics.category_minute",
    "SELECT * FROM analytics.product_window",
    "SELECT * FROM analytics.purchases",
    "SELECT * FROM analytics.hourly_users",
    "SELECT * FROM analytics.late_events",
    "SELECT * FROM analytics.rejected_events",
    "SELECT session_key, user_id, kafka_partition, session_start, session_end, events, page_views,
            cart_adds, purchases, revenue_cents, device, country, is_bot, is_open, updated_at
       FROM analytics.sessions",
    "SELECT * FROM analytics.event_stats_hourly",
    "SELECT * FROM analytics.session_summary",
    "SELECT * FROM analytics.conversion_minute",
    "SELECT * FROM analytics.funnel_daily",
    "SELECT * FROM analytics.top_products_last_hour",
];

#[tokio::test(flavor = "multi_thread")]
async fn migration_moves_existing_rows_into_day_partitions() {
    let s = services();
    let db = TestDb::create_at(&s, Some(7)).await;
    let c = connect(&db.admin_url).await;
    // Rows as schema 7 kept them, spread over three UTC days.
    c.batch_execute(
        "CREATE TEMP TABLE t AS
             SELECT g AS t, n FROM generate_series(now() - interval '50 hours', now(), interval '17 minutes')
                 WITH ORDINALITY AS x(g, n);
         INSERT INTO analytics.seen_events (event_time, event_id) SELECT t, gen_random_uuid() FROM t;
         INSERT INTO analytics.metrics_minute (minute, event_type, events, units, revenue_cents)
             SELECT date_trunc('minute', t), 'purchase', n, 2 * n, 1999 * n FROM t;
         INSERT INTO analytics.product_minute (minute, product_id, category, views, purchases, revenue_cents)
             SELECT date_trunc('minute', t), 'P' || (n % 5), 'toys', n, 1, 1999 FROM t;
         INSERT INTO analytics.category_minute (minute, category, views, cart_adds)
             SELECT date_trunc('minute', t), 'toys', n, 1 FROM t;
         INSERT INTO analytics.product_window (window_start, window_end, product_id, views)
             SELECT date_trunc('minute', t), date_trunc('minute', t) + interval '10 minutes', 'P1', n FROM t;
         INSERT INTO analytics.purchases
             SELECT t, gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(),
                    'P1', 'toys', 1999, 1, 1999, false, 0, n FROM t;
         INSERT INTO analytics.hourly_users SELECT date_trunc('hour', t), 'page_view', gen_random_uuid() FROM t;
         INSERT INTO analytics.late_events
             SELECT gen_random_uuid(), 'page_view', t, t + interval '5 minutes', 0, n, false FROM t;
         INSERT INTO analytics.rejected_events (topic, kafka_partition, kafka_offset, reason, detail,
                                                payload_bytes, payload, rejected_at)
             SELECT 'raw', 0, n, 'bad_json', 'not JSON', 1, '\\x00', t FROM t;
         INSERT INTO analytics.sessions (session_key, user_id, kafka_partition, session_start,
                                         session_end, events, page_views, cart_adds, purchases,
                                         revenue_cents, is_open)
             SELECT gen_random_uuid(), gen_random_uuid(), 0, t, t + interval '4 minutes', 3, 2, 1, 0, 0,
                    t > now() - interval '1 hour' FROM t;",
    )
    .await
    .unwrap();
    let mut before = Vec::new();
    for q in SNAPSHOT {
        before.push(digest(&c, q).await);
    }
    assert!(before.iter().all(|(n, _)| *n > 0), "{before:?}");
    let days: BTreeSet<NaiveDate> = c
        .query(
            "SELECT DISTINCT (event_time AT TIME ZONE 'UTC')::date FROM analytics.seen_events",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(days.len(), 3, "{days:?}");
    drop(c);

    let out = db.migrate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = connect(&db.admin_url).await;
    for (q, want) in SNAPSHOT.iter().zip(&before) {
        assert_eq!(&digest(&c, q).await, want, "{q}");
    }
    for table in [
        "seen_events",
        "metrics_minute",
        "product_minute",
        "category_minute",
        "product_window",
        "purchases",
        "hourly_users",
        "late_events",
        "rejected_events",
        "sessions",
        "events",
    ] {
        let parts = partitions(&c, table).await;
        let rows: i64 = parts.values().sum();
        let total: i64 = c
            .query_one(&format!("SELECT count(*) FROM analytics.{table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, total, "{table}: every row is in a day partition");
        if table != "events" {
            assert!(
                days.iter().all(|d| parts.contains_key(d)),
                "{table}: {parts:?}"
            );
        }
    }
    assert_fillfactors(
        &c,
        &[
            "sessions",
            "metrics_minute",
            "product_minute",
            "category_minute",
            "product_window",
        ],
        &[
            "seen_events",
            "purchases",
            "hourly_users",
            "rejected_events",
        ],
    )
    .await;
    let moved: i64 = c
        .query_one(
            "SELECT count(*) FROM analytics.sessions WHERE opened_at <> session_start",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 0, "existing sessions are keyed by their start");
    db.drop().await;
}

/// The first day kept by a retention of `keep` at `now`.
fn first_kept(now: DateTime<Utc>, keep: Duration) -> NaiveDate {
    (now - chrono::Duration::from_std(keep).unwrap()).date_naive()
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_expired_days_and_nothing_newer() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("quiet");
    create_topic(&s.bootstrap, &topic, 1).await;
    // As the processor's role: the partition functions are all the writer needs.
    let w = connect(&db.writer_url).await;
    let today = Utc::now().date_naive();
    let day = |n: u64| today - Days::new(n);
    for (table, oldest) in [
        ("metrics_minute", 100),
        ("sessions", 100),
        ("rejected_events", 40),
        ("seen_events", 12),
        ("hourly_users", 12),
    ] {
        w.execute(
            "SELECT analytics.create_day_partitions($1, $2, $3)",
            &[&table, &day(oldest), &today],
        )
        .await
        .unwrap();
    }
    assert_fillfactors(
        &w,
        &["metrics_minute", "sessions"],
        &["rejected_events", "seen_events", "hourly_users"],
    )
    .await;
    w.batch_execute(
        "INSERT INTO analytics.metrics_minute (minute, event_type, events)
             SELECT current_date - n + interval '30 minutes', 'page_view', 1
               FROM generate_series(0, 100) AS n;
         INSERT INTO analytics.sessions (session_key, opened_at, user_id, kafka_partition,
                                         session_start, session_end, events, page_views, cart_adds,
                                         purchases, revenue_cents, is_open)
             SELECT gen_random_uuid(), current_date - n + interval '2 hours', gen_random_uuid(), 0,
                    current_date - n + interval '2 hours', current_date - n + interval '3 hours',
                    1, 1, 0, 0, 0, false
               FROM generate_series(0, 100) AS n;
         INSERT INTO analytics.rejected_events (topic, kafka_partition, kafka_offset, reason, detail,
                                                payload_bytes, payload, rejected_at)
             SELECT 'raw', 0, n, 'bad_json', 'x', 1, '\\x00', current_date - n + interval '1 hour'
               FROM generate_series(0, 40) AS n;
         INSERT INTO analytics.seen_events (event_time, event_id)
             SELECT current_date - n + interval '4 hours', gen_random_uuid()
               FROM generate_series(0, 12) AS n;
         -- Three users in hour 5 and two in hour 6 of every day.
         INSERT INTO analytics.hourly_users
             SELECT current_date - n + h * interval '1 hour', 'page_view', gen_random_uuid()
               FROM generate_series(0, 12) AS n,
                    (VALUES (5), (5), (5), (6), (6)) AS x(h);",
    )
    .await
    .unwrap();
    // The session's `current_date` is the server's; the test's days are UTC.
    let tz: String = w.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert!(
        ["UTC", "Etc/UTC"].contains(&tz.as_str()),
        "the stack runs in UTC: {tz}"
    );

    let t0 = Utc::now();
    let group = unique("g");
    let mut p = Processor::start(&s, &db, &topic, &unique("dlq"), &group, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        assert!(p.is_running(), "processor exited");
        if std::fs::read_to_string(&p.log)
            .unwrap_or_default()
            .contains("addr=")
        {
            let m = p.scrape_metrics();
            if metric(&m, "clickstream_processor_partitions_dropped_total") > 0.0 {
                break m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no partition dropped within 60 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(metric(&m, "clickstream_processor_retention_seconds_total") > 0.0);
    assert!(metric(&m, "clickstream_processor_partitions_created_total") > 0.0);
    p.stop();
    let t1 = Utc::now();

    let c = connect(&db.admin_url).await;
    let days = |n: i64| Duration::from_secs(n as u64 * 86_400);
    let hour = Duration::from_secs(3600);
    // Created ahead: two days past the day an hour from now (either side of midnight).
    let aheads: BTreeSet<NaiveDate> = [t0, t1]
        .iter()
        .map(|t| (*t + chrono::Duration::hours(1)).date_naive() + Days::new(2))
        .collect();
    for (table, keep, oldest) in [
        ("metrics_minute", days(90), 100),
        ("sessions", days(90), 100),
        ("rejected_events", days(30), 40),
        ("seen_events", days(7) + hour, 12),
        ("hourly_users", days(7) + hour, 12),
    ] {
        let parts = partitions(&c, table).await;
        // Near midnight the processor's clock may be on either side of it.
        let cuts: BTreeSet<NaiveDate> = [first_kept(t0, keep), first_kept(t1, keep)].into();
        let ok = cuts.iter().any(|cut| {
            aheads.iter().any(|ahead| {
                let kept: Vec<&NaiveDate> = parts.keys().collect();
                let want: Vec<NaiveDate> = cut.iter_days().take_while(|d| d <= ahead).collect();
                kept.len() == want.len() && kept.iter().zip(&want).all(|(a, b)| *a == b)
            })
        });
        assert!(
            ok,
            "{table}: kept {:?}..{:?}, want from {cuts:?} to {aheads:?}",
            parts.keys().next(),
            parts.keys().last()
        );
        for (d, rows) in &parts {
            let want = if *d > today || *d < day(oldest) {
                0
            } else if table == "hourly_users" {
                5
            } else {
                1
            };
            assert_eq!(*rows, want, "{table} {d}: rows of a kept day are untouched");
        }
    }
    // The dropped days of hourly_users were rolled up first: 3 and 2 users per day.
    let first = partitions(&c, "hourly_users")
        .await
        .into_keys()
        .next()
        .unwrap();
    let rolled = c
        .query(
            "SELECT (hour AT TIME ZONE 'UTC')::date, extract(hour FROM hour AT TIME ZONE 'UTC')::int4, users
               FROM analytics.hourly_user_counts ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(NaiveDate, i32, i64)> = rolled
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(NaiveDate, i32, i64)> = day(12)
        .iter_days()
        .take_while(|d| *d < first)
        .flat_map(|d| [(d, 5, 3), (d, 6, 2)])
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());
    // Retention dropped partitions: no row was deleted anywhere.
    std::thread::sleep(Duration::from_millis(1200));
    let deleted: i64 = c
        .query_one(
            "SELECT coalesce(sum(n_tup_del), 0)::int8 FROM pg_stat_user_tables WHERE schemaname = 'analytics'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 0, "rows deleted instead of partitions dropped");
    db.drop().await;
}

fn event(t: i64, kind: EventType, user: Uuid, session: Uuid) -> Event {
    let mut e = Event::new(
        Uuid::new_v4(),
        kind,
        EventTime::from_micros(t),
        user,
        session,
    );
    e.product_id = Some("P00042".into());
    e.category = Some("garden".into());
    e.price = Some(Money(2500));
    e.device = Some("desktop".into());
    e.country = Some("FR".into());
    e.user_agent = Some("Mozilla/5.0".into());
    if kind != EventType::PageView {
        e.quantity = Some(1);
    }
    if kind == EventType::Purchase {
        e.order_id = Some(Uuid::new_v4());
        e.amount = Some(Money(2500));
    }
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_drops_resends_across_a_day_boundary_and_a_restart() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("midnight");
    create_topic(&s.bootstrap, &topic, 1).await;
    // Yesterday's midnight: a day old whenever the test runs, well inside the 7-day age.
    let midnight = (Utc::now().date_naive() - Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    // Four users browsing from 23:58:30 to 00:01:10, buying after midnight.
    let mut first = Vec::new();
    let mut second = Vec::new();
    for u in 0..4 {
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        for k in 0..9i64 {
            let kind = match k {
                5 => EventType::AddToCart,
                7 => EventType::Purchase,
                _ => EventType::PageView,
            };
            let t = midnight - 90_000_000 + k * 20_000_000 + u * 1_000;
            let rec = (
                Some(user.as_bytes().to_vec()),
                event(t, kind, user, session).to_json(),
            );
            if k < 6 {
                first.push(rec);
            } else {
                second.push(rec);
            }
        }
    }
    let group = unique("g");
    // With the audit table: its day partitions are written too.
    let mut flags = reference::TEST_SEM_FLAGS.to_vec();
    flags.push("--audit");
    produce(&s, &topic, &first);
    let p = Processor::start(&s, &db, &topic, &unique("dlq"), &group, &flags);
    let ends = std::collections::HashMap::from([(0, first.len() as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    p.stop();

    // After the restart: every first-round event again (both sides of midnight), the rest
    // of the sessions, and the first round once more within the same batch.
    let mut resend = first.clone();
    resend.extend(second.iter().cloned());
    resend.extend(first.iter().cloned());
    produce(&s, &topic, &resend);
    let total = first.len() + resend.len();
    let p = Processor::start(&s, &db, &topic, &unique("dlq"), &group, &flags);
    let ends = std::collections::HashMap::from([(0, total as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    p.stop();

    let records = read_topic(&s.bootstrap, &topic, 1, total, Duration::from_secs(30));
    assert_eq!(records.len(), total);
    let raw: Vec<(i32, i64, Vec<u8>)> = records
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect();
    let policy = ValidationPolicy::new(EventTime::now());
    let want = reference::compute(&raw, &policy, reference::TEST_SEM);
    let got = actual(&db).await;
    assert_tables_equal(&want, &got);

    let c = connect(&db.admin_url).await;
    let distinct = (first.len() + second.len()) as i64;
    let before = (midnight - 1) / 1_000_000;
    let ledger = c
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM analytics.seen_events GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let by_day: Vec<(String, i64)> = ledger.iter().map(|r| (r.get(0), r.get(1))).collect();
    let day_name = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .unwrap()
            .format("analytics.seen_events_p%Y%m%d")
            .to_string()
    };
    // 5 of each user's 9 events are before midnight.
    assert_eq!(
        by_day,
        vec![
            (day_name(before), 4 * 5),
            (day_name(midnight / 1_000_000), distinct - 4 * 5)
        ]
    );
    let dups: i64 = c
        .query_one(
            "SELECT sum(duplicates)::int8 FROM analytics.processor_heartbeat",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dups, 2 * first.len() as i64, "every re-send was dropped");
    let sessions: i64 = c
        .query_one("SELECT count(*) FROM analytics.sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 4, "sessions across midnight stay one row each");
    db.drop().await;
}

/// A replay of old traffic on the event-time clock: events from weeks ago are judged by
/// the replayed time, not rejected as too old, and retention and the dedup horizon follow
/// the replayed days.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_time_clock_replays_old_days_with_their_retention() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("replay");
    create_topic(&s.bootstrap, &topic, 1).await;
    // Six days of traffic ending 20 days ago: 40 events per day, two per hour at :10, :40.
    let end_day = Utc::now().date_naive() - Days::new(20);
    let first_day = end_day - Days::new(5);
    let mut records = Vec::new();
    for d in first_day.iter_days().take_while(|d| *d <= end_day) {
        for h in 0..20u32 {
            for m in [10, 40] {
                let t = d.and_hms_opt(h, m, 0).unwrap().and_utc().timestamp_micros();
                let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
                let e = event(t, EventType::PageView, user, session);
                records.push((Some(user.as_bytes().to_vec()), e.to_json()));
            }
        }
    }
    // Two odd timestamps at the head of the replay start neither the clock nor days of
    // partitions: one from 1971, one half an hour ahead of the wall clock.
    let odd = |t: i64| {
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let e = event(t, EventType::PageView, user, session);
        (Some(user.as_bytes().to_vec()), e.to_json())
    };
    records.insert(0, odd(Utc::now().timestamp_micros() + 1_800_000_000));
    records.insert(0, odd(31_536_000_000_000));
    produce(&s, &topic, &records);
    let group = unique("g");
    // Batches of 20 events (about half a replayed day): the clock moves per batch.
    let flags = [
        "--batch-max-records",
        "20",
        "--clock",
        "event-time",
        "--max-event-age",
        "1day",
        "--retain-aggregates",
        "3days",
        "--retain-details",
        "3days",
        "--retain-errors",
        "3days",
    ];
    let dlq = unique("dlq");
    create_topic(&s.bootstrap, &dlq, 1).await;
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &flags);
    let ends = std::collections::HashMap::from([(0, records.len() as i64)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    // The last day's upkeep runs when the clock enters it, before its batch commits.
    std::thread::sleep(Duration::from_secs(2));
    p.stop();

    let c = connect(&db.admin_url).await;
    // The odd two were dead-lettered (their rejected_events rows, stamped with the
    // replayed clock, went with their day): nothing else.
    let letters = read_topic(&s.bootstrap, &dlq, 1, 2, Duration::from_secs(20));
    let mut reasons: Vec<String> = letters
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "reason"))
        .map(|(_, v)| v.clone())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["timestamp_in_future", "timestamp_too_old"],
        "only the odd two: weeks-old events are current on the replayed clock"
    );
    // The clock ends at the last batch's median (end_day 19:10 or 19:40): the aggregates
    // keep three days behind it, the ledger one day (plus an hour).
    let last = end_day.and_hms_opt(19, 40, 0).unwrap().and_utc();
    let kept_from = |keep: chrono::Duration| (last - keep).date_naive();
    let minutes = partitions(&c, "metrics_minute").await;
    let days_with_rows: Vec<NaiveDate> = minutes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(d, _)| *d)
        .collect();
    let want: Vec<NaiveDate> = kept_from(chrono::Duration::days(3))
        .iter_days()
        .take_while(|d| *d <= end_day)
        .collect();
    assert_eq!(days_with_rows, want, "metrics_minute days with rows");
    let ledger: Vec<NaiveDate> = partitions(&c, "seen_events")
        .await
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(d, _)| *d)
        .collect();
    let want: Vec<NaiveDate> = kept_from(chrono::Duration::days(1) + chrono::Duration::hours(1))
        .iter_days()
        .take_while(|d| *d <= end_day)
        .collect();
    assert_eq!(ledger, want, "ledger days with rows");
    let events: i64 = c
        .query_one(
            "SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute WHERE minute >= $1",
            &[&want[0].and_hms_opt(0, 0, 0).unwrap().and_utc()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 40 * want.len() as i64, "the kept days are complete");
    db.drop().await;
}

/// A day partition that disappears under a running processor (an operator's mistake, a
/// clock jump) is made again: the batch is retried, never split or dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_day_partition_is_made_again_not_dead_lettered() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("gone");
    create_topic(&s.bootstrap, &topic, 1).await;
    let dlq = unique("dlq");
    let group = unique("g");
    let p = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let first: Vec<_> = (0..10).map(|_| purchase_now()).collect();
    produce(&s, &topic, &first);
    let ends = std::collections::HashMap::from([(0, 10)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    let admin = connect(&db.admin_url).await;
    let part = format!(
        "analytics.metrics_minute_p{}",
        Utc::now().date_naive().format("%Y%m%d")
    );
    admin
        .batch_execute(&format!("DROP TABLE {part}"))
        .await
        .unwrap();
    let second: Vec<_> = (0..10).map(|_| purchase_now()).collect();
    produce(&s, &topic, &second);
    let ends = std::collections::HashMap::from([(0, 20)]);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    let m = p.scrape_metrics();
    p.stop();
    assert!(metric(&m, "clickstream_processor_batches_abandoned_total") >= 1.0);
    let (rejected, events): (i64, i64) = {
        let r = admin
            .query_one(
                "SELECT (SELECT count(*) FROM analytics.rejected_events),
                        (SELECT coalesce(sum(events), 0)::int8 FROM analytics.metrics_minute)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(rejected, 0, "nothing dead-lettered as unstorable");
    assert_eq!(events, 10, "the second ten, in the day made again");
    db.drop().await;
}

/// A valid purchase stamped now, keyed by its user.
fn purchase_now() -> (Option<Vec<u8>>, Vec<u8>) {
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let e = event(
        Utc::now().timestamp_micros(),
        EventType::Purchase,
        user,
        session,
    );
    (Some(user.as_bytes().to_vec()), e.to_json())
}
