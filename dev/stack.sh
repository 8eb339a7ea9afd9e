#!/usr/bin/env bash
# The local stack without Docker: Apache Kafka in KRaft mode, run from its Maven Central
# jars on the machine's Java 17, and a private PostgreSQL cluster on loopback ports.
#
#   dev/stack.sh up       install what is missing, start both, wait, create topics (idempotent)
#   dev/stack.sh down     stop both (data is kept under .dev/)
#   dev/stack.sh status   what runs where
#   dev/stack.sh clean    stop and delete all local data
#
# Ports, passwords and topic names come from .env (created from .env.example if missing).
# KAFKA_VERSION (default below) picks the Kafka release; jars are cached in
# ~/.cache/clickstream (CLICKSTREAM_CACHE_DIR) so a second `up` downloads nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KDIR=$STATE/kafka
KLIBS=$CACHE/kafka-$KAFKA_VERSION/libs
TLS=$STATE/tls

# A throwaway CA and a server certificate for localhost / 127.0.0.1 (made once, kept in
# .dev/tls): PostgreSQL's TLS and Kafka's SASL_SSL listener use it; clients trust ca.pem.
tls_certs() {
    [ -f "$TLS/kafka-keystore.pem" ] && return 0
    command -v openssl >/dev/null || apt_ensure openssl
    mkdir -p "$TLS"
    chmod 700 "$TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=clickstream local CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null || die "openssl could not make the CA"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$TLS/server.ext"
    openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
        -CAcreateserial -days 3650 -extfile "$TLS/server.ext" -out "$TLS/server.pem" 2>/dev/null \
        || die "openssl could not sign the server certificate"
    # Kafka's PEM keystore: the unencrypted PKCS#8 key, then the certificate chain.
    openssl pkcs8 -topk8 -nocrypt -in "$TLS/server.key" > "$TLS/kafka-keystore.pem"
    cat "$TLS/server.pem" "$TLS/ca.pem" >> "$TLS/kafka-keystore.pem"
    chmod 600 "$TLS"/*.key "$TLS/kafka-keystore.pem"
    chmod 644 "$TLS/ca.pem" "$TLS/server.pem"
    log "made a throwaway CA and a localhost certificate in $TLS (clients trust $TLS/ca.pem)"
}

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -n "$d" ] && echo "$d"
}

# PostgreSQL refuses to run as root, so as root the cluster belongs to `postgres`, and its
# data must live where that user can reach it.
pg_user() { [ "$(id -u)" -eq 0 ] && echo postgres || id -un; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_data() {
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
        echo "/var/lib/clickstream/pg-$(echo -n "$ROOT" | md5sum | cut -c1-8)"
    else
        echo "$STATE/pg"
    fi
}
pg_sock() { echo "/tmp/clickstream-pg-$POSTGRES_PORT"; }

# Write-heavy settings for the processor's batch transactions (measured: ~13% more
# throughput than the defaults on 2 cores). Durability is unchanged. pg_stat_statements
# is loaded so `bench/run.sh` can say which statements the database's time goes to.
PG_TUNING="-c shared_buffers=512MB -c max_wal_size=4GB -c checkpoint_timeout=15min -c wal_compression=lz4 -c shared_preload_libraries=pg_stat_statements"

install_deps() {
    command -v java >/dev/null || apt_ensure openjdk-17-jre-headless
    command -v mvn >/dev/null || apt_ensure maven
    [ -n "$(pg_bindir)" ] || apt_ensure postgresql
}

fetch_kafka() {
    [ -f "$KLIBS/kafka_2.13-$KAFKA_VERSION.jar" ] && return 0
    log "resolving Apache Kafka $KAFKA_VERSION from Maven Central (first time only)"
    local tmp="$KLIBS.tmp.$$"
    rm -rf "$tmp"
    mvn -q -B -f "$ROOT/dev/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" -DincludeScope=runtime \
        || die "could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    rm -rf "$KLIBS"
    mkdir -p "$(dirname "$KLIBS")"
    mv "$tmp" "$KLIBS"
}

kafka_java() {
    java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KDIR/log4j2.properties" -Dkafka.logs.dir="$KDIR/logs" \
        -cp "$KLIBS/*" "$@"
}

kafka_pid() {
    local pid
    pid=$(cat "$KDIR/kafka.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

kafka_up() {
    mkdir -p "$KDIR/logs"
    cat > "$KDIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://localhost:$KAFKA_SASL_SSL_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/kafka-keystore.pem
log.dirs=$KDIR/data
num.partitions=$CLICKSTREAM_PARTITIONS
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=4194304
PROPS
    cat > "$KDIR/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
    if kafka_pid >/dev/null && ! port_open 127.0.0.1 "$KAFKA_SASL_SSL_PORT"; then
        log "restarting Kafka to add the SASL_SSL listener on $KAFKA_SASL_SSL_PORT"
        kafka_down
    fi
    if kafka_pid >/dev/null; then
        log "kafka already running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"
        return 0
    fi
    port_open 127.0.0.1 "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set KAFKA_PORT in .env"
    if [ ! -f "$KDIR/data/meta.properties" ]; then
        local cid
        cid=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
        kafka_java kafka.tools.StorageTool format --standalone -t "$cid" \
            -c "$KDIR/server.properties" >"$KDIR/logs/format.log" 2>&1 \
            || die "formatting KRaft storage failed: see $KDIR/logs/format.log"
    fi
    log "starting Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT"
    nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KDIR/log4j2.properties" -Dkafka.logs.dir="$KDIR/logs" \
        -cp "$KLIBS/*" kafka.Kafka "$KDIR/server.properties" \
        >"$KDIR/logs/stdout.log" 2>&1 </dev/null &
    echo $! > "$KDIR/kafka.pid"
    wait_port 127.0.0.1 "$KAFKA_PORT" 90 || die "kafka did not open port $KAFKA_PORT; see $KDIR/logs/server.log"
    wait_port 127.0.0.1 "$KAFKA_SASL_SSL_PORT" 30 || die "kafka did not open its SASL_SSL port $KAFKA_SASL_SSL_PORT; see $KDIR/logs/server.log"
}

# The SCRAM user of the SASL_SSL listener (SHA-256 and SHA-512), password from .env.
# (ConfigCommand mangles SCRAM entries read with --add-config-file, so the password is an
# argument for the moment the command runs: a local development stack only.)
scram_user() {
    local i m ok
    : > "$KDIR/logs/scram.log"
    for m in SCRAM-SHA-256 SCRAM-SHA-512; do
        ok=0
        for i in $(seq 1 30); do
            if kafka_java kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
                --entity-type users --entity-name "$KAFKA_SCRAM_USER" \
                --add-config "$m=[password=$KAFKA_SCRAM_PASSWORD]" >>"$KDIR/logs/scram.log" 2>&1; then
                ok=1
                break
            fi
            sleep 1
        done
        [ $ok -eq 1 ] || die "could not create the SCRAM user $KAFKA_SCRAM_USER; see $KDIR/logs/scram.log"
    done
    log "SASL_SSL listener: localhost:$KAFKA_SASL_SSL_PORT, SCRAM user $KAFKA_SCRAM_USER, CA $TLS/ca.pem"
}

create_topics() {
    local t parts
    for t in "$CLICKSTREAM_RAW_TOPIC:$CLICKSTREAM_PARTITIONS" "$CLICKSTREAM_DLQ_TOPIC:3"; do
        parts=${t##*:}
        t=${t%:*}
        local ok=0 i
        for i in $(seq 1 30); do
            if kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
                --create --if-not-exists --topic "$t" --partitions "$parts" --replication-factor 1 \
                >>"$KDIR/logs/topics.log" 2>&1; then
                ok=1
                break
            fi
            sleep 1
        done
        [ $ok -eq 1 ] || die "could not create topic $t; see $KDIR/logs/topics.log"
    done
    log "topics ready: $CLICKSTREAM_RAW_TOPIC ($CLICKSTREAM_PARTITIONS partitions), $CLICKSTREAM_DLQ_TOPIC"
}

psql_admin() {
    "$(pg_bindir)/psql" -h "$(pg_sock)" -p "$POSTGRES_PORT" -U "$POSTGRES_USER" -d postgres \
        -v ON_ERROR_STOP=1 -qtA "$@"
}

pg_up() {
    local bin data sock
    bin=$(pg_bindir)
    data=$(pg_data)
    sock=$(pg_sock)
    mkdir -p "$data" "$sock"
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$data" "$sock"; fi
    chmod 700 "$data"
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initialising PostgreSQL cluster in $data"
        local pw
        pw=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$pw"
        as_pg "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$pw" \
            --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >/dev/null \
            || { rm -f "$pw"; die "initdb failed"; }
        rm -f "$pw"
    fi
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "postgres already running on 127.0.0.1:$POSTGRES_PORT"
    else
        port_open 127.0.0.1 "$POSTGRES_PORT" && die "port $POSTGRES_PORT is taken by another process; set POSTGRES_PORT in .env"
        log "starting PostgreSQL on 127.0.0.1:$POSTGRES_PORT"
        as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-p $POSTGRES_PORT -k $sock -c listen_addresses=127.0.0.1 -c max_connections=200 $PG_TUNING" \
            start >/dev/null || die "postgres did not start; see $data/server.log"
    fi
    # Keep the admin password in step with .env: a SCRAM verifier computed here, sent on
    # stdin, so the password is neither on a command line nor in the server's statements.
    printf 'ALTER ROLE "%s" PASSWORD %s\n' "$POSTGRES_USER" "'$(printf '%s' "$POSTGRES_PASSWORD" | scram_verifier)'" \
        | psql_admin >/dev/null
    pg_tls "$data"
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$POSTGRES_DB'")" != "1" ]; then
        psql_admin -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
        log "created database $POSTGRES_DB"
    fi
}

# TLS on (the throwaway CA's localhost certificate) and one TLS-only database,
# `clickstream_tls`, whose connections must be hostssl + SCRAM (the secure end-to-end test
# uses it). Applied with a reload, so a running server picks it up too.
pg_tls() {
    local data=$1 hba
    install -m 600 "$TLS/server.pem" "$data/clickstream-server.crt"
    install -m 600 "$TLS/server.key" "$data/clickstream-server.key"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data/clickstream-server.crt" "$data/clickstream-server.key"
    hba="$data/pg_hba.conf"
    if ! grep -q clickstream_tls "$hba"; then
        { printf '# clickstream: the TLS-only database\n'
          printf 'hostnossl clickstream_tls all all reject\n'
          printf 'hostssl   clickstream_tls all all scram-sha-256\n'
          cat "$hba"; } > "$hba.new"
        mv "$hba.new" "$hba"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$hba"
    fi
    psql_admin >/dev/null <<SQL
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = 'clickstream-server.crt';
ALTER SYSTEM SET ssl_key_file = 'clickstream-server.key';
ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.2';
SELECT pg_reload_conf();
SQL
}

cmd_up() {
    load_env
    install_deps
    fetch_kafka
    mkdir -p "$STATE"
    tls_certs
    pg_up
    kafka_up
    create_topics
    scram_user
    log "stack up: kafka 127.0.0.1:$KAFKA_PORT, postgres 127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB"
}

kafka_down() {
    local pid i
    if pid=$(kafka_pid); then
        log "stopping kafka (pid $pid)"
        kill "$pid"
        for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$KDIR/kafka.pid"
}

cmd_down() {
    load_env
    kafka_down
    local bin data
    bin=$(pg_bindir || true)
    data=$(pg_data)
    if [ -n "$bin" ] && [ -f "$data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "stopping postgres"
        as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
}

cmd_status() {
    load_env
    local rc=0 bin data
    if pid=$(kafka_pid); then
        echo "kafka:    running (pid $pid) on 127.0.0.1:$KAFKA_PORT, version $KAFKA_VERSION"
    else
        echo "kafka:    stopped"; rc=1
    fi
    bin=$(pg_bindir || true)
    data=$(pg_data)
    if [ -n "$bin" ] && [ -f "$data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "postgres: running on 127.0.0.1:$POSTGRES_PORT (data $data)"
    else
        echo "postgres: stopped"; rc=1
    fi
    return $rc
}

cmd_clean() {
    cmd_down
    rm -rf "$STATE" "$(pg_data)"
    log "local data removed"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    clean) cmd_clean ;;
    *) echo "usage: $0 up|down|status|clean" >&2; exit 2 ;;
esac
