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
struct LakeWriter(std::process::Child, std::path::PathBuf);

impl LakeWriter {
    fn start(s: &Services, topic: &str, dir: &Path, extra: &[&str]) -> LakeWriter {
        let location = dir.to_str().unwrap();
        LakeWriter::start_at(s, topic, location, &dir.with_extension("log"), &[], extra)
    }

    /// A writer on the lake at `location` (a directory or a URL) with `env` added,
    /// logging to `log`.
    fn start_at(
        s: &Services,
        topic: &str,
        location: &str,
        log: &Path,
        env: &[(String, String)],
        extra: &[&str],
    ) -> LakeWriter {
        let file = std::fs::File::create(log).unwrap();
        let child = clickstream()
            .args(["lake", "--bootstrap", &s.bootstrap, "--topic", topic])
            .args(["--group", &unique("lake"), "--metrics-addr", "127.0.0.1:0"])
            .args(["--lake-dir", location])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(file)
            .spawn()
            .expect("start clickstream lake");
        LakeWriter(child, log.to_path_buf())
    }

    /// Waits until the writer has its signal handler and partitions (a SIGTERM before that
    /// would kill it the default way).
    fn wait_started(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&self.1)
            .unwrap_or_default()
            .contains("lake writer started")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "lake writer did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    generate_seeded(s, &topic, count, random_u64(), &start.to_string(), 20, None);
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
            if seen.insert((e.event_id.as_u128(), e.timestamp)) {
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
    let mut kills = 0;
    let mut rng = random_u64();
    while kills < 6 {
        let w = LakeWriter::start(&s, &topic, &dir, &KILL_FLAGS);
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(800 + (rng >> 33) % 1500));
        w.kill9();
        kills += 1;
    }
    let w = LakeWriter::start(&s, &topic, &dir, &KILL_FLAGS);
    // The killed runs may have committed everything already: stop only a started writer.
    w.wait_started();
    wait_committed(&lake, &ends, Duration::from_secs(180)).await;
    w.stop();
    assert_each_record_once(&lake, &recs);
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

/// Small ranges so kills land between, during and after commits.
const KILL_FLAGS: [&str; 6] = [
    "--roll-records",
    "2000",
    "--row-group-rows",
    "700",
    "--roll-interval",
    "2s",
];

/// Bronze holds every offset of `recs` once with its bytes untouched; silver the distinct
/// valid events, each once, under its event date and type.
fn assert_each_record_once(lake: &Lake, recs: &[Rec]) {
    let mut bronze = HashMap::new();
    for (file, range) in lake.files("bronze").unwrap() {
        for r in read_bronze(lake, &file).unwrap() {
            assert_eq!(r.partition, range.partition, "{file}");
            assert!((range.start..range.end).contains(&r.offset), "{file}");
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
    for r in recs {
        assert_eq!(
            bronze[&(r.partition, r.offset)].as_deref(),
            Some(&r.value[..])
        );
    }
    let mut silver = HashSet::new();
    let mut dates = HashSet::new();
    for (file, _) in lake.files("silver").unwrap() {
        let dir_date = file.partition_value("event_date").unwrap().to_string();
        let dir_type = file.partition_value("event_type").unwrap().to_string();
        for e in read_silver(lake, &file).unwrap() {
            let date = EventTime::from_micros(e.event_time_us).date_string();
            assert_eq!(dir_date, date, "{file}");
            assert_eq!(dir_type, e.event_type.as_str(), "{file}");
            dates.insert(date);
            let fresh = silver.insert((e.event_id, e.kafka_partition, e.kafka_offset));
            assert!(fresh, "event {} twice in silver", e.event_id);
        }
    }
    assert_eq!(dates.len(), 2, "the run crosses midnight: {dates:?}");
    let want = expected_silver(recs);
    assert_eq!(silver.len(), want.len(), "silver = distinct valid events");
    assert!(
        silver == want,
        "silver differs from the distinct valid events"
    );
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
            "--metrics-addr",
            "127.0.0.1:0",
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

/// The gold numbers of one day computed naively from the Kafka records.
#[derive(Debug, Default, PartialEq)]
struct RefDay {
    events: i64,
    bot_events: i64,
    product_views: i64,
    cart_adds: i64,
    purchases: i64,
    orders: i64,
    units: i64,
    revenue_cents: i64,
    dau: i64,
    /// category -> (views, purchases, revenue, viewers, buyers)
    categories: std::collections::BTreeMap<String, (i64, i64, i64, i64, i64)>,
    most_viewed: Vec<String>,
    best_selling: Vec<String>,
}

fn reference_days(recs: &[Rec]) -> HashMap<String, (RefDay, Vec<clickstream_model::Event>)> {
    use clickstream_model::EventType::*;
    let policy = ValidationPolicy::new(EventTime::now());
    let mut sorted: Vec<&Rec> = recs.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut seen = HashSet::new();
    let mut by_day: HashMap<String, Vec<clickstream_model::Event>> = HashMap::new();
    for r in sorted {
        if let Ok(e) = parse_event(&r.value, &policy) {
            if seen.insert((e.event_id, e.timestamp)) {
                by_day.entry(e.timestamp.date_string()).or_default().push(e);
            }
        }
    }
    let mut out = HashMap::new();
    for (day, evs) in by_day {
        let mut d = RefDay {
            events: evs.len() as i64,
            ..RefDay::default()
        };
        let mut orders = HashSet::new();
        let mut users = HashSet::new();
        let mut views: HashMap<String, i64> = HashMap::new();
        let mut sold: HashMap<String, (i64, i64)> = HashMap::new();
        let mut cat_users: HashMap<String, (HashSet<uuid::Uuid>, HashSet<uuid::Uuid>)> =
            HashMap::new();
        for e in &evs {
            let bot = reference::is_bot(e.user_agent.as_deref());
            d.bot_events += bot as i64;
            if !bot {
                users.insert(e.user_id);
            }
            let Some(p) = e.product_id.as_deref() else {
                continue;
            };
            let cat = e.category.as_deref().unwrap_or_default().to_string();
            let c = d.categories.entry(cat.clone()).or_default();
            let cu = cat_users.entry(cat).or_default();
            match e.event_type {
                PageView => {
                    d.product_views += 1;
                    c.0 += 1;
                    *views.entry(p.to_string()).or_default() += 1;
                    if !bot {
                        cu.0.insert(e.user_id);
                    }
                }
                AddToCart => d.cart_adds += 1,
                Purchase => {
                    let amount = e.amount.unwrap().cents();
                    let q = i64::from(e.quantity.unwrap());
                    d.purchases += 1;
                    d.units += q;
                    d.revenue_cents += amount;
                    orders.insert(e.order_id.unwrap());
                    c.1 += 1;
                    c.2 += amount;
                    let s = sold.entry(p.to_string()).or_default();
                    s.0 += q;
                    s.1 += amount;
                    if !bot {
                        cu.1.insert(e.user_id);
                    }
                }
            }
        }
        for (cat, (v, b)) in cat_users {
            let c = d.categories.get_mut(&cat).unwrap();
            c.3 = v.len() as i64;
            c.4 = b.len() as i64;
        }
        d.orders = orders.len() as i64;
        d.dau = users.len() as i64;
        let mut mv: Vec<(i64, String)> = views.into_iter().map(|(p, n)| (-n, p)).collect();
        mv.sort();
        d.most_viewed = mv.into_iter().take(5).map(|x| x.1).collect();
        let mut bs: Vec<((i64, i64), String)> =
            sold.into_iter().map(|(p, (u, r))| ((-u, -r), p)).collect();
        bs.sort();
        d.best_selling = bs.into_iter().take(5).map(|x| x.1).collect();
        out.insert(day, (d, evs));
    }
    out
}

async fn gold_day(db: &TestDb, day: &str) -> RefDay {
    let c = connect(&db.admin_url).await;
    let f = c
        .query_one(
            "SELECT events, bot_events, product_views, cart_adds, purchases, orders, units, revenue_cents
               FROM analytics.gold_daily_funnel WHERE day = $1::text::date",
            &[&day],
        )
        .await
        .expect("gold funnel row");
    let dau: i64 = c
        .query_one(
            "SELECT dau FROM analytics.gold_active_users WHERE day = $1::text::date",
            &[&day],
        )
        .await
        .unwrap()
        .get(0);
    let categories = c
        .query(
            "SELECT category, views, purchases, revenue_cents, viewers, buyers
               FROM analytics.gold_category_daily WHERE day = $1::text::date",
            &[&day],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
        .collect();
    let list =
        |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<String>>();
    let top = "SELECT product_id FROM analytics.gold_top_products WHERE day = $1::text::date AND list = $2 ORDER BY rank";
    RefDay {
        events: f.get(0),
        bot_events: f.get(1),
        product_views: f.get(2),
        cart_adds: f.get(3),
        purchases: f.get(4),
        orders: f.get(5),
        units: f.get(6),
        revenue_cents: f.get(7),
        dau,
        categories,
        most_viewed: list(c.query(top, &[&day, &"most_viewed"]).await.unwrap()),
        best_selling: list(c.query(top, &[&day, &"best_selling"]).await.unwrap()),
    }
}

fn gold_bytes(dir: &Path, day: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for table in [
        "daily_funnel",
        "category_daily",
        "top_products",
        "active_users",
        "user_segments",
        "user_daily",
    ] {
        let p = dir
            .join("gold")
            .join(table)
            .join(format!("date={day}"))
            .join("part-0.parquet");
        out.push((
            table.to_string(),
            std::fs::read(&p).unwrap_or_else(|_| panic!("{}", p.display())),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gold_matches_a_reference_verify_agrees_and_reruns_are_identical() {
    let s = services();
    let db = TestDb::create(&s).await;
    let (topic, recs) = seeded_topic(&s, 40_000).await;
    let ends = end_offsets(&recs);
    let dir = lake_dir();
    let lake = Lake::new(&dir);
    let dlq = dead_letter_topic(&s).await;
    let group = unique("g");
    let processor = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let writer = LakeWriter::start(&s, &topic, &dir, &["--roll-interval", "2s"]);
    wait_committed(&lake, &ends, Duration::from_secs(180)).await;
    wait_caught_up(
        &db.writer_url,
        &group,
        &topic,
        &ends,
        Duration::from_secs(180),
    )
    .await;
    writer.stop();
    processor.stop();

    let reference = reference_days(&recs);
    let mut days: Vec<String> = reference.keys().cloned().collect();
    days.sort();
    assert_eq!(days.len(), 2, "two event dates: {days:?}");
    // The scheduler catches up the past day at once (not today, which is not over), writes
    // its report, then waits for its time; SIGTERM stops it.
    let reports = dir.join("scheduled-reports");
    let mut sched = clickstream()
        .args([
            "batch",
            "--schedule",
            "--database-url",
            &db.writer_url,
            "--lake-dir",
        ])
        .arg(&dir)
        .arg("--report-dir")
        .arg(&reports)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reports.join(&days[0]).join("report.md").exists() {
        assert!(
            Instant::now() < deadline,
            "the scheduler did not catch up {}",
            days[0]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = connect(&db.admin_url).await;
    let runs: Vec<String> = c
        .query(
            "SELECT day::text FROM analytics.gold_batch_runs ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        runs,
        vec![days[0].clone()],
        "only the finished day is batched"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &sched.id().to_string()])
        .status()
        .unwrap();
    assert!(sched.wait().unwrap().success());

    let batch = |day: &str| {
        let out = clickstream()
            .args([
                "batch",
                "--date",
                day,
                "--database-url",
                &db.writer_url,
                "--lake-dir",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "batch {day}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for day in &days {
        batch(day);
        let got = gold_day(&db, day).await;
        assert_eq!(got, reference[day].0, "gold of {day} vs the reference");
        let out = clickstream()
            .args([
                "verify",
                "--date",
                day,
                "--database-url",
                &db.reader_url,
                "--lake-dir",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "verify {day}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("no differences"), "{text}");
    }
    // Verify notices when the two sides disagree: drop one silver file of the first day.
    let victim = lake.silver_files_of(&days[0]).unwrap().pop().unwrap().0;
    std::fs::remove_file(dir.join(victim.key())).unwrap();
    let out = clickstream()
        .args([
            "verify",
            "--date",
            &days[0],
            "--database-url",
            &db.reader_url,
            "--lake-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "verify missed a removed silver file: {text}"
    );
    assert!(text.contains("stream") && text.contains("batch"), "{text}");

    // Segments of the second day cover both days' users.
    let c = connect(&db.admin_url).await;
    let seg_users: i64 = c
        .query_one(
            "SELECT sum(users)::int8 FROM analytics.gold_user_segments WHERE day = $1::text::date",
            &[&days[1]],
        )
        .await
        .unwrap()
        .get(0);
    let product_viewers_or_carters: HashSet<uuid::Uuid> = reference
        .values()
        .flat_map(|(_, evs)| evs.iter())
        .filter(|e| !reference::is_bot(e.user_agent.as_deref()) && e.product_id.is_some())
        .map(|e| e.user_id)
        .collect();
    assert_eq!(
        seg_users,
        product_viewers_or_carters.len() as i64,
        "every shopper of the 2 days is in one segment"
    );
    // Segments and actives of the second day against a naive count over both days.
    let mut per_user: HashMap<uuid::Uuid, (i64, i64, HashSet<uuid::Uuid>)> = HashMap::new();
    let mut humans = HashSet::new();
    for e in reference.values().flat_map(|(_, evs)| evs.iter()) {
        if reference::is_bot(e.user_agent.as_deref()) {
            continue;
        }
        humans.insert(e.user_id);
        let u = per_user.entry(e.user_id).or_default();
        match e.event_type {
            clickstream_model::EventType::PageView if e.product_id.is_some() => u.0 += 1,
            clickstream_model::EventType::AddToCart => u.1 += 1,
            clickstream_model::EventType::Purchase => {
                u.2.insert(e.order_id.unwrap());
            }
            _ => {}
        }
    }
    let mut want_segments = [(0i64, 0i64); 4];
    for (views, carts, orders) in per_user.values() {
        let seg = match (orders.len(), *carts) {
            (n, _) if n >= 2 => 3,
            (1, _) => 2,
            (_, c) if c > 0 => 1,
            _ if *views > 0 => 0,
            _ => continue,
        };
        want_segments[seg].0 += 1;
        want_segments[seg].1 += views;
    }
    let got_segments: Vec<(i64, f64)> = c
        .query(
            "SELECT users, avg_views FROM analytics.gold_user_segments WHERE day = $1::text::date
              ORDER BY array_position(ARRAY['window_shoppers','cart_abandoners','one_time_buyers','repeat_buyers'], segment)",
            &[&days[1]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (i, (users, views)) in want_segments.iter().enumerate() {
        assert_eq!(got_segments[i].0, *users, "segment {i} users");
        let avg = if *users == 0 {
            0.0
        } else {
            (*views as f64 / *users as f64 * 10_000.0).round() / 10_000.0
        };
        assert_eq!(got_segments[i].1, avg, "segment {i} average views");
    }
    let r = c
        .query_one(
            "SELECT wau, mau FROM analytics.gold_active_users WHERE day = $1::text::date",
            &[&days[1]],
        )
        .await
        .unwrap();
    let want = humans.len() as i64;
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (want, want),
        "WAU / MAU span both days"
    );

    // A re-run gives the same bytes and the same rows.
    let before = gold_bytes(&dir, &days[1]);
    let rows_before = gold_day(&db, &days[1]).await;
    batch(&days[1]);
    assert!(
        before == gold_bytes(&dir, &days[1]),
        "gold Parquet changed on re-run"
    );
    assert_eq!(gold_day(&db, &days[1]).await, rows_before);

    // The report of the day, with catalog names a spreadsheet or a Markdown table would
    // misread.
    connect(&db.admin_url)
        .await
        .execute(
            "INSERT INTO analytics.dim_product (product_id, name, category, price, popularity_rank)
             SELECT DISTINCT product_id, '=HYPERLINK(\"http://x\")|pipe' || chr(10) || 'line<b>', category, 1, 1
               FROM analytics.gold_top_products
             ON CONFLICT (product_id) DO UPDATE SET name = EXCLUDED.name",
            &[],
        )
        .await
        .unwrap();
    let out_dir = dir.join("reports");
    let out = clickstream()
        .args([
            "report",
            "--date",
            &days[1],
            "--database-url",
            &db.reader_url,
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rdir = out_dir.join(&days[1]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rdir.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        json["funnel"][0]["revenue_cents"].as_i64(),
        Some(reference[&days[1]].0.revenue_cents)
    );
    assert_eq!(json["top_products"].as_array().unwrap().len(), 10);
    let md = std::fs::read_to_string(rdir.join("report.md")).unwrap();
    assert!(
        md.contains("## Funnel") && md.contains("## Segments"),
        "{md}"
    );
    for csv in [
        "funnel.csv",
        "categories.csv",
        "top_products.csv",
        "segments.csv",
        "alerts.csv",
        "active_users.csv",
    ] {
        let text = std::fs::read_to_string(rdir.join(csv)).unwrap();
        assert!(text.lines().count() >= 1, "{csv}");
    }
    let top = std::fs::read_to_string(rdir.join("top_products.csv")).unwrap();
    assert!(
        top.contains("\"'=HYPERLINK(\"\"http://x\"\")|pipe\nline<b>\""),
        "{top}"
    );
    assert!(!top.contains(",=HYPERLINK"), "{top}");
    assert!(
        md.contains("=HYPERLINK(\"http://x\")\\|pipe line&lt;b&gt;"),
        "{md}"
    );
    assert!(!md.lines().any(|l| l.starts_with("line")), "{md}");
    let txt = std::fs::read_to_string(rdir.join("report.txt")).unwrap();
    assert!(
        txt.starts_with(&format!("Clickstream daily report: {}", days[1])),
        "{txt}"
    );
    assert!(
        txt.contains("top products (10 rows)") && txt.contains("=HYPERLINK"),
        "{txt}"
    );
    assert!(!txt.lines().any(|l| l.starts_with("line")), "{txt}");
    let segs = std::fs::read_to_string(rdir.join("segments.csv")).unwrap();
    assert_eq!(segs.lines().count(), 5, "{segs}");
    db.drop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Offsets of the bronze files under `dir`, sorted.
fn bronze_offsets(dir: &Path) -> Vec<i64> {
    let lake = Lake::new(dir);
    let mut offsets: Vec<i64> = lake
        .files("bronze")
        .unwrap()
        .iter()
        .flat_map(|(f, _)| read_bronze(&lake, f).unwrap())
        .map(|r| r.offset)
        .collect();
    offsets.sort_unstable();
    offsets
}

fn produce_purchases(s: &Services, topic: &str, n: usize) {
    let records: Vec<_> = (0..n)
        .map(|_| {
            (
                None,
                serde_json::to_vec(&support::corpus::purchase(5)).unwrap(),
            )
        })
        .collect();
    produce(s, topic, &records);
}

/// Records deleted by Kafka's retention before the lake read them are never skipped in
/// silence: the writer resumes at the log's start, says how many were lost, notes them in
/// the lake, and `status` shows them.
#[tokio::test(flavor = "multi_thread")]
async fn records_lost_to_retention_are_reported_not_skipped_silently() {
    let s = services();
    let topic = unique("retention");
    create_topic(&s.bootstrap, &topic, 1).await;
    let dir = lake_dir();
    let backfill = |dir: &Path| {
        let out = clickstream()
            .args(["lake", "--bootstrap", &s.bootstrap, "--topic", &topic])
            .args(["--group", &unique("lake"), "--stop-at-end"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--lake-dir")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    produce_purchases(&s, &topic, 100);
    let log = backfill(&dir);
    assert!(!log.contains("deleted by Kafka retention"), "{log}");
    assert_eq!(bronze_offsets(&dir), (0..100).collect::<Vec<_>>());

    // 100 more while the writer is down, and retention deletes everything before 150.
    produce_purchases(&s, &topic, 100);
    delete_records_before(&s, &topic, 0, 150).await;
    // This time as a service: the loss is in its log and its metrics too.
    let writer = LakeWriter::start(&s, &topic, &dir, &["--roll-records", "10"]);
    wait_committed(
        &Lake::new(&dir),
        &HashMap::from([(0, 200)]),
        Duration::from_secs(60),
    )
    .await;
    let metrics = scrape_metrics(&writer.1);
    assert!(
        metrics.contains("\nclickstream_lake_lost_to_retention_total 50\n"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&writer.1).unwrap();
    assert!(log.contains("deleted by Kafka retention"), "{log}");
    assert!(log.contains("records=50"), "{log}");
    writer.stop();
    let mut want: Vec<i64> = (0..100).collect();
    want.extend(150..200);
    assert_eq!(
        bronze_offsets(&dir),
        want,
        "resumed at the log start, nothing else lost"
    );
    let lake = Lake::new(&dir);
    assert_eq!(lake.retention_gaps().unwrap(), HashMap::from([(0, 50)]));
    let db = TestDb::create(&s).await;
    let status = clickstream()
        .args(["status", "--bootstrap", &s.bootstrap, "--topic", &topic])
        .args(["--group", &unique("g"), "--database-url", &db.reader_url])
        .arg("--lake-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("50 RECORDS LOST TO KAFKA RETENTION"), "{out}");
    db.drop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A lake writer pointed at a topic that does not exist stops at once, naming the topic
/// and how to create it (instead of waiting on an empty assignment forever).
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_stops_the_lake_writer_with_a_clear_message() {
    let s = services();
    let missing = unique("mine_raw");
    let dir = lake_dir();
    let started = Instant::now();
    let out = clickstream()
        .args(["lake", "--bootstrap", &s.bootstrap, "--topic", &missing])
        .args(["--metrics-addr", "127.0.0.1:0", "--stop-at-end"])
        .arg("--lake-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing) && err.contains("kafka-topics"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// moto's S3-compatible server (from the venv `dev/setup.sh` creates) on a free port, with
/// one bucket; stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        use std::io::{Read, Write};
        let venv = python_venv("CLICKSTREAM_MOTO_VENV", "venv-moto", "moto_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log =
            std::fs::File::create(std::env::temp_dir().join(unique("moto") + ".log")).unwrap();
        let child = std::process::Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("moto_server did not listen on {port}: {e}"),
            }
        };
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
        server
    }

    /// `object_store`'s settings for this server.
    fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
            ("aws_region", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The same, as the environment variables a command reads.
    fn env(&self) -> Vec<(String, String)> {
        self.options()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exactly-once kill test on an S3 lake, half of the kills aimed at the moment the
/// writer starts uploading a range's commit file; then the gold batch runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_lake_holds_each_record_once_across_kill_9_mid_upload() {
    let s = services();
    let (topic, recs) = seeded_topic(&s, 60_000).await;
    let ends = end_offsets(&recs);
    let s3 = S3Server::start("lake");
    let location = format!("s3://lake/{}", unique("run"));
    let lake = Lake::open_with(&location, s3.options()).unwrap();
    let log = std::env::temp_dir().join(unique("s3-lake") + ".log");
    let mut env = s3.env();
    env.push((
        "CLICKSTREAM_LOG".into(),
        "info,clickstream_lake=debug".into(),
    ));
    let mut rng = random_u64();
    let mut aimed = 0;
    for round in 0..6 {
        let w = LakeWriter::start_at(&s, &topic, &location, &log, &env, &KILL_FLAGS);
        if round % 2 == 0 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_millis(800 + (rng >> 33) % 1500));
        } else {
            // Each start truncates the log: the first bronze upload of this run.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text
                    .lines()
                    .any(|l| l.contains("uploading") && l.contains("bronze/"))
                {
                    aimed += 1;
                    break;
                }
                if Instant::now() > deadline {
                    break; // everything may be committed already
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        w.kill9();
    }
    assert!(aimed > 0, "no kill landed on an upload");
    // A file larger than a part goes up in parts and comes back byte for byte.
    let big: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let staged = std::env::temp_dir().join(unique("big"));
    std::fs::write(&staged, &big).unwrap();
    let file = clickstream_lake::LakeFile::new("tmp-check/big.bin");
    lake.publish(&staged, &file).unwrap();
    assert!(!staged.exists(), "the staged copy is removed");
    let back = match lake.open_file(&file).unwrap() {
        clickstream_lake::store::Source::Bytes(b) => b.to_vec(),
        clickstream_lake::store::Source::File(_) => panic!("an S3 object read as a file"),
    };
    assert!(back == big, "20 MiB round trip");
    let w = LakeWriter::start_at(&s, &topic, &location, &log, &env, &KILL_FLAGS);
    w.wait_started();
    wait_committed(&lake, &ends, Duration::from_secs(180)).await;
    w.stop();
    assert_each_record_once(&lake, &recs);
    // Only part files are in the bucket (nothing staged, no retention gaps), and every
    // silver file belongs to a committed range.
    assert!(lake.keys("_retention_gaps").unwrap().is_empty());
    let mut ranges = HashMap::new();
    for layer in ["bronze", "silver"] {
        for file in lake.keys(layer).unwrap() {
            let range = clickstream_lake::layout::Range::parse(file.name())
                .unwrap_or_else(|| panic!("a stray object {file}"));
            ranges
                .entry(layer)
                .or_insert_with(HashSet::new)
                .insert(range);
        }
    }
    assert!(
        ranges["silver"].is_subset(&ranges["bronze"]),
        "silver of an uncommitted range"
    );

    // The gold batch reads the S3 silver and writes gold to S3, equal to the reference.
    let refs = reference_days(&recs);
    let day = refs.keys().max().unwrap().clone();
    let out = clickstream()
        .args([
            "batch",
            "--no-postgres",
            "--date",
            &day,
            "--lake-dir",
            &location,
        ])
        .envs(s3.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let events: i64 = err
        .split("events=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no events= in {err}"));
    assert_eq!(events, refs[&day].0.events, "gold events of {day}");
    assert!(lake.exists(&lake.gold_file("daily_funnel", &day)).unwrap());
}
