#!/usr/bin/env bash
# Where sluice's CPU goes under pgbench -S -c 16: perf record (software cpu-clock event, so it
# also works in VMs without hardware counters) on the sluice process for PROFILE_SECONDS
# (default 10), then the top functions by self time, and the split by DSO (sluice, libc,
# kernel). Needs perf (Debian: linux-perf; installed here when root and missing) and, for kernel
# symbols, root.
#
#   bench/profile.sh                  # flat profile
#   PROFILE_CALLGRAPH=1 bench/profile.sh   # also inclusive (children) times, via DWARF unwinding
#   SLUICE_BIN=/tmp/sluice-old bench/profile.sh   # profile this binary instead of building
#   PROFILE_PGBENCH='-S -M extended' bench/profile.sh   # another pgbench load (default -S)
#
# Writes perf.data and the reports into bench/results/profile-<time>/.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS=${PROFILE_SECONDS:-10}
read -r -a LOAD <<<"${PROFILE_PGBENCH:--S}"
OUT=${BENCH_RESULTS:-$REPO_DIR/bench/results}/profile-$(date -u +%Y%m%dT%H%M%SZ)

if ! command -v perf >/dev/null; then
    is_root || die "perf not found; install linux-perf"
    apt-get install -y -q --no-install-recommends linux-perf >/dev/null
fi
setup_one_sluice
mkdir -p "$OUT"
start_pooler sluice

cg=()
[ -n "${PROFILE_CALLGRAPH:-}" ] && cg=(--call-graph dwarf,16384)
log "perf record on sluice (pid $POOLER_PID) during pgbench ${LOAD[*]} -c 16 -j 2 -T $SECS"
PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n "${LOAD[@]}" -h 127.0.0.1 -p "$POOLER_PORT" \
    -U "$BENCH_USER" -c 16 -j 2 -T $((SECS + 2)) bench >"$OUT/pgbench.out" 2>&1 &
pgbench_pid=$!
PIDS_TO_KILL+=("$pgbench_pid")
sleep 1
perf record -q -e cpu-clock -F 999 "${cg[@]}" -p "$POOLER_PID" -o "$OUT/perf.data" -- sleep "$SECS" \
    2>"$OUT/perf-record.log" || die "perf record failed: $(cat "$OUT/perf-record.log")"
wait "$pgbench_pid" || true
forget_pid "$pgbench_pid"
stop_pooler

perf report -i "$OUT/perf.data" --stdio --no-children --sort dso 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -15 >"$OUT/by-dso.txt" || true
perf report -i "$OUT/perf.data" --stdio --no-children --sort symbol 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40 >"$OUT/top-self.txt" || true
if [ ${#cg[@]} -gt 0 ]; then
    perf report -i "$OUT/perf.data" --stdio --children --sort symbol -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 >"$OUT/top-children.txt" || true
fi
grep -E '^tps' "$OUT/pgbench.out" || true
echo "== by DSO (self)"
cat "$OUT/by-dso.txt"
echo "== top functions (self)"
cat "$OUT/top-self.txt"
[ -f "$OUT/top-children.txt" ] && { echo "== top functions (inclusive)"; cat "$OUT/top-children.txt"; }
log "perf data and reports in $OUT"
