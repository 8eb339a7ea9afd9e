//! Shared helpers for the end-to-end tests: the real Kafka and PostgreSQL of `dev/stack.sh`
//! (addresses from the environment or the workspace `.env`), a private database and topic
//! per test, and the built `clickstream` binary.
//!
//! A missing service fails the test with a hint; it never skips.

#![allow(dead_code)]

pub mod browser;
pub mod collector;
pub mod corpus;
pub mod reference;
pub mod tables;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::Client;

/// Where the services are.
pub struct Services {
    pub admin_url: String,
    pub writer_url: String,
    pub reader_url: String,
    pub bootstrap: String,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with `dev/stack.sh up` (or run `./dev/test.sh`)"
        )
    })
}

pub fn services() -> Services {
    let _ = dotenvy::from_path(workspace_root().join(".env"));
    Services {
        admin_url: required("ADMIN_DATABASE_URL"),
        writer_url: required("DATABASE_URL"),
        reader_url: required("READER_DATABASE_URL"),
        bootstrap: required("KAFKA_BOOTSTRAP"),
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// `url` with its database name replaced.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("a postgres:// URL with a database");
    format!("{base}/{db}")
}

/// A connection the way the binary makes them (TLS per the URL's `sslmode`).
pub async fn connect(url: &str) -> Client {
    clickstream_db::connect(url).await.unwrap_or_else(|e| {
        panic!("cannot connect to PostgreSQL ({e}); is `dev/stack.sh up` running?")
    })
}

/// A fresh database for one test, migrated by the real binary.
pub struct TestDb {
    pub name: String,
    pub admin_url: String,
    pub writer_url: String,
    pub reader_url: String,
    server_admin_url: String,
}

impl TestDb {
    pub async fn create(s: &Services) -> TestDb {
        TestDb::create_at(s, None).await
    }

    /// A fresh database migrated up to schema `version` (`None`: the newest).
    pub async fn create_at(s: &Services, version: Option<i32>) -> TestDb {
        let name = unique("test");
        let admin = connect(&s.admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let db = TestDb {
            admin_url: with_db(&s.admin_url, &name),
            writer_url: with_db(&s.writer_url, &name),
            reader_url: with_db(&s.reader_url, &name),
            server_admin_url: s.admin_url.clone(),
            name,
        };
        let out = db.migrate_to(version);
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        db
    }

    /// A fresh database `name` reached only over TLS: every URL points at `localhost` with
    /// `sslmode=verify-full` and `ca` as `sslrootcert` (the stack's pg_hba.conf makes
    /// `clickstream_tls` hostssl-only). Migrated over TLS by the real binary.
    pub async fn create_tls(s: &Services, name: &str, ca: &std::path::Path) -> TestDb {
        let admin = connect(&s.admin_url).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .expect("create the TLS database");
        }
        let tls = |url: &str| {
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                with_db(url, name).replacen("@127.0.0.1:", "@localhost:", 1),
                ca.display()
            )
        };
        let db = TestDb {
            admin_url: tls(&s.admin_url),
            writer_url: tls(&s.writer_url),
            reader_url: tls(&s.reader_url),
            server_admin_url: s.admin_url.clone(),
            name: name.to_string(),
        };
        let out = db.migrate();
        assert!(
            out.status.success(),
            "migrate over TLS failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        db
    }

    /// Runs `clickstream migrate` against this database.
    pub fn migrate(&self) -> std::process::Output {
        self.migrate_to(None)
    }

    /// Runs `clickstream migrate --target-version` against this database.
    pub fn migrate_to(&self, version: Option<i32>) -> std::process::Output {
        let mut cmd = clickstream();
        cmd.arg("migrate")
            .env("ADMIN_DATABASE_URL", &self.admin_url);
        if let Some(v) = version {
            cmd.args(["--target-version", &v.to_string()]);
        }
        cmd.output().expect("run clickstream migrate")
    }

    pub async fn drop(self) {
        let admin = connect(&self.server_admin_url).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// The `clickstream` binary built for this test run, started in a directory without a
/// `.env` so only what the test passes (and the inherited environment) applies.
pub fn clickstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clickstream"));
    c.current_dir(std::env::temp_dir());
    c
}

/// One Kafka record as read back.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

fn owned(msg: &rdkafka::message::BorrowedMessage<'_>) -> Rec {
    use rdkafka::message::Headers;
    Rec {
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().unwrap_or_default().to_vec(),
        headers: msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every record of `topic` from the beginning, waiting until `expected` records arrived or
/// `timeout` passed (then 2 s more, to catch any extra).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(expected);
    let deadline = Instant::now() + timeout;
    while out.len() < expected && Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg.expect("kafka read");
            out.push(owned(&msg));
        }
    }
    // Anything beyond `expected` would be a bug too: drain briefly to see it.
    let extra_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            out.push(owned(&msg));
        }
    }
    out
}

/// Counts of the values of `xs`.
pub fn histogram<T: std::hash::Hash + Eq>(xs: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut h = HashMap::new();
    for x in xs {
        *h.entry(x).or_default() += 1;
    }
    h
}

/// Creates a topic (the broker does not auto-create).
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create topic");
    for r in res {
        r.expect("topic created");
    }
}

/// Runs the real generator into `topic` without pacing: `count` records from `start`
/// (RFC 3339) at `eps` events per second of event time, with `seed`. With `catalog_db`
/// the catalog is written there, otherwise not at all.
pub fn generate_seeded(
    s: &Services,
    topic: &str,
    count: usize,
    seed: u64,
    start: &str,
    eps: u32,
    catalog_db: Option<&str>,
) {
    let mut cmd = clickstream();
    cmd.args(["generate", "--sink", "kafka", "--bootstrap", &s.bootstrap])
        .args(["--topic", topic, "--no-pacing"])
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()])
        .args(["--start", start, "--eps", &eps.to_string()]);
    match catalog_db {
        Some(url) => cmd.args(["--database-url", url]),
        None => cmd.arg("--no-catalog"),
    };
    let out = cmd.output().expect("run clickstream generate");
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Produces `(key, value)` records to partition 0 of `topic`, lz4-compressed (so the
/// 2 MB record fits the broker's limit), and waits for the acknowledgements.
pub fn produce(s: &Services, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
    produce_to(s, topic, 0, records);
}

/// Produces `records` (key, value) to `partition` of `topic` and waits for them.
pub fn produce_to(
    s: &Services,
    topic: &str,
    partition: i32,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("message.max.bytes", "4194304")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    for (k, v) in records {
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(v.as_slice());
        if let Some(k) = k {
            r = r.key(k.as_slice());
        }
        producer.send(r).expect("queue record");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Deletes the records of `topic`'s `partition` before `offset`, as Kafka's retention
/// would.
pub async fn delete_records_before(s: &Services, topic: &str, partition: i32, offset: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .expect("admin client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("partition");
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");
}

/// A fresh one-partition dead-letter topic.
pub async fn dead_letter_topic(s: &Services) -> String {
    let dlq = unique("dlq");
    create_topic(&s.bootstrap, &dlq, 1).await;
    dlq
}

/// Per-partition end offsets (next offset after the last record) of `records`.
pub fn end_offsets(records: &[Rec]) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for r in records {
        let e = ends.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    ends
}

/// Waits until the processor committed `ends` for every partition.
pub async fn wait_caught_up(
    db_url: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
    timeout: Duration,
) {
    let client = connect(db_url).await;
    let deadline = Instant::now() + timeout;
    loop {
        let rows = client
            .query(
                "SELECT kafka_partition, next_offset FROM analytics.consumer_offsets
                  WHERE consumer_group = $1 AND topic = $2",
                &[&group, &topic],
            )
            .await
            .expect("read offsets");
        let got: HashMap<i32, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if ends.iter().all(|(p, e)| got.get(p) == Some(e)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processor did not catch up: committed {got:?}, want {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Records committed so far by `group` on `topic`.
pub async fn committed(db_url: &str, group: &str, topic: &str) -> i64 {
    let client = connect(db_url).await;
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM analytics.consumer_offsets
              WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .expect("read offsets")
        .get(0)
}

/// The sum of the samples of metric `name` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET /metrics from a command whose log names the endpoint's address (`addr=`).
pub fn scrape_metrics(log: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let log = std::fs::read_to_string(log).unwrap();
    let addr = log
        .lines()
        .find_map(|l| l.split("addr=").nth(1))
        .expect("metrics address in the log")
        .trim()
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// A running `clickstream process`.
pub struct Processor {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Processor {
    pub fn start(
        s: &Services,
        db: &TestDb,
        topic: &str,
        dlq: &str,
        group: &str,
        extra: &[&str],
    ) -> Processor {
        let log_path = std::env::temp_dir().join(format!("{group}-{}.log", unique("p")));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = clickstream()
            .args([
                "process",
                "--bootstrap",
                &s.bootstrap,
                "--topic",
                topic,
                "--dlq-topic",
                dlq,
            ])
            .args(["--group", group, "--database-url", &db.writer_url])
            .args(["--metrics-addr", "127.0.0.1:0", "--session-timeout", "6s"])
            // The references of most tests model a stream that may go on, so partitions
            // only turn idle (and close everything) where a test asks for it.
            .args(if extra.contains(&"--idle-timeout") {
                &[][..]
            } else {
                &["--idle-timeout", "0s"][..]
            })
            .args(extra)
            .stderr(log)
            .spawn()
            .expect("start clickstream process");
        Processor {
            child,
            log: log_path,
        }
    }

    /// GET /metrics from this processor (address taken from its log).
    pub fn scrape_metrics(&self) -> String {
        scrape_metrics(&self.log)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status must be success.
    pub fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        drop(self);
        assert!(status.success(), "processor exit after SIGTERM: {status}");
    }

    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
        drop(self);
    }
}

impl Drop for Processor {
    /// A failing test must not leave processors running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A random number from the OS (tests only need "unpredictable", not reproducible).
pub fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// `pg_ctl stop -m immediate` on the cluster behind `admin_url` (a crash: no checkpoint).
pub async fn crash_postgres(admin_url: &str) {
    let c = connect(admin_url).await;
    let dir: String = c
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    drop(c);
    let pid = std::fs::read_to_string(PathBuf::from(&dir).join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("postmaster binary");
    let pg_ctl = exe.with_file_name("pg_ctl");
    let owner = Command::new("stat")
        .args(["-c", "%U", &dir])
        .output()
        .unwrap();
    let owner = String::from_utf8_lossy(&owner.stdout).trim().to_string();
    let ok = Command::new("runuser")
        .args(["-u", &owner, "--"])
        .arg(&pg_ctl)
        .args(["-D", &dir, "-m", "immediate", "-w", "stop"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "pg_ctl stop -m immediate failed");
}

/// `dev/stack.sh up`: starts whatever of Kafka and PostgreSQL is down, and waits for it.
pub fn restart_stack() {
    let out = Command::new(workspace_root().join("dev/stack.sh"))
        .arg("up")
        .output()
        .expect("dev/stack.sh up");
    assert!(
        out.status.success(),
        "restarting the stack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kill -9` of the local Kafka broker (`dev/stack.sh`'s); [`restart_stack`] brings it back.
pub fn kill_kafka() {
    let pid_file = std::env::var("CLICKSTREAM_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".dev"))
        .join("kafka/kafka.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("kafka pid file of dev/stack.sh");
    let ok = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -9 kafka");
}

/// The pinned Python venv `dev/setup.sh` creates under the cache (`var` overrides its path),
/// with `bin` in it; fails with the setup hint if it is missing.
pub fn python_venv(var: &str, dir: &str, bin: &str) -> PathBuf {
    let v = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        let cache = std::env::var("CLICKSTREAM_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/clickstream")
            });
        cache.join(dir)
    });
    assert!(
        v.join("bin").join(bin).exists(),
        "no {bin} in {}: run ./dev/setup.sh (it creates the pinned venvs)",
        v.display()
    );
    v
}

/// Writes a `gold_daily_funnel` row for yesterday, as `clickstream batch` would, with
/// `revenue_cents` (the other counters fixed), for panels that show the gold day.
pub async fn insert_gold_day(db: &TestDb, revenue_cents: i64) {
    connect(&db.admin_url)
        .await
        .execute(
            "INSERT INTO analytics.gold_daily_funnel (day, events, bot_events, product_views,
                    cart_adds, purchases, orders, units, revenue_cents, view_to_cart_pct,
                    cart_to_purchase_pct)
             VALUES (current_date - 1, 1000, 10, 700, 70, 7, 6, 9, $1, 10.0, 10.0)",
            &[&revenue_cents],
        )
        .await
        .expect("insert a gold day");
}

/// `n` with thousands separators, as the pages show counts (`12,345`).
pub fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Cents as the pages show money (`$1,234.56`).
pub fn dollars(cents: i64) -> String {
    format!("${}.{:02}", thousands(cents / 100), cents % 100)
}

/// Where people look for the screenshots: `target/screenshots` of the workspace (even
/// when CARGO_TARGET_DIR points elsewhere); the folder is created.
pub fn screenshot_path(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}
