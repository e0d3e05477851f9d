#!/usr/bin/env bash
# User-space instructions per transaction in sluice, counted by valgrind (callgrind, no cache
# simulation): a figure that a busy shared machine does not blur, for levers too small for
# bench/run.sh's CPU times to resolve. sluice runs under valgrind (slow, its threads serialised,
# so wake-ups differ from a real run: only the instructions mean something, never the time);
# after a warm-up (the pool's server logins), pgbench -S runs 16 clients x INSN_TX_A, then 16 x
# INSN_TX_B transactions, with counters zeroed before and dumped after each: the difference over
# the difference of transactions leaves the clients' logins out.
#
#   SLUICE_BIN=/tmp/a bench/instructions.sh                   # -S
#   SLUICE_BIN=/tmp/a INSN_PGBENCH='-S -M extended' bench/instructions.sh
#   SLUICE_BIN=/tmp/a INSN_TOP=30 bench/instructions.sh       # and the top functions
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TX_A=${INSN_TX_A:-100}
TX_B=${INSN_TX_B:-600}
read -r -a LOAD <<<"${INSN_PGBENCH:--S}"
command -v valgrind >/dev/null || {
    is_root || die "valgrind not found"
    apt-get install -y -q --no-install-recommends valgrind >/dev/null
}
setup_one_sluice

POOLER_PORT=$SLUICE_PORT
valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out.%p" \
    "$SLUICE_BIN" --allow-root --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
POOLER_PID=$!
PIDS_TO_KILL+=("$POOLER_PID")
for _ in $(seq 1 600); do port_in_use "$POOLER_PORT" && break; sleep 0.1; done
port_in_use "$POOLER_PORT" || die "sluice under valgrind did not start: $(tail -5 "$TMP/sluice.log")"

# Instructions since the last zeroing: dump number $1 (callgrind writes cg.out.PID.N).
total_ir() {
    callgrind_control -d "$POOLER_PID" >/dev/null 2>&1
    local f="$TMP/cg.out.$POOLER_PID.$1"
    for _ in $(seq 1 300); do [ -s "$f" ] && grep -q '^totals:' "$f" && break; sleep 0.1; done
    awk '/^totals:/ {print $2}' "$f"
}
run_pgbench() {
    PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n "${LOAD[@]}" -h 127.0.0.1 -p "$POOLER_PORT" \
        -U "$BENCH_USER" -c 16 -j 2 -t "$1" bench >>"$TMP/pgbench.out" 2>&1 \
        || die "pgbench failed: $(tail -3 "$TMP/pgbench.out")"
}
run_pgbench 20 # warm-up: the pool's server logins happen here
callgrind_control -z "$POOLER_PID" >/dev/null 2>&1
run_pgbench "$TX_A"
a=$(total_ir 1)
callgrind_control -z "$POOLER_PID" >/dev/null 2>&1
run_pgbench "$TX_B"
b=$(total_ir 2)
stop_pooler
awk -v a="$a" -v b="$b" -v ta="$TX_A" -v tb="$TX_B" -v bin="$SLUICE_BIN" -v load="${LOAD[*]}" 'BEGIN {
    printf "== %s, pgbench %s: %.0f instructions per transaction (%d and %d per client: %.0f and %.0f)\n",
        bin, load, (b - a) / (16 * (tb - ta)), ta, tb, a, b }'
if [ -n "${INSN_TOP:-}" ]; then
    echo "== top functions of the second run (callgrind_annotate; divide by $((16 * TX_B)) transactions)"
    callgrind_annotate --threshold=100 --auto=no "$TMP/cg.out.$POOLER_PID.2" 2>/dev/null \
        | sed -n '/file:function/,$p' | awk '{ p = $2; gsub(/[()%]/, "", p); if (p + 0 < 90) print }' \
        | head -"$INSN_TOP"
fi
