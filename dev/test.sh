#!/usr/bin/env bash
# The project's test command (what CI runs): installs build dependencies, brings the local
# Kafka + PostgreSQL stack up, then runs formatting and lint checks, every unit, property
# and integration test (against the real broker and database), and the compose checks.
# A missing service fails the run; nothing is skipped.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

dev/setup.sh
dev/stack.sh up
load_env
# The dbt, Airflow, Superset and S3 lake tests (crates/cli/tests/{dbt,airflow,superset,
# lake}.rs) run these venvs' tools.
CLICKSTREAM_DBT_VENV=$(dbt_venv)
CLICKSTREAM_AIRFLOW_VENV=$(airflow_venv)
CLICKSTREAM_SUPERSET_VENV=$(superset_venv)
CLICKSTREAM_MOTO_VENV=$(moto_venv)
export CLICKSTREAM_DBT_VENV CLICKSTREAM_AIRFLOW_VENV CLICKSTREAM_SUPERSET_VENV CLICKSTREAM_MOTO_VENV

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (unit, property, integration against 127.0.0.1:$KAFKA_PORT and :$POSTGRES_PORT)"
cargo test --workspace --locked
log "docker compose file checks"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
python3 dev/check_compose.py
log "Kubernetes manifest checks"
K8S_VENV=$(k8s_venv)
"$K8S_VENV/bin/python" dev/check_k8s.py "$K8S_VENV/bin/kubernetes-validate" \
    "${CARGO_TARGET_DIR:-$ROOT/target}/debug/clickstream"
log "all tests passed"
