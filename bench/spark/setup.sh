#!/usr/bin/env bash
# Installs what the Spark side-by-side benchmark needs and prints the venv's path:
# Java 17, a pinned PySpark venv outside the clone ($CACHE/venv-spark, spark_venv in
# dev/lib.sh) and the jars of SPARK_PACKAGES in $CACHE/ivy. Idempotent: when everything
# is there it only looks (well under a second).
set -euo pipefail
. "$(dirname "$0")/../../dev/lib.sh"

command -v java >/dev/null || apt_ensure openjdk-17-jre-headless
venv=$(spark_venv)
# Ivy copies each resolved package to $CACHE/ivy/jars/<group>_<artifact>-<version>.jar.
IFS=, read -r -a packages <<<"$SPARK_PACKAGES"
for p in "${packages[@]}"; do
    IFS=: read -r group artifact version <<<"$p"
    if [ ! -f "$CACHE/ivy/jars/${group}_$artifact-$version.jar" ]; then
        log "resolving $SPARK_PACKAGES into $CACHE/ivy (first time only)"
        # spark-submit resolves the packages before it starts the script, which then
        # only prints its usage.
        "$(dirname "$0")/submit.sh" --help >/dev/null
        break
    fi
done
echo "$venv"
