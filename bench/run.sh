#!/usr/bin/env bash
# Benchmarks, printed as a Markdown table (copied into README.md by hand with the machine).
#
#   bench/run.sh generator     simulator throughput to a null sink and into local Kafka
#   bench/run.sh processor     end-to-end throughput (Kafka -> PostgreSQL, committed with
#                              offsets), processor peak RSS and CPU, and latency from
#                              produce to commit at a fixed 5,000 events/s
#   bench/run.sh lake          lake writer (Kafka -> bronze + silver Parquet) throughput and
#                              the daily gold batch over one day of BENCH_LAKE_EVENTS events
#   bench/run.sh collect       HTTP collector: events/s into Kafka with requests of 1 and of
#                              50 events over keep-alive connections, request latency at a
#                              steady 10,000 events/s, collector peak RSS and CPU
#   bench/run.sh soak          endurance: BENCH_SOAK_RECORDS (30000000) records spread over
#                              BENCH_SOAK_DAYS (7) days of event time, one processor on the
#                              event-time clock: throughput per BENCH_SOAK_SLICE (5000000)
#                              records, RSS, database size, ledger rows, retention work
#                              (BENCH_SOAK_TOPIC reuses a topic an earlier soak filled)
#   bench/run.sh fuzz          property-based fuzzing of decode -> validate -> operators,
#                              BENCH_FUZZ_CASES (default 1000000) cases per property, release
#   bench/run.sh spark         our processor and the Spark Structured Streaming job of
#                              bench/spark/ on one topic of BENCH_SPARK_EVENTS (2000000)
#                              records: records/s, peak RSS, CPU s per million and the ratio
#                              (bench/spark/setup.sh installs PySpark; BENCH_SPARK_FLAGS are
#                              extra streaming.py flags, e.g. "--state-store rocksdb")
#   bench/run.sh               all of them (but fuzz, soak and spark)
#
# Settings: BENCH_EVENTS (generator runs, default 5000000), BENCH_PROCESSOR_EVENTS
# (default 2000000), BENCH_LATENCY_SECONDS (default 60), BENCH_LAKE_EVENTS (default 5000000),
# BENCH_INSTANCES (processor instance counts, default "1 2"), BENCH_PROCESS_FLAGS (extra
# `process` flags, e.g. "--audit"). Uses the local stack
# (dev/stack.sh up is run first), a fresh topic per run and a scratch database
# `clickstream_bench` (dropped and re-created).
set -euo pipefail
. "$(dirname "$0")/../dev/lib.sh"
cd "$ROOT"

N=${BENCH_EVENTS:-5000000}
what=${1:-all}
if [ "$what" = fuzz ]; then
    cases=${BENCH_FUZZ_CASES:-1000000}
    start=$(date +%s)
    FUZZ_CASES=$cases cargo test --release --locked -p clickstream-processor --test fuzz
    echo "fuzz: $cases cases per property, 4 properties, 0 panics, $(($(date +%s) - start)) s (including the build)"
    exit 0
fi
apt_ensure time
cargo build --release --locked --bin clickstream --bin latency-probe --bin collect-load 2>&1 | tail -n1 >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/clickstream
PROBE=${CARGO_TARGET_DIR:-$ROOT/target}/release/latency-probe
LOAD=${CARGO_TARGET_DIR:-$ROOT/target}/release/collect-load
dev/stack.sh up >&2
load_env

# Runs the command, prints "<records/s> <peak RSS MB> <CPU s per million records>" parsed
# from the summary and time(1); $1 is the record count.
measure() {
    local n=$1 out rss rate cpu
    shift
    out=$(/usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' "$@" 2>&1 >/dev/null)
    rss=$(grep -o 'RSS_KB=[0-9]*' <<<"$out" | cut -d= -f2)
    cpu=$(grep -o 'CPU_S=[0-9.+]*' <<<"$out" | cut -d= -f2)
    rate=$(grep -o '([0-9]*/s' <<<"$out" | tr -dc '0-9')
    [ -n "$rate" ] || { echo "$out" >&2; die "no summary line"; }
    echo "$rate $((rss / 1024)) $(cpu_per_m "$cpu" "$n")"
}

# CPU seconds ("1.5+0.3" from time(1), or a sum of such) per million of $2 records.
cpu_per_m() { echo "scale=1; ($1) * 1000000 / $2" | bc; }

# CPU seconds the local PostgreSQL has used so far (from /proc): the postmaster, its live
# children (backends, WAL writer, checkpointer, autovacuum) and the children it reaped.
pg_cpu() {
    local pm pid rest ticks=0
    pm=$(head -n1 "$STATE/pg/postmaster.pid")
    for pid in $pm $(pgrep -P "$pm"); do
        rest=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields after "(comm)": state is 3, so utime (14) .. cstime (17) are at 11 .. 14.
        read -r -a f <<<"$rest"
        ticks=$((ticks + f[11] + f[12]))
        [ "$pid" = "$pm" ] && ticks=$((ticks + f[13] + f[14]))
    done
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}

# Points the three database URLs at the scratch database `clickstream_bench` of the same
# server ($base is the server's URL, for the maintenance database).
use_scratch_db() {
    base=${ADMIN_DATABASE_URL%/*}
    export ADMIN_DATABASE_URL="$base/clickstream_bench"
    export DATABASE_URL="${DATABASE_URL%/*}/clickstream_bench"
    export READER_DATABASE_URL="${READER_DATABASE_URL%/*}/clickstream_bench"
}

# Drops and re-creates the scratch database and migrates it (a fresh dedup ledger per run).
fresh_scratch_db() {
    psql "$base/postgres" -qc "DROP DATABASE IF EXISTS clickstream_bench WITH (FORCE)" -c "CREATE DATABASE clickstream_bench" >&2
    "$BIN" migrate >&2 2>/dev/null
}

machine="$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "machine: $machine; $(date -u +%Y-%m-%d); records per run: $N"
echo
# Lines printed after the table.
notes=()
echo "| benchmark | settings | records/s | peak RSS | CPU s / M records | PostgreSQL CPU s / M records |"
echo "|---|---|---:|---:|---:|---:|"
if [ "$what" = generator ] || [ "$what" = all ]; then
    read -r rate rss cpu < <(measure "$N" "$BIN" generate --sink null --no-pacing --no-catalog --progress never -n "$N")
    printf '| generate -> null sink (simulate + serialise JSON) | defaults, --no-pacing | %s | %s MB | %s | - |\n' "$rate" "$rss" "$cpu"
    topic="bench.raw.$(date +%s)"
    read -r rate rss cpu < <(measure "$N" "$BIN" generate --sink kafka --topic "$topic" --no-pacing --no-catalog --progress never -n "$N")
    printf '| generate -> local Kafka (acked, incl. final flush) | 6 partitions, lz4, linger 20 ms, idempotent | %s | %s MB | %s | - |\n' "$rate" "$rss" "$cpu"
    read -r rate rss cpu < <(measure "$N" "$BIN" generate --sink kafka --topic "$topic.zstd" --compression zstd --no-pacing --no-catalog --progress never -n "$N")
    printf '| generate -> local Kafka, zstd | as above, zstd | %s | %s MB | %s | - |\n' "$rate" "$rss" "$cpu"
fi

if [ "$what" = processor ] || [ "$what" = all ]; then
    P=${BENCH_PROCESSOR_EVENTS:-2000000}
    LAT=${BENCH_LATENCY_SECONDS:-60}
    use_scratch_db
    stamp=$(date +%s)
    topic="bench.e2e.$stamp"
    start=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
    "$BIN" generate --topic "$topic" --no-pacing --no-catalog --progress never --start "$start" -n "$P" 2>/dev/null
    committed() {
        psql "$ADMIN_DATABASE_URL" -tAc "SELECT coalesce(sum(next_offset),0) FROM analytics.consumer_offsets WHERE consumer_group = '$1'"
    }
    for inst in ${BENCH_INSTANCES:-1 2}; do
        # A fresh database per run: the dedup ledger must not remember the previous run.
        fresh_scratch_db
        [ -z "${BENCH_PG_DB_SETTINGS:-}" ] || psql "$base/postgres" -qc "ALTER DATABASE clickstream_bench SET $BENCH_PG_DB_SETTINGS" >&2
        group="e2e-$stamp-$inst"
        # Statement timings need the module preloaded (dev/stack.sh does; a server started
        # before that, or another server, may not): the table is then left out.
        psql "$ADMIN_DATABASE_URL" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null 2>&1 \
            || echo "bench: pg_stat_statements is not loaded; no statement table" >&2
        pg0=$(pg_cpu)
        t0=$(date +%s.%N)
        pids=()
        for i in $(seq 1 "$inst"); do
            /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' -o "$STATE/bench-time-$i.txt" \
                "$BIN" process --topic "$topic" --group "$group" --metrics-addr 127.0.0.1:0 ${BENCH_PROCESS_FLAGS:-} 2>"$STATE/bench-process-$i.log" &
            pids+=($!)
        done
        # Sustained rate: from the first commit (group joined, state loaded) to the last.
        until [ "$(committed "$group")" -gt 0 ]; do sleep 0.1; done
        tf=$(date +%s.%N)
        cf=$(committed "$group")
        until [ "$(committed "$group")" -ge "$P" ]; do sleep 0.2; done
        t1=$(date +%s.%N)
        pg1=$(pg_cpu)
        # Signal the processors (time's children), so time(1) itself lives to report.
        for pid in "${pids[@]}"; do pkill -TERM -P "$pid"; wait "$pid" || true; done
        rss=0; cpu=0
        for i in $(seq 1 "$inst"); do
            r=$(grep -o 'RSS_KB=[0-9]*' "$STATE/bench-time-$i.txt" | cut -d= -f2)
            [ "$r" -gt "$rss" ] && rss=$r
            cpu=$(echo "$cpu + $(grep -o 'CPU_S=[0-9.+]*' "$STATE/bench-time-$i.txt" | cut -d= -f2)" | bc)
        done
        rate=$(echo "($P - $cf) / ($t1 - $tf)" | bc)
        whole=$(echo "$P / ($t1 - $t0)" | bc)
        startup=$(echo "scale=1; ($tf - $t0) / 1" | bc)
        printf '| process -> PostgreSQL, committed with offsets (%s-record backlog, sustained) | %s instance(s), batch <= 50,000 / 250 ms, %s | %s | %s MB per instance | %s | %s |\n' "$P" "$inst" "${BENCH_PROCESS_FLAGS:-defaults}" "$rate" "$((rss / 1024))" "$(cpu_per_m "$cpu" "$P")" "$(cpu_per_m "$pg1 - $pg0" "$P")"
        notes+=("with $inst instance(s): ${whole} records/s including ${startup} s from start to the first commit")
        # Where PostgreSQL's time went: the statements' execution time per million records.
        notes+=("" "| PostgreSQL statements, $inst instance(s) | calls | ms per million records | share |" "|---|---:|---:|---:|")
        while IFS='|' read -r q calls ms share; do
            notes+=("| \`$q\` | $calls | $ms | $share% |")
        done < <(psql "$ADMIN_DATABASE_URL" -tA -F'|' -c "
            SELECT left(regexp_replace(query, '\s+', ' ', 'g'), 70), calls,
                   round(total_exec_time * 1000000 / $P), round(100 * total_exec_time / sum(total_exec_time) OVER ())
            FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            ORDER BY total_exec_time DESC LIMIT 8" 2>/dev/null || true)
    done


    if [ "$LAT" -gt 0 ]; then
    topic="bench.lat.$stamp"
    # Create the topic first (a zero-record run), so the processor can subscribe to it.
    "$BIN" generate --topic "$topic" --no-catalog --progress never -n 0 2>/dev/null
    "$BIN" process --topic "$topic" --group "lat-$stamp" --metrics-addr 127.0.0.1:0 2>"$STATE/bench-latency.log" &
    ppid=$!
    "$BIN" generate --topic "$topic" --seed "$stamp" --no-catalog --progress never --eps 5000 --duration "$((LAT + 5))s" 2>/dev/null &
    gpid=$!
    lat=$("$PROBE" --topic "$topic" --group "lat-$stamp" --duration "$LAT" --skip 5)
    wait "$gpid" || true
    kill -TERM "$ppid"; wait "$ppid" || true
    field() { grep -o "$1=[0-9]*" <<<"$lat" | cut -d= -f2; }
    notes+=("" "| latency: produce -> PostgreSQL commit (5 ms polling) | records | p50 | p90 | p99 | max | uncommitted |"
        "|---|---:|---:|---:|---:|---:|---:|"
        "| 5,000 events/s for ${LAT} s, 1 instance, defaults | $(field records) | $(field p50_ms) ms | $(field p90_ms) ms | $(field p99_ms) ms | $(field max_ms) ms | $(field uncommitted) |")
    fi
fi

if [ "$what" = lake ] || [ "$what" = all ]; then
    L=${BENCH_LAKE_EVENTS:-5000000}
    stamp=$(date +%s)
    topic="bench.lake.$stamp"
    day=$(date -u -d yesterday +%Y-%m-%d)
    # One UTC day of event time (yesterday, so it is within the accepted event age).
    "$BIN" generate --topic "$topic" --no-pacing --no-catalog --progress never \
        --start "${day}T00:00:00Z" --eps "$((L / 86000 + 1))" -n "$L" 2>/dev/null
    dir="$STATE/bench-lake-$stamp"
    t0=$(date +%s.%N)
    /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' -o "$STATE/bench-lake-time.txt" \
        "$BIN" lake --topic "$topic" --group "lake-$stamp" --lake-dir "$dir" --stop-at-end --metrics-addr 127.0.0.1:0 2>"$STATE/bench-lake.log"
    t1=$(date +%s.%N)
    rss=$(grep -o 'RSS_KB=[0-9]*' "$STATE/bench-lake-time.txt" | cut -d= -f2)
    rate=$(echo "$L / ($t1 - $t0)" | bc)
    size=$(du -sm "$dir/bronze" | cut -f1)/$(du -sm "$dir/silver" | cut -f1)
    cpu=$(grep -o 'CPU_S=[0-9.+]*' "$STATE/bench-lake-time.txt" | cut -d= -f2)
    printf '| lake: Kafka -> bronze + silver Parquet (zstd), %s-record backlog | 1 writer, 6 partitions, row groups of 65,536 | %s | %s MB | %s | - |\n' "$L" "$rate" "$((rss / 1024))" "$(cpu_per_m "$cpu" "$L")"
    t0=$(date +%s.%N)
    /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' -o "$STATE/bench-batch-time.txt" \
        "$BIN" batch --date "$day" --lake-dir "$dir" --no-postgres 2>"$STATE/bench-batch.log"
    t1=$(date +%s.%N)
    rss=$(grep -o 'RSS_KB=[0-9]*' "$STATE/bench-batch-time.txt" | cut -d= -f2)
    secs=$(echo "scale=1; ($t1 - $t0) / 1" | bc)
    rate=$(echo "$L / ($t1 - $t0)" | bc)
    cpu=$(grep -o 'CPU_S=[0-9.+]*' "$STATE/bench-batch-time.txt" | cut -d= -f2)
    printf '| batch: one day of silver -> gold Parquet (%s events, %s s) | all gold tables, 30-day user history | %s | %s MB | %s | - |\n' "$L" "$secs" "$rate" "$((rss / 1024))" "$(cpu_per_m "$cpu" "$L")"
    notes+=("lake size for $L records: bronze/silver $size MB")
    rm -rf "$dir"
fi
if [ "$what" = collect ] || [ "$what" = all ]; then
    stamp=$(date +%s)
    topic="bench.collect.$stamp"
    "$BIN" generate --topic "$topic" --no-catalog --progress never -n 0 2>/dev/null
    key="bench-key-$stamp"
    # Limits raised: this measures the collector, not its rate limiter.
    "$BIN" collect --listen 127.0.0.1:18091 --topic "$topic" --write-key "bench=$key" \
        --rate-per-ip 10000000 --rate-per-key 100000000 2>"$STATE/bench-collect.log" &
    cpid=$!
    until grep -q 'collector listening' "$STATE/bench-collect.log"; do
        kill -0 "$cpid" 2>/dev/null || { cat "$STATE/bench-collect.log" >&2; die "collector did not start"; }
        sleep 0.2
    done
    proc_cpu() { local f; read -r -a f <<<"$(cut -d')' -f2- "/proc/$cpid/stat")"; echo "scale=2; (${f[11]} + ${f[12]}) / $(getconf CLK_TCK)" | bc; }
    secs=${BENCH_COLLECT_SECONDS:-20}
    for spec in "1 32" "50 16"; do
        read -r batch conns <<<"$spec"
        c0=$(proc_cpu)
        out=$("$LOAD" --addr 127.0.0.1:18091 --key "$key" --batch "$batch" --connections "$conns" --duration "${secs}s")
        c1=$(proc_cpu)
        f() { grep -o "$1=[0-9.]*" <<<"$out" | cut -d= -f2; }
        printf '| collect: HTTP -> Kafka (acked), %s event(s) per request | %s keep-alive connections, lz4, idempotent, acks=all; p50 %s ms, p99 %s ms; %s non-200 | %s | - | %s | - |\n' \
            "$batch" "$conns" "$(f p50_ms)" "$(f p99_ms)" "$(f non_200)" "$(f events_per_s)" "$(cpu_per_m "$c1 - $c0" "$(f events)")"
    done
    out=$("$LOAD" --addr 127.0.0.1:18091 --key "$key" --batch 50 --connections 8 --rate 10000 --duration "${secs}s")
    f() { grep -o "$1=[0-9.]*" <<<"$out" | cut -d= -f2; }
    rss=$(grep VmHWM "/proc/$cpid/status" | tr -dc 0-9)
    kill -TERM "$cpid"; wait "$cpid" || true
    notes+=("" "| collector latency at a steady 10,000 events/s (batches of 50, 8 connections) | requests | p50 | p99 | non-200 | collector peak RSS |"
        "|---|---:|---:|---:|---:|---:|"
        "| ${secs} s | $(f requests) | $(f p50_ms) ms | $(f p99_ms) ms | $(f non_200) | $((rss / 1024)) MB |")
fi
if [ "$what" = soak ]; then
    # A week of traffic compressed into minutes: the processor runs on the event-time
    # clock, so the contract's bounds, the dedup horizon and day-partition retention follow
    # the replayed week, and the tables reach their steady size within the run.
    S=${BENCH_SOAK_RECORDS:-30000000}
    DAYS=${BENCH_SOAK_DAYS:-7}
    SLICE=${BENCH_SOAK_SLICE:-5000000}
    SOAK_FLAGS=${BENCH_SOAK_FLAGS:---max-event-age 2days --dedup-horizon 1day --retain-aggregates 4days --retain-details 4days --retain-errors 4days}
    use_scratch_db
    fresh_scratch_db
    stamp=$(date +%s)
    group="soak-$stamp"
    # DAYS of event time at the rate that fits S records in them, ending about now.
    eps=$(( (S + DAYS * 86400 - 1) / (DAYS * 86400) ))
    start=$(date -u -d "-$DAYS days +2 hours" +%Y-%m-%dT%H:%M:%SZ)
    if [ -n "${BENCH_SOAK_TOPIC:-}" ]; then
        topic=$BENCH_SOAK_TOPIC # a topic filled by an earlier run (S records)
    else
        topic="bench.soak.$stamp"
        g0=$(date +%s)
        # One partition: the event-time clock is one per instance, and a backlog's
        # partitions are consumed unevenly (see ARCHITECTURE.md, the processing clock).
        "$BIN" generate --topic "$topic" --partitions "${BENCH_SOAK_PARTITIONS:-1}" --no-pacing --no-catalog --progress never --start "$start" --eps "$eps" -n "$S" 2>/dev/null
        echo "soak: $S records, $eps events per second of event time from $start, generated in $(( $(date +%s) - g0 )) s into $topic" >&2
    fi
    echo "soak: process flags: --clock event-time $SOAK_FLAGS" >&2
    committed() {
        psql "$ADMIN_DATABASE_URL" -tAc "SELECT coalesce(sum(next_offset),0) FROM analytics.consumer_offsets WHERE consumer_group = '$group'"
    }
    pg0=$(pg_cpu)
    # shellcheck disable=SC2086 # flags are words
    /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' -o "$STATE/bench-soak-time.txt" \
        "$BIN" process --topic "$topic" --group "$group" --metrics-addr 127.0.0.1:0 --clock event-time $SOAK_FLAGS 2>"$STATE/bench-soak.log" &
    tpid=$!
    until ppid=$(pgrep -P "$tpid" -x clickstream); do sleep 0.1; done
    until grep -q 'addr=' "$STATE/bench-soak.log"; do sleep 0.1; done
    maddr=$(grep -o 'addr=[0-9.:]*' "$STATE/bench-soak.log" | head -n1 | cut -d= -f2)
    metric() { curl -s "http://$maddr/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
    notes+=("" "| soak slice (records) | records/s | processor RSS | PostgreSQL database | ledger rows | day partitions | event-time clock | retention work so far |"
        "|---|---:|---:|---:|---:|---:|---|---:|")
    until [ "$(committed)" -gt 0 ]; do sleep 0.1; done
    t_prev=$(date +%s.%N); c_prev=$(committed); next=$SLICE; first_rate=""; rate=0
    while :; do
        sleep 1
        c=$(committed)
        if [ "$c" -ge "$next" ] || [ "$c" -ge "$S" ]; then
            t=$(date +%s.%N)
            rate=$(echo "($c - $c_prev) / ($t - $t_prev)" | bc)
            [ -n "$first_rate" ] || first_rate=$rate
            rss=$(grep VmRSS "/proc/$ppid/status" | tr -dc 0-9)
            read -r dbsize ledger parts clock <<<"$(psql "$ADMIN_DATABASE_URL" -tA -F' ' -c "SELECT pg_database_size(current_database()) / 1048576,
                    (SELECT coalesce(sum(n_live_tup), 0) FROM pg_stat_user_tables WHERE relname LIKE 'seen\_events\_p%'),
                    (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent WHERE c.relnamespace = 'analytics'::regnamespace),
                    (SELECT to_char(max(max_event_time) AT TIME ZONE 'UTC', 'MM-DD HH24:MI') FROM analytics.consumer_offsets WHERE consumer_group = '$group')")"
            notes+=("| $c_prev - $c | $rate | $((rss / 1024)) MB | $dbsize MB | $ledger | $parts | $clock | $(metric clickstream_processor_retention_seconds_total) s |")
            t_prev=$t; c_prev=$c; next=$((next + SLICE))
            [ "$c" -ge "$S" ] && break
        fi
    done
    pg1=$(pg_cpu)
    dbsize=$(psql "$ADMIN_DATABASE_URL" -tAc "SELECT pg_database_size(current_database()) / 1048576")
    dropped=$(metric clickstream_processor_partitions_dropped_total)
    kill -TERM "$ppid"; wait "$tpid" || true
    rss=$(grep -o 'RSS_KB=[0-9]*' "$STATE/bench-soak-time.txt" | cut -d= -f2)
    cpu=$(grep -o 'CPU_S=[0-9.+]*' "$STATE/bench-soak-time.txt" | cut -d= -f2)
    printf '| soak: %s records, %s days of event time (event-time clock) | 1 instance, defaults + %s | last slice %s (first %s, %s%%) | %s MB | %s | %s |\n' \
        "$S" "$DAYS" "$SOAK_FLAGS" "$rate" "$first_rate" "$((100 * rate / first_rate))" "$((rss / 1024))" "$(cpu_per_m "$cpu" "$S")" "$(cpu_per_m "$pg1 - $pg0" "$S")"
    notes+=("" "soak: PostgreSQL database $dbsize MB at the end ($(echo "scale=1; $dbsize * 1000000 / $S" | bc) MB per million events processed), $dropped day partitions dropped by retention")
fi
if [ "$what" = spark ]; then
    # Our processor and the Spark Structured Streaming job of bench/spark/ on one topic, one
    # after the other, each into its own schema of the scratch database.
    S=${BENCH_SPARK_EVENTS:-2000000}
    bench/spark/setup.sh >/dev/null
    use_scratch_db
    fresh_scratch_db
    psql "$ADMIN_DATABASE_URL" -q -v ON_ERROR_STOP=1 -f bench/spark/schema.sql >&2
    stamp=$(date +%s)
    topic="bench.spark.$stamp"
    start=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
    "$BIN" generate --topic "$topic" --no-pacing --no-catalog --progress never --start "$start" -n "$S" 2>/dev/null

    group="spark-ours-$stamp"
    committed() {
        psql "$ADMIN_DATABASE_URL" -tAc "SELECT coalesce(sum(next_offset),0) FROM analytics.consumer_offsets WHERE consumer_group = '$group'"
    }
    pg0=$(pg_cpu)
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086 # flags are words
    /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' -o "$STATE/bench-spark-ours-time.txt" \
        "$BIN" process --topic "$topic" --group "$group" --metrics-addr 127.0.0.1:0 ${BENCH_PROCESS_FLAGS:-} 2>"$STATE/bench-spark-ours.log" &
    tpid=$!
    until [ "$(committed)" -gt 0 ]; do sleep 0.1; done
    tf=$(date +%s.%N)
    cf=$(committed)
    until [ "$(committed)" -ge "$S" ]; do sleep 0.2; done
    t1=$(date +%s.%N)
    pg1=$(pg_cpu)
    pkill -TERM -P "$tpid"; wait "$tpid" || true
    ours_rate=$(echo "($S - $cf) / ($t1 - $tf)" | bc)
    ours_whole=$(echo "$S / ($t1 - $t0)" | bc)
    ours_rss=$(($(grep -o 'RSS_KB=[0-9]*' "$STATE/bench-spark-ours-time.txt" | cut -d= -f2) / 1024))
    ours_cpu=$(cpu_per_m "$(grep -o 'CPU_S=[0-9.+]*' "$STATE/bench-spark-ours-time.txt" | cut -d= -f2)" "$S")
    ours_pg=$(cpu_per_m "$pg1 - $pg0" "$S")
    printf '| process -> PostgreSQL, committed with offsets (%s-record backlog, sustained) | 1 instance, batch <= 50,000 / 250 ms, %s | %s | %s MB | %s | %s |\n' \
        "$S" "${BENCH_PROCESS_FLAGS:-defaults}" "$ours_rate" "$ours_rss" "$ours_cpu" "$ours_pg"

    ckpt="$STATE/bench-spark-checkpoint-$stamp"
    # Peak of the summed RSS of the Spark tree (the driver JVM and the Python driver it
    # runs), sampled; time(1)'s %M is its largest process, the JVM (submit.sh execs it).
    tree_rss() {
        local pid sum=0 r
        for pid in "$@"; do
            r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || r=0
            # shellcheck disable=SC2046 # pids are words
            sum=$((sum + ${r:-0} + $(tree_rss $(pgrep -P "$pid"))))
        done
        echo "$sum"
    }
    pg0=$(pg_cpu)
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086 # flags are words
    /usr/bin/time -f 'RSS_KB=%M CPU_S=%U+%S' -o "$STATE/bench-spark-time.txt" \
        bench/spark/submit.sh --topic "$topic" --checkpoint "$ckpt" ${BENCH_SPARK_FLAGS:-} \
        >"$STATE/bench-spark.out" 2>"$STATE/bench-spark.log" &
    spid=$!
    tree_peak=0
    while kill -0 "$spid" 2>/dev/null; do
        r=$(tree_rss "$spid")
        [ "$r" -le "$tree_peak" ] || tree_peak=$r
        sleep 0.5
    done
    wait "$spid" || { tail -n 30 "$STATE/bench-spark.log" >&2; die "the Spark job failed (log: $STATE/bench-spark.log)"; }
    t1=$(date +%s.%N)
    pg1=$(pg_cpu)
    summary=$(grep '^spark: ' "$STATE/bench-spark.out")
    field() { grep -o "$1=[0-9.]*" <<<"$summary" | cut -d= -f2; }
    [ "$(field records)" -eq "$S" ] || die "the Spark job read $(field records) records, not $S"
    spark_rate=$(echo "$S / ($(field finished) - $(field first_batch_start))" | bc)
    spark_whole=$(echo "$S / ($t1 - $t0)" | bc)
    spark_rss=$(($(grep -o 'RSS_KB=[0-9]*' "$STATE/bench-spark-time.txt" | cut -d= -f2) / 1024))
    spark_cpu=$(cpu_per_m "$(grep -o 'CPU_S=[0-9.+]*' "$STATE/bench-spark-time.txt" | cut -d= -f2)" "$S")
    spark_pg=$(cpu_per_m "$pg1 - $pg0" "$S")
    word() { grep -o "$1=[^ ]*" <<<"$summary" | cut -d= -f2; }
    ratio() { printf '%.1f' "$(echo "scale=3; $1 / $2" | bc)"; }
    printf '| Spark Structured Streaming -> PostgreSQL, foreachBatch JDBC upserts (%s-record backlog, from the first micro-batch) | PySpark %s, local[2], 4 shuffle partitions, <= %s records per micro-batch (%s batches), %s state store | %s | %s MB | %s | %s |\n' \
        "$S" "$(word version)" "$(field max_offsets)" "$(field batches)" "$(word state_store)" "$spark_rate" "$spark_rss" "$spark_cpu" "$spark_pg"
    notes+=("ours: ${ours_whole} records/s from start to the last commit; Spark: ${spark_whole} records/s from submit to finish (JVM start-up, jars from the Ivy cache, planning); Spark's JVM + Python driver together peaked at $((tree_peak / 1024)) MB"
        "ratio: ours / Spark records/s $(ratio "$ours_rate" "$spark_rate")x (from submit to finish $(ratio "$ours_whole" "$spark_whole")x); Spark / ours: CPU s / M $(ratio "$spark_cpu" "$ours_cpu")x, peak RSS $(ratio "$spark_rss" "$ours_rss")x, PostgreSQL CPU s / M $(ratio "$spark_pg" "$ours_pg")x")
    # The same totals from both schemas. Spark drops the rows behind its watermark (ours
    # counts them as late) and writes a session only once its watermark (the largest event
    # time less 2 minutes) has passed its end plus the 30-minute gap; ours closes those and
    # also those whose user came back after the gap.
    read -r a_ev s_ev a_pv s_pv a_rev s_rev a_late a_ses a_wm s_ses a_open <<<"$(psql "$ADMIN_DATABASE_URL" -tA -F' ' -c "SELECT
            (SELECT sum(events) FROM analytics.metrics_minute), (SELECT sum(events) FROM spark.metrics_minute),
            (SELECT sum(events) FROM analytics.metrics_minute WHERE event_type = 'page_view'),
            (SELECT sum(events) FROM spark.metrics_minute WHERE event_type = 'page_view'),
            (SELECT sum(revenue_cents) FROM analytics.metrics_minute), (SELECT sum(revenue_cents) FROM spark.metrics_minute),
            (SELECT sum(late_events) FROM analytics.metrics_minute),
            (SELECT count(*) FROM analytics.sessions WHERE NOT is_open),
            (SELECT count(*) FROM analytics.sessions WHERE NOT is_open AND session_end + interval '32 minutes' <
                (SELECT max(max_event_time) FROM analytics.consumer_offsets WHERE consumer_group = '$group')),
            (SELECT count(*) FROM spark.sessions),
            (SELECT count(*) FROM analytics.sessions WHERE is_open)")"
    notes+=("sanity (ours / Spark): events $a_ev / $s_ev, page views $a_pv / $s_pv, revenue $a_rev / $s_rev cents, closed sessions $a_ses ($a_wm of them past the final watermark) / $s_ses (ours also has $a_open open ones); ours counted $a_late events as late, Spark dropped $((a_ev - s_ev)) behind its watermark (bench/spark/README.md)")
    # Kafka's own tool deletes the topic (the jars dev/stack.sh fetched).
    java -cp "$CACHE/kafka-${KAFKA_VERSION:-4.1.1}/libs/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --delete --topic "$topic" >&2
    rm -rf "$ckpt"
fi
for line in "${notes[@]}"; do echo "$line"; done
