#!/usr/bin/env bash
# The native dev stack: a private PostgreSQL cluster and a real single-node Apache Kafka
# broker (KRaft), both on loopback with their data under .stack/, then every service.
# No Docker needed. Usage: deploy/stack.sh up|down|status|logs|env|infra-up
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${CONFIDE_STACK_DIR:-$ROOT/.stack}"
PG_PORT="${CONFIDE_PG_PORT:-55432}"
KAFKA_PORT="${CONFIDE_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${CONFIDE_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP="${CONFIDE_KAFKA_HEAP:--Xms256m -Xmx512m}"
# A fresh broker starts in about 10 s; one whose data holds a couple of thousand partitions
# (a long-lived dev stack: every test run makes topics) loads them for a minute and a half.
KAFKA_READY_SECONDS="${CONFIDE_KAFKA_READY_SECONDS:-180}"
PG_SUPERUSER=postgres
# service name -> HTTP port; a service is started only when its package exists.
# CONFIDE_SERVICE_PORT_OFFSET moves every service's port (a second stack beside the first:
# the fault tests run on one of their own, with its own PostgreSQL and Kafka ports).
PORT_OFFSET="${CONFIDE_SERVICE_PORT_OFFSET:-0}"
SERVICES=()
for entry in identity:8001 messaging:8002 billing:8003 consent:8004 retention:8005 audit:8006; do
  SERVICES+=("${entry%%:*}:$((${entry##*:} + PORT_OFFSET))")
done

log() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed ($2)"; }

pg_bin() {
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  die "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
}

# PostgreSQL refuses to run as root: run its tools as the postgres user when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "$what did not become ready within ${secs}s (see $STACK/logs)"
}

secret() { # a per-stack generated password, stable across restarts
  local file="$STACK/secrets/$1.password"
  if [ ! -s "$file" ]; then
    mkdir -p "$STACK/secrets"; chmod 700 "$STACK/secrets"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$file"
    chmod 600 "$file"
  fi
  cat "$file"
}

pg_running() { as_pg "$(pg_bin)/pg_ctl" -D "$STACK/postgres" status >/dev/null 2>&1; }

pg_up() {
  local bin; bin="$(pg_bin)"
  mkdir -p "$STACK/logs"
  if [ ! -s "$STACK/postgres/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $STACK/postgres"
    mkdir -p "$STACK/postgres"
    if [ "$(id -u)" = 0 ]; then chown postgres "$STACK/postgres"; fi
    chmod 700 "$STACK/postgres"
    local pwfile; pwfile="$(mktemp)"; secret postgres >"$pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres "$pwfile"; fi
    as_pg "$bin/initdb" -D "$STACK/postgres" -U "$PG_SUPERUSER" --pwfile="$pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
      >"$STACK/logs/initdb.log" 2>&1 || { rm -f "$pwfile"; die "initdb failed: $STACK/logs/initdb.log"; }
    rm -f "$pwfile"
    cat >>"$STACK/postgres/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$STACK/postgres'
max_connections = 300
shared_buffers = 256MB
fsync = on
log_min_messages = warning
EOF
  fi
  if pg_running; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    port_in_use "$PG_PORT" && die "port $PG_PORT is taken by another process (set CONFIDE_PG_PORT)"
    touch "$STACK/logs/postgres.log"
    if [ "$(id -u)" = 0 ]; then chown postgres "$STACK/logs/postgres.log"; fi
    as_pg "$bin/pg_ctl" -D "$STACK/postgres" -l "$STACK/logs/postgres.log" -w -t 30 start >/dev/null \
      || die "PostgreSQL did not start: $STACK/logs/postgres.log"
    log "PostgreSQL up on 127.0.0.1:$PG_PORT"
  fi
  pg_provision
}

psql_admin() {
  PGPASSWORD="$(secret postgres)" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" \
    -v ON_ERROR_STOP=1 -qtA "$@"
}

# One database and one login role per service; a role can reach only its own database.
pg_provision() {
  local entry name pw
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}"; pw="$(secret "$name")"
    psql_admin -d postgres >/dev/null <<EOF
SELECT 'CREATE ROLE $name LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$name') \gexec
ALTER ROLE $name WITH LOGIN PASSWORD '$pw';
SELECT 'CREATE DATABASE $name OWNER $name' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$name') \gexec
REVOKE CONNECT ON DATABASE $name FROM PUBLIC;
GRANT CONNECT ON DATABASE $name TO $name;
EOF
  done
}

# Whether a process started by this script still runs, decided from the process itself, not
# from its pid file alone: after a SIGKILL the file stays, and a pid can come back as a zombie
# (kill -0 still succeeds) or as an unrelated process. Alive means: the pid exists, is neither a
# zombie nor dead, and its command line still names what we started (`what`).
process_alive() { # pid-file, what
  local pid state
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -e 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)"
  case "$state" in Z|X|x) return 1 ;; esac
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

kafka_running() { process_alive "$STACK/run/kafka.pid" kafka.Kafka && port_in_use "$KAFKA_PORT"; }

kafka_jars() {
  if ! ls "$STACK/kafka/libs"/kafka_2.13-*.jar >/dev/null 2>&1; then
    need mvn "apt-get install maven"
    log "resolving the Kafka broker jars from Maven Central"
    (cd "$ROOT/deploy/kafka" && mvn -q -B \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$STACK/kafka/libs") >"$STACK/logs/maven.log" 2>&1 \
      || die "could not resolve the Kafka jars: $STACK/logs/maven.log"
  fi
}

kafka_up() {
  need java "apt-get install openjdk-17-jre-headless"
  mkdir -p "$STACK/logs" "$STACK/run" "$STACK/kafka"
  kafka_jars
  if kafka_running; then log "Kafka already running on 127.0.0.1:$KAFKA_PORT"; return; fi
  if process_alive "$STACK/run/kafka.pid" kafka.Kafka; then
    wait_for "Kafka" "$KAFKA_READY_SECONDS" port_in_use "$KAFKA_PORT"; log "Kafka up on 127.0.0.1:$KAFKA_PORT"; return
  fi
  rm -f "$STACK/run/kafka.pid"
  port_in_use "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set CONFIDE_KAFKA_PORT)"
  port_in_use "$KAFKA_CONTROLLER_PORT" && die "port $KAFKA_CONTROLLER_PORT is taken (set CONFIDE_KAFKA_CONTROLLER_PORT)"
  local cp="$STACK/kafka/libs/*"
  sed -e "s|@DATA@|$STACK/kafka/data|" -e "s|@PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    "$ROOT/deploy/kafka/server.properties" >"$STACK/kafka/server.properties"
  if [ ! -s "$STACK/kafka/data/meta.properties" ]; then
    log "formatting Kafka storage in $STACK/kafka/data"
    local cluster_id
    cluster_id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java -cp "$cp" -Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.properties" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$STACK/kafka/server.properties" \
      >"$STACK/logs/kafka-format.log" 2>&1 || die "Kafka storage format failed: $STACK/logs/kafka-format.log"
  fi
  log "starting Kafka (KRaft) on 127.0.0.1:$KAFKA_PORT"
  touch "$STACK/logs/kafka.log"
  # kafka.log is appended to across restarts: readiness is read from what this start wrote.
  KAFKA_LOG_FROM="$(($(stat -c %s "$STACK/logs/kafka.log") + 1))"
  # setsid: the broker outlives this script and is stopped by `down`, not by a terminal hangup.
  setsid java $KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.properties" -Dkafka.logs.dir="$STACK/logs" \
    -cp "$cp" kafka.Kafka "$STACK/kafka/server.properties" >>"$STACK/logs/kafka.log" 2>&1 </dev/null &
  echo $! >"$STACK/run/kafka.pid"
  wait_for "Kafka" "$KAFKA_READY_SECONDS" port_in_use "$KAFKA_PORT"
  wait_for "Kafka" "$KAFKA_READY_SECONDS" kafka_ready
  log "Kafka up on 127.0.0.1:$KAFKA_PORT"
}

KAFKA_LOG_FROM=1
kafka_ready() { tail -c "+$KAFKA_LOG_FROM" "$STACK/logs/kafka.log" | grep -q "Kafka Server started"; }

write_env() {
  local entry name upper
  {
    echo "# written by deploy/stack.sh: where the native stack listens"
    echo "export CONFIDE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    echo "export CONFIDE_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    echo "export CONFIDE_TEST_POSTGRES_URL=postgresql+psycopg://$PG_SUPERUSER:$(secret postgres)@127.0.0.1:$PG_PORT/postgres"
    for entry in "${SERVICES[@]}"; do
      name="${entry%%:*}"; upper="$(echo "$name" | tr a-z A-Z)"
      echo "export CONFIDE_${upper}_DATABASE_URL=postgresql+psycopg://$name:$(secret "$name")@127.0.0.1:$PG_PORT/$name"
      echo "export CONFIDE_${upper}_URL=http://127.0.0.1:${entry##*:}"
    done
  } >"$STACK/stack.env"
  chmod 600 "$STACK/stack.env"
}

topics_up() {
  log "creating the suite's topics"
  CONFIDE_KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT" "$ROOT/.venv/bin/python" -m confide_toolkit.topics_cli create \
    >>"$STACK/logs/topics.log" 2>&1 || die "topic creation failed: $STACK/logs/topics.log"
}

# A service is running when its process is alive and its port answers; one whose process is
# alive but not yet listening is starting, and `up` waits for it instead of starting another.
service_process_alive() { process_alive "$STACK/run/$1.pid" "confide_$1"; }
service_running() { service_process_alive "$1" && port_in_use "$2"; }

# A service is started once it can run (`python -m confide_<name>`), not merely once its folder
# exists: a service whose package is still being built is skipped.
service_exists() { [ -f "$ROOT/services/$1/src/confide_$1/__main__.py" ]; }

services_up() {
  local entry name port upper
  # shellcheck disable=SC1091
  source "$STACK/stack.env"
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}"; port="${entry##*:}"; upper="$(echo "$name" | tr a-z A-Z)"
    service_exists "$name" || continue
    if service_running "$name" "$port"; then log "$name already running on 127.0.0.1:$port"; continue; fi
    if service_process_alive "$name"; then log "$name is starting (pid $(cat "$STACK/run/$name.pid"))"; continue; fi
    rm -f "$STACK/run/$name.pid"
    port_in_use "$port" && die "port $port for $name is taken by another process"
    mkdir -p "$STACK/keys"
    local db_var="CONFIDE_${upper}_DATABASE_URL"
    CONFIDE_SERVICE_NAME="$name" CONFIDE_HTTP_PORT="$port" CONFIDE_DATABASE_URL="${!db_var}" \
      CONFIDE_KEK_FILE="$STACK/keys/$name.kek.json" \
      setsid "$ROOT/.venv/bin/python" -m "confide_$name" >>"$STACK/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STACK/run/$name.pid"
  done
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}"; port="${entry##*:}"
    service_exists "$name" || continue
    wait_for "$name" 60 service_ready "$name" "$port"
    log "$name ready on http://127.0.0.1:$port (docs: /docs, OpenAPI: /openapi.json)"
  done
  seed_dev_data
}

# Ready: the process we started is alive and answers /readyz. A process that died while starting
# stops the wait at once, with its log, instead of waiting out the timeout.
service_ready() { # name, port
  service_process_alive "$1" || { tail -n 20 "$STACK/logs/$1.log" >&2; die "$1 exited while starting: $STACK/logs/$1.log"; }
  curl -fsS "http://127.0.0.1:$2/readyz"
}

seed_dev_data() { # development data only: no migration seeds it, a deployment never gets it
  [ -f "$ROOT/services/consent/pyproject.toml" ] || return 0
  CONFIDE_SERVICE_NAME=consent CONFIDE_DATABASE_URL="$CONFIDE_CONSENT_DATABASE_URL" \
    CONFIDE_KEK_FILE="$STACK/keys/consent.kek.json" \
    "$ROOT/.venv/bin/python" -m confide_consent.cli seed-dev-recipients >>"$STACK/logs/consent.log" 2>&1 \
    || die "seeding consent's development recipients failed: $STACK/logs/consent.log"
  log "consent's development recipients registered (python -m confide_consent.cli seed-dev-recipients)"
}

stop_pidfile() { # name, what its command line names
  local name=$1 pidfile="$STACK/run/$1.pid" pid i
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if process_alive "$pidfile" "$2"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop in 30s; killing"; kill -KILL "$pid" 2>/dev/null || true; }
    log "$name stopped"
  fi
  rm -f "$pidfile"
}

infra_up() { need psql "apt-get install postgresql-client"; need curl "apt-get install curl"
  pg_up; kafka_up; write_env; topics_up; }

cmd_up() { infra_up; services_up; cmd_status; }

cmd_down() {
  local entry
  for entry in "${SERVICES[@]}"; do stop_pidfile "${entry%%:*}" "confide_${entry%%:*}"; done
  stop_pidfile kafka kafka.Kafka
  if [ -d "$STACK/postgres" ] && pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$STACK/postgres" -m fast -w stop >/dev/null && log "PostgreSQL stopped"
  fi
}

cmd_status() {
  local entry name port state
  if [ -d "$STACK/postgres" ] && pg_running; then state=up; else state=down; fi
  printf '%-10s %-6s %s\n' postgres "$state" "127.0.0.1:$PG_PORT  data: $STACK/postgres"
  if kafka_running; then state=up; else state=down; fi
  printf '%-10s %-6s %s\n' kafka "$state" "127.0.0.1:$KAFKA_PORT  data: $STACK/kafka/data"
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}"; port="${entry##*:}"
    service_exists "$name" || continue
    if service_running "$name" "$port"; then state=up
    elif service_process_alive "$name"; then state=starting
    else state=down; fi
    printf '%-10s %-6s %s\n' "$name" "$state" "http://127.0.0.1:$port  log: $STACK/logs/$name.log"
  done
  echo "logs: $STACK/logs   environment: $STACK/stack.env"
}

cmd_logs() { tail -n 50 -F "$STACK"/logs/*.log; }

case "${1:-}" in
  up) cmd_up ;;
  infra-up) infra_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  env) cat "$STACK/stack.env" ;;
  *) die "usage: $0 up|infra-up|down|status|logs|env" ;;
esac
