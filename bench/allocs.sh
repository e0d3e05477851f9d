#!/usr/bin/env bash
# Heap calls per transaction in sluice: uprobes (perf probe) on jemalloc's entry points in the
# sluice binary, counted with perf stat while pgbench runs a fixed number of transactions (16
# clients x ALLOCS_TX, default 2000 each). Counts include the 16 logins and pgbench's setup
# queries (negligible against 32,000 transactions). Needs perf and root.
#
#   SLUICE_BIN=/tmp/sluice-old bench/allocs.sh             # -S (simple protocol)
#   ALLOCS_PGBENCH='-S -M extended' bench/allocs.sh        # another pgbench load
#   ALLOCS_CALLERS=1 bench/allocs.sh   # also where the allocations come from (perf record with
#                                      # DWARF call graphs on malloc and realloc; a short run)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PER_CLIENT=${ALLOCS_TX:-2000}
read -r -a LOAD <<<"${ALLOCS_PGBENCH:--S}"
is_root || die "uprobes need root"
command -v perf >/dev/null || apt-get install -y -q --no-install-recommends linux-perf >/dev/null
setup_one_sluice

# Every jemalloc entry point the binary has (Rust's allocator calls malloc/mallocx, sdallocx,
# rallocx/realloc; C code malloc/calloc/free).
events=()
for sym in malloc mallocx calloc realloc rallocx sdallocx free; do
    if perf probe -q -x "$SLUICE_BIN" --add "sluiceheap:$sym=_rjem_$sym" 2>/dev/null; then
        events+=(-e "sluiceheap:$sym")
    fi
done
[ "${#events[@]}" -gt 0 ] || die "no jemalloc symbols found in $SLUICE_BIN"
remove_probes() { perf probe -q -d 'sluiceheap:*' >/dev/null 2>&1 || true; }
trap 'remove_probes; cleanup' EXIT

start_pooler sluice
total=$((16 * PER_CLIENT))
perf stat -x, "${events[@]}" -p "$POOLER_PID" -o "$TMP/perf-stat.csv" &
stat_pid=$!
PIDS_TO_KILL+=("$stat_pid")
sleep 1
PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n "${LOAD[@]}" -h 127.0.0.1 -p "$POOLER_PORT" \
    -U "$BENCH_USER" -c 16 -j 2 -t "$PER_CLIENT" bench >"$TMP/pgbench.out" 2>&1 \
    || die "pgbench failed: $(tail -3 "$TMP/pgbench.out")"
kill -INT "$stat_pid"
wait "$stat_pid" || true
forget_pid "$stat_pid"
stop_pooler
echo "== sluice ($SLUICE_BIN): heap calls per transaction, pgbench ${LOAD[*]} ($total transactions)"
awk -F, -v n="$total" '$1 ~ /^[0-9]+$/ { split($3, e, ":"); printf "%-16s %8.2f\n", e[2], $1 / n }' \
    "$TMP/perf-stat.csv"

[ -n "${ALLOCS_CALLERS:-}" ] || exit 0
start_pooler sluice
perf record -q --call-graph dwarf,8192 -e sluiceheap:malloc -e sluiceheap:realloc -p "$POOLER_PID" \
    -o "$TMP/perf.data" 2>"$TMP/perf-record.log" &
rec_pid=$!
PIDS_TO_KILL+=("$rec_pid")
sleep 1
PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n "${LOAD[@]}" -h 127.0.0.1 -p "$POOLER_PORT" \
    -U "$BENCH_USER" -c 16 -j 2 -t 200 bench >"$TMP/pgbench.out" 2>&1 \
    || die "pgbench failed: $(tail -3 "$TMP/pgbench.out")"
kill -INT "$rec_pid"
wait "$rec_pid" || true
forget_pid "$rec_pid"
stop_pooler
echo "== where they come from (callers, by share of the calls)"
perf report -i "$TMP/perf.data" --stdio --no-children -G --percent-limit 2 2>/dev/null \
    | grep -v '^$' | grep -v '^#' | head -${ALLOCS_LINES:-150}
