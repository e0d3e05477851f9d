#!/usr/bin/env bash
# Try sluice in one command on a fresh Debian/Ubuntu machine: installs PostgreSQL when missing (as
# root), starts a throwaway PostgreSQL in a temp dir with user app / app_pw and database app, builds
# sluice, and runs it in the foreground on 127.0.0.1:6432. Ctrl-C stops sluice and PostgreSQL and
# removes the temp dir.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# shellcheck source=scripts/pg-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg-common.sh"


# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# $1 if free, else the first free port above it.
pick_port() {
    local port=$1
    while port_in_use "$port"; do
        port=$((port + 1))
    done
    echo "$port"
}

if ! bindir=$(pg_bindir); then
    if ! is_root; then
        echo "error: PostgreSQL server binaries (initdb, pg_ctl) not found." >&2
        echo "       Install them first: sudo apt-get install -y postgresql" >&2
        exit 1
    fi
    log "installing PostgreSQL with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql postgresql-client
    # The package may start its own cluster on 5432; this script runs its own, so stop that one.
    service postgresql stop >/dev/null 2>&1 || true
    bindir=$(pg_bindir)
fi
command -v cargo >/dev/null || {
    echo "error: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
}

log "building sluice (release)"
cargo build --release
sluice_bin="${CARGO_TARGET_DIR:-target}/release/sluice"

tmp=$(mktemp -d /tmp/sluice-quickstart.XXXXXX)
chmod 755 "$tmp"
# initdb and postgres refuse to run as root: run them as the postgres user, which owns the dir.
if is_root; then
    id postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    chown postgres:postgres "$tmp"
    as_pg() { runuser -u postgres -- bash -c 'ulimit -n 20000 2>/dev/null || true; exec "$@"' bash "$@"; }
else
    as_pg() { "$@"; }
fi

cleanup() {
    trap - EXIT INT TERM
    if [ -f "$tmp/data/postmaster.pid" ]; then
        log "stopping PostgreSQL"
        as_pg "$bindir/pg_ctl" stop -D "$tmp/data" -m fast -w >/dev/null 2>&1 || true
    fi
    rm -rf -- "$tmp"
    log "cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_port=$(pick_port 5432)
sluice_port=$(pick_port 6432)
[ "$sluice_port" = 6432 ] || log "port 6432 is busy; sluice will listen on $sluice_port"

log "creating a throwaway PostgreSQL in $tmp (port $pg_port)"
as_pg "$bindir/initdb" -D "$tmp/data" -U postgres -E UTF8 --locale=C --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync >/dev/null
cat >>"$tmp/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$tmp'
password_encryption = 'scram-sha-256'
EOF
# setsid: keep PostgreSQL out of the terminal's process group, so Ctrl-C reaches only sluice and
# this script, which then stops PostgreSQL itself.
as_pg setsid -w "$bindir/pg_ctl" start -D "$tmp/data" -l "$tmp/postgres.log" -w >/dev/null
"$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p "$pg_port" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN PASSWORD 'app_pw'" -c "CREATE DATABASE app OWNER app"

# The same keys as pooler.toml.example, cut down to what this setup needs.
cat >"$tmp/pooler.toml" <<EOF
[pooler]
listen_addr = "127.0.0.1"
listen_port = $sluice_port
auth_type = "scram-sha-256"
default_pool_size = 5
admin_users = ["app"]

[databases.app]
host = "127.0.0.1"
port = $pg_port

[users.app]
password = "app_pw"
EOF

echo
echo "PostgreSQL is on 127.0.0.1:$pg_port; sluice config: $tmp/pooler.toml"
echo "Connect through sluice with:"
echo
echo "  psql \"postgresql://app:app_pw@127.0.0.1:$sluice_port/app\""
echo
echo "Press Ctrl-C to stop sluice and PostgreSQL."
echo
# In the foreground: Ctrl-C reaches sluice, which shuts down; then the INT trap runs the cleanup.
# sluice refuses to run as root unless told; this throwaway setup may run as root.
root_flag=()
if is_root; then root_flag=(--allow-root); fi
"$sluice_bin" "${root_flag[@]}" --config "$tmp/pooler.toml"
