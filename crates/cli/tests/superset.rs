//! The Superset dashboard export (`deploy/superset/`) in a real Superset (the pinned venv
//! `dev/setup.sh` creates): `start.sh` migrates Superset's metadata, creates the admin from
//! the environment and imports the export with its database pointed at a test database's
//! reader role, then serves it with gunicorn. Headless Chromium logs in and opens the
//! dashboard: every chart must render from PostgreSQL without an error, and the revenue
//! and the best product must equal SQL over the raw events.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clickstream_model::EventTime;
use serde_json::Value;
use support::browser::Browser;
use support::*;

/// The charts of the shipped dashboard, by title.
const CHARTS: [&str; 8] = [
    "Revenue, last 7 days",
    "Funnel, last 7 days",
    "Revenue by category, last 7 days",
    "Conversion per hour, last 7 days",
    "Events per hour, last 7 days",
    "Top products by revenue, last 7 days",
    "Flash-sale alerts, last 7 days",
    "Daily funnel (gold batch)",
];

struct Superset {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Superset {
    fn drop(&mut self) {
        // gunicorn's master stops its workers on SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `deploy/superset/start.sh` (set-up, import, gunicorn) in a fresh Superset home.
fn start_superset(venv: &std::path::Path, reader_url: &str) -> Superset {
    let home = std::env::temp_dir().join(unique("superset"));
    std::fs::create_dir_all(&home).unwrap();
    let log = home.join("superset.log");
    let port = free_port();
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let db_url = reader_url.replacen("postgres://", "postgresql+psycopg2://", 1);
    let child = Command::new(root.join("deploy/superset/start.sh"))
        .env("PATH", path)
        .env("SUPERSET_HOME", &home)
        .env(
            "SUPERSET_SECRET_KEY",
            format!("{:032x}", random_u64() as u128 * 7919),
        )
        .env("SUPERSET_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SUPERSET_PORT", port.to_string())
        .env("SUPERSET_WORKERS", "1")
        .env("CLICKSTREAM_SUPERSET_DB_URL", &db_url)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .expect("run deploy/superset/start.sh");
    let mut s = Superset {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!("start.sh exited ({status}) before serving:\n{text}");
        }
        if text.contains("Listening at") && healthy(&s.base) {
            assert!(
                text.contains("imported dashboard 'clickstream' (8 charts)"),
                "{text}"
            );
            return s;
        }
        assert!(Instant::now() < deadline, "Superset did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn healthy(base: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "2", &format!("{base}/health")])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"OK")
}

const ADMIN_PASSWORD: &str = "test-admin-9c1e";

/// Revenue (cents) over the seeded events and the product with the most revenue, from the
/// processor's raw audit table.
async fn truth(db: &TestDb) -> (i64, String) {
    let c = connect(&db.admin_url).await;
    let r = c
        .query_one(
            "SELECT coalesce(sum(amount_cents), 0)::int8,
                    (SELECT coalesce(d.name, e.product_id)
                       FROM analytics.events e LEFT JOIN analytics.dim_product d USING (product_id)
                      WHERE e.event_type = 'purchase'
                      GROUP BY 1 ORDER BY sum(e.amount_cents) DESC LIMIT 1)
               FROM analytics.events WHERE event_type = 'purchase'",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// What each chart holder shows: title, text, and whether something was drawn.
const CHART_STATE: &str = r#"[...document.querySelectorAll('.dashboard-component-chart-holder')].map((h) => ({
  title: (h.querySelector('[data-test="editable-title"], .header-title, .editable-title') || {}).textContent || '',
  text: h.innerText.slice(0, 400),
  drawn: h.querySelectorAll('canvas, svg path, table tbody tr, .header-line').length,
  loading: h.querySelectorAll('.loading, [aria-label="loading"], .ant-skeleton').length,
  error: h.querySelectorAll('[data-test="error-alert"], .alert-danger, .ant-alert-error, [role="alert"]').length,
}))"#;

#[tokio::test(flavor = "multi_thread")]
async fn superset_imports_the_export_and_renders_every_chart_from_postgres() {
    let venv = python_venv("CLICKSTREAM_SUPERSET_VENV", "venv-superset", "superset");
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("superset");
    create_topic(&s.bootstrap, &topic, 3).await;
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let processor = Processor::start(
        &s,
        &db,
        &topic,
        &dlq,
        &group,
        &["--audit", "--alert-min-views", "40"],
    );
    let start = EventTime::from_millis(EventTime::now().as_millis() - 30 * 60_000);
    generate_seeded(
        &s,
        &topic,
        15_000,
        11,
        &start.to_string(),
        10,
        Some(&db.writer_url),
    );
    let recs = read_topic(&s.bootstrap, &topic, 3, 15_000, Duration::from_secs(60));
    wait_caught_up(
        &db.writer_url,
        &group,
        &topic,
        &end_offsets(&recs),
        Duration::from_secs(180),
    )
    .await;
    processor.stop();
    insert_gold_day(&db, 12345).await;
    let (revenue_cents, best) = truth(&db).await;
    assert!(revenue_cents > 0);

    let superset = start_superset(&venv, &db.reader_url);
    let mut b = Browser::launch();
    b.viewport(1400, 1800, false);
    b.navigate(&format!("{}/login/", superset.base));
    b.wait_for(
        "!!document.querySelector('[data-test=\"username-input\"]')",
        Duration::from_secs(60),
    );
    for (field, text) in [("username", "admin"), ("password", ADMIN_PASSWORD)] {
        b.eval(&format!(
            "document.querySelector('[data-test=\"{field}-input\"]').focus()"
        ));
        b.command("Input.insertText", serde_json::json!({ "text": text }));
    }
    b.eval("document.querySelector('[data-test=\"login-button\"]').click()");
    b.wait_for(
        "!location.pathname.startsWith('/login')",
        Duration::from_secs(60),
    );
    b.navigate(&format!(
        "{}/superset/dashboard/clickstream/",
        superset.base
    ));

    // Every chart finishes loading and draws something.
    let deadline = Instant::now() + Duration::from_secs(120);
    let charts = loop {
        let state = b.eval(CHART_STATE);
        let list = state.as_array().cloned().unwrap_or_default();
        let done = list.len() == CHARTS.len()
            && list
                .iter()
                .all(|c| c["loading"] == 0 && (c["drawn"].as_u64() > Some(0) || c["error"] != 0));
        if done {
            break list;
        }
        if Instant::now() > deadline {
            b.screenshot(&screenshot_path("superset-timeout.png"));
            panic!("charts did not finish: {state:#}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    b.screenshot(&screenshot_path("superset.png"));
    let titles: Vec<&str> = charts
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    for want in CHARTS {
        assert!(titles.contains(&want), "{want} missing: {titles:?}");
    }
    for c in &charts {
        assert_eq!(c["error"], 0, "chart error: {c:#}");
        let text = c["text"].as_str().unwrap();
        assert!(
            !text.contains("No results") && !text.contains("rror"),
            "{c:#}"
        );
    }
    // Values can appear a moment after a chart stopped loading: wait for each.
    let revenue = wait_chart_text(&mut b, "Revenue, last 7 days", &dollars(revenue_cents));
    assert!(
        revenue.contains(&dollars(revenue_cents)),
        "Superset shows {revenue:?}, the raw events say {}",
        dollars(revenue_cents)
    );
    let top = wait_chart_text(&mut b, "Top products by revenue, last 7 days", &best);
    let first_row = b.eval(
        "[...document.querySelectorAll('.dashboard-component-chart-holder')].find((h) => h.innerText.includes('Top products by revenue')).querySelector('table tbody tr td').innerText",
    );
    assert_eq!(first_row, Value::String(best.clone()), "{top}");
    let gold = wait_chart_text(&mut b, "Daily funnel (gold batch)", "12345");
    assert!(gold.contains("12345"), "{gold}");
    // Superset's pages link Google Fonts, which this offline machine cannot resolve.
    let errors: Vec<String> = b
        .page_errors()
        .into_iter()
        .filter(|e| !e.contains("net::ERR_NAME_NOT_RESOLVED"))
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    drop(b);
    drop(superset);
    db.drop().await;
}

/// The text of the chart titled `title` once it contains `want` (or after 30 s).
fn wait_chart_text(b: &mut Browser, title: &str, want: &str) -> String {
    let expr = format!(
        "([...document.querySelectorAll('.dashboard-component-chart-holder')].find((h) => h.innerText.includes({title:?})) || {{innerText: ''}}).innerText"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = b.eval(&expr).as_str().unwrap_or_default().to_string();
        if text.contains(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
