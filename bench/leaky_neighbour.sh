#!/usr/bin/env bash
# The leaky-neighbour scenario of issue 16 (tests/fair_shares.rs) at full length: on a pool of 4,
# a "leaky" application (4 clients) pins servers idle in transaction while a "healthy" one (20
# concurrent clients) runs short transactions, three ways: no settings (today's behaviour),
# max_pool_share = 0.5, and idle_transaction_reclaim_timeout = 1s. Prints one `figures:` line per
# way: the healthy application's transactions, errors and p99 latency, and what the leaker saw.
#
#   bench/leaky_neighbour.sh              # 20 s per way
#   LEAKY_SECONDS=10 bench/leaky_neighbour.sh
#   LEAKY_PROFILE=release bench/leaky_neighbour.sh   # optimised build (default: the test profile)
#
# Uses the test harness (a throwaway PostgreSQL, sluice in process); needs what `cargo test`
# needs. Exit status: the tests' (their assertions hold at any length).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SLUICE_LEAKY_SECONDS=${LEAKY_SECONDS:-20}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo test ${LEAKY_PROFILE:+--profile "$LEAKY_PROFILE"} --test fair_shares -- --test-threads=1 --nocapture 2>&1 | tee /dev/stderr | grep -o 'figures:.*'
