#!/usr/bin/env bash
# Benchmarks, printed as a Markdown table (copied into README.md by hand with the machine).
#
#   bench/run.sh [generator]      simulator throughput to a null sink and into local Kafka
#
# Settings: BENCH_EVENTS (default 5000000 records per run). Uses the local stack
# (dev/stack.sh up is run first) and a fresh topic per run.
set -euo pipefail
. "$(dirname "$0")/../dev/lib.sh"
cd "$ROOT"

N=${BENCH_EVENTS:-5000000}
what=${1:-generator}
apt_ensure time
cargo build --release --locked --bin clickstream 2>&1 | tail -n1 >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/clickstream
dev/stack.sh up >&2
load_env

# Runs the command, prints "<records/s> <peak RSS MB>" parsed from the summary and time(1).
measure() {
    local out rss rate
    out=$(/usr/bin/time -f 'RSS_KB=%M' "$@" 2>&1 >/dev/null)
    rss=$(grep -o 'RSS_KB=[0-9]*' <<<"$out" | cut -d= -f2)
    rate=$(grep -o '([0-9]*/s' <<<"$out" | tr -dc '0-9')
    [ -n "$rate" ] || { echo "$out" >&2; die "no summary line"; }
    echo "$rate $((rss / 1024))"
}

machine="$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "machine: $machine; $(date -u +%Y-%m-%d); records per run: $N"
echo
echo "| benchmark | settings | records/s | peak RSS |"
echo "|---|---|---:|---:|"
if [ "$what" = generator ]; then
    read -r rate rss < <(measure "$BIN" generate --sink null --no-pacing --no-catalog --progress never -n "$N")
    printf '| generate -> null sink (simulate + serialise JSON) | defaults, --no-pacing | %s | %s MB |\n' "$rate" "$rss"
    topic="bench.raw.$(date +%s)"
    read -r rate rss < <(measure "$BIN" generate --sink kafka --topic "$topic" --no-pacing --no-catalog --progress never -n "$N")
    printf '| generate -> local Kafka (acked, incl. final flush) | 6 partitions, lz4, linger 20 ms, idempotent | %s | %s MB |\n' "$rate" "$rss"
    read -r rate rss < <(measure "$BIN" generate --sink kafka --topic "$topic.zstd" --compression zstd --no-pacing --no-catalog --progress never -n "$N")
    printf '| generate -> local Kafka, zstd | as above, zstd | %s | %s MB |\n' "$rate" "$rss"
fi
