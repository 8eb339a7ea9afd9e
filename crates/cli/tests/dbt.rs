//! The dbt project (`dbt/`) on a real lake: a seeded simulator run through Kafka, the lake
//! writer and the Rust gold batch for two days, then `dbt build` (every model and test,
//! including the agreement with the Rust gold) and `dbt docs generate` with the pinned
//! dbt-duckdb of `dev/setup.sh`'s venv. Altering either side makes the agreement fail.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clickstream_model::{EventTime, DAY_MICROS};
use support::*;

/// The venv `dev/lib.sh`'s `dbt_venv` creates (`CLICKSTREAM_DBT_VENV` overrides).
fn venv() -> PathBuf {
    python_venv("CLICKSTREAM_DBT_VENV", "venv-dbt", "dbt")
}

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dbt")
}

/// `dbt <args>` on `project` against `lake`, everything it writes under `work`.
fn dbt(project: &Path, lake: &Path, work: &Path, args: &[&str]) -> Output {
    let vars = format!("{{lake_dir: '{}', require_gold: true}}", lake.display());
    Command::new(venv().join("bin/dbt"))
        .args(args)
        .args(["--project-dir", project.to_str().unwrap()])
        .args(["--profiles-dir", project.to_str().unwrap()])
        .args(["--vars", &vars])
        .env("CLICKSTREAM_DUCKDB_PATH", work.join("clickstream.duckdb"))
        .env("DBT_TARGET_PATH", work.join("target"))
        .env("DBT_LOG_PATH", work.join("logs"))
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .output()
        .expect("run dbt")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn dbt_builds_on_a_seeded_lake_and_agrees_with_the_rust_gold() {
    let s = services();
    let db = TestDb::create(&s).await;
    let topic = unique("dbt");
    // Two and a half days of event time ending yesterday (inside the contract's 7 days).
    let today = EventTime::now().as_micros().div_euclid(DAY_MICROS) * DAY_MICROS;
    let start = EventTime::from_micros(today - 3 * DAY_MICROS);
    // The generator also writes its catalog into the database's `dim_product`.
    generate_seeded(
        &s,
        &topic,
        120_000,
        11,
        &start.to_string(),
        1,
        Some(&db.writer_url),
    );
    let work = std::env::temp_dir().join(unique("dbt"));
    let lake = work.join("lake");
    run(clickstream()
        .args(["lake", "--bootstrap", &s.bootstrap, "--topic", &topic])
        .args([
            "--group",
            &unique("lake"),
            "--lake-dir",
            lake.to_str().unwrap(),
        ])
        .args(["--stop-at-end", "--metrics-addr", "127.0.0.1:0"]));
    let days: Vec<String> = (0..2)
        .map(|d| EventTime::from_micros(start.as_micros() + d * DAY_MICROS).date_string())
        .collect();
    // The first day with the database (gold tables + catalog snapshot), the second without.
    run(clickstream()
        .args([
            "batch",
            "--date",
            &days[0],
            "--lake-dir",
            lake.to_str().unwrap(),
        ])
        .args(["--database-url", &db.writer_url]));
    run(clickstream()
        .args([
            "batch",
            "--date",
            &days[1],
            "--lake-dir",
            lake.to_str().unwrap(),
        ])
        .arg("--no-postgres"));

    let build = dbt(&project(), &lake, &work, &["build"]);
    let out = text(&build);
    assert!(build.status.success(), "dbt build failed:\n{out}");
    for model in [
        "stg_events",
        "daily_funnel",
        "fct_orders",
        "fct_sessions",
        "dim_user",
        "cohort_retention",
    ] {
        assert!(out.contains(model), "{model} not built:\n{out}");
    }
    assert!(out.contains("daily_funnel_equals_rust_gold"), "{out}");
    assert!(out.contains("ERROR=0"), "{out}");
    // Product 360 carries the catalog's attributes, as PostgreSQL's dim_product has them.
    let c = connect(&db.admin_url).await;
    let (catalog_products, sample, name, price_cents): (i64, String, String, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM analytics.dim_product), product_id, name,
                        (price * 100)::int8
                   FROM analytics.dim_product ORDER BY popularity_rank LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert!(catalog_products > 100, "{catalog_products}");
    let py = format!(
        "import duckdb; c = duckdb.connect('{}', read_only=True); \
         print(c.sql(\"select count(*), count(name), max(name) filter (where product_id = '{sample}'), \
         max(list_price_cents) filter (where product_id = '{sample}'), \
         min(popularity_rank) from dim_product\").fetchone())",
        work.join("clickstream.duckdb").display()
    );
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", &py])
        .output()
        .unwrap();
    let got = text(&out);
    let (products, named): (i64, i64) = {
        let t = got.trim().trim_matches(|c| c == '(' || c == ')');
        let mut it = t.split(", ");
        (
            it.next().unwrap().parse().unwrap(),
            it.next().unwrap().parse().unwrap(),
        )
    };
    assert!(products > 0 && named == products, "{got}");
    assert!(
        got.contains(&format!("'{name}', {price_cents}, 1)")),
        "{got} vs {sample} {name} {price_cents}"
    );

    let docs = dbt(&project(), &lake, &work, &["docs", "generate"]);
    assert!(docs.status.success(), "{}", text(&docs));
    assert!(work.join("target/catalog.json").exists());

    // Alter the Rust side: one cent more revenue on the first day.
    let gold = lake.join(format!("gold/daily_funnel/date={}/part-0.parquet", days[0]));
    let altered = work.join("altered.parquet");
    let py = format!(
        "import duckdb; duckdb.sql(\"COPY (SELECT * REPLACE (revenue_cents + 1 AS revenue_cents) FROM read_parquet('{}')) TO '{}' (FORMAT parquet)\")",
        gold.display(),
        altered.display()
    );
    run(Command::new(venv().join("bin/python")).args(["-c", &py]));
    let original = std::fs::read(&gold).unwrap();
    std::fs::copy(&altered, &gold).unwrap();
    let test = dbt(
        &project(),
        &lake,
        &work,
        &["test", "--select", "daily_funnel_equals_rust_gold"],
    );
    assert!(
        !test.status.success(),
        "an altered gold still agrees:\n{}",
        text(&test)
    );
    assert!(text(&test).contains("FAIL 1"), "{}", text(&test));
    std::fs::write(&gold, original).unwrap();

    // Alter the dbt side: a model that counts human events as bot events.
    let copy = work.join("project");
    run(Command::new("cp").args(["-r", project().to_str().unwrap(), copy.to_str().unwrap()]));
    let _ = std::fs::remove_dir_all(copy.join("target"));
    let model = copy.join("models/marts/daily_funnel.sql");
    let sql = std::fs::read_to_string(&model).unwrap();
    assert!(sql.contains("filter (where is_bot)"));
    std::fs::write(
        &model,
        sql.replace("filter (where is_bot)", "filter (where not is_bot)"),
    )
    .unwrap();
    let build = dbt(
        &copy,
        &lake,
        &work,
        &["build", "--select", "+daily_funnel_equals_rust_gold"],
    );
    assert!(
        !build.status.success(),
        "an altered model still agrees:\n{}",
        text(&build)
    );
    assert!(
        text(&build).contains("daily_funnel_equals_rust_gold"),
        "{}",
        text(&build)
    );

    let _ = std::fs::remove_dir_all(&work);
    db.drop().await;
}
