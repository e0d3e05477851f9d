# shellcheck shell=bash
# Shared helpers for the bench/ scripts: install what is missing (as root), build sluice, start a
# throwaway PostgreSQL, start/stop PgBouncer and sluice, sample a process's CPU and memory, and
# clean everything up on exit. Sourced, never run. Everything binds to 127.0.0.1.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
BENCH_USER=bench
BENCH_PASSWORD=bench_pw_9f3c
CLK_TCK=$(getconf CLK_TCK)

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }

# Raise the open-files limit as far as allowed (the hard limit here is 20000): pgbench and the
# poolers need one descriptor per client.
raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] && hard=20000
    [ "$hard" -gt 20000 ] && hard=20000
    ulimit -n "$hard" 2>/dev/null || true
}

# shellcheck source=scripts/pg-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/pg-common.sh"


pgbouncer_bin() {
    command -v pgbouncer 2>/dev/null || { [ -x /usr/sbin/pgbouncer ] && echo /usr/sbin/pgbouncer; }
}

# Install PostgreSQL (server, pgbench from contrib), PgBouncer and python3 when missing and root.
ensure_packages() {
    local missing=()
    pg_bindir pgbench >/dev/null || missing+=(postgresql postgresql-contrib postgresql-client)
    pgbouncer_bin >/dev/null || missing+=(pgbouncer)
    command -v python3 >/dev/null || missing+=(python3)
    [ "${#missing[@]}" -eq 0 ] && return 0
    is_root || die "missing: ${missing[*]}; install them first (sudo apt-get install -y ${missing[*]})"
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    # The packages start their own services; these scripts run their own instances.
    service pgbouncer stop >/dev/null 2>&1 || true
    service postgresql stop >/dev/null 2>&1 || true
    pg_bindir pgbench >/dev/null || die "PostgreSQL binaries still not found after install"
    pgbouncer_bin >/dev/null || die "pgbouncer still not found after install"
}

build_sluice() {
    command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs"
    log "building sluice (release)"
    (cd "$REPO_DIR" && cargo build --release --quiet)
    SLUICE_BIN="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/sluice"
    [ -x "$SLUICE_BIN" ] || die "no sluice binary at $SLUICE_BIN"
}

# The setup of the single-pooler tools (profile.sh, syscalls.sh, instructions.sh, allocs.sh):
# limits, traps and packages, the sluice binary ($SLUICE_BIN when given, else a release build),
# a temporary directory, PostgreSQL with the bench tables (scale 10) and the SCRAM configs.
setup_one_sluice() {
    raise_nofile
    install_traps
    ensure_packages
    if [ -n "${SLUICE_BIN:-}" ]; then
        [ -x "$SLUICE_BIN" ] || die "SLUICE_BIN=$SLUICE_BIN is not executable"
    else
        build_sluice
    fi
    make_tmp
    start_postgres 10
    write_pooler_configs scram-sha-256
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local port=$1
    while port_in_use "$port"; do port=$((port + 1)); done
    echo "$port"
}

# Temp dir, owned by the postgres user when root (initdb, postgres and pgbouncer refuse root).
make_tmp() {
    TMP=$(mktemp -d "/tmp/sluice-bench.XXXXXX")
    chmod 755 "$TMP"
    if is_root; then
        id postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin postgres
        chown postgres:postgres "$TMP"
    fi
}

# Run a command as the postgres user (root) or as ourselves; runuser resets the fd limit, so
# raise it inside.
as_pg() {
    if is_root; then
        runuser -u postgres -- bash -c 'ulimit -n 20000 2>/dev/null || true; exec "$@"' bash "$@"
    else
        "$@"
    fi
}

PIDS_TO_KILL=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS_TO_KILL[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS_TO_KILL[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${TMP:-}" ] && [ -f "$TMP/data/postmaster.pid" ]; then
        as_pg "$PG_BINDIR/pg_ctl" stop -D "$TMP/data" -m immediate -w >/dev/null 2>&1 || true
    fi
    if [ -n "${TMP:-}" ]; then
        if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf -- "$TMP"; fi
    fi
    exit "$rc"
}
install_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

forget_pid() {
    local p keep=()
    for p in "${PIDS_TO_KILL[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS_TO_KILL=("${keep[@]}")
}

# Start PostgreSQL in $TMP/data on a free port, create user bench (SCRAM) and database bench.
# $1: pgbench scale (0 = no pgbench tables).
start_postgres() {
    local scale=$1
    PG_BINDIR=$(pg_bindir pgbench)
    PG_PORT=$(pick_port $((15432 + RANDOM % 4000)))
    log "starting PostgreSQL $("$PG_BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
    as_pg "$PG_BINDIR/initdb" -D "$TMP/data" -U postgres -E UTF8 --locale=C --auth-local=trust \
        --auth-host=scram-sha-256 --no-sync >/dev/null
    cat >>"$TMP/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP'
password_encryption = 'scram-sha-256'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
log_min_messages = warning
EOF
    as_pg setsid "$PG_BINDIR/pg_ctl" start -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 >/dev/null \
        || die "PostgreSQL did not start: $(tail -5 "$TMP/postgres.log")"
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD'" \
        -c "CREATE DATABASE bench OWNER $BENCH_USER" >/dev/null
    if [ "$scale" -gt 0 ]; then
        log "pgbench -i -s $scale"
        "$PG_BINDIR/pgbench" -i -q -s "$scale" -h "$TMP" -p "$PG_PORT" -U "$BENCH_USER" bench \
            >"$TMP/pgbench-init.log" 2>&1 || die "pgbench -i failed: $(tail -5 "$TMP/pgbench-init.log")"
    fi
}

# Wait until a login as bench works on 127.0.0.1:$1 (checks process $2 stays alive).
wait_ready() {
    local port=$1 pid=$2 name=$3 i
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        if PGPASSWORD=$BENCH_PASSWORD PGCONNECT_TIMEOUT=2 "$PG_BINDIR/psql" -X -q -At \
            "host=127.0.0.1 port=$port user=$BENCH_USER dbname=bench" -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    log "$name did not accept a login on port $port"
    return 1
}

# Config files. $1 = auth type (scram-sha-256 | trust).
write_pooler_configs() {
    local auth=$1
    PGB_PORT=$(pick_port $((20432 + RANDOM % 4000)))
    SLUICE_PORT=$(pick_port $((PGB_PORT + 1)))
    mkdir -p "$TMP/pgb"
    is_root && chown postgres:postgres "$TMP/pgb"
    printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$TMP/pgb/userlist.txt"
    cat >"$TMP/pgb/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = $auth
auth_file = $TMP/pgb/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 12000
logfile = $TMP/pgb/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    cat >"$TMP/sluice.toml" <<EOF
[pooler]
listen_addr = "127.0.0.1"
listen_port = $SLUICE_PORT
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 12000
auth_type = "$auth"
workers = ${SLUICE_WORKERS:-0}
${SLUICE_EXTRA:-}

[users.$BENCH_USER]
password = "$BENCH_PASSWORD"

[databases.bench]
host = "127.0.0.1"
port = $PG_PORT
pool_size = 20
EOF
}

# start_pooler pgbouncer|sluice: sets POOLER_PID and POOLER_PORT; exits the script if it fails.
start_pooler() {
    local which=$1
    case $which in
    pgbouncer)
        POOLER_PORT=$PGB_PORT
        : >"$TMP/pgb/pgbouncer.log"
        is_root && chown postgres:postgres "$TMP/pgb/pgbouncer.log"
        # setpriv execs in place (unlike runuser, which forks), so $! is PgBouncer itself, and it
        # keeps the raised fd limit. PgBouncer refuses to run as root.
        if is_root; then
            setpriv --reuid=postgres --regid=postgres --init-groups \
                "$(pgbouncer_bin)" "$TMP/pgb/pgbouncer.ini" >"$TMP/pgb/stderr.log" 2>&1 &
        else
            "$(pgbouncer_bin)" "$TMP/pgb/pgbouncer.ini" >"$TMP/pgb/stderr.log" 2>&1 &
        fi
        POOLER_PID=$!
        ;;
    sluice)
        POOLER_PORT=$SLUICE_PORT
        # --allow-root: the benchmark machine runs as root (sluice refuses root otherwise).
        SLUICE_LOG=${SLUICE_LOG:-warn} "$SLUICE_BIN" --allow-root --config "${SLUICE_CONFIG:-$TMP/sluice.toml}" \
            >"$TMP/sluice.log" 2>&1 &
        POOLER_PID=$!
        ;;
    *) die "unknown pooler $which" ;;
    esac
    PIDS_TO_KILL+=("$POOLER_PID")
    if ! wait_ready "$POOLER_PORT" "$POOLER_PID" "$which"; then
        case $which in
        pgbouncer) tail -5 "$TMP/pgb/pgbouncer.log" "$TMP/pgb/stderr.log" >&2 || true ;;
        sluice) tail -5 "$TMP/sluice.log" >&2 || true ;;
        esac
        die "$which failed to start"
    fi
}

stop_pooler() {
    local pid=$POOLER_PID i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# CPU ticks of process $1 (all threads): "utime+stime utime stime".
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat")
    # Fields after "(comm)": state is field 3, so utime (14) and stime (15) are $12 and $13 here.
    echo "${stat##*) }" | awk '{print $12 + $13, $12, $13}'
}
# One sampler line for process $1: "epoch_ns total_ticks rss_kb user_ticks system_ticks".
cpu_sample() {
    local total user system
    read -r total user system <<<"$(cpu_ticks "$1")"
    printf '%s %s %s %s %s\n' "$(date +%s%N)" "$total" "$(status_kb "$1" VmRSS)" "$user" "$system"
}
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# Background sampler: every $3 seconds append a cpu_sample line for pid $1 to file $2.
start_sampler() {
    local pid=$1 out=$2 every=$3
    (
        while [ -r "/proc/$pid/stat" ]; do
            cpu_sample "$pid" >>"$out" 2>/dev/null || true
            sleep "$every"
        done
    ) &
    SAMPLER_PID=$!
    PIDS_TO_KILL+=("$SAMPLER_PID")
}
stop_sampler() {
    kill -TERM "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    forget_pid "$SAMPLER_PID"
}
