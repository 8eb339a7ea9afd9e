#!/usr/bin/env bash
# The demo: local stack up, schema migrated, the stream processor, the live dashboard, the
# HTTP collector with the demo shop and the lake writer running in the background, and the simulator streaming shoppers into Kafka in real time
# with a live rate line. Ctrl-C stops everything cleanly and prints the pipeline status.
# Extra arguments go to `clickstream generate` (e.g. --eps 5000, --duration 2m).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

dev/setup.sh
dev/stack.sh up
load_env
log "building clickstream (release)"
cargo build --release --locked --bin clickstream
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/clickstream
"$BIN" migrate
"$BIN" process 2>"$STATE/process.log" &
proc=$!
"$BIN" serve 2>"$STATE/serve.log" &
dash=$!
"$BIN" lake --roll-interval 1m 2>"$STATE/lake.log" &
lakew=$!
"$BIN" collect --demo-shop 2>"$STATE/collect.log" &
coll=$!
stop_all() {
    kill -TERM "$dash" 2>/dev/null && wait "$dash" 2>/dev/null || true
    kill -TERM "$lakew" 2>/dev/null && wait "$lakew" 2>/dev/null || true
    kill -TERM "$coll" 2>/dev/null && wait "$coll" 2>/dev/null || true
    kill -TERM "$proc" 2>/dev/null && wait "$proc" 2>/dev/null || true
    "$BIN" status || true
}
trap stop_all EXIT
log "processor running (log: $STATE/process.log, metrics: http://127.0.0.1:9187/metrics)"
token=${CLICKSTREAM_DASHBOARD_TOKEN:+?token=$CLICKSTREAM_DASHBOARD_TOKEN}
log "lake writer running: Parquet under ${CLICKSTREAM_LAKE_DIR:-data}/ (log: $STATE/lake.log); afterwards: clickstream batch --date YYYY-MM-DD"
log "live dashboard: http://${CLICKSTREAM_DASHBOARD_ADDR:-127.0.0.1:8080}/$token (log: $STATE/serve.log)"
log "demo shop (your clicks go through the collector): http://${CLICKSTREAM_COLLECTOR_ADDR:-127.0.0.1:8090}/shop/ (log: $STATE/collect.log)"
log "generating into Kafka topic $CLICKSTREAM_RAW_TOPIC (default ${CLICKSTREAM_EPS} events/s, --eps to change; Ctrl-C to stop)"
"$BIN" generate --progress always "$@" || true
