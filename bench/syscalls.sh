#!/usr/bin/env bash
# System calls per transaction, PgBouncer vs sluice: strace -c -f on the pooler while pgbench
# runs a fixed number of -S transactions (16 clients x SYSCALL_TX, default 2000 each). strace
# slows the pooler a lot, so only the counts mean something, not the times. Counts include the
# 16 logins and pgbench's few setup queries (negligible against 32,000 transactions).
#
#   bench/syscalls.sh
#   SLUICE_BIN=/tmp/sluice-old bench/syscalls.sh   # count this binary's instead of building
#
# A second pass without strace counts context switches per transaction (voluntary and not,
# summed over the pooler's threads from /proc/PID/task/*/status, so threads that exit during
# the run are missed, which the poolers' long-lived threads never do).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PER_CLIENT=${SYSCALL_TX:-2000}
command -v strace >/dev/null || {
    is_root || die "strace not found"
    apt-get install -y -q --no-install-recommends strace >/dev/null
}
setup_one_sluice

total=$((16 * PER_CLIENT))
for target in pgbouncer sluice; do
    start_pooler "$target"
    strace -f -c -o "$TMP/strace-$target.txt" -p "$POOLER_PID" 2>/dev/null &
    strace_pid=$!
    PIDS_TO_KILL+=("$strace_pid")
    sleep 1
    PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n -S -h 127.0.0.1 -p "$POOLER_PORT" \
        -U "$BENCH_USER" -c 16 -j 2 -t "$PER_CLIENT" bench >"$TMP/pgbench-$target.out" 2>&1 \
        || die "pgbench through $target failed: $(tail -3 "$TMP/pgbench-$target.out")"
    kill -INT "$strace_pid"
    wait "$strace_pid" || true
    forget_pid "$strace_pid"
    stop_pooler
    echo "== $target: system calls per transaction ($total transactions)"
    awk -v n="$total" '$1 ~ /^[0-9.]+$/ && $4 ~ /^[0-9]+$/ { printf "%-16s %8.2f\n", $NF, $4 / n }' \
        "$TMP/strace-$target.txt"
done

ctxt() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n}'; }
for target in pgbouncer sluice; do
    start_pooler "$target"
    before=$(ctxt "$POOLER_PID")
    PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n -S -h 127.0.0.1 -p "$POOLER_PORT" \
        -U "$BENCH_USER" -c 16 -j 2 -t "$PER_CLIENT" bench >"$TMP/pgbench-$target.out" 2>&1 \
        || die "pgbench through $target failed: $(tail -3 "$TMP/pgbench-$target.out")"
    after=$(ctxt "$POOLER_PID")
    threads=$(ls /proc/"$POOLER_PID"/task | wc -l)
    stop_pooler
    awk -v t="$target" -v a="$after" -v b="$before" -v n="$total" -v th="$threads" \
        'BEGIN { printf "== %s: %.2f context switches per transaction (%d threads)\n", t, (a - b) / n, th }'
done
