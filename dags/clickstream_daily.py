"""Daily clickstream batch for Airflow (3.x) users.

Runs the same CLI the built-in scheduler (`clickstream batch --schedule`) runs: the gold
batch for the logical date, the lambda check against the streaming tables, the dbt
project (`dbt build`, whose tests hold it to the gold to the cent), and the report. Use
one scheduler or the other, not both.

Settings are Airflow Variables, read when a task runs (templates, never at import):
  clickstream_bin         the `clickstream` binary            (default: clickstream on PATH)
  clickstream_lake_dir    lake root                           (default: /var/lib/clickstream/data)
  clickstream_report_dir  report output                       (default: /var/lib/clickstream/reports)
  clickstream_dbt_bin     dbt with dbt-duckdb                 (default: dbt on PATH)
  clickstream_dbt_dir     the project's dbt/ directory        (default: /opt/clickstream/dbt)
Set them in the UI, or as AIRFLOW_VAR_CLICKSTREAM_BIN etc. in the workers' environment.
CLICKSTREAM_DAG_START_DATE (environment, default 2026-01-01) is the first day scheduled;
missed days since then are caught up in order.
The database URLs come from the workers' environment (DATABASE_URL for the batch,
READER_DATABASE_URL for verify and report), never from this file.
"""
import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG


def var(name: str, default: str) -> str:
    """A Variable as a Jinja expression, rendered when the task runs."""
    return "{{ var.value.get('" + name + "', '" + default + "') }}"


BIN = var("clickstream_bin", "clickstream")
LAKE = var("clickstream_lake_dir", "/var/lib/clickstream/data")
REPORTS = var("clickstream_report_dir", "/var/lib/clickstream/reports")
DBT = var("clickstream_dbt_bin", "dbt")
DBT_DIR = var("clickstream_dbt_dir", "/opt/clickstream/dbt")

with DAG(
    dag_id="clickstream_daily",
    description="Gold tables, lambda check, dbt models and report for one UTC day of clickstream events",
    schedule="15 0 * * *",  # 00:15 UTC: the day is past the processor's 2-minute lateness
    start_date=datetime.fromisoformat(os.environ.get("CLICKSTREAM_DAG_START_DATE", "2026-01-01")),
    catchup=True,  # missed days run in order, like the built-in scheduler's catch-up
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["clickstream"],
) as dag:
    batch = BashOperator(
        task_id="gold_batch",
        bash_command=f'"{BIN}" batch --date {{{{ ds }}}} --lake-dir "{LAKE}"',
    )
    verify = BashOperator(
        task_id="lambda_check",
        bash_command=f'"{BIN}" verify --date {{{{ ds }}}} --lake-dir "{LAKE}"',
    )
    dbt_build = BashOperator(
        task_id="dbt_build",
        bash_command=(
            f'cd "{DBT_DIR}" && mkdir -p target && "{DBT}" build --profiles-dir . '
            f"--vars \"{{lake_dir: '{LAKE}', require_gold: true}}\""
        ),
    )
    report = BashOperator(
        task_id="report",
        bash_command=f'"{BIN}" report --date {{{{ ds }}}} --out "{REPORTS}"',
    )
    batch >> [verify, dbt_build] >> report
