#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite: formatting, lints,
# unit tests and the integration tests (which start real daemons on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Outside the checkout, so CI's fresh clones reuse the compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore-target}"
. scripts/rocksdb.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
# Timing tests that need the machine to themselves (a million keys on four
# members), one at a time after the rest.
cargo test --test it -- --ignored --test-threads=1
# The shipped alert rules (promtool) and dashboard.
deploy/prometheus/check.sh
deploy/grafana/check.sh
