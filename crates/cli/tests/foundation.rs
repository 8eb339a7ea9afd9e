//! End-to-end tests of the foundation against the real Kafka and PostgreSQL:
//! migrations and roles, the generator into Kafka, determinism, graceful stop.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use clickstream_model::{parse_event, EventTime, ValidationPolicy, DAY_MICROS};
use support::*;

const START: &str = "2026-03-02T10:00:00Z";

fn policy() -> ValidationPolicy {
    let mut p = ValidationPolicy::new(
        EventTime::parse_rfc3339(START)
            .unwrap()
            .add_micros(DAY_MICROS),
    );
    p.max_age_micros = 10 * DAY_MICROS;
    p
}

/// (version, applied_at) of every applied migration.
async fn applied_migrations(admin: &tokio_postgres::Client) -> Vec<(i32, String)> {
    admin
        .query(
            "SELECT version, applied_at::text FROM analytics.schema_migrations ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn migrate_twice_is_a_noop_and_roles_are_separated() {
    let s = services();
    let db = TestDb::create(&s).await;
    let admin = connect(&db.admin_url).await;
    let before = applied_migrations(&admin).await;
    assert!(!before.is_empty());

    let again = db.migrate();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("schema up to date"));
    let after = applied_migrations(&admin).await;
    assert_eq!(before, after, "a second migrate must not re-apply anything");

    // An edited migration is refused rather than silently ignored.
    admin
        .execute(
            "UPDATE analytics.schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let refused = db.migrate();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("was changed after it was applied"));

    // A processor refuses a schema older than its build instead of writing with keys the
    // tables do not have.
    admin
        .execute(
            "DELETE FROM analytics.schema_migrations WHERE version = (SELECT max(version) FROM analytics.schema_migrations)",
            &[],
        )
        .await
        .unwrap();
    let behind = clickstream()
        .args(["process", "--bootstrap", &s.bootstrap, "--topic", "unused"])
        .args([
            "--database-url",
            &db.writer_url,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!behind.status.success());
    let err = String::from_utf8_lossy(&behind.stderr);
    assert!(err.contains("run `clickstream migrate`"), "{err}");

    let writer = connect(&db.writer_url).await;
    writer
        .execute(
            "INSERT INTO analytics.dim_product VALUES ('PX', 'Test', 'toys', 1.50, 1, now())",
            &[],
        )
        .await
        .expect("the writer may write");

    let reader = connect(&db.reader_url).await;
    let n: i64 = reader
        .query_one("SELECT count(*) FROM analytics.dim_product", &[])
        .await
        .expect("the reader may read")
        .get(0);
    assert_eq!(n, 1);
    for stmt in [
        "INSERT INTO analytics.dim_product VALUES ('PY', 'Nope', 'toys', 1, 2, now())",
        "UPDATE analytics.dim_product SET name = 'x'",
        "DELETE FROM analytics.dim_product",
        "CREATE TABLE analytics.sneaky (x int)",
    ] {
        let err = reader.execute(stmt, &[]).await.expect_err(stmt);
        // Refused as read-only (the role's default) or for lack of the privilege.
        assert!(
            [
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            ]
            .contains(&err.code()),
            "{stmt}: {err}"
        );
    }
    db.drop().await;
}

fn is_refused(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ]
    .iter()
    .any(|c| e.code() == Some(c))
}

#[tokio::test]
async fn roles_have_least_privilege() {
    use std::time::{Duration, Instant};
    let s = services();
    let db = TestDb::create(&s).await;
    let admin = connect(&db.admin_url).await;

    // A no-login owner role, not the admin, owns the schema and everything in it.
    let r = admin
        .query_one(
            "SELECT (SELECT nspowner = 'clickstream_owner'::regrole FROM pg_namespace
                      WHERE nspname = 'analytics'),
                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = 'analytics' AND c.relkind IN ('r', 'p', 'v', 'm')
                        AND c.relowner <> 'clickstream_owner'::regrole),
                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = 'analytics' AND c.relkind IN ('r', 'p', 'v', 'm')),
                    (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'clickstream_owner')",
            &[],
        )
        .await
        .unwrap();
    let (schema_owned, foreign, objects, owner_login): (bool, i64, i64, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert!(schema_owned && foreign == 0 && objects > 10 && !owner_login);

    // The writer changes rows, never the schema.
    let writer = connect(&db.writer_url).await;
    for stmt in [
        "CREATE TABLE analytics.sneaky (x int)",
        "DROP TABLE analytics.dim_product",
        "ALTER TABLE analytics.sessions ADD COLUMN sneaky int",
        "TRUNCATE analytics.dim_product",
        "CREATE TEMP TABLE sneaky (x int)",
        "CREATE TABLE public.sneaky (x int)",
        "CREATE INDEX sneaky ON analytics.dim_product (name)",
        "DROP SCHEMA analytics CASCADE",
    ] {
        let err = writer.execute(stmt, &[]).await.expect_err(stmt);
        assert!(is_refused(&err), "writer: {stmt}: {err}");
    }

    // The reader is read-only and time-limited, set on the role itself, so every client
    // that logs in as it (Grafana, Superset, status) gets both.
    let reader = connect(&db.reader_url).await;
    let ro: String = reader
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    let t0 = Instant::now();
    let err = reader
        .execute("SELECT pg_sleep(20)", &[])
        .await
        .expect_err("a 20-second query");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let err = reader
        .execute(
            "INSERT INTO analytics.dim_product VALUES ('PZ', 'n', 'toys', 1, 3, now())",
            &[],
        )
        .await
        .expect_err("reader insert");
    assert!(is_refused(&err), "{err}");

    // Nobody else may connect to the database.
    let probe = unique("probe");
    admin
        .batch_execute(&format!("CREATE ROLE {probe} LOGIN PASSWORD 'probe-pw-1'"))
        .await
        .unwrap();
    let (base, rest) = db.reader_url.split_once("://").unwrap();
    let (_, host) = rest.split_once('@').unwrap();
    let url = format!("{base}://{probe}:probe-pw-1@{host}");
    let Err(err) = clickstream_db::connect(&url).await else {
        panic!("a role without CONNECT connected");
    };
    assert!(
        err.to_string().contains("permission denied for database"),
        "{err}"
    );
    admin
        .batch_execute(&format!("DROP ROLE {probe}"))
        .await
        .unwrap();
    db.drop().await;
}

#[tokio::test]
async fn generated_events_round_trip_through_kafka() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("raw");
    let n = 30_000usize;
    let partitions = 4;
    let gen = |sink: &str, extra: &[&str]| {
        let mut c = clickstream();
        c.args([
            "generate",
            "--sink",
            sink,
            "--seed",
            "11",
            "--start",
            START,
            "--no-pacing",
        ])
        .args(["--eps", "2000", "--count", &n.to_string()])
        .args([
            "--duplicate-rate",
            "0.03",
            "--late-duplicate-share",
            "0",
            "--malformed-rate",
            "0.01",
        ])
        .args(["--progress", "never"])
        .args(extra);
        c
    };
    let parts = partitions.to_string();
    let out = gen(
        "kafka",
        &[
            "--bootstrap",
            &s.bootstrap,
            "--topic",
            &topic,
            "--partitions",
            &parts,
        ],
    )
    .args(["--database-url", &db.writer_url])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let records = read_topic(&s.bootstrap, &topic, partitions, n, Duration::from_secs(60));
    assert_eq!(records.len(), n, "every generated record is in Kafka, once");

    // Same seed to a file gives the same records (Kafka keeps per-partition order only, so
    // compare as multisets, and per key in order).
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique("gen")));
    let out = gen("file", &["--file", file.to_str().unwrap(), "--no-catalog"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let from_file: Vec<&[u8]> = text.split(|b| *b == b'\n').take(n).collect();
    assert_eq!(
        histogram(from_file.iter().copied()),
        histogram(records.iter().map(|r| r.value.as_slice()))
    );

    let mut partition_of_key: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut seen = HashSet::new();
    let (mut valid, mut dups, mut bad) = (0usize, 0usize, 0usize);
    for r in &records {
        let (partition, value) = (&r.partition, &r.value);
        let key = r.key.clone().expect("every record is keyed");
        assert_eq!(
            *partition_of_key.entry(key.clone()).or_insert(*partition),
            *partition,
            "a user's records share a partition"
        );
        match parse_event(value, &policy()) {
            Ok(e) => {
                assert_eq!(
                    key,
                    e.user_id.hyphenated().to_string().into_bytes(),
                    "key = user_id"
                );
                if seen.insert(e.event_id) {
                    valid += 1;
                } else {
                    dups += 1;
                }
            }
            Err(_) => bad += 1,
        }
    }
    let dup_rate = dups as f64 / valid as f64;
    let bad_rate = bad as f64 / valid as f64;
    assert!((dup_rate - 0.03).abs() < 0.006, "duplicate rate {dup_rate}");
    assert!((bad_rate - 0.01).abs() < 0.004, "malformed rate {bad_rate}");
    assert!(partition_of_key.values().collect::<HashSet<_>>().len() == partitions as usize);

    // The catalog landed, and a second write changes nothing.
    let admin = connect(&db.admin_url).await;
    let (count, categories): (i64, i64) = admin
        .query_one(
            "SELECT count(*), count(DISTINCT category) FROM analytics.dim_product",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((count, categories), (500, 10));
    let stamp: String = admin
        .query_one(
            "SELECT max(updated_at)::text FROM analytics.dim_product",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let again = clickstream()
        .args([
            "generate",
            "--sink",
            "null",
            "--count",
            "1",
            "--no-pacing",
            "--database-url",
            &db.writer_url,
        ])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("changed=0"));
    let stamp2: String = admin
        .query_one(
            "SELECT max(updated_at)::text FROM analytics.dim_product",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stamp, stamp2);
    db.drop().await;
}

#[test]
fn same_seed_gives_byte_identical_files() {
    let run = |seed: &str| {
        let file = std::env::temp_dir().join(format!("{}.jsonl", unique("det")));
        let out = clickstream()
            .args([
                "generate",
                "--sink",
                "file",
                "--file",
                file.to_str().unwrap(),
                "--no-catalog",
            ])
            .args([
                "--seed",
                seed,
                "--start",
                START,
                "--no-pacing",
                "--count",
                "20000",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        bytes
    };
    let a = run("5");
    assert!(a.len() > 1_000_000);
    assert!(a == run("5"), "same seed, same bytes");
    assert!(a != run("6"), "another seed, other bytes");
}

#[test]
fn bad_settings_are_refused_with_a_clear_message() {
    for (args, expect) in [
        (vec!["--cart-rate", "1.5"], "--cart-rate"),
        (vec!["--eps", "0"], "--eps"),
        (vec!["--start", "yesterday"], "--start"),
        (vec!["--device-mix", "desktop"], "label=weight"),
        (vec!["--sink", "file"], "--file"),
    ] {
        let sink = if args.contains(&"--sink") {
            vec![]
        } else {
            vec!["--sink", "null"]
        };
        let out = clickstream()
            .args(["generate", "--no-catalog", "--count", "1"])
            .args(&sink)
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn sigterm_flushes_and_summarises() {
    let s = services();
    let topic = unique("term");
    let mut child = clickstream()
        .args([
            "generate",
            "--sink",
            "kafka",
            "--bootstrap",
            &s.bootstrap,
            "--topic",
            &topic,
        ])
        .args([
            "--partitions",
            "2",
            "--eps",
            "3000",
            "--no-catalog",
            "--progress",
            "never",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect stderr on a thread; start the clock once the generator says it is running.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let started = line.contains("generating");
        lines.push(line);
        if started {
            break;
        }
    }
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(status.success(), "exit after SIGTERM: {lines:?}");
    let summary = lines
        .iter()
        .find(|l| l.contains(" records in "))
        .expect("a summary line");
    let sent: usize = summary
        .split(" records in ")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("record count in {summary}"));
    // Paced at 3000/s for ~3 s. A loaded CI machine may start slower (2,712 once), so the
    // lower bound only asks that it really ran; pacing shows in the upper bound.
    let ran = started.elapsed().as_secs_f64();
    assert!(sent > 1000, "paced at 3000/s for ~3 s: {sent}");
    assert!(
        (sent as f64) < 3000.0 * (ran + 1.0),
        "paced at 3000/s, {sent} in {ran:.1} s"
    );
    let records = read_topic(&s.bootstrap, &topic, 2, sent, Duration::from_secs(30));
    assert_eq!(records.len(), sent, "everything summarised was delivered");
}

/// Roles are cluster-wide: migrating several databases of one cluster at the same time
/// (as parallel tests, or several environments, do) must not fail on them.
#[tokio::test]
async fn concurrent_migrations_of_one_cluster_succeed() {
    let s = services();
    let admin = connect(&s.admin_url).await;
    let names: Vec<String> = (0..4).map(|_| unique("conc")).collect();
    for n in &names {
        admin
            .batch_execute(&format!("CREATE DATABASE {n}"))
            .await
            .unwrap();
    }
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            clickstream()
                .arg("migrate")
                .env("ADMIN_DATABASE_URL", with_db(&s.admin_url, n))
                .env(
                    "CLICKSTREAM_WRITER_PASSWORD",
                    std::env::var("CLICKSTREAM_WRITER_PASSWORD").unwrap(),
                )
                .env(
                    "CLICKSTREAM_READER_PASSWORD",
                    std::env::var("CLICKSTREAM_READER_PASSWORD").unwrap(),
                )
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for n in &names {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE {n} WITH (FORCE)"))
            .await;
    }
}
