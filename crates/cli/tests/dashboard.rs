//! `clickstream serve` end to end: a seeded pipeline (generator -> Kafka -> processor ->
//! PostgreSQL) behind the dashboard, checked in headless Chromium against SQL over the raw
//! audit table, plus the JSON API's validation and token, and every Grafana panel's SQL.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clickstream_model::EventTime;
use serde_json::Value;
use support::browser::Browser;
use support::*;

const TOKEN: &str = "dash-Token_0.9~x";

/// A running `clickstream serve`.
struct Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    base: String,
}

impl Server {
    fn start(s: &Services, db: &TestDb, topic: &str, group: &str, token: Option<&str>) -> Server {
        let log_path = std::env::temp_dir().join(format!("{}.log", unique("serve")));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = clickstream();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap",
            &s.bootstrap,
        ])
        .args(["--topic", topic, "--group", group])
        .args(["--database-url", &db.reader_url])
        .args(["--refresh", "500ms", "--stale-after", "4s"])
        .env_remove("CLICKSTREAM_DASHBOARD_TOKEN")
        .stderr(log);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let mut child = cmd.spawn().expect("start clickstream serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(url) = text.lines().find_map(|l| l.split("url=").nth(1)) {
                let base = url.split_whitespace().next().unwrap().trim_end_matches('/');
                return Server {
                    child,
                    base: base.to_string(),
                };
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "serve exited early: {text}"
            );
            assert!(Instant::now() < deadline, "serve did not start: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM must stop it promptly even with event streams open.
    fn stop(mut self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "serve did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET: (status, raw head, body). Reads until the server closes, or
/// until `until` appears (for event streams).
fn get(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    until: Option<&str>,
) -> (u16, String, String) {
    let host = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(host).expect("connect to serve");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = conn.read(&mut buf).expect("read response");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if until.is_some_and(|u| String::from_utf8_lossy(&raw).contains(u)) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {text}"));
    (status, head.to_string(), body.to_string())
}

fn get_json(base: &str, path: &str) -> Value {
    let (status, _, body) = get(base, path, &[], None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// A topic, its processor, and the records sent so far.
struct Pipeline {
    topic: String,
    group: String,
    processor: Option<Processor>,
    records: usize,
}

const PARTITIONS: i32 = 6;

impl Pipeline {
    async fn start(s: &Services, db: &TestDb) -> Pipeline {
        let topic = unique("dash");
        create_topic(&s.bootstrap, &topic, PARTITIONS).await;
        let dlq = dead_letter_topic(s).await;
        let group = unique("g");
        // Short session gap and low alert threshold so a few minutes of data close
        // sessions and raise alerts.
        let processor = Processor::start(
            s,
            db,
            &topic,
            &dlq,
            &group,
            &[
                "--session-gap",
                "2m",
                "--alert-min-views",
                "40",
                "--batch-max-wait",
                "100ms",
                "--audit",
            ],
        );
        Pipeline {
            topic,
            group,
            processor: Some(processor),
            records: 0,
        }
    }

    /// Sends `count` records and waits until the processor committed all of them.
    async fn feed(&mut self, s: &Services, db: &TestDb, seed: u64, start: EventTime, count: usize) {
        generate_seeded(
            s,
            &self.topic,
            count,
            seed,
            &start.to_string(),
            30,
            Some(&db.writer_url),
        );
        self.records += count;
        let recs = read_topic(
            &s.bootstrap,
            &self.topic,
            PARTITIONS,
            self.records,
            Duration::from_secs(60),
        );
        assert_eq!(recs.len(), self.records, "records in the topic");
        let ends = end_offsets(&recs);
        wait_caught_up(
            &db.writer_url,
            &self.group,
            &self.topic,
            &ends,
            Duration::from_secs(180),
        )
        .await;
    }
}

/// What the page must show, computed from the raw audit table and the reject table (not
/// from the aggregates the dashboard reads).
#[derive(Debug, PartialEq)]
struct Truth {
    day: String,
    purchases: i64,
    revenue_cents: i64,
    product_views: i64,
    top_viewed: String,
    rejected: i64,
}

async fn truth(db: &TestDb) -> Truth {
    let c = connect(&db.admin_url).await;
    let r = c
        .query_one(
            "WITH a AS (SELECT date_trunc('minute', max(event_time)) AS m FROM analytics.events),
                  d AS (SELECT (m AT TIME ZONE 'UTC')::date AS day, m FROM a)
             SELECT d.day::text,
                    count(*) FILTER (WHERE e.event_type = 'purchase'),
                    coalesce(sum(e.amount_cents) FILTER (WHERE e.event_type = 'purchase'), 0)::int8,
                    count(*) FILTER (WHERE e.event_type = 'page_view' AND e.product_id IS NOT NULL),
                    (SELECT product_id FROM analytics.events, d
                      WHERE event_type = 'page_view' AND product_id IS NOT NULL
                        AND event_time >= d.m - interval '59 minutes'
                        AND event_time < d.m + interval '1 minute'
                      GROUP BY product_id ORDER BY count(*) DESC, product_id LIMIT 1),
                    (SELECT count(*) FROM analytics.rejected_events)
               FROM d JOIN analytics.events e
                 ON (e.event_time AT TIME ZONE 'UTC')::date = d.day
              GROUP BY d.day",
            &[],
        )
        .await
        .expect("truth query");
    Truth {
        day: r.get(0),
        purchases: r.get(1),
        revenue_cents: r.get(2),
        product_views: r.get(3),
        top_viewed: r.get(4),
        rejected: r.get(5),
    }
}

/// Events and revenue per UTC hour of `day` from the raw audit table, and the peak hour
/// (most events, the earlier on a tie): what the hourly panel must show.
async fn truth_hours(db: &TestDb, day: &str) -> (Vec<(i64, i64)>, usize) {
    let c = connect(&db.admin_url).await;
    let mut hours = vec![(0i64, 0i64); 24];
    for r in c
        .query(
            "SELECT extract(hour FROM event_time AT TIME ZONE 'UTC')::int4, count(*),
                    coalesce(sum(amount_cents) FILTER (WHERE event_type = 'purchase'), 0)::int8
               FROM analytics.events
              WHERE (event_time AT TIME ZONE 'UTC')::date = $1::text::date
              GROUP BY 1",
            &[&day],
        )
        .await
        .expect("hourly truth")
    {
        hours[r.get::<_, i32>(0) as usize] = (r.get(1), r.get(2));
    }
    let top = hours.iter().map(|h| h.0).max().unwrap_or(0);
    let peak = hours.iter().position(|h| h.0 == top).unwrap();
    (hours, peak)
}

/// Human sessions started on the overview's day, as the overview reports them.
fn overview_sessions(base: &str) -> i64 {
    get_json(base, "/api/overview")["sessions"]
        .as_i64()
        .unwrap()
}

/// Waits until the page's `testid` element reads `want`.
fn wait_text(b: &mut Browser, testid: &str, want: &str) {
    let expr = format!(
        "(document.querySelector('[data-testid=\"{testid}\"]') || {{}}).textContent === {}",
        serde_json::to_string(want).unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.eval(&expr) != Value::Bool(true) {
        assert!(
            Instant::now() < deadline,
            "{testid} shows {:?}, PostgreSQL says {want:?}",
            b.text(testid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn top_row_product(b: &mut Browser) -> String {
    b.eval("(document.querySelector('[data-testid=\"top-products\"] tbody tr[data-product]') || {dataset: {}}).dataset.product || null")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_shows_what_postgres_says_and_updates_live() {
    let s = services();
    let db = TestDb::create(&s).await;
    let mut pipe = Pipeline::start(&s, &db).await;
    let server = Server::start(&s, &db, &pipe.topic, &pipe.group, Some(TOKEN));
    let mut b = Browser::launch();
    b.viewport(1400, 900, false);

    // Nothing processed yet: the page says so instead of showing zeros.
    b.navigate(&format!("{}/?token={TOKEN}", server.base));
    b.wait_for(
        "document.body.dataset.updates >= 1",
        Duration::from_secs(30),
    );
    wait_text(&mut b, "status", "no data yet");
    assert!(b.text("banner").contains("No events processed yet"));
    assert_eq!(
        b.eval("location.search"),
        Value::String(String::new()),
        "the token stays out of the address bar"
    );
    b.eval("window.__sameDocument = 'yes'");

    // ~17 minutes of event time, ending now.
    let start = EventTime::from_millis(EventTime::now().as_millis() - 20 * 60_000);
    pipe.feed(&s, &db, random_u64(), start, 30_000).await;
    let want = truth(&db).await;
    assert!(want.purchases > 0 && want.product_views > 0, "{want:?}");
    wait_text(&mut b, "kpi-purchases", &thousands(want.purchases));
    wait_text(&mut b, "status", "live");
    assert_eq!(b.text("kpi-revenue"), dollars(want.revenue_cents));
    assert_eq!(b.text("funnel-views"), thousands(want.product_views));
    assert_eq!(b.text("count-rejected"), thousands(want.rejected));
    assert!(
        want.rejected > 0,
        "the generator's malformed records are counted"
    );
    assert_eq!(top_row_product(&mut b), want.top_viewed);
    // The hourly panel: every bar and the peak hour as the raw events say.
    let (hours, peak) = truth_hours(&db, &want.day).await;
    assert_eq!(b.text("peak-events"), thousands(hours[peak].0));
    assert_eq!(b.text("peak-revenue"), dollars(hours[peak].1));
    assert!(
        b.text("peak-hour").starts_with(&format!("{peak:02}:00")),
        "{} vs hour {peak}",
        b.text("peak-hour")
    );
    let bars = b.eval(
        "[...document.querySelectorAll('[data-testid=\"chart-hourly\"] rect')].map((r) => Number(r.dataset.events))",
    );
    let want_bars: Vec<i64> = hours.iter().map(|h| h.0).collect();
    assert_eq!(bars, serde_json::json!(want_bars));
    assert_eq!(
        b.eval(
            "document.querySelector('[data-testid=\"chart-hourly\"] rect.bar-peak').dataset.hour"
        ),
        Value::String(peak.to_string())
    );
    assert!(
        b.eval(
            "document.querySelectorAll('[data-testid=\"chart-throughput\"] path.series').length"
        ) == 3
    );
    assert!(
        b.eval("document.querySelectorAll('[data-testid=\"lag\"] tbody tr').length") == PARTITIONS
    );
    assert_eq!(
        b.eval("document.getElementById('banner').hidden"),
        Value::Bool(true),
        "no warning while the pipeline runs"
    );

    b.screenshot(&screenshot_path("dashboard.png"));
    b.viewport(390, 844, true);
    std::thread::sleep(Duration::from_millis(500));
    let overflow = b.eval("document.documentElement.scrollWidth - window.innerWidth");
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than a phone: {overflow}"
    );
    b.screenshot(&screenshot_path("dashboard-phone.png"));
    b.viewport(1400, 900, false);

    // New events flow in; the open page follows without a reload.
    let updates = b
        .eval("Number(document.body.dataset.updates)")
        .as_i64()
        .unwrap();
    pipe.feed(
        &s,
        &db,
        random_u64(),
        EventTime::from_millis(EventTime::now().as_millis() - 60_000),
        6_000,
    )
    .await;
    let later = truth(&db).await;
    // Across midnight UTC "today" starts over; otherwise the new purchases add up.
    assert!(
        later.day != want.day || later.purchases > want.purchases,
        "{later:?} vs {want:?}"
    );
    wait_text(&mut b, "kpi-purchases", &thousands(later.purchases));
    assert_eq!(b.text("kpi-revenue"), dollars(later.revenue_cents));
    assert_eq!(b.eval("window.__sameDocument"), Value::String("yes".into()));
    assert!(
        b.eval("Number(document.body.dataset.updates)")
            .as_i64()
            .unwrap()
            > updates
    );

    // The processor goes away: the page says so.
    pipe.processor.take().unwrap().stop();
    wait_text(&mut b, "status", "processor not running");
    assert!(b.text("banner").contains("not running"));

    // An instance that is alive but failing: the page says it is stalled, and why.
    connect(&db.admin_url)
        .await
        .execute(
            "INSERT INTO analytics.processor_heartbeat
                    (instance_id, consumer_group, started_at, last_commit_at, last_seen_at,
                     batches, records, events, rejected, duplicates, late,
                     consecutive_failures, stalled_since, last_error)
             VALUES ('stuck-1', $1, now() - interval '5 minutes', now() - interval '2 minutes',
                     now(), 1, 1, 1, 0, 0, 0, 7, now() - interval '90 seconds',
                     'postgres: permission denied for table metrics_minute')",
            &[&pipe.group],
        )
        .await
        .unwrap();
    wait_text(&mut b, "status", "stalled");
    let banner = b.text("banner");
    assert!(banner.contains("7 failed attempts"), "{banner}");
    assert!(banner.contains("permission denied"), "{banner}");

    let errors = b.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    drop(b);
    server.stop();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_json_rejects_bad_parameters_and_enforces_the_token() {
    let s = services();
    let db = TestDb::create(&s).await;
    let mut pipe = Pipeline::start(&s, &db).await;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 15 * 60_000);
    pipe.feed(&s, &db, random_u64(), start, 12_000).await;
    pipe.processor.take().unwrap().stop();

    let open = Server::start(&s, &db, &pipe.topic, &pipe.group, None);
    let base = open.base.clone();

    // Top products by purchases equal SQL over the raw events of the same hour.
    let c = connect(&db.admin_url).await;
    let want: Vec<String> = c
        .query(
            "WITH a AS (SELECT date_trunc('minute', max(event_time)) AS m FROM analytics.events)
             SELECT product_id FROM analytics.events, a
              WHERE event_type = 'purchase' AND event_time >= a.m - interval '59 minutes'
                AND event_time < a.m + interval '1 minute'
              GROUP BY product_id ORDER BY count(*) DESC, product_id LIMIT 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let top = get_json(&base, "/api/top-products?by=purchases&limit=3&minutes=60");
    let got: Vec<String> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert!(
        top[0]["name"].as_str().unwrap().len() > 3,
        "catalog name: {top}"
    );

    let anchor_ms: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM date_trunc('minute', max(event_time))) * 1000)::int8
               FROM analytics.events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let tp = get_json(&base, "/api/throughput?minutes=5");
    let tp = tp.as_array().unwrap();
    assert_eq!(tp.len(), 5);
    assert_eq!(tp[4]["minute_ms"].as_i64(), Some(anchor_ms));

    let t = truth(&db).await;
    let funnel = get_json(&base, &format!("/api/funnel?date={}", t.day));
    assert_eq!(funnel["purchases"].as_i64(), Some(t.purchases));
    assert_eq!(funnel["revenue_cents"].as_i64(), Some(t.revenue_cents));
    let overview = get_json(&base, "/api/overview");
    assert_eq!(overview["day"].as_str(), Some(t.day.as_str()));
    assert_eq!(overview["purchases"].as_i64(), Some(t.purchases));
    // Per-hour numbers and the peak hour agree with the raw events.
    let (hours, peak) = truth_hours(&db, &t.day).await;
    let hourly = get_json(&base, &format!("/api/hourly?date={}", t.day));
    let got: Vec<(i64, i64)> = hourly["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["events"].as_i64().unwrap(),
                h["revenue_cents"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, hours);
    assert_eq!(hourly["peak"].as_u64(), Some(peak as u64));
    let sessions: i64 = hourly["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["sessions_started"].as_i64().unwrap())
        .sum();
    assert_eq!(sessions, overview_sessions(&base));
    let quiet = get_json(&base, "/api/hourly?date=2001-01-01");
    assert_eq!(quiet["peak"], Value::Null);
    assert_eq!(quiet["hours"].as_array().unwrap().len(), 24);
    let empty_day = get_json(&base, "/api/funnel?date=2001-01-01");
    assert_eq!(empty_day["product_views"].as_i64(), Some(0));
    let health = get_json(&base, "/api/health");
    assert_eq!(health["total_lag"].as_i64(), Some(0));
    assert_eq!(health["dlq_records"].as_i64(), Some(t.rejected));
    assert_eq!(
        health["processor_running"],
        Value::Bool(false),
        "stopped: {health}"
    );
    let alerts = get_json(&base, "/api/alerts?limit=5");
    assert!(alerts["recent"].as_array().unwrap().len() <= 5);
    let snap = get_json(&base, "/api/snapshot");
    for k in [
        "overview",
        "throughput",
        "conversion",
        "funnel",
        "hourly",
        "top_by_views",
        "alerts",
        "health",
    ] {
        assert!(snap.get(k).is_some(), "snapshot lacks {k}");
    }

    for bad in [
        "/api/throughput?minutes=0",
        "/api/throughput?minutes=1441",
        "/api/throughput?minutes=ten",
        "/api/top-products?limit=0",
        "/api/top-products?limit=101",
        "/api/top-products?by=price",
        "/api/top-products?by=views%3BDROP%20TABLE%20analytics.events",
        "/api/funnel?date=2026-02-30",
        "/api/funnel?date=yesterday",
        "/api/hourly?date=2026-13-01",
        "/api/hourly?day=2026-11-30",
        "/api/overview?date=2026-11-23%27%20OR%201%3D1",
        "/api/alerts?limit=100000",
        "/api/health?verbose=1",
        "/api/conversion?minute=5",
    ] {
        let (status, _, body) = get(&base, bad, &[], None);
        assert_eq!(status, 400, "{bad}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{bad}: {body}"));
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {body}"
        );
    }
    open.stop();

    // With a token: assets and liveness stay public, the rest needs the token.
    let guarded = Server::start(&s, &db, &pipe.topic, &pipe.group, Some(TOKEN));
    let base = guarded.base.clone();
    for public in ["/healthz", "/assets/app.js", "/assets/app.css"] {
        assert_eq!(get(&base, public, &[], None).0, 200, "{public}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("clickstream_token={TOKEN}");
    for path in ["/", "/api/overview", "/api/stream", "/api/snapshot"] {
        let (status, head, _) = get(&base, path, &[], None);
        assert_eq!(status, 401, "{path} without token");
        assert!(head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"));
        assert_eq!(
            get(&base, path, &[("Authorization", "Bearer wrong")], None).0,
            401
        );
        assert_eq!(
            get(&base, &format!("{path}?token={TOKEN}x"), &[], None).0,
            401
        );
    }
    assert_eq!(
        get(&base, "/api/overview", &[("Authorization", &bearer)], None).0,
        200
    );
    assert_eq!(
        get(&base, "/api/overview", &[("Cookie", &cookie)], None).0,
        200
    );
    // A person opens /?token= once: the token becomes an HttpOnly, SameSite=Strict cookie
    // and the browser goes to / (the token leaves the address bar).
    let (status, head, _) = get(&base, &format!("/?token={TOKEN}"), &[], None);
    assert_eq!(status, 303, "{head}");
    assert!(
        head.lines().any(|l| l.eq_ignore_ascii_case("location: /")),
        "{head}"
    );
    assert!(
        head.contains(&format!(
            "clickstream_token={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
        )),
        "{head}"
    );
    assert!(!head.contains("Secure"), "plain HTTP: {head}");
    let (_, head, _) = get(
        &base,
        &format!("/?token={TOKEN}"),
        &[("X-Forwarded-Proto", "https")],
        None,
    );
    assert!(
        head.contains("SameSite=Strict; Secure"),
        "behind TLS: {head}"
    );
    let (status, head, body) = get(&base, "/", &[("Cookie", &cookie)], None);
    assert_eq!(status, 200);
    assert!(body.contains("<title>Clickstream"));
    assert!(head
        .to_ascii_lowercase()
        .contains("content-security-policy"));
    // API calls never take the token from the URL (it would land in logs).
    let (status, _, body) = get(&base, &format!("/api/overview?token={TOKEN}"), &[], None);
    assert_eq!(status, 401);
    assert!(body.contains("not in the URL"), "{body}");
    // The event stream pushes a full snapshot right away.
    let (status, _, body) = get(
        &base,
        "/api/stream",
        &[("Authorization", &bearer)],
        Some("\n\n"),
    );
    assert_eq!(status, 200);
    assert!(body.contains("event: snapshot"), "{body}");
    let data = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let snap: Value = serde_json::from_str(data).unwrap();
    assert_eq!(snap["overview"]["purchases"].as_i64(), Some(t.purchases));

    // Guessing: after 20 wrong tokens in a minute, this address gets 429, even with the
    // right token, until the minute is over.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(
            get(
                &base,
                "/api/overview",
                &[("Authorization", "Bearer guess")],
                None,
            )
            .0,
        );
    }
    let first = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("429 at some point");
    assert!(
        (1..=20).contains(&first) && statuses[..first].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    assert!(statuses[first..].iter().all(|s| *s == 429), "{statuses:?}");
    let (status, head, _) = get(&base, "/api/overview", &[("Authorization", &bearer)], None);
    assert_eq!(status, 429);
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    guarded.stop();

    // With the database gone, clients learn that it is unavailable, not its error text.
    let open = Server::start(&s, &db, &pipe.topic, &pipe.group, None);
    db.drop().await;
    let (status, _, body) = get(&open.base, "/api/overview", &[], None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "database unavailable"
    );
    open.stop();
}

/// Replaces the Grafana macros the provisioned dashboard uses with a range covering `day`.
fn expand_grafana_macros(sql: &str, from: &str, to: &str) -> String {
    let mut out = sql.replace("$__timeFrom()", &format!("'{from}'::timestamptz"));
    out = out.replace("$__timeTo()", &format!("'{to}'::timestamptz"));
    while let Some(i) = out.find("$__timeFilter(") {
        let rest = &out[i + "$__timeFilter(".len()..];
        let close = rest
            .find(')')
            .expect("closing parenthesis of $__timeFilter");
        let col = rest[..close].trim().to_string();
        let expanded = format!("{col} BETWEEN '{from}'::timestamptz AND '{to}'::timestamptz");
        out = format!("{}{}{}", &out[..i], expanded, &rest[close + 1..]);
    }
    assert!(
        !out.contains("$__"),
        "a Grafana macro this test does not know: {out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_panel_query_returns_rows() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/dashboards/clickstream.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut panels = Vec::new();
    let mut queue: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = queue.pop() {
        if let Some(inner) = p["panels"].as_array() {
            queue.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(sql) = t["rawSql"].as_str() {
                panels.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    sql.to_string(),
                ));
            }
        }
    }
    assert!(panels.len() >= 10, "only {} panel queries", panels.len());
    assert!(
        dash["refresh"].as_str().is_some(),
        "the dashboard refreshes by itself"
    );
    // Time series follow the time picker; "today" means the current UTC day, not the last
    // day that has data.
    for p in dash["panels"].as_array().unwrap() {
        let sql = p["targets"][0]["rawSql"].as_str().unwrap_or("");
        if p["type"] == "timeseries" {
            assert!(sql.contains("$__timeFilter("), "{}: {sql}", p["title"]);
        }
        if p["title"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("today")
        {
            assert!(
                sql.contains("now() AT TIME ZONE 'UTC'"),
                "{}: {sql}",
                p["title"]
            );
        }
    }

    let s = services();
    let db = TestDb::create(&s).await;
    let mut pipe = Pipeline::start(&s, &db).await;
    let start = EventTime::from_millis(EventTime::now().as_millis() - 20 * 60_000);
    pipe.feed(&s, &db, random_u64(), start, 30_000).await;
    // Yesterday's gold, as `clickstream batch` would have written it.
    insert_gold_day(&db, 999).await;
    // The variables the dashboard offers: these must resolve as well.
    let reader = connect(&db.reader_url).await;
    let from = EventTime::from_millis(EventTime::now().as_millis() - 6 * 3_600_000).to_string();
    let to = EventTime::from_millis(EventTime::now().as_millis() + 3_600_000).to_string();
    for (title, sql) in &panels {
        let sql = expand_grafana_macros(sql, &from, &to);
        let rows = reader.query(sql.as_str(), &[]).await.unwrap_or_else(|e| {
            panic!("panel {title:?}: {}\n{sql}", clickstream_db::pg_detail(&e))
        });
        assert!(!rows.is_empty(), "panel {title:?} returned no rows:\n{sql}");
    }
    pipe.processor.take().unwrap().stop();
    db.drop().await;
}
