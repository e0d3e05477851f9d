#!/usr/bin/env bash
# Memory a client makes sluice hold, and whether it is given back (issue 14, item 4): RSS of a
# release sluice before, at the peak while CLIENTS clients each hold STATEMENTS named prepared
# statements of about SIZE bytes, and every second for 30 s after they all disconnected.
#
#   bench/prepared_memory.sh                 # 4 clients x 20000 statements x 2048 bytes
#   bench/prepared_memory.sh --defaults      # the same clients under the default limits
#   CLIENTS=2 STATEMENTS=5000 SIZE=4096 bench/prepared_memory.sh
#
# Without --defaults the per-client limits are raised so that every statement is accepted (the
# worst case the limits exist to prevent); with it, max_client_prepared_statements and
# max_client_prepared_bytes keep their defaults and the Parses past them are refused (53400).
# Pass: RSS 30 s after the clients left is within 10 MB (10240 KiB) of the RSS before.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-4}
STATEMENTS=${STATEMENTS:-20000}
SIZE=${SIZE:-2048}
LIMITS="max_client_prepared_statements = $STATEMENTS
max_client_prepared_bytes = $((STATEMENTS * (SIZE + 64)))"
MODE="limits raised to $STATEMENTS statements"
for arg in "$@"; do
    case $arg in
    --defaults)
        LIMITS=""
        MODE="default limits"
        ;;
    -h | --help)
        sed -n '2,14p' "$0"
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done

raise_nofile
install_traps
command -v python3 >/dev/null || die "python3 is needed"
pg_bindir postgres >/dev/null || die "PostgreSQL server binaries not found"
build_sluice
make_tmp
start_postgres 0
write_pooler_configs trust
# The per-client limits go in [pooler] (after its first line).
if [ -n "$LIMITS" ]; then
    printf '%s\n' "$LIMITS" >"$TMP/limits.toml"
    sed -i "/^\[pooler\]/r $TMP/limits.toml" "$TMP/sluice.toml"
fi

start_pooler sluice
sleep 1
BEFORE=$(status_kb "$POOLER_PID" VmRSS)
log "sluice RSS before: $BEFORE KiB ($MODE)"

python3 "$BENCH_DIR/prepared_memory.py" 127.0.0.1 "$POOLER_PORT" "$BENCH_USER" bench \
    "$CLIENTS" "$STATEMENTS" "$SIZE" >"$TMP/clients.out" 2>&1 &
CLIENT_PID=$!
PIDS_TO_KILL+=("$CLIENT_PID")
PEAK=$BEFORE
for _ in $(seq 1 6000); do
    rss=$(status_kb "$POOLER_PID" VmRSS)
    [ "$rss" -gt "$PEAK" ] && PEAK=$rss
    grep -q '^ready' "$TMP/clients.out" 2>/dev/null && break
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    sleep 0.1
done
grep -q '^ready' "$TMP/clients.out" || die "the clients did not finish: $(tail -c 300 "$TMP/clients.out")"
read -r _ PREPARED REFUSED <"$TMP/clients.out"
rss=$(status_kb "$POOLER_PID" VmRSS)
[ "$rss" -gt "$PEAK" ] && PEAK=$rss
log "clients hold $PREPARED statements ($REFUSED refused); sluice RSS peak $PEAK KiB"

kill -TERM "$CLIENT_PID" 2>/dev/null || true
wait "$CLIENT_PID" 2>/dev/null || true
forget_pid "$CLIENT_PID"
LEFT=$(date +%s%N)
BACK_AT=""
AFTER=$PEAK
for s in $(seq 1 30); do
    sleep 1
    AFTER=$(status_kb "$POOLER_PID" VmRSS)
    if [ -z "$BACK_AT" ] && [ $((AFTER - BEFORE)) -le 10240 ]; then
        BACK_AT=$(awk -v a="$LEFT" -v b="$(date +%s%N)" 'BEGIN { printf "%.0f", (b - a) / 1e9 }')
    fi
    log "after $s s: $AFTER KiB"
done
kill -0 "$POOLER_PID" || die "sluice exited"

echo
echo "Prepared-statement memory: $CLIENTS clients x $STATEMENTS statements x ~$SIZE bytes ($MODE);"
echo "$PREPARED statements accepted, $REFUSED refused. RSS from /proc/PID/status VmRSS, release build."
echo
echo "| RSS before (KiB) | RSS peak (KiB) | RSS 30 s after the clients left (KiB) | after - before (KiB) | back within 10 MB after |"
echo "|---:|---:|---:|---:|---:|"
echo "| $BEFORE | $PEAK | $AFTER | $((AFTER - BEFORE)) | ${BACK_AT:-never (30 s)}${BACK_AT:+ s} |"
[ $((AFTER - BEFORE)) -le 10240 ] || { log "FAIL: RSS did not come back within 10 MB"; exit 1; }
