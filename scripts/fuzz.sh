#!/usr/bin/env bash
# Runs the property-based fuzz tests (tests/fuzz.rs) for longer than the test suite does:
# FUZZ_CASES cases per property (default 200000; the test suite runs 256). Release build, so
# PBKDF2 and the parsers run at full speed. Extra arguments pick tests by name, e.g.
#   scripts/fuzz.sh scram
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROPTEST_CASES=${FUZZ_CASES:-200000} exec cargo test --release --test fuzz -- --test-threads 2 "$@"
