#!/usr/bin/env bash
# The pgbench matrix of issue 8, run three ways -- direct to PostgreSQL, through PgBouncer and
# through sluice -- interleaved per row, on a throwaway PostgreSQL (pgbench -i -s 10).
#
#   bench/run.sh                    # every row, BENCH_SECONDS (default 30) seconds each
#   BENCH_SECONDS=10 bench/run.sh   # shorter rows
#   bench/run.sh --quick            # CI smoke run: 2 s per row, fewer rows
#   BENCH_ROWS='^-S c=16$' BENCH_ROUNDS=5 bench/run.sh   # one row, five interleaved rounds
#   bench/ab.sh OLD NEW             # two commits of sluice against PgBouncer (see there)
#
# Prints a markdown table and writes it (plus the raw TSV) to bench/results/. As root it installs
# postgresql, postgresql-contrib (pgbench) and pgbouncer when missing. Exit status: 0 when the
# matrix ran with every direct and sluice row ok (PgBouncer rows that fail, like -M prepared on
# Debian's 1.18, are recorded as FAILED and do not count); non-zero when setup fails, a pooler
# does not start, or a direct or sluice row fails.
#
# Environment: BENCH_SECONDS (row duration), BENCH_JOBS (pgbench -j, default 2),
# BENCH_RESULTS (results directory), KEEP_TMP=1 (keep the temp dir with every log),
# CARGO_TARGET_DIR (where sluice is built), SLUICE_WORKERS (sluice's workers setting, default 0 =
# one per core), BENCH_ROWS (a regex: run only the rows whose name matches), BENCH_ROUNDS
# (repeat the matrix, default 1; with more than one the summary gives medians and spread),
# BENCH_TARGETS (default "direct pgbouncer sluice"; "sluice@NAME" runs the binary in
# $SLUICE_BIN_NAME, with $SLUICE_EXTRA_NAME added to its [pooler] table when set, so several
# builds or settings of sluice take turns in one run), SLUICE_BIN (use this
# binary instead of building), SLUICE_EXTRA (lines added to sluice's [pooler] table, e.g.
# 'max_pool_share = 0.5' to measure fair shares on an uncontended single-application pool).
# Within a round the targets' order rotates, so no build always runs right after PgBouncer or
# right after another build.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUICK=0
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    -h | --help)
        sed -n '2,19p' "$0"
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    SECONDS_PER_ROW=${BENCH_SECONDS:-2}
else
    SECONDS_PER_ROW=${BENCH_SECONDS:-30}
fi
JOBS=${BENCH_JOBS:-2}
RESULTS_DIR=${BENCH_RESULTS:-$REPO_DIR/bench/results}

# Matrix rows: name | clients | pgbench arguments | kind (tx = one login per client; login = -C).
ROWS=(
    "-S c=16|16|-S|tx"
    "-S c=200|200|-S|tx"
    "-S c=1000|1000|-S|tx"
    "-S -M extended c=16|16|-S -M extended|tx"
    "-S -M prepared c=16|16|-S -M prepared|tx"
    "TPC-B c=50|50||tx"
    "-S -C c=16|16|-S -C|login"
)
if [ "$QUICK" = 1 ]; then
    ROWS=(
        "-S c=16|16|-S|tx"
        "-S -M extended c=16|16|-S -M extended|tx"
        "-S -M prepared c=16|16|-S -M prepared|tx"
        "TPC-B c=50|50||tx"
        "-S -C c=16|16|-S -C|login"
    )
fi
if [ -n "${BENCH_ROWS:-}" ]; then
    kept=()
    for spec in "${ROWS[@]}"; do
        [[ ${spec%%|*} =~ $BENCH_ROWS ]] && kept+=("$spec")
    done
    [ "${#kept[@]}" -gt 0 ] || die "BENCH_ROWS='$BENCH_ROWS' matches no row"
    ROWS=("${kept[@]}")
fi
ROUNDS=${BENCH_ROUNDS:-1}
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct pgbouncer sluice}"
for target in "${TARGETS[@]}"; do
    case $target in
    direct | pgbouncer | sluice) ;;
    sluice@*)
        var="SLUICE_BIN_${target#sluice@}"
        [ -x "${!var:-}" ] || die "target $target needs an executable \$$var"
        ;;
    *) die "unknown target $target (direct, pgbouncer, sluice, sluice@NAME)" ;;
    esac
done

raise_nofile
install_traps
ensure_packages
if [ -n "${SLUICE_BIN:-}" ]; then
    [ -x "$SLUICE_BIN" ] || die "SLUICE_BIN=$SLUICE_BIN is not executable"
elif [[ " ${TARGETS[*]} " == *" sluice "* ]]; then
    build_sluice
fi
make_tmp
start_postgres 10
write_pooler_configs scram-sha-256
mkdir -p "$TMP/logs" "$RESULTS_DIR"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$RESULTS_DIR/run-$stamp.tsv"
TABLE="$RESULTS_DIR/run-$stamp.md"
printf 'row\ttarget\tstatus\ttps\tavg_ms\tp99_ms\ttx_window\tcpu_s\twindow_s\tuser_s\tsys_s\tpeak_rss_kb\tkind\tnote\tround\n' >"$RAW"

psql_local() {
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U "$BENCH_USER" -d bench "$@"
}

# run_one ROWNAME CLIENTS "ARGS" KIND TARGET ROUND (TARGET: direct | pgbouncer | sluice |
# sluice@NAME); appends to $RAW.
run_one() {
    local row=$1 clients=$2 args=$3 kind=$4 target=$5 round=$6
    local tag port out prefix samples="-" status=ok note="" rc=0 hwm="-" launch stats jobs
    tag=$(echo "$row-$target-$round" | tr -c 'A-Za-z0-9=\n' '_')
    out="$TMP/logs/$tag.out"
    prefix="$TMP/logs/$tag.txlog"
    if [ "$target" = direct ] && [ "$clients" -gt 280 ]; then
        printf '%s\t%s\tskipped\t-\t-\t-\t-\t-\t-\t-\t-\t-\t%s\t%s\t%s\n' "$row" "$target" "$kind" \
            "more clients than max_connections = 300" "$round" >>"$RAW"
        return 0
    fi
    # TPC-B rows start from the same state: what pgbench's own vacuum step would do.
    if [ -z "$args" ]; then
        psql_local -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
            -c 'TRUNCATE pgbench_history' >/dev/null
    fi
    if [ "$target" = direct ]; then
        port=$PG_PORT
    else
        # A fresh pooler per row, so VmHWM is this row's peak.
        if [[ $target == sluice@* ]]; then
            local var="SLUICE_BIN_${target#sluice@}" extra="SLUICE_EXTRA_${target#sluice@}"
            SLUICE_BIN=${!var}
            SLUICE_CONFIG=$TMP/sluice.toml
            if [ -n "${!extra:-}" ]; then
                SLUICE_CONFIG=$TMP/sluice-${target#sluice@}.toml
                # Lines of the extra replace the generated `workers` line when they set it.
                awk -v extra="${!extra}" '/^workers = / { if (extra !~ /(^|\n)workers *=/) print; print extra; next } { print }' \
                    "$TMP/sluice.toml" >"$SLUICE_CONFIG"
            fi
            start_pooler sluice
            SLUICE_CONFIG=$TMP/sluice.toml
        else
            start_pooler "$target"
        fi
        port=$POOLER_PORT
        samples="$TMP/logs/$tag.samples"
        start_sampler "$POOLER_PID" "$samples" 0.25
    fi
    jobs=$JOBS
    [ "$jobs" -gt "$clients" ] && jobs=$clients
    launch=$(date +%s%N)
    # shellcheck disable=SC2086
    PGPASSWORD=$BENCH_PASSWORD "$PG_BINDIR/pgbench" -n -h 127.0.0.1 -p "$port" -U "$BENCH_USER" \
        -c "$clients" -j "$jobs" -T "$SECONDS_PER_ROW" --log --log-prefix="$prefix" $args bench \
        >"$out" 2>&1 || rc=$?
    if [ "$target" != direct ]; then
        stop_sampler
        if kill -0 "$POOLER_PID" 2>/dev/null; then
            cpu_sample "$POOLER_PID" >>"$samples"
            hwm=$(status_kb "$POOLER_PID" VmHWM)
        else
            status=FAILED
            note="$target exited during the run"
        fi
        stop_pooler
    fi
    if [ "$rc" -ne 0 ]; then
        status=FAILED
        note=$(grep -m1 -iE 'error|fatal|abort' "$out" | cut -c1-110 | tr '\t|' '  ' || true)
        [ -n "$note" ] || note="pgbench exit status $rc"
    fi
    stats=$(python3 "$BENCH_DIR/pgbench_stats.py" "$out" "$prefix" "$launch" "$samples" "$CLK_TCK")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$target" "$status" "$stats" "$hwm" "$kind" \
        "$note" "$round" >>"$RAW"
    rm -f "$prefix".* # per-transaction logs get big; the .out and .samples stay
    log "round $round: $row / $target: $status $(echo "$stats" | cut -f1) tps"
}

log "matrix: ${#ROWS[@]} rows x ${#TARGETS[@]} targets x $ROUNDS rounds, ${SECONDS_PER_ROW}s each, pgbench -j $JOBS"
for round in $(seq 1 "$ROUNDS"); do
    for spec in "${ROWS[@]}"; do
        IFS='|' read -r row clients args kind <<<"$spec"
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            run_one "$row" "$clients" "$args" "$kind" "${TARGETS[$(((i + round - 1) % n))]}" "$round"
        done
    done
done

{
    echo "pgbench ${SECONDS_PER_ROW}s per row, -j $JOBS, pool size 20, transaction mode, SCRAM;" \
        "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, PostgreSQL $("$PG_BINDIR/postgres" --version | awk '{print $3}')," \
        "$("$(pgbouncer_bin)" --version | head -1), sluice $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    if [ "$ROUNDS" = 1 ] && [ -z "${BENCH_TARGETS:-}" ]; then
        python3 "$BENCH_DIR/render_table.py" "$RAW"
    else
        python3 "$BENCH_DIR/rounds_summary.py" "$RAW"
    fi
} >"$TABLE"
cat "$TABLE"
log "results: $TABLE (raw: $RAW)"

# A row of sluice's (or of PostgreSQL's own) that fails means the script or sluice is broken;
# PgBouncer's failures are its own (Debian's 1.18 cannot do -M prepared) and stay in the table.
failed=$(awk -F'\t' '$3 == "FAILED" && $2 != "pgbouncer" { print $1 " / " $2 " (round " $15 ")" }' "$RAW")
if [ -n "$failed" ]; then
    echo "failed rows:" >&2
    echo "$failed" >&2
    exit 1
fi
