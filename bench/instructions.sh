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
#   INSN_POOLER=pgbouncer bench/instructions.sh               # PgBouncer counted the same way
#   INSN_KEEP=/tmp/cg bench/instructions.sh                   # keep both runs' callgrind
#                                                             # files there (callgrind_annotate
#                                                             # --tree=caller reads callers)
#   INSN_WARMUP=100 bench/instructions.sh                     # transactions per client before
#                                                             # counting (default 20): more when
#                                                             # the pool still grows in the counted
#                                                             # runs (server logins: sasl::hi in
#                                                             # the top functions)
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
POOLER=${INSN_POOLER:-sluice}
[ "$POOLER" = pgbouncer ] && SLUICE_BIN=${SLUICE_BIN:-/bin/true} # no sluice build for PgBouncer
setup_one_sluice
# INSN_AUTH=trust: clients log in without SCRAM (the logins are left out of the count either way).
[ "${INSN_AUTH:-scram-sha-256}" = scram-sha-256 ] || write_pooler_configs "$INSN_AUTH"

# start_counted: the pooler under callgrind; sets POOLER_PID.
start_counted() {
    case $POOLER in
    sluice)
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out.%p" \
            "$SLUICE_BIN" --allow-root --config "$TMP/sluice.toml" >"$TMP/sluice.log" 2>&1 &
        ;;
    pgbouncer)
        # As in lib.sh's start_pooler: setpriv execs in place, so $! is valgrind (then PgBouncer),
        # and PgBouncer refuses root. $TMP belongs to that user when root.
        : >"$TMP/pgb/pgbouncer.log"
        is_root && chown postgres:postgres "$TMP/pgb/pgbouncer.log"
        local as=()
        is_root && as=(setpriv --reuid=postgres --regid=postgres --init-groups)
        "${as[@]}" valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out.%p" \
            "$(pgbouncer_bin)" "$TMP/pgb/pgbouncer.ini" >"$TMP/sluice.log" 2>&1 &
        ;;
    *) die "INSN_POOLER is sluice or pgbouncer, not $POOLER" ;;
    esac
    POOLER_PID=$!
    PIDS_TO_KILL+=("$POOLER_PID")
    for _ in $(seq 1 600); do port_in_use "$POOLER_PORT" && break; sleep 0.1; done
    port_in_use "$POOLER_PORT" || die "$POOLER under valgrind did not start: $(tail -5 "$TMP/sluice.log")"
}

# Instructions since the last zeroing: dump number $1 (callgrind writes cg.out.PID.N).
total_ir() {
    "${CTL[@]}" callgrind_control -d "$POOLER_PID" >/dev/null 2>&1
    local f="$TMP/cg.out.$POOLER_PID.$1"
    for _ in $(seq 1 300); do [ -s "$f" ] && grep -q '^totals:' "$f" && break; sleep 0.1; done
    awk '/^totals:/ {print $2}' "$f"
}
run_pgbench() {
    PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n "${LOAD[@]}" -h 127.0.0.1 -p "$POOLER_PORT" \
        -U "$BENCH_USER" -c 16 -j 2 -t "$1" bench >>"$TMP/pgbench.out" 2>&1 \
        || die "pgbench failed: $(tail -3 "$TMP/pgbench.out")"
}
# callgrind_control finds the process through vgdb's FIFOs, named after the user it runs as.
CTL=()
case $POOLER in
sluice)
    POOLER_PORT=$SLUICE_PORT
    LABEL=$SLUICE_BIN
    ;;
pgbouncer)
    POOLER_PORT=$PGB_PORT
    LABEL="pgbouncer $("$(pgbouncer_bin)" --version 2>/dev/null | head -1)"
    is_root && CTL=(setpriv --reuid=postgres --regid=postgres --init-groups)
    ;;
esac
start_counted
run_pgbench "${INSN_WARMUP:-20}" # warm-up: the pool's server logins happen here
"${CTL[@]}" callgrind_control -z "$POOLER_PID" >/dev/null 2>&1
run_pgbench "$TX_A"
a=$(total_ir 1)
"${CTL[@]}" callgrind_control -z "$POOLER_PID" >/dev/null 2>&1
run_pgbench "$TX_B"
b=$(total_ir 2)
stop_pooler
KEPT=$TMP/cg.out.$POOLER_PID.2
if [ -n "${INSN_KEEP:-}" ]; then
    mkdir -p "$INSN_KEEP"
    cp "$TMP/cg.out.$POOLER_PID.1" "$KEPT" "$INSN_KEEP/"
    echo "== kept $INSN_KEEP/cg.out.$POOLER_PID.1 and .2"
fi
awk -v a="$a" -v b="$b" -v ta="$TX_A" -v tb="$TX_B" -v bin="$LABEL" -v load="${LOAD[*]}" 'BEGIN {
    printf "== %s, pgbench %s: %.0f instructions per transaction (%d and %d per client: %.0f and %.0f)\n",
        bin, load, (b - a) / (16 * (tb - ta)), ta, tb, a, b }'
if [ -n "${INSN_TOP:-}" ]; then
    echo "== top functions of the second run (callgrind_annotate; divide by $((16 * TX_B)) transactions)"
    callgrind_annotate --threshold=100 --auto=no "$KEPT" 2>/dev/null \
        | sed -n '/file:function/,$p' | awk '{ p = $2; gsub(/[()%]/, "", p); if (p + 0 < 90) print }' \
        | head -"$INSN_TOP"
fi
