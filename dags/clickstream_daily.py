"""Daily clickstream gold batch for Airflow users.

Runs the same CLI the built-in scheduler (`clickstream batch --schedule`) runs: the gold
batch for the logical date, the lambda check against the streaming tables, and the report.
Use one or the other, not both.

Configure with Airflow Variables (or the environment of the worker):
  clickstream_bin        path of the `clickstream` binary (default: clickstream on PATH)
  clickstream_lake_dir   lake root (default: /var/lib/clickstream/data)
  clickstream_report_dir report output (default: /var/lib/clickstream/reports)
The database URLs come from the worker's environment (DATABASE_URL for the batch,
READER_DATABASE_URL for verify and report), never from this file.
"""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.models import Variable
from airflow.operators.bash import BashOperator

BIN = Variable.get("clickstream_bin", default_var="clickstream")
LAKE = Variable.get("clickstream_lake_dir", default_var="/var/lib/clickstream/data")
REPORTS = Variable.get("clickstream_report_dir", default_var="/var/lib/clickstream/reports")

with DAG(
    dag_id="clickstream_daily",
    description="Gold tables, lambda check and report for one UTC day of clickstream events",
    schedule="15 0 * * *",  # 00:15 UTC: the day is past the processor's 2-minute lateness
    start_date=datetime(2026, 1, 1),
    catchup=True,  # missed days run in order, like the built-in scheduler's catch-up
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["clickstream"],
) as dag:
    batch = BashOperator(
        task_id="gold_batch",
        bash_command=f"{BIN} batch --date {{{{ ds }}}} --lake-dir {LAKE}",
    )
    verify = BashOperator(
        task_id="lambda_check",
        bash_command=f"{BIN} verify --date {{{{ ds }}}} --lake-dir {LAKE}",
    )
    report = BashOperator(
        task_id="report",
        bash_command=f"{BIN} report --date {{{{ ds }}}} --out {REPORTS}",
    )
    batch >> verify >> report
