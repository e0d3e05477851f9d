#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed with `cargo install cargo-deb` when
# missing): a release build of sluice, then target/debian/sluice_<version>-1_<arch>.deb, whose
# path is printed last. --no-build packages the release binary already in target/ (CI builds it
# once for both this and the benchmark). Packaging: [package.metadata.deb] in Cargo.toml and
# packaging/ (the unit, the conffiles, the maintainer scripts).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

ensure_cargo_deb() {
    if cargo deb --version >/dev/null 2>&1; then
        return 0
    fi
    log "installing cargo-deb (cargo install cargo-deb --locked; a few minutes)"
    cargo install cargo-deb --locked
}

build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
    esac
done

ensure_cargo_deb
if [ "$build" = 1 ]; then
    log "building sluice (release)"
    cargo build --release --locked
fi
log "packaging with cargo-deb"
# --no-build: cargo-deb would otherwise build again with its own flags.
cargo deb --no-build --output "${CARGO_TARGET_DIR:-target}/debian/" >&2
deb=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/sluice_*.deb | head -n 1)
log "built $deb"
echo "$deb"
