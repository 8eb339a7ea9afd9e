#!/usr/bin/env bash
# Installs what building and testing needs on a fresh Debian/Ubuntu machine: the C toolchain
# and headers rdkafka's vendored librdkafka build wants, Rust's rustfmt and clippy, Python's
# YAML module for the compose check, Chromium for the browser tests, and the pinned venvs
# of dbt + DuckDB (dbt/), Airflow (dags/), Superset (deploy/superset/), the Kubernetes
# validator and moto (an S3 server for the lake test). Fast and silent when it is all there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

apt_ensure build-essential cmake libcurl4-openssl-dev libssl-dev pkg-config python3-yaml chromium
if ! command -v cargo >/dev/null; then
    die "Rust is not installed: see https://rustup.rs (stable toolchain)"
fi
if command -v rustup >/dev/null; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi
# dbt with DuckDB (dbt/), Airflow for the DAG (dags/), Superset for its export, pinned,
# cached outside the clone.
dbt_venv >/dev/null
airflow_venv >/dev/null
superset_venv >/dev/null
k8s_venv >/dev/null
moto_venv >/dev/null
