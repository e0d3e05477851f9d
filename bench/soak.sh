#!/usr/bin/env bash
# Soak test (issue 14): a release sluice in front of its own throwaway PostgreSQL, under mixed
# load for SOAK_SECONDS (default 600), with one PostgreSQL restart (pg_ctl restart -m fast)
# halfway. Not part of the test run.
#
#   bench/soak.sh                    # 10 minutes
#   SOAK_SECONDS=60 bench/soak.sh    # a quick run
#
# The load, all through sluice (transaction mode, SCRAM logins):
#   - 4 writers: psql reading autocommit `INSERT ... RETURNING id` lines; every id printed back
#     is an acknowledged commit (a psql that loses its connection is started again);
#   - connect/disconnect churn: pgbench -C -S (a new login per transaction), 4 clients;
#   - cancels: psql runs `SELECT pg_sleep(10)` and is interrupted (a CancelRequest) after 1 s;
#   - errors: `SELECT 1/0` and a syntax error, in a loop;
#   - leakers: sessions that stay idle in transaction for 20 s, one after another.
# Figures are taken after a 15 s warm-up with the same load and again after the load stops and idle servers closed
# (server_idle_timeout = 5s here). Checks: every acknowledged commit is in the table; sluice's
# open files and PostgreSQL's client backends are back to (at most) their start; sluice's RSS is
# within 10 MB of its start. Exits 1 when a check fails.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${SOAK_SECONDS:-600}
[ "$DURATION" -ge 20 ] || die "SOAK_SECONDS must be at least 20"
case ${1:-} in
-h | --help)
    sed -n '2,20p' "$0"
    exit 0
    ;;
"") ;;
*) die "unknown argument $1 (try --help)" ;;
esac

raise_nofile
install_traps
ensure_packages
build_sluice
make_tmp
start_postgres 1
write_pooler_configs scram-sha-256
# Idle servers close after 5 s, so the server count can come back to its start when load stops.
sed -i 's/^\[pooler\]$/[pooler]\nserver_idle_timeout = "5s"\nquery_wait_timeout = "30s"/' "$TMP/sluice.toml"

export PGPASSWORD=$BENCH_PASSWORD PGCONNECT_TIMEOUT=10
psql_pg() { "$PG_BINDIR/psql" -X -q -At -h "$TMP" -p "$PG_PORT" -U postgres "$@"; }
# A committed row must survive the restart: the harness PostgreSQL runs synchronous_commit off.
psql_pg -d postgres -c "ALTER DATABASE bench SET synchronous_commit = on"
psql_pg -d bench -c "CREATE TABLE soak_acks (id bigint PRIMARY KEY, at timestamptz DEFAULT now())" \
    -c "GRANT ALL ON soak_acks TO $BENCH_USER"

start_pooler sluice
SLUICE_URL="host=127.0.0.1 port=$SLUICE_PORT user=$BENCH_USER dbname=bench"
via_sluice() { "$PG_BINDIR/psql" -X -q -At "$SLUICE_URL" "$@"; }

fd_count() { find "/proc/$POOLER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
rss_kb() { status_kb "$POOLER_PID" VmRSS; }
server_count() {
    psql_pg -d postgres -c "SELECT count(*) FROM pg_stat_activity
        WHERE usename = '$BENCH_USER' AND backend_type = 'client backend'"
}

STOP=$TMP/stop
# The load loops end when the stop file appears (or the temp dir is gone after a failure).
running() { [ -d "$TMP" ] && [ ! -e "$STOP" ]; }
soak_cleanup() {
    local rc=$?
    touch "$STOP" 2>/dev/null || true
    # A second SIGTERM makes sluice exit at once, even with clients still connected.
    if [ -n "${POOLER_PID:-}" ]; then
        kill -TERM "$POOLER_PID" 2>/dev/null || true
        sleep 0.2
        kill -TERM "$POOLER_PID" 2>/dev/null || true
    fi
    # cleanup takes the exit status from $?; set -e would end this trap at a failing (exit).
    set +e
    (exit "$rc")
    cleanup
}
trap soak_cleanup EXIT
mkdir -p "$TMP/out"

PHASE=0
writer() {
    local w=$1 run=0
    while running; do
        run=$((run + 1))
        local base=$((((PHASE * 10 + w) * 100000 + run) * 1000000)) i=0
        while running; do
            i=$((i + 1))
            echo "INSERT INTO soak_acks (id) VALUES ($((base + i))) RETURNING id;"
            sleep 0.01
        done 2>/dev/null | via_sluice -v ON_ERROR_STOP=0 >>"$TMP/out/acks-$PHASE-$w" 2>>"$TMP/out/writer-errors-$PHASE-$w" || true
    done
}

churn() {
    local chunk=0
    while running; do
        chunk=$((chunk + 1))
        "$PG_BINDIR/pgbench" -n -S -C -c 4 -j 1 -T 5 "$SLUICE_URL" >"$TMP/out/churn-$PHASE-$chunk.log" 2>&1 || true
    done
}

canceller() {
    local n=0 pid
    while running; do
        n=$((n + 1))
        # psql itself in the background ($! must be psql, not a subshell: bash's background
        # subshells ignore SIGINT).
        "$PG_BINDIR/psql" -X -q -At "$SLUICE_URL" -c "SELECT pg_sleep(10)" >/dev/null 2>>"$TMP/out/cancels-$PHASE" &
        pid=$!
        sleep 1
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        sleep 0.7
    done
}

failer() {
    while running; do
        via_sluice -c "SELECT 1/0" >/dev/null 2>>"$TMP/out/errors-$PHASE" || true
        via_sluice -c "SELEC 1" >/dev/null 2>>"$TMP/out/errors-$PHASE" || true
        sleep 0.2
    done
}

leaker() {
    local n=0
    while running; do
        n=$((n + 1))
        {
            echo "BEGIN; SELECT 1;"
            for _ in $(seq 20); do
                running || break
                sleep 1
            done
        } | via_sluice >/dev/null 2>>"$TMP/out/leaker-errors-$PHASE" || true
        echo "$n" >"$TMP/out/leaks-$PHASE"
    done
}

# start_load PHASE: every kind of load, in the background, until stop_load.
start_load() {
    PHASE=$1
    rm -f "$STOP"
    LOAD_PIDS=()
    for w in 1 2 3 4; do
        writer "$w" &
        LOAD_PIDS+=($!)
    done
    churn &
    LOAD_PIDS+=($!)
    canceller &
    LOAD_PIDS+=($!)
    failer &
    LOAD_PIDS+=($!)
    leaker &
    LOAD_PIDS+=($!)
    PIDS_TO_KILL+=("${LOAD_PIDS[@]}")
}
stop_load() {
    touch "$STOP"
    local pid
    for pid in "${LOAD_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
        forget_pid "$pid"
    done
}

# Warm-up: 15 s of the same load, so the pool, the runtime and the allocator have seen it once;
# the start figures are taken after it, once idle servers have closed.
start_load 1
sleep 15
stop_load
sleep 8
START_FDS=$(fd_count)
START_RSS=$(rss_kb)
START_SERVERS=$(server_count)
log "start: sluice $START_FDS open files, RSS $START_RSS KiB; $START_SERVERS server connections"

start_load 2
log "load running for ${DURATION}s (PostgreSQL restarts at $((DURATION / 2))s)"

sleep $((DURATION / 2))
log "restarting PostgreSQL (pg_ctl restart -m fast)"
t0=$(date +%s%N)
as_pg setsid "$PG_BINDIR/pg_ctl" restart -D "$TMP/data" -m fast -w -t 60 -l "$TMP/postgres.log" >/dev/null ||
    die "PostgreSQL did not restart: $(tail -5 "$TMP/postgres.log")"
OUTAGE_MS=$((($(date +%s%N) - t0) / 1000000))
log "PostgreSQL accepts connections again after $OUTAGE_MS ms"
sleep $((DURATION - DURATION / 2))

log "stopping the load"
stop_load
kill -0 "$POOLER_PID" 2>/dev/null || die "sluice exited during the soak: $(tail -5 "$TMP/sluice.log")"

# Settle: idle servers close after server_idle_timeout; clients' sockets are gone.
END_SERVERS=$(server_count)
END_FDS=$(fd_count)
for _ in $(seq 1 60); do
    END_SERVERS=$(server_count)
    END_FDS=$(fd_count)
    [ "$END_SERVERS" -le "$START_SERVERS" ] && [ "$END_FDS" -le "$START_FDS" ] && break
    sleep 1
done
sleep 2
END_RSS=$(rss_kb)

# Every acknowledged commit must be in the table.
cat "$TMP"/out/acks-* 2>/dev/null | grep -E '^[0-9]+$' | sort -u >"$TMP/out/acked" || true
ACKED=$(wc -l <"$TMP/out/acked")
psql_pg -d bench -c "CREATE TABLE acked (id bigint)" -c "\\copy acked FROM '$TMP/out/acked'"
MISSING=$(psql_pg -d bench -c "SELECT count(*) FROM acked LEFT JOIN soak_acks USING (id) WHERE soak_acks.id IS NULL")
ROWS=$(psql_pg -d bench -c "SELECT count(*) FROM soak_acks")

# Lines matching $1 in the files that follow.
count_matching() {
    local pattern=$1
    shift
    cat "$@" 2>/dev/null | grep -c -- "$pattern" || true
}
# The figures of the measured phase (2); the acknowledged commits of both phases are checked.
WRITER_ERRORS=$(count_matching 'ERROR\|FATAL\|error\|lost' "$TMP"/out/writer-errors-2-*)
CANCELLED=$(count_matching 'canceling statement due to user request' "$TMP/out/cancels-2")
OTHER_CANCEL_ERRORS=$(grep 'ERROR\|FATAL' "$TMP/out/cancels-2" 2>/dev/null | grep -vc 'canceling statement due to user request' || true)
DIV0=$(count_matching 'division by zero' "$TMP/out/errors-2")
SYNTAX=$(count_matching 'syntax error' "$TMP/out/errors-2")
LEAKS=$(cat "$TMP/out/leaks-2" 2>/dev/null || echo 0)
CHURN_TX=$(cat "$TMP"/out/churn-2-*.log 2>/dev/null | awk '/number of transactions actually processed/ {split($6, a, "/"); s += a[1]} END {print s + 0}')
CHURN_FAILED=$(cat "$TMP"/out/churn-2-*.log 2>/dev/null | awk '/number of failed transactions/ {s += $5} END {print s + 0}')
CHURN_ABORTED=$(cat "$TMP"/out/churn-2-*.log 2>/dev/null | grep -c 'client .* aborted' || true)
RSS_DIFF=$((END_RSS - START_RSS))

cat <<EOF

sluice soak: ${DURATION}s, PostgreSQL restarted once (fast) at $((DURATION / 2))s, outage ${OUTAGE_MS} ms
  writers          $ACKED commits acknowledged, $MISSING missing after the run ($ROWS rows in the table); $WRITER_ERRORS writer errors
  churn (pgbench -C -S, 4 clients)  $CHURN_TX transactions, $CHURN_FAILED failed, $CHURN_ABORTED client aborts
  cancels          $CANCELLED queries cancelled ($OTHER_CANCEL_ERRORS other errors)
  errors           $DIV0 division-by-zero and $SYNTAX syntax errors answered
  leakers          $LEAKS sessions left idle in transaction for 20 s
  open files       $START_FDS at start, $END_FDS at end
  server conns     $START_SERVERS at start, $END_SERVERS at end
  RSS              $START_RSS KiB at start, $END_RSS KiB at end (${RSS_DIFF} KiB)
EOF

if [ "$WRITER_ERRORS" -gt 0 ]; then
    echo "  writer errors (a statement in flight when PostgreSQL went down may fail):"
    cat "$TMP"/out/writer-errors-2-* | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /'
fi

ok=1
[ "$MISSING" -eq 0 ] || { echo "FAIL: $MISSING acknowledged commits missing"; ok=0; }
[ "$ACKED" -gt 0 ] || { echo "FAIL: no commit was acknowledged"; ok=0; }
[ "$END_FDS" -le "$START_FDS" ] || { echo "FAIL: open files $START_FDS -> $END_FDS"; ok=0; }
[ "$END_SERVERS" -le "$START_SERVERS" ] || { echo "FAIL: server connections $START_SERVERS -> $END_SERVERS"; ok=0; }
[ "${RSS_DIFF#-}" -le 10240 ] || { echo "FAIL: RSS moved by ${RSS_DIFF} KiB (more than 10 MB)"; ok=0; }
[ "$CANCELLED" -gt 0 ] || { echo "FAIL: no query was cancelled"; ok=0; }
[ "$ok" = 1 ] && echo "PASS"
[ "$ok" = 1 ]
