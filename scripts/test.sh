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
# The tests run a daemon built with failpoints (`fail_point!` is empty in
# release builds; tests/it/failpoints.rs crashes members at each).
cargo clippy --all-targets --features failpoints -- -D warnings
cargo test --features failpoints
# The timing test that needs the machine to itself (a million keys on four
# members), after the rest. (The other ignored tests are soaks run by hand:
# see the README.)
cargo test --features failpoints --test it -- --ignored --exact cluster::whole_state_work_at_a_million_keys_leaves_puts_flowing
# The shipped alert rules (promtool) and dashboard.
deploy/prometheus/check.sh
deploy/grafana/check.sh
