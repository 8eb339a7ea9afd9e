# Helpers sourced by the dev/ scripts. Not meant to be run directly.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CLICKSTREAM_STATE_DIR:-$ROOT/.dev}
CACHE=${CLICKSTREAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/clickstream}

log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Creates .env from .env.example with a fresh random password for every __RANDOM__; an
# existing .env only gains the settings added to .env.example since it was made.
ensure_env() {
    local line out="" key
    if [ -f "$ROOT/.env" ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)= ]] || continue
            key=${BASH_REMATCH[1]}
            grep -q "^$key=" "$ROOT/.env" && continue
            while [[ "$line" == *__RANDOM__* ]]; do
                line=${line/__RANDOM__/$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
            done
            log "adding $key (new in .env.example) to .env"
            out+="$line"$'\n'
        done < "$ROOT/.env.example"
        [ -z "$out" ] || printf '%s' "$out" >> "$ROOT/.env"
        chmod 600 "$ROOT/.env"
        return 0
    fi
    log "creating .env from .env.example with freshly generated passwords"
    while IFS= read -r line || [ -n "$line" ]; do
        while [[ "$line" != \#* && "$line" == *__RANDOM__* ]]; do
            line=${line/__RANDOM__/$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
        done
        out+="$line"$'\n'
    done < "$ROOT/.env.example"
    (umask 077 && printf '%s' "$out" > "$ROOT/.env")
}

# Reads a password on stdin, prints its PostgreSQL SCRAM-SHA-256 verifier (random salt,
# 4096 iterations), so scripts can set role passwords without sending them.
scram_verifier() {
    python3 -c '
import base64, hashlib, hmac, os, sys
pw = sys.stdin.read().encode()
salt = os.urandom(16)
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, 4096)
client = hmac.new(salted, b"Client Key", "sha256").digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
b = lambda x: base64.b64encode(x).decode()
print("SCRAM-SHA-256$4096:%s$%s:%s" % (b(salt), b(hashlib.sha256(client).digest()), b(server)))
'
}

# Exports every variable of .env (with ${VAR} references expanded, as dotenv and compose do).
load_env() {
    ensure_env
    set -a
    # shellcheck disable=SC1091
    . "$ROOT/.env"
    set +a
}

# apt-get installs the given packages if any is missing (needs root and Debian/Ubuntu).
apt_ensure() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get; install them by hand"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing ${missing[*]}"
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Waits until host:port accepts TCP connections, at most $3 seconds.
wait_port() {
    local host=$1 port=$2 timeout=${3:-60} i
    for ((i = 0; i < timeout * 10; i++)); do
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# A venv under $CACHE/venv-NAME (outside the clone: cached across clones and CI runs) with
# `pip install ARGS...`, recreated when STAMP (the pins, or a constraints file's hash)
# changes or BIN is missing. Prints its path.
pinned_venv() {
    local name=$1 bin=$2 stamp=$3 venv="$CACHE/venv-$1"
    shift 3
    if [ ! -x "$venv/bin/$bin" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$stamp" ]; then
        apt_ensure python3-venv >&2
        log "creating the $name venv in $venv (about a minute for the big ones)" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check "$@" >&2
        echo "$stamp" > "$venv/.pins"
    fi
    echo "$venv"
}

# `pinned_venv` for a package pinned by a frozen constraints file of the repository (its
# own dependency ranges admit releases that break it). Prints the venv's path.
constraints_venv() {
    local name=$1 bin=$2 package=$3 constraints=$4
    pinned_venv "$name" "$bin" "$package $(sha256sum "$constraints" | cut -c1-16)" \
        "$package" -r "$constraints" -c "$constraints"
}

# dbt with DuckDB for the analysts' models (dbt/).
DBT_PINS="dbt-core==1.11.16 dbt-duckdb==1.11.1 duckdb==1.4.4"
# shellcheck disable=SC2086 # the pins are words
dbt_venv() { pinned_venv dbt dbt "$DBT_PINS" $DBT_PINS; }

# Airflow 3 for the DAG test (dags/).
AIRFLOW_VERSION=3.3.2
airflow_venv() {
    constraints_venv airflow airflow "apache-airflow==$AIRFLOW_VERSION" \
        "$ROOT/deploy/airflow/constraints-$AIRFLOW_VERSION-py3.11.txt"
}

# Superset for the dashboard-export test (deploy/superset/).
SUPERSET_VERSION=6.1.0
superset_venv() {
    constraints_venv superset superset "apache-superset==$SUPERSET_VERSION" \
        "$ROOT/deploy/superset/constraints-$SUPERSET_VERSION-py3.11.txt"
}

# kubernetes-validate (it bundles Kubernetes' OpenAPI schemas: no network) for the
# deploy/k8s check.
K8S_PINS="kubernetes-validate==1.37.0 PyYAML==6.0.4 jsonschema==4.26.0"
# shellcheck disable=SC2086
k8s_venv() { pinned_venv k8s kubernetes-validate "$K8S_PINS" $K8S_PINS; }

# moto's S3-compatible server for the object-store lake test (crates/cli/tests/lake.rs).
MOTO_PIN="moto[server]==5.2.5"
moto_venv() { pinned_venv moto moto_server "$MOTO_PIN" "$MOTO_PIN"; }

# PySpark and the driver's PostgreSQL client for the Spark side-by-side benchmark
# (bench/spark/), and the jars its job loads (the Kafka source's newest release on Maven
# Central is 4.2.0), resolved by bench/spark/setup.sh into $CACHE/ivy.
SPARK_PINS="pyspark==4.3.0 psycopg[binary]==3.3.9"
SPARK_PACKAGES="org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0,org.postgresql:postgresql:42.7.8"
# shellcheck disable=SC2086
spark_venv() { pinned_venv spark spark-submit "$SPARK_PINS" $SPARK_PINS; }
