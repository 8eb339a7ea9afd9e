#!/usr/bin/env bash
# Runs the pinned dbt (with DuckDB) on the project in dbt/, over the lake in
# $CLICKSTREAM_LAKE_DIR (default data/). Examples:
#   dev/dbt.sh build                      every model and test (incl. agreement with the Rust gold)
#   dev/dbt.sh run --select daily_funnel  one model
#   dev/dbt.sh docs generate && dev/dbt.sh docs serve --port 8082
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT/dbt"
mkdir -p target
venv=$(dbt_venv)
lake=$(realpath -m "$ROOT/${CLICKSTREAM_LAKE_DIR:-data}")
export DBT_SEND_ANONYMOUS_USAGE_STATS=false
exec "$venv/bin/dbt" "$@" --profiles-dir . --vars "{lake_dir: '$lake'}"
