//! Shared helpers for the end-to-end tests: the real Kafka and PostgreSQL of `dev/stack.sh`
//! (addresses from the environment or the workspace `.env`), a private database and topic
//! per test, and the built `clickstream` binary.
//!
//! A missing service fails the test with a hint; it never skips.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::{Client, NoTls};

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

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to PostgreSQL ({e}); is `dev/stack.sh up` running?")
        });
    tokio::spawn(conn);
    client
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
        let out = db.migrate();
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        db
    }

    /// Runs `clickstream migrate` against this database.
    pub fn migrate(&self) -> std::process::Output {
        clickstream()
            .arg("migrate")
            .env("ADMIN_DATABASE_URL", &self.admin_url)
            .output()
            .expect("run clickstream migrate")
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

/// Every record of `topic` from the beginning, as (partition, key, value), waiting until
/// `expected` records arrived or `timeout` passed.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<(i32, Option<Vec<u8>>, Vec<u8>)> {
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
            out.push((
                msg.partition(),
                msg.key().map(<[u8]>::to_vec),
                msg.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    // Anything beyond `expected` would be a bug too: drain briefly to see it.
    let extra_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            out.push((
                msg.partition(),
                msg.key().map(<[u8]>::to_vec),
                msg.payload().unwrap_or_default().to_vec(),
            ));
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
