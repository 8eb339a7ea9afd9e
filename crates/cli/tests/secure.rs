//! The pipeline over encrypted, authenticated connections only: Kafka's SASL_SSL listener
//! (SCRAM-SHA-256, the stack's throwaway CA) and PostgreSQL's TLS-only database
//! (`hostssl` + SCRAM, `sslmode=verify-full`). generate -> process -> serve -> lake run end
//! to end and the tables equal the independent reference; a wrong password, an untrusted
//! certificate and a plaintext connection are each refused at once with a message that
//! says what to check.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use clickstream_model::{EventTime, ValidationPolicy};
use support::reference::{self, TEST_SEM, TEST_SEM_FLAGS};
use support::tables::{actual, assert_tables_equal};
use support::*;

/// The stack's SASL_SSL listener and its CA.
struct Secure {
    bootstrap: String,
    ca: PathBuf,
    user: String,
    password: String,
}

fn secure() -> Secure {
    let _ = services();
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run `dev/stack.sh up`"))
    };
    let state = std::env::var("CLICKSTREAM_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.dev"));
    let ca = state.join("tls/ca.pem");
    assert!(
        ca.exists(),
        "{} missing: run `dev/stack.sh up`",
        ca.display()
    );
    Secure {
        bootstrap: format!("localhost:{}", var("KAFKA_SASL_SSL_PORT")),
        ca,
        user: var("KAFKA_SCRAM_USER"),
        password: var("KAFKA_SCRAM_PASSWORD"),
    }
}

/// A `clickstream` command that reaches Kafka over SASL_SSL only.
fn secure_cmd(sec: &Secure, password: &str, ca: &std::path::Path) -> Command {
    let mut c = clickstream();
    c.env("KAFKA_BOOTSTRAP", &sec.bootstrap)
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
        .env("KAFKA_SASL_USERNAME", &sec.user)
        .env("KAFKA_SASL_PASSWORD", password)
        .env("KAFKA_SSL_CA_LOCATION", ca);
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd`, which must fail within `within`, and returns its stderr.
fn must_fail(mut cmd: Command, within: Duration) -> String {
    let t0 = Instant::now();
    let out = cmd.output().expect("run clickstream");
    let took = t0.elapsed();
    assert!(!out.status.success(), "succeeded: {}", stderr(&out));
    assert!(took < within, "took {took:?} to fail: {}", stderr(&out));
    stderr(&out)
}

const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_tls_and_scram_only_and_refuses_bad_credentials() {
    let s = services();
    let sec = secure();

    // PostgreSQL: the TLS-only database refuses plain text and untrusted certificates.
    let db = TestDb::create_tls(&s, "clickstream_tls", &sec.ca).await;
    let plain = db
        .admin_url
        .replace("sslmode=verify-full", "sslmode=disable");
    let mut m = clickstream();
    m.arg("migrate").env("ADMIN_DATABASE_URL", &plain);
    let e = must_fail(m, Duration::from_secs(10));
    assert!(e.contains("no encryption"), "{e}");
    let untrusted = db
        .admin_url
        .replace(&sec.ca.display().to_string(), SYSTEM_CAS);
    let mut m = clickstream();
    m.arg("migrate").env("ADMIN_DATABASE_URL", &untrusted);
    let e = must_fail(m, Duration::from_secs(10));
    assert!(e.contains("certificate verify failed"), "{e}");
    let wrong = db.writer_url.replacen(
        &format!(
            ":{}@",
            std::env::var("CLICKSTREAM_WRITER_PASSWORD").unwrap()
        ),
        ":not-the-password@",
        1,
    );
    let mut st = clickstream();
    st.args(["status", "--database-url", &wrong]);
    let e = must_fail(st, Duration::from_secs(10));
    assert!(e.contains("password authentication failed"), "{e}");
    // Role passwords were set as SCRAM verifiers.
    let admin = connect(&db.admin_url).await;
    let verifiers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_authid
              WHERE rolname IN ('clickstream_writer', 'clickstream_reader')
                AND rolpassword LIKE 'SCRAM-SHA-256$4096:%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(verifiers, 2);

    // Kafka: a wrong password and an untrusted CA are refused with what to check.
    let topic = unique("tls");
    let generate = |c: &mut Command| {
        c.args(["generate", "--sink", "kafka", "--topic", &topic])
            .args(["--count", "100", "--no-pacing", "--no-catalog"]);
    };
    let mut c = secure_cmd(&sec, "not-the-password", &sec.ca);
    generate(&mut c);
    let e = must_fail(c, Duration::from_secs(30));
    assert!(e.contains("refused the credentials"), "{e}");
    let mut c = secure_cmd(&sec, &sec.password, std::path::Path::new(SYSTEM_CAS));
    generate(&mut c);
    let e = must_fail(c, Duration::from_secs(30));
    assert!(e.contains("not trusted"), "{e}");

    // The pipeline, every connection encrypted and authenticated.
    let start = EventTime::from_millis(EventTime::now().as_millis() - 3 * 3_600_000);
    let mut c = secure_cmd(&sec, &sec.password, &sec.ca);
    c.args(["generate", "--sink", "kafka", "--topic", &topic])
        .args(["--partitions", "4", "--count", "20000", "--no-pacing"])
        .args(["--seed", "7", "--start", &start.to_string(), "--eps", "50"])
        .args(["--database-url", &db.writer_url]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "generate: {}", stderr(&out));

    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let log = std::env::temp_dir().join(format!("{group}.log"));
    let mut c = secure_cmd(&sec, &sec.password, &sec.ca);
    c.args([
        "process",
        "--topic",
        &topic,
        "--dlq-topic",
        &dlq,
        "--group",
        &group,
    ])
    .args([
        "--database-url",
        &db.writer_url,
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(["--idle-timeout", "0s", "--audit"])
    .args(TEST_SEM_FLAGS)
    .stderr(std::fs::File::create(&log).unwrap());
    let mut processor = c.spawn().unwrap();

    // The reference reads the same records through the plaintext listener.
    let recs = read_topic(&s.bootstrap, &topic, 4, 20_000, Duration::from_secs(60));
    assert_eq!(recs.len(), 20_000);
    wait_caught_up(
        &db.admin_url,
        &group,
        &topic,
        &end_offsets(&recs),
        Duration::from_secs(180),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raw: Vec<(i32, i64, Vec<u8>)> = recs
        .iter()
        .map(|r| (r.partition, r.offset, r.value.clone()))
        .collect();
    let want = reference::compute(&raw, &ValidationPolicy::new(EventTime::now()), TEST_SEM);
    assert_tables_equal(&want, &actual(&db).await);
    // Every session on the database, the processor's included, is encrypted.
    let (sessions, plain): (i64, i64) = {
        let r = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl)
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = 'clickstream_tls'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        sessions >= 2 && plain == 0,
        "{sessions} sessions, {plain} plain"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &processor.id().to_string()])
        .status();
    assert!(
        processor.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let dead_letters = read_topic(
        &s.bootstrap,
        &dlq,
        1,
        want.rejected.len(),
        Duration::from_secs(30),
    );
    assert_eq!(
        dead_letters.len(),
        want.rejected.len(),
        "dead letters over SASL_SSL"
    );
    assert!(!want.rejected.is_empty());

    // The lake writer over SASL_SSL.
    let lake = std::env::temp_dir().join(unique("tls_lake"));
    let mut c = secure_cmd(&sec, &sec.password, &sec.ca);
    c.args(["lake", "--topic", &topic, "--group", &unique("lake")])
        .arg("--lake-dir")
        .arg(&lake)
        .args(["--stop-at-end", "--metrics-addr", "127.0.0.1:0"]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "lake: {}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("records=20000"), "{text}");
    let _ = std::fs::remove_dir_all(&lake);

    // The dashboard: PostgreSQL as the reader over TLS, Kafka's end offsets over SASL_SSL.
    let slog = std::env::temp_dir().join(format!("{}.log", unique("serve")));
    let mut c = secure_cmd(&sec, &sec.password, &sec.ca);
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--topic",
        &topic,
        "--group",
        &group,
    ])
    .args(["--database-url", &db.reader_url])
    .env_remove("CLICKSTREAM_DASHBOARD_TOKEN")
    .stderr(std::fs::File::create(&slog).unwrap());
    let mut serve = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let base = loop {
        let text = std::fs::read_to_string(&slog).unwrap_or_default();
        if let Some(url) = text.lines().find_map(|l| l.split("url=").nth(1)) {
            break url
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
        }
        assert!(Instant::now() < deadline, "serve did not start: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let health = Command::new("curl")
        .args(["-sf", &format!("{base}/api/health")])
        .output()
        .unwrap();
    let health: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(health["total_lag"].as_i64(), Some(0), "{health}");
    assert_eq!(
        health["partitions"].as_array().map(Vec::len),
        Some(4),
        "{health}"
    );
    let _ = serve.kill();
    let _ = serve.wait();

    // status, with SCRAM-SHA-512 this time.
    let mut c = secure_cmd(&sec, &sec.password, &sec.ca);
    c.env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .args(["status", "--topic", &topic, "--group", &group])
        .args(["--database-url", &db.reader_url]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "status: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Lag needs the end offsets, read over SASL_SSL: 0 once the processor committed all.
    assert!(text.contains("total lag: 0 records"), "{text}");

    // The collector acknowledges only what Kafka took over SASL_SSL.
    let ca = sec.ca.display().to_string();
    let env = [
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("KAFKA_SASL_USERNAME", sec.user.as_str()),
        ("KAFKA_SASL_PASSWORD", sec.password.as_str()),
        ("KAFKA_SSL_CA_LOCATION", ca.as_str()),
    ];
    let secure_services = Services {
        admin_url: s.admin_url.clone(),
        writer_url: s.writer_url.clone(),
        reader_url: s.reader_url.clone(),
        bootstrap: sec.bootstrap.clone(),
    };
    let collected = unique("tls_collect");
    create_topic(&s.bootstrap, &collected, 1).await;
    let collector = support::collector::Collector::start_with_env(
        &secure_services,
        &collected,
        &dlq,
        &[],
        &env,
    );
    let id = uuid::Uuid::new_v4().to_string();
    let now = EventTime::now().to_string();
    let event = serde_json::json!([{"event_id": id, "event_type": "page_view", "timestamp": now,
        "user_id": uuid::Uuid::new_v4().to_string(), "session_id": uuid::Uuid::new_v4().to_string(),
        "page": "home"}]);
    let r = collector.post(&serde_json::to_vec(&event).unwrap());
    assert_eq!(r.status, 200, "{}", collector.log_text());
    let got = read_topic(&s.bootstrap, &collected, 1, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].value).contains(&id));
    drop(collector);
    db.drop().await;
}
