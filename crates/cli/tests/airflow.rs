//! The Airflow DAG (`dags/clickstream_daily.py`) run by a real Airflow 3 (the pinned venv
//! `dev/setup.sh` creates): `airflow dags test` for one day of a seeded pipeline (simulator
//! -> Kafka -> processor + lake writer) executes the gold batch, the lambda check, `dbt
//! build` and the report, and each leaves its output.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clickstream_model::{EventTime, DAY_MICROS};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn airflow_runs_the_daily_dag_end_to_end() {
    let airflow = python_venv("CLICKSTREAM_AIRFLOW_VENV", "venv-airflow", "airflow");
    let dbt = python_venv("CLICKSTREAM_DBT_VENV", "venv-dbt", "dbt");
    let s = services();
    let db = TestDb::create(&s).await;
    assert!(db.migrate().status.success());
    let topic = unique("airflow");
    create_topic(&s.bootstrap, &topic, 3).await;
    let dlq = dead_letter_topic(&s).await;
    // Yesterday, from 18:00 to about 22:30 UTC.
    let today = EventTime::now().as_micros().div_euclid(DAY_MICROS) * DAY_MICROS;
    let day = EventTime::from_micros(today - DAY_MICROS).date_string();
    let start = EventTime::from_micros(today - 6 * 3_600_000_000);
    generate_seeded(
        &s,
        &topic,
        16_000,
        3,
        &start.to_string(),
        1,
        Some(&db.writer_url),
    );
    let recs = read_topic(&s.bootstrap, &topic, 3, 16_000, Duration::from_secs(60));
    assert_eq!(recs.len(), 16_000);
    let group = unique("g");
    let processor = Processor::start(&s, &db, &topic, &dlq, &group, &[]);
    let work = std::env::temp_dir().join(unique("airflow"));
    let lake = work.join("lake");
    let out = clickstream()
        .args(["lake", "--bootstrap", &s.bootstrap, "--topic", &topic])
        .args([
            "--group",
            &unique("lake"),
            "--stop-at-end",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--lake-dir")
        .arg(&lake)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_caught_up(
        &db.writer_url,
        &group,
        &topic,
        &end_offsets(&recs),
        Duration::from_secs(120),
    )
    .await;
    processor.stop();

    let home = work.join("airflow-home");
    let reports = work.join("reports");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let airflow_cmd = |args: &[&str]| {
        let mut c = Command::new(airflow.join("bin/airflow"));
        c.args(args)
            .env("AIRFLOW_HOME", &home)
            .env("AIRFLOW__CORE__DAGS_FOLDER", root.join("dags"))
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env(
                "AIRFLOW_VAR_CLICKSTREAM_BIN",
                env!("CARGO_BIN_EXE_clickstream"),
            )
            .env("AIRFLOW_VAR_CLICKSTREAM_LAKE_DIR", &lake)
            .env("AIRFLOW_VAR_CLICKSTREAM_REPORT_DIR", &reports)
            .env("AIRFLOW_VAR_CLICKSTREAM_DBT_BIN", dbt.join("bin/dbt"))
            .env("AIRFLOW_VAR_CLICKSTREAM_DBT_DIR", root.join("dbt"))
            .env("DATABASE_URL", &db.writer_url)
            .env("READER_DATABASE_URL", &db.reader_url)
            .env("CLICKSTREAM_DUCKDB_PATH", work.join("clickstream.duckdb"))
            .env("DBT_TARGET_PATH", work.join("dbt-target"))
            .env("DBT_LOG_PATH", work.join("dbt-logs"))
            .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
            .current_dir(&work);
        c.output().expect("run airflow")
    };
    let migrate = airflow_cmd(&["db", "migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let run = airflow_cmd(&["dags", "test", "clickstream_daily", &day]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "airflow dags test failed:\n{log}");
    for task in ["gold_batch", "lambda_check", "dbt_build", "report"] {
        assert!(log.contains(task), "{task} did not run:\n{log}");
    }
    assert!(
        !log.contains("state=failed") && !log.contains("FAILED"),
        "{log}"
    );

    // Each task's output is there.
    assert!(lake
        .join(format!("gold/daily_funnel/date={day}/part-0.parquet"))
        .exists());
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("dbt-target/run_results.json")).expect("dbt ran"),
    )
    .unwrap();
    let statuses: Vec<&str> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(statuses.len() > 40, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == "success" || *s == "pass"),
        "{statuses:?}"
    );
    let md = std::fs::read_to_string(reports.join(&day).join("report.md")).expect("report");
    assert!(md.contains(&format!("Clickstream daily report: {day}")));
    let c = connect(&db.admin_url).await;
    let runs: i64 = c
        .query_one(
            "SELECT count(*) FROM analytics.gold_batch_runs WHERE day = $1::text::date",
            &[&day],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1);
    db.drop().await;
    let _ = std::fs::remove_dir_all(&work);
}
