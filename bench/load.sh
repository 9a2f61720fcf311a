#!/usr/bin/env bash
# First load test of POST /v1/messages: a release build of sopr on a throw-away
# database, wrk at concurrency 32. Sends traffic to 127.0.0.1 only.
#
#   bench/load.sh                       # SQLite
#   bench/load.sh postgres://postgres@127.0.0.1:5432/postgres   # Postgres (a throw-away database is created on that server)
#
# Needs: wrk (apt-get install wrk). Env: DURATION (default 20s), CONNECTIONS (32), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18099}
ADMIN_URL=${1:-}

cargo build --release --quiet
BIN=target/release/sopr
WORK=$(mktemp -d)
DB_NAME=""
if [ -n "$ADMIN_URL" ]; then
  DB_NAME="sopr_bench_$(date +%s)"
  psql "$ADMIN_URL" -qc "CREATE DATABASE $DB_NAME"
  URL="${ADMIN_URL%/*}/$DB_NAME"
else
  URL="sqlite://$WORK/bench.db"
fi
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  [ -n "$DB_NAME" ] && psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export SOPR_BENCH_KEY
SOPR_BENCH_KEY=$($BIN --database "$URL" keys create --tenant bench)
SOPR_LOG_LEVEL=warn SOPR_BOOTSTRAP_DEMO_TENANT= $BIN --database "$URL" serve --listen "127.0.0.1:$PORT" &
PID=$!
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done

echo "sopr $(git rev-parse --short HEAD 2>/dev/null || echo '?') | database: ${URL%%://*} | wrk -t$THREADS -c$CONNECTIONS -d$DURATION | $(nproc) cores"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/messages.lua "http://127.0.0.1:$PORT" | tail -n 2
