#!/usr/bin/env bash
# Scale test (issue 8): 10,000 concurrent pgbench clients running -S transactions on a pool of 20
# in transaction mode, through sluice (and PgBouncer with --pgbouncer). Checks that pgbench
# reports no errors and that the pooler's RSS does not grow over the run (sampled every 2 s).
#
#   bench/scale.sh                   # 10000 clients, 120 s, sluice
#   bench/scale.sh --pgbouncer       # the same through PgBouncer too, for comparison
#   bench/scale.sh --quick           # 1000 clients, 5 s
#   SCALE_CLIENTS=5000 SCALE_SECONDS=60 bench/scale.sh
#
# Recipe for pgbench at 10,000 clients: the open-files limit raised to 20000 in this shell (pgbench
# needs one descriptor per client and uses poll(), so no FD_SETSIZE cap), -j 2 threads, and the
# poolers with max_client_conn = 12000 and their own raised limit. Clients log in with trust
# auth: 10,000 SCRAM logins would cost pgbench (libpq runs PBKDF2 per login) tens of CPU seconds
# on a small machine before the run starts; login cost is run.sh's -C row.
# RSS is sampled every 2 s (0.5 s for runs under 30 s); the series goes to bench/results/scale-<time>-<pooler>.rss
# ("seconds since launch" and "RSS KiB"). Growth is judged after warm-up: from the sample at a
# quarter of the run (every client has run transactions by then) to the last one; "no growth"
# means the last sample is within 5% of that one. The first sample after every client connected
# (pgbench's "initial connection time") is printed too, so warm-up growth stays visible.
# Exit status 1 when pgbench reports errors, RSS grows, or a pooler fails.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${SCALE_CLIENTS:-10000}
DURATION=${SCALE_SECONDS:-120}
TARGETS=(sluice)
for arg in "$@"; do
    case $arg in
    --quick)
        CLIENTS=${SCALE_CLIENTS:-1000}
        DURATION=${SCALE_SECONDS:-5}
        ;;
    --pgbouncer) TARGETS=(pgbouncer sluice) ;;
    -h | --help)
        sed -n '2,21p' "$0"
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done
[ "$CLIENTS" -le 9900 ] || [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge $((CLIENTS + 200)) ] \
    || die "$CLIENTS clients need an open-files hard limit above $((CLIENTS + 200))"

raise_nofile
install_traps
ensure_packages
build_sluice
make_tmp
start_postgres 10
write_pooler_configs trust

RESULTS_DIR=${BENCH_RESULTS:-$REPO_DIR/bench/results}
mkdir -p "$RESULTS_DIR"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
fail=0
summary=()
for target in "${TARGETS[@]}"; do
    start_pooler "$target"
    samples="$TMP/scale-$target.samples"
    every=2
    [ "$DURATION" -lt 30 ] && every=0.5
    start_sampler "$POOLER_PID" "$samples" "$every"
    log "$target: pgbench -S -c $CLIENTS -j 2 -T $DURATION"
    launch=$(date +%s%N)
    rc=0
    "$PG_BINDIR/pgbench" -n -S -h 127.0.0.1 -p "$POOLER_PORT" -U "$BENCH_USER" -c "$CLIENTS" -j 2 \
        -T "$DURATION" bench >"$TMP/scale-$target.out" 2>&1 || rc=$?
    stop_sampler
    alive=yes
    if ! kill -0 "$POOLER_PID" 2>/dev/null; then
        st=0
        wait "$POOLER_PID" 2>/dev/null || st=$?
        alive="no (exit status $st)"
        log "$target died during the run, exit status $st (>128: signal $((st - 128)))"
        case $target in
        sluice) tail -5 "$TMP/sluice.log" >&2 || true ;;
        pgbouncer) tail -5 "$TMP/pgb/pgbouncer.log" >&2 || true ;;
        esac
    fi
    hwm=$( [ "$alive" = yes ] && status_kb "$POOLER_PID" VmHWM || echo '-')
    stop_pooler
    out="$TMP/scale-$target.out"
    tps=$(awk '/^tps = / {print int($3)}' "$out")
    lat=$(awk '/^latency average = / {print $4}' "$out")
    conn_ms=$(awk '/^initial connection time = / {print $5}' "$out")
    processed=$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' "$out")
    failed=$(awk -F': ' '/number of failed transactions/ {split($2, a, " "); print a[1]}' "$out")
    errors=$(grep -ciE 'error|fatal|abort' "$out" || true)
    # RSS: first sample after the connection phase, sample at a quarter of the run, last, max.
    rss=$(awk -v start=$((launch + ${conn_ms%.*} * 1000000)) -v q=$((launch + (${conn_ms%.*} + DURATION * 250) * 1000000)) '
        $1 >= start && $3 != "" { if (first == "") first = $3; if ($1 >= q && quarter == "") quarter = $3;
                                  last = $3; if ($3 > max) max = $3; n++ }
        END { printf "%s %s %s %s %d", first, quarter, last, max, n }' "$samples")
    read -r rss_first rss_quarter rss_last rss_max nsamples <<<"$rss"
    verdict=ok
    if [ "$rc" -ne 0 ] || [ "${failed:-0}" != 0 ] || [ "$errors" -ne 0 ] || [ "$alive" != yes ]; then
        verdict="FAILED (pgbench exit $rc, $errors error lines, failed tx ${failed:-?}, pooler alive: $alive)"
        grep -m3 -iE 'error|fatal|abort' "$out" >&2 || true
        fail=1
    elif [ -z "$rss_quarter" ] || [ "$nsamples" -lt 3 ]; then
        verdict="FAILED (too few RSS samples in the steady state; run longer)"
        fail=1
    elif [ "$rss_last" -gt $((rss_quarter + rss_quarter / 20)) ]; then
        verdict="FAILED (RSS grew from $rss_quarter KiB at a quarter of the run to $rss_last KiB)"
        fail=1
    fi
    mib() { awk -v k="${1:-0}" 'BEGIN { printf "%.1f", k / 1024 }'; }
    summary+=("| $target | $CLIENTS | $DURATION | ${processed:-?} | ${failed:-0} | ${tps:-?} | ${lat:-?} | ${conn_ms:-?} | $(mib "$rss_first") | $(mib "$rss_quarter") | $(mib "$rss_last") | $(mib "$rss_max") | $verdict |")
    awk -v l="$launch" '$3 != "" {printf "%.1f %s\n", ($1 - l) / 1e9, $3}' "$samples" \
        >"$RESULTS_DIR/scale-$stamp-$target.rss"
done

echo
echo "Scale: pgbench -S -c $CLIENTS -j 2 -T $DURATION, pool size 20, transaction mode, trust auth."
echo "RSS in MiB: first sample after all clients connected, at a quarter of the run, last, maximum."
echo
echo "| pooler | clients | seconds | transactions | failed | TPS | avg latency ms | connect phase ms | RSS first | RSS at 1/4 | RSS last | RSS max | verdict |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${summary[@]}"
exit "$fail"
