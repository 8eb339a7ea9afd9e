#!/usr/bin/env bash
# The demo: local stack up, schema migrated, then the simulator streams shoppers into
# Kafka in real time with a live rate line. Ctrl-C stops it cleanly (flush + summary).
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
log "generating into Kafka topic $CLICKSTREAM_RAW_TOPIC at ${CLICKSTREAM_EPS} events/s (Ctrl-C to stop)"
exec "$BIN" generate --progress always "$@"
