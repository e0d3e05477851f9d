#!/usr/bin/env bash
# Memory cost of idle clients (issue 8): for PgBouncer and for sluice, the pooler's RSS with N
# logged-in idle clients minus its RSS with none, divided by N.
#
#   bench/idle_clients.sh            # N = 10000
#   bench/idle_clients.sh --quick    # N = 1000
#   IDLE_CLIENTS=5000 bench/idle_clients.sh
#
# The clients (bench/idle_clients.py, Python stdlib asyncio) send a startup packet, wait for
# ReadyForQuery and then hold the connection. The poolers run with auth_type = trust for this
# measurement (the cost of a login is run.sh's -C row; this is what an idle client costs). The
# baseline is taken after one login through the pooler, so the pool and its first server
# connection are in both numbers. Each pooler is started fresh for the measurement.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${IDLE_CLIENTS:-10000}
for arg in "$@"; do
    case $arg in
    --quick) N=${IDLE_CLIENTS:-1000} ;;
    -h | --help)
        sed -n '2,13p' "$0"
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done
[ "$N" -le 18000 ] || die "N = $N needs more than the 20000 open files allowed here"

raise_nofile
install_traps
ensure_packages
build_sluice
make_tmp
start_postgres 0
write_pooler_configs trust

declare -A RESULT
measure() {
    local which=$1 base with i client_pid
    start_pooler "$which"
    sleep 1
    base=$(status_kb "$POOLER_PID" VmRSS)
    python3 "$BENCH_DIR/idle_clients.py" 127.0.0.1 "$POOLER_PORT" "$BENCH_USER" bench "$N" \
        >"$TMP/idle-$which.out" 2>&1 &
    client_pid=$!
    PIDS_TO_KILL+=("$client_pid")
    for i in $(seq 1 1200); do
        grep -q '^ready' "$TMP/idle-$which.out" 2>/dev/null && break
        kill -0 "$client_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready' "$TMP/idle-$which.out" || die "$which: $N idle clients did not all log in: $(tail -c 300 "$TMP/idle-$which.out")"
    sleep 2 # let the pooler settle (freed login buffers, allocator)
    with=$(status_kb "$POOLER_PID" VmRSS)
    kill -0 "$POOLER_PID" || die "$which exited"
    RESULT[$which]="$base $with"
    log "$which: RSS $base KiB with no clients, $with KiB with $N idle clients"
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
    forget_pid "$client_pid"
    stop_pooler
}

measure pgbouncer
measure sluice

echo
echo "Idle clients: N = $N logged in (trust) and idle; RSS from /proc/PID/status VmRSS."
echo
echo "| pooler | RSS, no clients (KiB) | RSS, $N idle clients (KiB) | per idle client (KiB) | per idle client (bytes) |"
echo "|---|---:|---:|---:|---:|"
for which in pgbouncer sluice; do
    read -r base with <<<"${RESULT[$which]}"
    awk -v w="$which" -v b="$base" -v a="$with" -v n="$N" \
        'BEGIN { d = (a - b) / n; printf "| %s | %d | %d | %.2f | %.0f |\n", w, b, a, d, d * 1024 }'
done
read -r b1 a1 <<<"${RESULT[pgbouncer]}"
read -r b2 a2 <<<"${RESULT[sluice]}"
awk -v b1="$b1" -v a1="$a1" -v b2="$b2" -v a2="$a2" \
    'BEGIN { if (a1 > b1) printf "\nsluice / PgBouncer per idle client: %.2f\n", (a2 - b2) / (a1 - b1) }'
