#!/bin/sh
# Superset for the clickstream stack: metadata schema, roles, admin user and the shipped
# dashboard (bootstrap.py), then the web server on 0.0.0.0:8088 (compose publishes it on
# loopback). `--no-serve` stops after the set-up (used by the import test).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export SUPERSET_CONFIG_PATH="${SUPERSET_CONFIG_PATH:-$here/superset_config.py}"
export FLASK_APP=superset
superset db upgrade
superset init
python "$here/bootstrap.py"
[ "${1:-}" = "--no-serve" ] && exit 0
exec gunicorn --workers "${SUPERSET_WORKERS:-2}" --timeout 60 --bind "0.0.0.0:${SUPERSET_PORT:-8088}" \
    --access-logfile - "superset.app:create_app()"
