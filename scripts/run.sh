#!/usr/bin/env bash
# Builds MetaStore (release) and starts a single-node member with config.toml.
# Extra arguments are passed to the daemon, e.g. --data-dir /var/lib/metastore.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore-target}"
. scripts/rocksdb.sh
cargo build --release --bin metastore
exec "$CARGO_TARGET_DIR/release/metastore" --config config.toml "$@"
