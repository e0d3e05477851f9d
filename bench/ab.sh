#!/usr/bin/env bash
# A/B of two commits of sluice, both against PgBouncer in the same run: builds each commit
# (release) in a throwaway worktree, then runs bench/run.sh with the targets
# "pgbouncer sluice@A sluice@B", interleaved per row and round, and prints medians and spread.
#
#   bench/ab.sh OLD NEW                              # '-S c=16', 5 rounds of 20 s
#   AB_ROWS='^-S c=16$|extended' AB_ROUNDS=7 BENCH_SECONDS=30 bench/ab.sh 3f30df9 HEAD
#
# OLD and NEW are anything git rev-parse takes ("WORKTREE" means the working tree as it is).
# Environment: AB_ROWS (regex of row names, default '^-S c=16$'), AB_ROUNDS (default 5),
# BENCH_SECONDS (default 20), and what bench/run.sh takes.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 2 ] || { sed -n '2,12p' "$0"; exit 2; }

WORK=$(mktemp -d /tmp/sluice-ab.XXXXXX)
trap 'git -C "$REPO_DIR" worktree prune; rm -rf "$WORK"' EXIT

# build LABEL REV: the release binary of REV, copied to $WORK/sluice-LABEL. The worktree shares
# the repository's target dir, so only the sluice crate itself is compiled per commit.
build() {
    local label=$1 rev=$2 src
    if [ "$rev" = WORKTREE ]; then
        src=$REPO_DIR
    else
        src=$WORK/src-$label
        git -C "$REPO_DIR" worktree add --quiet --detach "$src" "$rev"
    fi
    echo "==> building $label = $rev ($(git -C "$src" rev-parse --short HEAD))" >&2
    (cd "$src" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target} cargo build --release --quiet)
    cp "${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/sluice" "$WORK/sluice-$label"
    [ "$rev" = WORKTREE ] || git -C "$REPO_DIR" worktree remove --force "$src"
}

build A "$1"
build B "$2"
echo "==> A = $1, B = $2" >&2
SLUICE_BIN_A=$WORK/sluice-A SLUICE_BIN_B=$WORK/sluice-B \
    BENCH_TARGETS="pgbouncer sluice@A sluice@B" BENCH_ROWS=${AB_ROWS:-'^-S c=16$'} \
    BENCH_ROUNDS=${AB_ROUNDS:-5} BENCH_SECONDS=${BENCH_SECONDS:-20} \
    "$REPO_DIR/bench/run.sh"
echo "A = $1 ($(git -C "$REPO_DIR" rev-parse --short "$1" 2>/dev/null || echo worktree)), B = $2 ($(git -C "$REPO_DIR" rev-parse --short "$2" 2>/dev/null || echo worktree))"
