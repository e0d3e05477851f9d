#!/usr/bin/env bash
# Memory cost of idle clients (issue 8): for PgBouncer and for sluice, the pooler's RSS with N
# logged-in idle clients minus its RSS with none, divided by N.
#
#   bench/idle_clients.sh            # N = 10000
#   bench/idle_clients.sh --quick    # N = 1000
#   IDLE_CLIENTS=5000 bench/idle_clients.sh
#   SLUICE_BIN_base=/tmp/a SLUICE_BIN_new=/tmp/b IDLE_TARGETS="pgbouncer sluice@base sluice@new" \
#     IDLE_ROUNDS=3 bench/idle_clients.sh     # prebuilt binaries, interleaved rounds
#
# The clients (bench/idle_clients.py, Python stdlib asyncio) send a startup packet, wait for
# ReadyForQuery and then hold the connection. The poolers run with auth_type = trust for this
# measurement (the cost of a login is run.sh's -C row; this is what an idle client costs). The
# baseline is taken after one login through the pooler, so the pool and its first server
# connection are in both numbers. Each pooler is started fresh for the measurement.
# IDLE_TARGETS (default "pgbouncer sluice") lists what is measured, in order; "sluice@NAME" runs
# the binary in $SLUICE_BIN_NAME instead of building this checkout. IDLE_ROUNDS (default 1)
# repeats the list; the summary gives each target's median and range over the rounds.
# IDLE_SETTLE (default 2) is the seconds waited after the last login before RSS is read.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${IDLE_CLIENTS:-10000}
for arg in "$@"; do
    case $arg in
    --quick) N=${IDLE_CLIENTS:-1000} ;;
    -h | --help)
        sed -n '2,19p' "$0"
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done
[ "$N" -le 18000 ] || die "N = $N needs more than the 20000 open files allowed here"

TARGETS=${IDLE_TARGETS:-pgbouncer sluice}
ROUNDS=${IDLE_ROUNDS:-1}
raise_nofile
install_traps
ensure_packages
for t in $TARGETS; do
    case $t in
    pgbouncer) ;;
    sluice)
        [ -n "${SLUICE_BIN:-}" ] || build_sluice
        OWN_SLUICE=$SLUICE_BIN
        ;;
    sluice@*)
        var="SLUICE_BIN_${t#sluice@}"
        [ -x "${!var:-}" ] || die "$t: set $var to a sluice binary"
        ;;
    *) die "unknown target $t (pgbouncer, sluice, sluice@NAME)" ;;
    esac
done
make_tmp
start_postgres 0
write_pooler_configs trust

declare -A RESULT
measure() {
    local target=$1 which=$1 base with i client_pid
    [ "$target" = sluice ] && SLUICE_BIN=$OWN_SLUICE
    if [[ $target == sluice@* ]]; then
        which=sluice
        local var="SLUICE_BIN_${target#sluice@}"
        SLUICE_BIN=${!var}
    fi
    # The previous targets' client ports sit in TIME_WAIT for 60 s; three targets in a row
    # would take more than the 28,232 ephemeral ports and the logins would stall. Wait (at most
    # 70 s) until N ports and a margin are free.
    local ports
    ports=$(awk '{print $2 - $1 + 1}' /proc/sys/net/ipv4/ip_local_port_range)
    for i in $(seq 1 70); do
        [ "$(ss -Htan state time-wait | wc -l)" -lt $((ports - N - 2000)) ] && break
        sleep 1
    done
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
    sleep "${IDLE_SETTLE:-2}" # let the pooler settle (freed login buffers, allocator)
    with=$(status_kb "$POOLER_PID" VmRSS)
    kill -0 "$POOLER_PID" || die "$which exited"
    RESULT[$target]+="$base $with;"
    log "$target: RSS $base KiB with no clients, $with KiB with $N idle clients"
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
    forget_pid "$client_pid"
    stop_pooler
}

for round in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
        log "round $round: $t"
        measure "$t"
    done
done

echo
echo "Idle clients: N = $N logged in (trust) and idle; RSS from /proc/PID/status VmRSS; $ROUNDS round(s)."
echo
echo "| pooler | round | RSS, no clients (KiB) | RSS, $N idle clients (KiB) | per idle client (KiB) | per idle client (bytes) |"
echo "|---|---:|---:|---:|---:|---:|"
for t in $TARGETS; do
    round=0
    IFS=';' read -ra pairs <<<"${RESULT[$t]}"
    for pair in "${pairs[@]}"; do
        round=$((round + 1))
        read -r base with <<<"$pair"
        awk -v w="$t" -v r="$round" -v b="$base" -v a="$with" -v n="$N" \
            'BEGIN { d = (a - b) / n; printf "| %s | %d | %d | %d | %.2f | %.0f |\n", w, r, b, a, d, d * 1024 }'
    done
done
echo
echo "| pooler | rounds | per idle client, median (bytes) | min-max (bytes) |"
echo "|---|---:|---:|---|"
for t in $TARGETS; do
    IFS=';' read -ra pairs <<<"${RESULT[$t]}"
    for pair in "${pairs[@]}"; do
        read -r base with <<<"$pair"
        awk -v b="$base" -v a="$with" -v n="$N" 'BEGIN { printf "%.0f\n", (a - b) / n * 1024 }'
    done | sort -n | awk -v w="$t" '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "| %s | %d | %.0f | %d-%d |\n", w, NR, m, v[1], v[NR] }'
done
