#!/usr/bin/env bash
# Runs streaming.py (arguments passed on) under spark-submit on 2 local cores, with the
# Kafka source and PostgreSQL JDBC jars from $CACHE/ivy and the driver JVM on UTC (JDBC
# hands timestamps over in the JVM's zone). Run bench/spark/setup.sh first.
#
# Every step execs the next, so this process becomes the driver JVM, which runs the Python
# driver as its child and waits for it: time(1) around this script counts the CPU of both
# and reports the JVM's peak RSS (the larger of the two).
set -euo pipefail
. "$(dirname "$0")/../../dev/lib.sh"

venv=$(spark_venv)
export PYSPARK_PYTHON="$venv/bin/python" PYSPARK_DRIVER_PYTHON="$venv/bin/python"
exec "$venv/bin/spark-submit" --master 'local[2]' --packages "$SPARK_PACKAGES" \
    --conf "spark.jars.ivy=$CACHE/ivy" --driver-java-options -Duser.timezone=UTC \
    "$ROOT/bench/spark/streaming.py" "$@"
