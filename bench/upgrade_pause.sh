#!/usr/bin/env bash
# The pause clients see around a zero-drop upgrade (issue 20, docs/upgrades.md): sluice holds N
# idle clients (bench/idle_clients.py) while a probe of 20 clients runs `SELECT 1` in a loop
# (bench/upgrade_probe.py); SIGUSR2 makes the same binary take over. Reported: the probe's
# latency p50/p99/max before the upgrade and from SIGUSR2 until the old process has exited,
# the hand-over time (the old process's own figure), and the probe's errors (must be 0).
#
#   bench/upgrade_pause.sh            # N = 1000 and N = 10000
#   bench/upgrade_pause.sh --quick    # N = 1000 only
#   IDLE_CLIENTS="500 2000" bench/upgrade_pause.sh
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES=${IDLE_CLIENTS:-1000 10000}
for arg in "$@"; do
    case $arg in
    --quick) SIZES=${IDLE_CLIENTS:-1000} ;;
    -h | --help)
        sed -n '2,11p' "$0"
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done
PROBE_CLIENTS=20
PROBE_SECONDS=12
UPGRADE_AT=4

raise_nofile
install_traps
ensure_packages
build_sluice
make_tmp
start_postgres 0
SLUICE_EXTRA="pidfile = \"$TMP/sluice.pid\"
upgrade_timeout = \"30s\"
log_connections = false
log_disconnections = false" write_pooler_configs trust
# The upgrade's own lines (hand-over time, clients handed over) are at info.
export SLUICE_LOG=info

ROWS=()
measure() {
    local n=$1 idle_pid probe_pid old new signalled gone i
    start_pooler sluice
    old=$POOLER_PID
    python3 "$BENCH_DIR/idle_clients.py" 127.0.0.1 "$POOLER_PORT" "$BENCH_USER" bench "$n" \
        >"$TMP/idle-$n.out" 2>&1 &
    idle_pid=$!
    PIDS_TO_KILL+=("$idle_pid")
    for i in $(seq 1 1200); do
        grep -q '^ready' "$TMP/idle-$n.out" 2>/dev/null && break
        kill -0 "$idle_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready' "$TMP/idle-$n.out" || die "$n idle clients did not log in: $(tail -c 300 "$TMP/idle-$n.out")"
    sleep 2
    python3 "$BENCH_DIR/upgrade_probe.py" 127.0.0.1 "$POOLER_PORT" "$BENCH_USER" bench \
        "$PROBE_CLIENTS" "$PROBE_SECONDS" "$TMP/probe-$n.txt" >"$TMP/probe-$n.out" 2>&1 &
    probe_pid=$!
    PIDS_TO_KILL+=("$probe_pid")
    sleep "$UPGRADE_AT"
    signalled=$(date +%s.%N)
    kill -USR2 "$old"
    for i in $(seq 1 1200); do
        kill -0 "$old" 2>/dev/null || break
        sleep 0.02
    done
    wait "$old" 2>/dev/null || true
    forget_pid "$old"
    gone=$(date +%s.%N)
    kill -0 "$old" 2>/dev/null && die "the old process did not exit: $(tail -5 "$TMP/sluice.log")"
    new=$(cat "$TMP/sluice.pid")
    PIDS_TO_KILL+=("$new")
    wait "$probe_pid" || true
    forget_pid "$probe_pid"
    grep -q 'errors=0' "$TMP/probe-$n.out" || die "probe failed: $(cat "$TMP/probe-$n.out")"
    # The idle clients are still connected (to the new process): each still answers.
    kill -0 "$idle_pid" || die "the idle clients' process died"
    local handed seconds
    handed=$(grep -o 'handed_over=[0-9]*' "$TMP/sluice.log" | tail -1 | cut -d= -f2 || true)
    seconds=$(grep 'upgrade: done; this process exits' "$TMP/sluice.log" | tail -1 | grep -o 'seconds=[0-9.]*' | cut -d= -f2 || true)
    [ -n "$handed" ] && [ -n "$seconds" ] || die "no hand-over figures in the log: $(tail -5 "$TMP/sluice.log")"
    ROWS+=("$(python3 - "$TMP/probe-$n.txt" "$signalled" "$gone" "$n" "$handed" "$seconds" "$(grep -o 'requests=[0-9]*' "$TMP/probe-$n.out")" <<'PY'
import sys
path, t0, t1, n, handed, seconds, requests = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]), sys.argv[7]
rows = [tuple(map(float, l.split())) for l in open(path)]
def stats(sel):
    lat = sorted(l for s, l in rows if sel(s, l))
    if not lat:
        return "-", "-", "-"
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    return "%.2f" % q(0.5), "%.2f" % q(0.99), "%.2f" % (lat[-1] * 1000)
# A request overlaps the hand-over if it ended after SIGUSR2 and started before the old process exited.
before = stats(lambda s, l: s + l < t0)
during = stats(lambda s, l: s + l >= t0 and s <= t1)
print("| %s | %s | %.3f | %.2f | %s / %s / %s | %s / %s / %s | %s, 0 errors |" % (
    n, handed, seconds, (t1 - t0), *before, *during, requests.split("=")[1]))
PY
)")
    log "N=$n: ${ROWS[-1]}"
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    forget_pid "$idle_pid"
    POOLER_PID=$new
    kill -TERM "$new" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$new" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$new" 2>/dev/null || true
    forget_pid "$new"
    rm -f "$TMP/sluice.pid"
}

for n in $SIZES; do
    measure "$n"
done

echo
echo "Upgrade pause: N idle clients plus a probe of $PROBE_CLIENTS clients running SELECT 1 in a loop;"
echo "SIGUSR2 at ${UPGRADE_AT}s. Latency in ms (p50 / p99 / max); 'during' = requests that overlap"
echo "SIGUSR2 .. old process gone."
echo
echo "| idle clients | handed over | hand-over (s, old process) | SIGUSR2 to old exit (s) | before p50/p99/max | during p50/p99/max | probe requests |"
echo "|---:|---:|---:|---:|---|---|---|"
for r in "${ROWS[@]}"; do echo "$r"; done
