//! `clickstream collect` against the real Kafka: refusals of bad requests (nothing
//! produced, nothing crashes), enrichment and dead letters of what it takes, and the demo
//! shop driven in headless Chromium through the processor into PostgreSQL and the
//! dashboard. Kafka outages are in `collector_outage.rs` (they stop the shared broker).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use clickstream_model::{parse_event, EventTime, ValidationPolicy};
use serde_json::{json, Value};
use support::collector::{request, Collector, KEY};
use support::*;

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A valid page view `secs_ago` seconds ago by the device's clock.
fn page_view(secs_ago: i64) -> Value {
    let t = EventTime::from_micros(EventTime::now().as_micros() - secs_ago * 1_000_000);
    json!({"event_id": uuid(), "event_type": "page_view", "timestamp": t.to_string(),
           "user_id": uuid(), "session_id": uuid(), "page": "home"})
}

fn body(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(events).unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(b).unwrap();
    z.finish().unwrap()
}

/// (name, path, headers, body, status, error code)
type BadCase<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_a_clear_4xx_and_produce_nothing() {
    let s = services();
    let topic = unique("collect_bad");
    let dlq = unique("collect_bad_dlq");
    create_topic(&s.bootstrap, &topic, 2).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let mut c = Collector::start(
        &s,
        &topic,
        &dlq,
        &[
            "--max-body-bytes",
            "65536",
            "--max-events",
            "10",
            "--read-timeout",
            "2s",
            "--allowed-origin",
            "https://shop.example",
        ],
    );
    let ok = body(&[page_view(1)]);
    let key = format!("/v1/events?k={KEY}");
    let big = vec![b' '; 70_000];
    let bomb = gzip(&vec![b'['; 2 << 20]);
    let many = body(&(0..11).map(|_| page_view(1)).collect::<Vec<_>>());
    let cases: Vec<BadCase<'_>> = vec![
        (
            "no key",
            "/v1/events".into(),
            vec![],
            ok.clone(),
            401,
            "missing_write_key",
        ),
        (
            "wrong key",
            "/v1/events?k=wrong-key-123".into(),
            vec![],
            ok.clone(),
            401,
            "unknown_write_key",
        ),
        (
            "wrong bearer",
            "/v1/events".into(),
            vec![("Authorization", "Bearer nope-nope-nope")],
            ok.clone(),
            401,
            "unknown_write_key",
        ),
        (
            "disallowed origin",
            key.clone(),
            vec![("Origin", "https://evil.example")],
            ok.clone(),
            403,
            "origin_not_allowed",
        ),
        (
            "declared too large",
            key.clone(),
            vec![],
            big.clone(),
            413,
            "body_too_large",
        ),
        (
            "chunked too large",
            key.clone(),
            vec![("Transfer-Encoding", "chunked"), ("Content-Length", "")],
            [
                format!("{:x}\r\n", big.len()).into_bytes(),
                big.clone(),
                b"\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            413,
            "body_too_large",
        ),
        (
            "gzip bomb",
            key.clone(),
            vec![("Content-Encoding", "gzip")],
            bomb,
            413,
            "body_too_large",
        ),
        (
            "not gzip",
            key.clone(),
            vec![("Content-Encoding", "gzip")],
            ok.clone(),
            400,
            "bad_gzip",
        ),
        (
            "brotli",
            key.clone(),
            vec![("Content-Encoding", "br")],
            ok.clone(),
            415,
            "unsupported_encoding",
        ),
        (
            "bad json",
            key.clone(),
            vec![],
            b"[{\"event_id\": ".to_vec(),
            400,
            "not_json",
        ),
        (
            "not json",
            key.clone(),
            vec![],
            b"hello".to_vec(),
            400,
            "not_json",
        ),
        (
            "empty array",
            key.clone(),
            vec![],
            b"[]".to_vec(),
            400,
            "no_events",
        ),
        ("empty body", key.clone(), vec![], vec![], 400, "no_events"),
        (
            "too many events",
            key.clone(),
            vec![],
            many,
            413,
            "too_many_events",
        ),
    ];
    for (name, path, headers, payload, status, code) in cases {
        // `Content-Length: ""` marks "send no length" for the chunked case.
        let headers: Vec<(&str, &str)> = headers;
        let r = if headers.iter().any(|(k, _)| *k == "Transfer-Encoding") {
            raw_request(&c.addr, &path, "Transfer-Encoding: chunked\r\n", &payload)
        } else {
            request(&c.addr, "POST", &path, &headers, &payload)
        };
        assert_eq!(
            r.status,
            status,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], code, "{name}");
        assert!(!r.json()["message"].as_str().unwrap().is_empty(), "{name}");
    }

    // A body that trickles in is cut off at the read timeout (408, connection closed).
    let started = Instant::now();
    let mut slow = TcpStream::connect(&c.addr).unwrap();
    write!(
        slow,
        "POST {key} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n["
    )
    .unwrap();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        let _ = slow.write_all(b" ");
    }
    let r = support::collector::read_response(&mut slow);
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"], "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Headers that never finish: the connection is closed at the header deadline.
    let started = Instant::now();
    let mut loris = TcpStream::connect(&c.addr).unwrap();
    loris
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(loris, "POST {key} HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut loris, &mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "header deadline: closed after {waited:?}"
    );

    // Per-address rate limit (50 requests/s, bursts of 100): a burst of 150 meets 429s
    // with Retry-After, and the collector still answers afterwards.
    let mut limited = 0;
    for _ in 0..150 {
        let r = request(&c.addr, "GET", "/v1/p.gif", &[], b"");
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
            limited += 1;
        }
    }
    assert!(limited > 0, "no request was rate limited");
    assert!(c.is_running());
    std::thread::sleep(Duration::from_secs(2));
    let health = request(&c.addr, "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);

    // Nothing reached either topic (the pixel requests had no key: 401 or 429).
    let raw = read_topic(&s.bootstrap, &topic, 2, 1, Duration::from_secs(3));
    assert!(
        raw.is_empty(),
        "refused requests produced {} records",
        raw.len()
    );
    let dead = read_topic(&s.bootstrap, &dlq, 1, 1, Duration::from_secs(1));
    assert!(
        dead.is_empty(),
        "refused requests dead-lettered {}",
        dead.len()
    );

    let metrics = request(&c.addr, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    for needle in [
        "clickstream_collector_requests_total{status=\"413\"}",
        "clickstream_collector_requests_refused_total{reason=\"origin_not_allowed\"} 1",
        "clickstream_collector_rate_limited_total",
        "clickstream_collector_request_duration_seconds_bucket",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
}

/// A request with hand-written framing (`extra_headers` ends in `\r\n`).
fn raw_request(
    addr: &str,
    path: &str,
    extra_headers: &str,
    body: &[u8],
) -> support::collector::Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n"
    )
    .unwrap();
    let _ = s.write_all(body);
    support::collector::read_response(&mut s)
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_are_enriched_and_refused_ones_dead_lettered_with_their_reason() {
    let s = services();
    let topic = unique("collect_enrich");
    let dlq = unique("collect_enrich_dlq");
    create_topic(&s.bootstrap, &topic, 3).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    // The test connects from 127.0.0.1, so it plays the trusted proxy.
    let c = Collector::start(
        &s,
        &topic,
        &dlq,
        &[
            "--trusted-proxy",
            "127.0.0.0/8",
            "--country-header",
            "CF-IPCountry",
            "--geoip-db",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../collector/tests/data/GeoLite2-Country-Test.mmdb"
            ),
        ],
    );

    // 1. A JSON array from a browser behind the proxy: a right clock, a clock 2 hours
    //    behind, the bot's own user agent, and four bad events.
    let right = page_view(5);
    let mut behind = page_view(0);
    let device_now = EventTime::from_micros(EventTime::now().as_micros() - 7_200_000_000);
    let device_created = EventTime::from_micros(device_now.as_micros() - 30_000_000);
    behind["timestamp"] = json!(device_created.to_string());
    behind["sent_at"] = json!(device_now.to_string());
    // A sender may not set the collector's fields.
    behind["bot"] = json!(true);
    behind["ip"] = json!("1.2.3.4");
    let mut crawler = page_view(3);
    crawler["user_agent"] =
        json!("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)");
    let mut no_user = page_view(1);
    no_user.as_object_mut().unwrap().remove("user_id");
    let mut nul = page_view(1);
    nul["page"] = json!("home\u{0}");
    let mut far_future = page_view(0);
    far_future["timestamp"] = json!("2099-01-01T00:00:00Z");
    let mut bad_clock = page_view(0);
    bad_clock["sent_at"] = json!("1999-01-01T00:00:00Z");
    let events = [
        right.clone(),
        no_user,
        behind.clone(),
        nul.clone(),
        crawler.clone(),
        far_future,
        bad_clock,
    ];
    let r = c.request(
        "POST",
        &format!("/v1/events?k={KEY}"),
        &[
            ("User-Agent", FIREFOX),
            ("X-Forwarded-For", "198.51.100.77, 127.0.0.1"),
            ("CF-IPCountry", "de"),
            ("Content-Type", "text/plain;charset=UTF-8"),
        ],
        &body(&events),
    );
    assert_eq!(r.status, 207, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["accepted"], 3);
    let rejected: Vec<(u64, String)> = j["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["index"].as_u64().unwrap(),
                x["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "missing_field".to_string()),
            (3, "control_character".to_string()),
            (5, "timestamp_in_future".to_string()),
            (6, "invalid_clock_time".to_string()),
        ]
    );

    // 2. gzip NDJSON from a server-side sender (Bearer key, no Origin), and the pixel.
    let ndjson: Vec<u8> = [page_view(2), page_view(2)]
        .iter()
        .flat_map(|e| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()].concat())
        .collect();
    let auth = format!("Bearer {KEY}");
    let r = c.request(
        "POST",
        "/v1/events",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Encoding", "gzip"),
            ("User-Agent", "curl/8.5.0"),
            // No country header: the country comes from the MaxMind test database.
            ("X-Forwarded-For", "89.160.20.130"),
        ],
        &gzip(&ndjson),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 2);
    let pix = c.request(
        "GET",
        &format!("/v1/p.gif?k={KEY}&event_type=page_view&page=landing&utm_source=newsletter"),
        &[("User-Agent", FIREFOX)],
        b"",
    );
    assert_eq!(pix.status, 200);
    assert_eq!(pix.header("content-type"), Some("image/gif"));
    assert!(pix.body.starts_with(b"GIF89a"));
    assert!(pix.header("set-cookie").unwrap().starts_with("_cs_"));
    let bad_pix = c.request(
        "GET",
        &format!("/v1/p.gif?k={KEY}&event_type=refund"),
        &[],
        b"",
    );
    assert_eq!(bad_pix.status, 400);

    // What Kafka holds: 6 events keyed by user, each valid for the processor.
    let recs = read_topic(&s.bootstrap, &topic, 3, 6, Duration::from_secs(30));
    assert_eq!(recs.len(), 6);
    let policy = ValidationPolicy::new(EventTime::now());
    let by_id: std::collections::HashMap<String, clickstream_model::Event> = recs
        .iter()
        .map(|r| {
            let e = parse_event(&r.value, &policy).expect("the processor accepts it");
            assert_eq!(r.key.as_deref(), Some(e.user_id.to_string().as_bytes()));
            (e.event_id.to_string(), e)
        })
        .collect();
    let get = |v: &Value| &by_id[v["event_id"].as_str().unwrap()];

    let e = get(&right);
    assert_eq!(e.browser.as_deref(), Some("Firefox 128"));
    assert_eq!(e.os.as_deref(), Some("Linux"));
    assert_eq!(e.device.as_deref(), Some("desktop"));
    assert_eq!(e.bot, Some(false));
    assert_eq!(e.user_agent.as_deref(), Some(FIREFOX));
    assert_eq!(e.ip.as_deref(), Some("198.51.100.0"));
    assert_eq!(e.country.as_deref(), Some("DE"));
    assert!(e.received_at.is_some());
    assert_eq!(e.client_timestamp, None, "a right clock is not corrected");

    // The clock 2 hours behind: corrected to about 30 s before arrival; identity kept.
    let e = get(&behind);
    assert_eq!(e.client_timestamp, Some(device_created));
    let received = e.received_at.unwrap().as_micros();
    let lag = received - e.timestamp.as_micros();
    assert!(
        (29_000_000..=32_000_000).contains(&lag),
        "corrected lag {lag} µs"
    );
    assert_eq!(e.key().timestamp, device_created);
    assert_eq!(e.bot, Some(false), "the sender's `bot` is overwritten");
    assert_eq!(
        e.ip.as_deref(),
        Some("198.51.100.0"),
        "the sender's `ip` is overwritten"
    );

    let e = get(&crawler);
    assert_eq!(e.bot, Some(true));
    assert_eq!(e.device.as_deref(), Some("bot"));
    assert_eq!(e.browser.as_deref(), Some("Googlebot 2"));

    let curl: Vec<_> = by_id
        .values()
        .filter(|e| e.browser.as_deref() == Some("curl 8"))
        .collect();
    assert_eq!(curl.len(), 2);
    assert!(curl.iter().all(|e| e.bot == Some(true)));
    assert!(curl.iter().all(|e| e.country.as_deref() == Some("SE")));
    assert!(curl.iter().all(|e| e.ip.as_deref() == Some("89.160.20.0")));
    let pixel: Vec<_> = by_id
        .values()
        .filter(|e| e.page.as_deref() == Some("landing"))
        .collect();
    assert_eq!(pixel.len(), 1);
    assert_eq!(pixel[0].utm_source.as_deref(), Some("newsletter"));

    // The dead letters: the refused events' own bytes, with reason and source headers.
    let dead = read_topic(&s.bootstrap, &dlq, 1, 5, Duration::from_secs(20));
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| {
            let h = |k: &str| {
                d.headers
                    .iter()
                    .find(|(x, _)| x == k)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(h("source").as_deref(), Some("collector"));
            assert_eq!(h("source.site").as_deref(), Some("test"));
            assert!(!h("detail").unwrap().is_empty());
            h("reason").unwrap()
        })
        .collect();
    let mut sorted = reasons.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "control_character",
            "invalid_clock_time",
            "missing_field",
            "timestamp_in_future",
            "unknown_event_type"
        ]
    );
    let nul_letter = dead
        .iter()
        .find(|d| {
            d.headers
                .iter()
                .any(|(k, v)| k == "reason" && v == "control_character")
        })
        .unwrap();
    let sent: Value = serde_json::from_slice(&nul_letter.value).unwrap();
    assert_eq!(sent, nul);

    let metrics =
        String::from_utf8_lossy(&c.request("GET", "/metrics", &[], b"").body).into_owned();
    for needle in [
        "clickstream_collector_events_accepted_total 6",
        "clickstream_collector_events_rejected_total{reason=\"missing_field\"} 1",
        "clickstream_collector_clock_corrected_total 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
}

/// A desktop Chrome: headless Chromium's own user agent says `HeadlessChrome`, which the
/// collector (rightly) flags as a bot.
const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

fn click(b: &mut support::browser::Browser, testid: &str) {
    b.eval(&format!(
        "document.querySelector('[data-testid=\"{testid}\"]').click()"
    ));
}

/// The tracker's queue is empty (the collector acknowledged every event).
fn drained(b: &mut support::browser::Browser) {
    b.wait_for(
        "window.clickstream && clickstream.pending() === 0",
        Duration::from_secs(30),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shopper_in_chromium_reaches_postgres_and_the_dashboard_exactly_once() {
    use support::browser::Browser;
    use support::reference;
    use support::tables::{actual, assert_tables_equal};

    let s = services();
    let db = TestDb::create(&s).await;
    assert!(db.migrate().status.success());
    let topic = unique("shop");
    create_topic(&s.bootstrap, &topic, 3).await;
    let dlq = dead_letter_topic(&s).await;
    // The catalog (analytics.dim_product) as `clickstream generate` writes it.
    let start = EventTime::from_micros(EventTime::now().as_micros() - 60_000_000);
    generate_seeded(
        &s,
        &unique("shop_catalog"),
        1,
        5,
        &start.to_string(),
        30,
        Some(&db.writer_url),
    );
    let group = unique("g");
    let mut flags = reference::TEST_SEM_FLAGS.to_vec();
    flags.extend(["--batch-max-wait", "100ms", "--audit"]);
    let processor = Processor::start(&s, &db, &topic, &dlq, &group, &flags);
    let c = Collector::start(
        &s,
        &topic,
        &dlq,
        &["--demo-shop", "--database-url", &db.reader_url],
    );

    // The flag (not an emulation override) also covers requests sent while a page unloads.
    let ua_flag = format!("--user-agent={CHROME}");
    let mut b = Browser::launch_with(&[&ua_flag]);
    b.command("Network.enable", json!({}));

    // Catalog -> two products (2 of the first, 1 of the second) -> cart -> checkout.
    b.navigate(&c.url("/shop/"));
    b.wait_for(
        "document.querySelectorAll('[data-testid=product-link]').length >= 2",
        Duration::from_secs(30),
    );
    let links = b.eval(
        "[...document.querySelectorAll('[data-testid=product-link]')].slice(0, 2).map(a => a.href)",
    );
    let catalog = request(&c.addr, "GET", "/shop/api/products", &[], b"").json();
    let price_of = |href: &str| -> i64 {
        let id = href.rsplit("id=").next().unwrap();
        catalog
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["product_id"] == id)
            .unwrap()["price_cents"]
            .as_i64()
            .unwrap()
    };
    let mut revenue = 0;
    for (i, qty) in [(0usize, 2i64), (1, 1)] {
        let href = links[i].as_str().unwrap().to_string();
        b.navigate(&href);
        b.wait_for(
            "document.querySelector('[data-testid=product-name]')",
            Duration::from_secs(30),
        );
        b.eval(&format!(
            "document.querySelector('[data-testid=qty]').value = '{qty}'"
        ));
        click(&mut b, "add-to-cart");
        b.wait_for(
            "document.querySelector('[data-testid=added]').textContent !== ''",
            Duration::from_secs(5),
        );
        revenue += price_of(&href) * qty;
    }
    b.navigate(&c.url("/shop/cart.html"));
    b.wait_for(
        "document.querySelectorAll('[data-testid=cart-line]').length === 2",
        Duration::from_secs(30),
    );
    b.navigate(&c.url("/shop/checkout.html"));
    b.wait_for(
        "document.querySelector('[data-testid=place-order]')",
        Duration::from_secs(30),
    );
    click(&mut b, "place-order");
    let order = b.wait_for(
        "(document.querySelector('[data-testid=order-id]') || {}).textContent",
        Duration::from_secs(10),
    );
    drained(&mut b);
    let user = b.eval("clickstream.userId()").as_str().unwrap().to_string();

    // Offline: events wait in the queue, and go out once the browser is back.
    b.command(
        "Network.emulateNetworkConditions",
        json!({"offline": true, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
    );
    b.eval("for (let i = 0; i < 3; i++) clickstream.track('page_view', {page: 'offline'})");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        b.eval("clickstream.pending()"),
        json!(3),
        "queued while offline"
    );
    b.command(
        "Network.emulateNetworkConditions",
        json!({"offline": false, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
    );
    drained(&mut b);

    // The collector takes a batch but the browser never hears back: the tracker re-sends
    // the same events (same ids), and the pipeline counts them once.
    b.command(
        "Fetch.enable",
        json!({"patterns": [{"urlPattern": "*/v1/events*", "requestStage": "Response"}]}),
    );
    b.eval("clickstream.track('page_view', {page: 'retry'}); clickstream.track('page_view', {page: 'retry'}); void clickstream.flush()");
    let paused = b.wait_event("Fetch.requestPaused", Duration::from_secs(20));
    assert_eq!(
        paused["responseStatusCode"], 200,
        "the collector took the batch"
    );
    b.command(
        "Fetch.failRequest",
        json!({"requestId": paused["requestId"], "errorReason": "ConnectionReset"}),
    );
    let again = b.wait_event("Fetch.requestPaused", Duration::from_secs(20));
    b.command(
        "Fetch.continueRequest",
        json!({"requestId": again["requestId"]}),
    );
    b.command("Fetch.disable", json!({}));
    drained(&mut b);
    // Only the failures this test caused.
    let errors: Vec<String> = b
        .page_errors()
        .into_iter()
        .filter(|e| !e.contains("ERR_INTERNET_DISCONNECTED") && !e.contains("ERR_CONNECTION_RESET"))
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:?}");

    // Kafka: 5 page views, 2 cart adds, 2 purchase lines, 3 offline views and the 2 retried
    // views; the retried ones at least twice. Others may be there twice as well: a page
    // that unloads never hears the collector's answer, so the next page sends again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (recs, ids) = loop {
        let recs = read_topic(&s.bootstrap, &topic, 3, 16, Duration::from_secs(5));
        let ids = histogram(recs.iter().map(|r| {
            let v: Value = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(v["user_id"], json!(user));
            assert_eq!(v["browser"], "Chrome 120");
            assert_eq!(v["bot"], false);
            (
                v["page"].as_str().unwrap_or("").to_string(),
                v["event_id"].as_str().unwrap().to_string(),
            )
        }));
        if ids.len() >= 14 || Instant::now() > deadline {
            break (recs, ids);
        }
    };
    assert_eq!(ids.len(), 14, "distinct events: {ids:?}");
    let retried: Vec<usize> = ids
        .iter()
        .filter(|((page, _), _)| page == "retry")
        .map(|(_, n)| *n)
        .collect();
    assert!(
        retried.len() == 2 && retried.iter().all(|n| *n >= 2),
        "{ids:?}"
    );
    println!("{} records for 14 events", recs.len());

    wait_caught_up(
        &db.writer_url,
        &group,
        &topic,
        &end_offsets(&recs),
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every table equals the reference over the topic; and the shopper's own numbers.
    let raw: Vec<(i32, i64, Vec<u8>)> = recs
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect();
    let want = reference::compute(
        &raw,
        &ValidationPolicy::new(EventTime::now()),
        reference::TEST_SEM,
    );
    let got = actual(&db).await;
    assert_tables_equal(&want, &got);
    assert_eq!(got.distinct_events, 14);
    let sessions: Vec<_> = got.sessions.values().collect();
    assert_eq!(sessions.len(), 1, "one visit: {sessions:?}");
    let (u, _, _, events, views, carts, buys, rev, _) = *sessions[0];
    assert_eq!(u.to_string(), user);
    assert_eq!((events, views, carts, buys), (14, 10, 2, 2));
    assert_eq!(rev, revenue);
    let pg = connect(&db.admin_url).await;
    let row = pg
        .query_one(
            "SELECT count(DISTINCT order_id)::int8, sum(amount_cents)::int8, sum(quantity)::int8
               FROM analytics.events WHERE event_type = 'purchase'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i64>(1), revenue);
    assert_eq!(row.get::<_, i64>(2), 3);
    let order_in_db: String = pg
        .query_one(
            "SELECT min(order_id::text) FROM analytics.events WHERE event_type = 'purchase'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(json!(order_in_db), order);

    // The dashboard shows them.
    let log = std::env::temp_dir().join(format!("{}.log", unique("serve")));
    let mut serve = clickstream()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap",
            &s.bootstrap,
        ])
        .args([
            "--topic",
            &topic,
            "--group",
            &group,
            "--database-url",
            &db.reader_url,
        ])
        .args(["--refresh", "500ms"])
        .env_remove("CLICKSTREAM_DASHBOARD_TOKEN")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let base = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(url) = text.lines().find_map(|l| l.split("url=").nth(1)) {
            break url.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    b.navigate(&base);
    let dollars = format!("${}.{:02}", revenue / 100, revenue % 100);
    let shown = b.wait_for(
        &format!(
            "document.querySelector('[data-testid=\"kpi-purchases\"]').textContent === '2' && \
             document.querySelector('[data-testid=\"kpi-revenue\"]').textContent.replace(/,/g, '') === '{dollars}'"
        ),
        Duration::from_secs(30),
    );
    assert_eq!(shown, json!(true));
    let _ = serve.kill();
    let _ = serve.wait();
    processor.stop();
    drop(c);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_producer_queue_is_answered_503_with_retry_after() {
    let s = services();
    let topic = unique("collect_full");
    let dlq = unique("collect_full_dlq");
    create_topic(&s.bootstrap, &topic, 1).await;
    create_topic(&s.bootstrap, &dlq, 1).await;
    let c = Collector::start(
        &s,
        &topic,
        &dlq,
        &["--kafka-opt", "queue.buffering.max.messages=5"],
    );
    let r = c.post(&body(&(0..20).map(|_| page_view(1)).collect::<Vec<_>>()));
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "queue_full");
    assert_eq!(r.header("retry-after"), Some("5"));
    // Once the queued records are acknowledged, small requests get through.
    std::thread::sleep(Duration::from_secs(2));
    let r = c.post(&body(&[page_view(1), page_view(1)]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resend_corrected_differently_for_a_wrong_clock_counts_once() {
    use support::reference;
    use support::tables::{actual, assert_tables_equal};

    let s = services();
    let db = TestDb::create(&s).await;
    assert!(db.migrate().status.success());
    let topic = unique("collect_skew");
    create_topic(&s.bootstrap, &topic, 2).await;
    let dlq = dead_letter_topic(&s).await;
    let c = Collector::start(&s, &topic, &dlq, &[]);

    // A phone whose clock is 3 hours behind sends a purchase, does not hear back, and sends
    // it again 2 s later (by its clock): two corrections, one event. Another event reuses
    // the id at another device time: a different event.
    let device_now = || EventTime::from_micros(EventTime::now().as_micros() - 3 * 3_600_000_000);
    let created = EventTime::from_micros(device_now().as_micros() - 20_000_000);
    let mut e = page_view(0);
    e["event_type"] = json!("purchase");
    for (k, v) in [
        ("product_id", json!("P00001")),
        ("category", json!("toys")),
        ("price", json!(12.5)),
        ("quantity", json!(2)),
        ("amount", json!(25.0)),
        ("order_id", json!(uuid())),
    ] {
        e[k] = v;
    }
    e["timestamp"] = json!(created.to_string());
    let mut other = e.clone();
    other["timestamp"] =
        json!(EventTime::from_micros(created.as_micros() - 60_000_000).to_string());
    for (event, pause) in [(&e, 2), (&e, 0), (&other, 0)] {
        let mut sent = event.clone();
        sent["sent_at"] = json!(device_now().to_string());
        let r = c.post(&body(&[sent]));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_secs(pause));
    }
    let recs = read_topic(&s.bootstrap, &topic, 2, 3, Duration::from_secs(20));
    assert_eq!(recs.len(), 3);
    let times: std::collections::HashSet<String> = recs
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.value).unwrap()["timestamp"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(times.len(), 3, "each send corrected on its own: {times:?}");

    let group = unique("g");
    let mut flags = reference::TEST_SEM_FLAGS.to_vec();
    flags.push("--audit");
    let processor = Processor::start(&s, &db, &topic, &dlq, &group, &flags);
    wait_caught_up(
        &db.writer_url,
        &group,
        &topic,
        &end_offsets(&recs),
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raw: Vec<(i32, i64, Vec<u8>)> = recs
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect();
    let want = reference::compute(
        &raw,
        &ValidationPolicy::new(EventTime::now()),
        reference::TEST_SEM,
    );
    let got = actual(&db).await;
    assert_tables_equal(&want, &got);
    assert_eq!(got.distinct_events, 2);
    let revenue: i64 = got.minutes.values().map(|m| m.revenue).sum();
    assert_eq!(revenue, 2 * 2500, "the resend is not revenue");
    // Event time is the corrected one: minutes of now, not of the phone's clock.
    let now_us = EventTime::now().as_micros();
    assert!(
        got.minutes
            .keys()
            .all(|(m, _)| now_us - m < 30 * 60_000_000),
        "{:?}",
        got.minutes.keys()
    );
    processor.stop();
    db.drop().await;
}

#[test]
fn a_missing_topic_stops_the_collector_at_start_with_the_command_to_create_it() {
    let s = services();
    let topic = unique("collect_missing");
    let out = clickstream()
        .args([
            "collect",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap",
            &s.bootstrap,
        ])
        .args(["--topic", &topic, "--write-key", &format!("t={KEY}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("topic `{topic}` does not exist")),
        "{err}"
    );
    assert!(err.contains("kafka-topics.sh --create"), "{err}");
    // And a bad write key is refused before anything starts.
    let out = clickstream()
        .args([
            "collect",
            "--listen",
            "127.0.0.1:0",
            "--write-key",
            "shop=short",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("8+ characters"));
}
