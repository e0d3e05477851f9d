#!/usr/bin/env bash
# Creates (or refreshes) the virtualenv the compatibility suite runs in and prints its path.
#
# The venv lives in $SLUICE_COMPAT_VENV, by default ${CARGO_TARGET_DIR:-target}/compat-venv
# (relative to the repository root). requirements.txt is installed into it, and a stamp holding
# the file's hash means a later run reinstalls only when the requirements changed. As root, a
# missing python3 or `python3 -m venv` is installed with apt (Debian's python3-venv). $PYTHON
# picks another interpreter. Safe to run concurrently: a lock file serialises runs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

venv=${SLUICE_COMPAT_VENV:-${CARGO_TARGET_DIR:-target}/compat-venv}
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
requirements="$here/requirements.txt"
python=${PYTHON:-python3}

log() { printf '==> %s\n' "$*" >&2; }

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

want=$(sha256sum "$requirements" | cut -d' ' -f1)
stamp="$venv/.requirements.sha256"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$venv"
    exit 0
fi

have_venv() {
    command -v "$python" >/dev/null 2>&1 &&
        "$python" -c 'import venv, ensurepip' >/dev/null 2>&1
}

if ! have_venv; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: '$python -m venv' is not available; install python3 and python3-venv (Debian)" >&2
        exit 1
    fi
    log "installing python3 and python3-venv with apt"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends python3 python3-venv >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends python3 python3-venv >&2
    fi
    have_venv || { echo "error: '$python -m venv' still unavailable after apt-get install" >&2; exit 1; }
fi

if [ ! -x "$venv/bin/python" ]; then
    log "creating the compatibility suite's virtualenv in $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
fi
log "installing $requirements"
rm -f "$stamp"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
echo "$want" > "$stamp"
echo "$venv"
