#!/usr/bin/env bash
# The test command (CI runs it through .ci/run): makes sure PostgreSQL's server binaries, psql and
# pgbench are installed (apt, when root), then runs cargo fmt --check, clippy with warnings denied,
# the compatibility suite's virtualenv set-up (tests/compat/setup-venv.sh), and every test, and
# as root the Debian package test (scripts/package-test.sh: a release build, cargo-deb, installed
# if missing, dpkg -i, a query as the sluice user; skipped when arguments select tests), and
# prints a summary. Runs every step even when one fails; exits non-zero if any
# did. Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test harness`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

# shellcheck source=scripts/pg-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg-common.sh"


have_postgres_tools() {
    local bindir
    bindir=$(pg_bindir) || return 1
    [ -x "$bindir/psql" ] && [ -x "$bindir/pgbench" ] && [ -x "$bindir/pg_ctl" ]
}

ensure_postgres() {
    if have_postgres_tools; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: PostgreSQL server binaries (initdb, pg_ctl, postgres), psql and pgbench are needed." >&2
        echo "       Install them as root, e.g.: sudo apt-get install -y postgresql postgresql-contrib" >&2
        echo "       or point SLUICE_PG_BINDIR at a directory holding them (it must also hold psql/pgbench)." >&2
        exit 1
    fi
    log "installing PostgreSQL with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql postgresql-contrib postgresql-client
    # The package starts a system cluster; the tests use their own, so stop it (harmless if absent).
    service postgresql stop >/dev/null 2>&1 || true
    have_postgres_tools || { echo "error: PostgreSQL still not usable after apt-get install" >&2; exit 1; }
}

ensure_exporter() {
    # Debian's prometheus-pgbouncer-exporter is a third-party client of the admin console; the
    # console test uses it when present (and says SKIPPED otherwise).
    if [ -x /usr/bin/prometheus-pgbouncer-exporter ] || [ "$(id -u)" -ne 0 ]; then
        return 0
    fi
    log "installing prometheus-pgbouncer-exporter with apt"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q prometheus-pgbouncer-exporter; then
        if ! { apt-get update -q && apt-get install -y -q prometheus-pgbouncer-exporter; }; then
            log "could not install prometheus-pgbouncer-exporter; its test will be skipped"
            return 0
        fi
    fi
    # The package starts PgBouncer and the exporter as services; the tests start their own.
    service prometheus-pgbouncer-exporter stop >/dev/null 2>&1 || true
    service pgbouncer stop >/dev/null 2>&1 || true
}

ensure_pgbouncer() {
    # tests/convert.rs converts the pgbouncer.ini Debian's pgbouncer package ships.
    if [ -f /etc/pgbouncer/pgbouncer.ini ] || [ "$(id -u)" -ne 0 ]; then
        return 0
    fi
    log "installing pgbouncer with apt (for its shipped pgbouncer.ini)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q pgbouncer; then
        apt-get update -q && apt-get install -y -q pgbouncer
    fi
    # The package starts PgBouncer as a service; the tests start their own poolers.
    service pgbouncer stop >/dev/null 2>&1 || true
}

ensure_postgres_user() {
    # As root the harness runs initdb/postgres as the `postgres` OS user (they refuse root).
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        log "creating the postgres OS user"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin postgres
    fi
}

ensure_cargo_deb() {
    # scripts/package-test.sh packages with cargo-deb; a fresh machine lacks it.
    if [ "$(id -u)" -ne 0 ] || cargo deb --version >/dev/null 2>&1; then
        return 0
    fi
    log "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked || log "could not install cargo-deb; the package test will fail"
}

ensure_rust_components() {
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "adding rustfmt and clippy"
            rustup component add rustfmt clippy
        fi
    fi
}

if [ -z "${SLUICE_PG_BINDIR:-}" ]; then
    ensure_postgres
fi
# Rolling restarts (so_reuseport) need the kernel to move connections queued on a closing
# listener to the other one; without it, tests/rolling_restart.rs can lose a connection that
# lands in the old sluice's queue as it closes (docs/operations.md asks operators for the same).
ensure_migrate_req() {
    local knob=/proc/sys/net/ipv4/tcp_migrate_req
    if [ "$(id -u)" -eq 0 ] && [ -w "$knob" ] && [ "$(cat "$knob")" = 0 ]; then
        log "setting net.ipv4.tcp_migrate_req = 1 (rolling restarts)"
        echo 1 >"$knob" || log "could not set net.ipv4.tcp_migrate_req"
    fi
}

ensure_postgres_user
ensure_migrate_req
ensure_exporter
ensure_pgbouncer
ensure_rust_components
ensure_cargo_deb
log "PostgreSQL binaries: ${SLUICE_PG_BINDIR:-$(pg_bindir)}"

test_log=$(mktemp /tmp/sluice-test-log.XXXXXX)
trap 'rm -f "$test_log"' EXIT

steps=()
failed=0
run_step() {
    local name=$1
    shift
    log "$name: $*"
    local start=$SECONDS
    if "$@"; then
        steps+=("ok      $name ($((SECONDS - start))s)")
    else
        steps+=("FAILED  $name ($((SECONDS - start))s)")
        failed=1
    fi
}

run_tests() {
    # --all-targets covers lib, bins, tests and examples but not doctests, hence the second run.
    cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee -a "$test_log"
    local rc=${PIPESTATUS[0]}
    if [ "$#" -eq 0 ]; then
        cargo test --doc 2>&1 | tee -a "$test_log"
        rc=$((rc | PIPESTATUS[0]))
    fi
    return "$rc"
}

run_release_layout() {
    cargo test --release --lib an_idle_session_task_fits 2>&1 | tee -a "$test_log"
    return "${PIPESTATUS[0]}"
}

run_step "cargo fmt --check" cargo fmt --check
run_step "cargo clippy" cargo clippy --all-targets -- -D warnings
# The compatibility suite's Python clients (tests/compat.rs would also install them on first use).
run_step "compat virtualenv" tests/compat/setup-venv.sh
run_step "cargo test" run_tests "$@"
# Memory layout bounds (an idle session's future) hold in release builds only, where they are
# what ships; debug builds ignore them (issue 17, docs/benchmarks.md).
if [ "$#" -eq 0 ]; then
    run_step "release layout tests" run_release_layout
fi
# The .deb, installed and run (root only: it installs a package and creates a user). Its release
# build is the one bench/run.sh --quick uses next in CI.
if [ "$(id -u)" -eq 0 ] && [ "$#" -eq 0 ]; then
    run_step "package test" scripts/package-test.sh
fi

echo
echo "==================== summary ===================="
printf '%s\n' "${steps[@]}"
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) g += $i
        }
    }
    END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, g }' "$test_log"
# Names of failed tests, from libtest's "failures:" lists (indented names after the header).
awk '/^failures:$/ { in_list = 1; next }
     in_list && /^    [^ ]/ { print "  failed: " $1; next }
     in_list && !/^    / { in_list = 0 }' "$test_log" | sort -u
echo "================================================="
exit "$failed"
