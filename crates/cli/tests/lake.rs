//! The lake end to end against real Kafka: bronze holds every record once, silver every
//! distinct valid event once, also when the writer is killed with SIGKILL mid-run.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clickstream_lake::read::{read_bronze, read_silver};
use clickstream_lake::Lake;
use clickstream_model::{parse_event, EventTime, ValidationPolicy};
use support::*;

const PARTITIONS: i32 = 6;

/// A running `clickstream lake`.
struct LakeWriter(std::process::Child);

impl LakeWriter {
    fn start(s: &Services, topic: &str, dir: &Path, extra: &[&str]) -> LakeWriter {
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = clickstream()
            .args(["lake", "--bootstrap", &s.bootstrap, "--topic", topic])
            .args(["--group", &unique("lake")])
            .arg("--lake-dir")
            .arg(dir)
            .args(extra)
            .stderr(log)
            .spawn()
            .expect("start clickstream lake");
        LakeWriter(child)
    }

    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn stop(mut self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert!(
            self.0.wait().unwrap().success(),
            "lake writer failed after SIGTERM"
        );
    }
}

impl Drop for LakeWriter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seeded records across midnight UTC (two event dates) into a fresh topic.
async fn seeded_topic(s: &Services, count: usize) -> (String, Vec<Rec>) {
    let topic = unique("lake");
    create_topic(&s.bootstrap, &topic, PARTITIONS).await;
    let today = EventTime::parse_date(&EventTime::now().date_string()).unwrap();
    let start = today.add_micros(-20 * 60 * 1_000_000);
    let out = clickstream()
        .args(["generate", "--sink", "kafka", "--bootstrap", &s.bootstrap])
        .args(["--topic", &topic, "--no-pacing", "--no-catalog"])
        .args([
            "--count",
            &count.to_string(),
            "--seed",
            &random_u64().to_string(),
        ])
        .args(["--start", &start.to_string(), "--eps", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = read_topic(
        &s.bootstrap,
        &topic,
        PARTITIONS,
        count,
        Duration::from_secs(60),
    );
    assert_eq!(recs.len(), count);
    (topic, recs)
}

async fn wait_committed(lake: &Lake, ends: &HashMap<i32, i64>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = lake.committed_offsets().unwrap();
        if ends.iter().all(|(p, e)| got.get(p) == Some(e)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lake did not catch up: {got:?} vs {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Distinct valid events, first occurrence per id, as (id, partition, offset) - computed
/// from the Kafka records with the validator, independently of the writer.
fn expected_silver(recs: &[Rec]) -> HashSet<(u128, i32, i64)> {
    let policy = ValidationPolicy::new(EventTime::now());
    let mut sorted: Vec<&Rec> = recs.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut seen = HashSet::new();
    let mut out = HashSet::new();
    for r in sorted {
        if let Ok(e) = parse_event(&r.value, &policy) {
            if seen.insert(e.event_id.as_u128()) {
                out.insert((e.event_id.as_u128(), r.partition, r.offset));
            }
        }
    }
    out
}

fn lake_dir() -> PathBuf {
    std::env::temp_dir().join(unique("lake"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_and_silver_hold_each_record_once_across_kill_9() {
    let s = services();
    let (topic, recs) = seeded_topic(&s, 60_000).await;
    let ends = end_offsets(&recs);
    let dir = lake_dir();
    let lake = Lake::new(&dir);
    // Small ranges so kills land between, during and after commits.
    let flags = [
        "--roll-records",
        "2000",
        "--row-group-rows",
        "700",
        "--roll-interval",
        "2s",
    ];
    let mut kills = 0;
    let mut rng = random_u64();
    while kills < 4 {
        let w = LakeWriter::start(&s, &topic, &dir, &flags);
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(800 + (rng >> 33) % 1500));
        w.kill9();
        kills += 1;
    }
    let w = LakeWriter::start(&s, &topic, &dir, &flags);
    wait_committed(&lake, &ends, Duration::from_secs(180)).await;
    w.stop();

    // Bronze: every offset of every partition exactly once, bytes untouched.
    let mut bronze = HashMap::new();
    for (path, range) in lake.files("bronze").unwrap() {
        for r in read_bronze(&path).unwrap() {
            assert_eq!(r.partition, range.partition, "{}", path.display());
            assert!(
                (range.start..range.end).contains(&r.offset),
                "{}",
                path.display()
            );
            let dup = bronze.insert((r.partition, r.offset), r.value);
            assert!(
                dup.is_none(),
                "offset {}/{} twice in bronze",
                r.partition,
                r.offset
            );
        }
    }
    assert_eq!(bronze.len(), recs.len(), "bronze rows = records produced");
    for r in &recs {
        assert_eq!(
            bronze[&(r.partition, r.offset)].as_deref(),
            Some(&r.value[..])
        );
    }

    // Silver: the distinct valid events, each under its event date and type.
    let mut silver = HashSet::new();
    let mut dates = HashSet::new();
    for (path, _) in lake.files("silver").unwrap() {
        let dir_date = path
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let dir_type = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        for e in read_silver(&path).unwrap() {
            let date = EventTime::from_micros(e.event_time_us).date_string();
            assert_eq!(dir_date, format!("event_date={date}"));
            assert_eq!(dir_type, format!("event_type={}", e.event_type.as_str()));
            dates.insert(date);
            let fresh = silver.insert((e.event_id, e.kafka_partition, e.kafka_offset));
            assert!(fresh, "event {} twice in silver", e.event_id);
        }
    }
    assert_eq!(dates.len(), 2, "the run crosses midnight: {dates:?}");
    let want = expected_silver(&recs);
    assert_eq!(silver.len(), want.len(), "silver = distinct valid events");
    assert!(
        silver == want,
        "silver differs from the distinct valid events"
    );
    // Nothing temporary or uncommitted is left behind.
    let mut stray = Vec::new();
    for layer in ["bronze", "silver"] {
        for e in walk(&dir.join(layer)) {
            if e.extension().is_some_and(|x| x == "tmp") {
                stray.push(e);
            }
        }
    }
    assert!(stray.is_empty(), "{stray:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_lake_is_refused() {
    let s = services();
    let topic = unique("lake");
    create_topic(&s.bootstrap, &topic, 1).await;
    let dir = lake_dir();
    let first = LakeWriter::start(&s, &topic, &dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join(".writer.lock").exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = clickstream()
        .args([
            "lake",
            "--bootstrap",
            &s.bootstrap,
            "--topic",
            &topic,
            "--lake-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another lake writer"), "{err}");
    first.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
