#!/usr/bin/env bash
# Tests the Debian package on this machine (root only; scripts/test.sh runs it when root, so CI
# does): builds it (scripts/build-deb.sh; --no-build packages the release binary already built),
# installs it with dpkg -i, checks the `sluice` user, the conffiles, the unit and the docs, runs
# `sluice check /etc/sluice/pooler.toml` as the sluice user, then starts the installed binary as
# that user (no systemd here: setpriv, as the unit's User= would) against a throwaway
# PostgreSQL, with the installed pooler.toml pointed at it (only its two ports changed), and runs
# a query through it with psql. Then dpkg -r (conffiles stay) and dpkg --purge (they go).
# Leaves nothing running.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> package-test: %s\n' "$*" >&2; }
fail() {
    printf 'package-test: FAILED: %s\n' "$*" >&2
    exit 1
}

# shellcheck source=scripts/pg-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg-common.sh"

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs a package)"
command -v dpkg >/dev/null || fail "dpkg not found: this test needs Debian or Ubuntu"
bindir=$(pg_bindir psql) || fail "PostgreSQL's server binaries and psql are needed"

if dpkg-query -W -f='${Status}' sluice 2>/dev/null | grep -q "installed"; then
    fail "a sluice package is already installed here; remove it first (dpkg --purge sluice)"
fi

# A `sluice` user left by an earlier run of this test (a purge keeps it, as Debian keeps system
# users) would hide a postinst that no longer creates it: remove it when the package's postinst
# made it (its comment says so) and nothing runs as it. A user made by hand is left alone.
if getent passwd sluice | cut -d: -f5 | grep -qx "sluice PostgreSQL connection pooler" &&
    ! pgrep -u sluice >/dev/null; then
    log "removing the sluice user left by an earlier package install"
    userdel sluice
    getent group sluice >/dev/null && groupdel sluice
fi
had_user=$(getent passwd sluice >/dev/null && echo yes || echo no)

start=$SECONDS
deb=$(scripts/build-deb.sh "$@" | tail -n 1)
log "package built in $((SECONDS - start))s: $deb"

tmp=$(mktemp -d /tmp/sluice-package-test.XXXXXX)
chmod 755 "$tmp"
sluice_pid=
made_run_dir=
installed=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$sluice_pid" ] && kill -0 "$sluice_pid" 2>/dev/null; then
        kill -KILL "$sluice_pid" 2>/dev/null || true
    fi
    if [ -f "$tmp/data/postmaster.pid" ]; then
        runuser -u postgres -- "$bindir/pg_ctl" stop -D "$tmp/data" -m immediate -w >/dev/null 2>&1 || true
    fi
    if [ -n "$installed" ]; then
        dpkg --purge sluice >/dev/null 2>&1 || true
    fi
    if [ -n "$made_run_dir" ]; then
        rm -rf /run/sluice
    fi
    rm -rf -- "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- install -------------------------------------------------------------------------------
log "dpkg -i $deb"
dpkg -i "$deb" >&2
installed=1

getent passwd sluice >/dev/null || fail "no sluice user after install"
[ "$had_user" = yes ] || log "the postinst created the sluice user: $(getent passwd sluice)"
getent group sluice >/dev/null || fail "no sluice group after install"
[ "$(getent passwd sluice | cut -d: -f7)" = /usr/sbin/nologin ] || fail "the sluice user has a login shell"
[ "$(id -u sluice)" -lt 1000 ] || fail "the sluice user is not a system user (uid $(id -u sluice))"
conffiles=$(dpkg-query -W -f='${Conffiles}' sluice)
for f in /etc/sluice/pooler.toml /etc/sluice/userlist.txt; do
    grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile (dpkg says: $conffiles)"
    [ "$(stat -c '%U:%G %a' "$f")" = "root:sluice 640" ] ||
        fail "$f is $(stat -c '%U:%G %a' "$f"), not root:sluice 640"
done
[ "$(stat -c '%U:%G %a' /etc/sluice)" = "root:sluice 750" ] || fail "/etc/sluice is $(stat -c '%U:%G %a' /etc/sluice)"
[ -x /usr/bin/sluice ] || fail "/usr/bin/sluice missing"
unit=$(dpkg -L sluice | grep '/systemd/system/sluice.service$') || fail "no systemd unit in the package"
grep -q '^ExecStart=/usr/bin/sluice --config /etc/sluice/pooler.toml$' "$unit" || fail "$unit does not run /usr/bin/sluice"
grep -q '^User=sluice$' "$unit" || fail "$unit does not run as sluice"
for f in examples/pooler.toml.example README.md docs/configuration.md copyright; do
    [ -f "/usr/share/doc/sluice/$f" ] || fail "/usr/share/doc/sluice/$f missing"
done
/usr/bin/sluice --version >&2 || fail "sluice --version failed"

log "sluice check /etc/sluice/pooler.toml (as sluice)"
runuser -u sluice -- /usr/bin/sluice check /etc/sluice/pooler.toml >&2 ||
    fail "sluice check rejects the installed configuration"

# --- a throwaway PostgreSQL ------------------------------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local port=$1
    while port_in_use "$port"; do port=$((port + 1)); done
    echo "$port"
}
pg_port=$(pick_port $((20000 + RANDOM % 20000)))
chown postgres:postgres "$tmp"
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$bindir/initdb" -D "$tmp/data" -U postgres -E UTF8 --locale=C --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync >/dev/null
cat >>"$tmp/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$tmp'
password_encryption = 'scram-sha-256'
fsync = off
EOF
as_pg "$bindir/pg_ctl" start -D "$tmp/data" -l "$tmp/postgres.log" -w >/dev/null
"$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p "$pg_port" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN PASSWORD 'app_pw'" -c "CREATE DATABASE app OWNER app" >/dev/null

# --- the installed configuration, pointed at it ----------------------------------------------
# The same file, with free ports for sluice and this PostgreSQL instead of 6432 and 5432; the
# user goes in userlist.txt beside it, as an operator would add it.
sluice_port=$(pick_port $((pg_port + 1)))
install -d -m 0750 -o root -g sluice "$tmp/etc"
sed -e "s|^listen_port = 6432$|listen_port = $sluice_port|" \
    -e "s|^port = 5432$|port = $pg_port|" /etc/sluice/pooler.toml >"$tmp/etc/pooler.toml"
grep -q "^listen_port = $sluice_port$" "$tmp/etc/pooler.toml" || fail "pooler.toml has no listen_port = 6432 line to adjust"
grep -q "^port = $pg_port$" "$tmp/etc/pooler.toml" || fail "pooler.toml has no database port = 5432 line to adjust"
changed=$(diff /etc/sluice/pooler.toml "$tmp/etc/pooler.toml" | grep -c '^>' || true)
[ "$changed" = 2 ] || fail "adjusting the ports changed $changed lines of pooler.toml, not 2"
printf '"app" "app_pw"\n' >"$tmp/etc/userlist.txt"
chown root:sluice "$tmp/etc/pooler.toml" "$tmp/etc/userlist.txt"
chmod 0640 "$tmp/etc/pooler.toml" "$tmp/etc/userlist.txt"
# systemd's RuntimeDirectory=sluice would make this for the service.
if [ ! -d /run/sluice ]; then
    install -d -m 0755 -o sluice -g sluice /run/sluice
    made_run_dir=1
fi

log "starting /usr/bin/sluice as the sluice user on 127.0.0.1:$sluice_port"
setpriv --reuid=sluice --regid=sluice --init-groups --inh-caps=-all \
    /usr/bin/sluice --config "$tmp/etc/pooler.toml" >"$tmp/sluice.log" 2>&1 &
sluice_pid=$!
deadline=$((SECONDS + 20))
until port_in_use "$sluice_port"; do
    kill -0 "$sluice_pid" 2>/dev/null || { cat "$tmp/sluice.log" >&2; fail "sluice exited at start"; }
    [ "$SECONDS" -lt "$deadline" ] || { cat "$tmp/sluice.log" >&2; fail "sluice did not listen within 20s"; }
    sleep 0.1
done
[ "$(ps -o user= -p "$sluice_pid" | tr -d ' ')" = sluice ] || fail "sluice does not run as the sluice user"

answer=$(PGPASSWORD=app_pw PGCONNECT_TIMEOUT=10 "$bindir/psql" -X -At -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$sluice_port" -U app -d app \
    -c "SELECT current_user || ' ' || current_database() || ' ' || (40 + 2)") ||
    { cat "$tmp/sluice.log" >&2; fail "the query through sluice failed"; }
[ "$answer" = "app app 42" ] || fail "the query through sluice answered '$answer'"
[ -S "/run/sluice/.s.PGSQL.$sluice_port" ] || fail "no unix socket in /run/sluice"
log "query through the packaged sluice: $answer"

kill -TERM "$sluice_pid"
for _ in $(seq 100); do kill -0 "$sluice_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sluice_pid" 2>/dev/null && fail "sluice did not exit on SIGTERM"
wait "$sluice_pid" 2>/dev/null || true
sluice_pid=

# --- remove, purge ---------------------------------------------------------------------------
dpkg -r sluice >&2
[ ! -e /usr/bin/sluice ] || fail "/usr/bin/sluice still there after dpkg -r"
[ -f /etc/sluice/pooler.toml ] || fail "dpkg -r removed the conffile (only purge should)"
dpkg --purge sluice >&2
installed=
[ ! -e /etc/sluice/pooler.toml ] || fail "/etc/sluice/pooler.toml still there after purge"
[ ! -e /etc/sluice ] || fail "/etc/sluice still there after purge"

log "ok ($((SECONDS - start))s in all)"
