# Sourced by run.sh and test.sh: compile RocksDB's C++ once per machine and
# version, and link every build (release, clippy, tests, benches) against
# that one static library.
#
# Without this, librocksdb-sys compiles RocksDB inside each build whose
# dependency features differ (the release daemon, `clippy --all-targets`,
# `cargo test`): three ~15-minute C++ builds on 2 cores before a cold
# `run.sh` + `test.sh` is through. With it: one, kept in
# $HOME/.cache/metastore-rocksdb/<version>/ (outside the checkout, so fresh
# clones reuse it). Set METASTORE_ROCKSDB_CACHE to keep it elsewhere.

rocksdb_version=$(grep -A1 '^name = "librocksdb-sys"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if [ -z "$rocksdb_version" ]; then
  echo "rocksdb.sh: librocksdb-sys not found in Cargo.lock" >&2
  exit 1
fi
rocksdb_dir="${METASTORE_ROCKSDB_CACHE:-$HOME/.cache/metastore-rocksdb}/$rocksdb_version"
if [ ! -f "$rocksdb_dir/librocksdb.a" ]; then
  echo "rocksdb.sh: compiling RocksDB $rocksdb_version once into $rocksdb_dir (C++; about 15 minutes on 2 cores)"
  started=$(date +%s)
  (unset ROCKSDB_LIB_DIR ROCKSDB_STATIC; cargo build --release -p librocksdb-sys)
  built=$(ls -t "$CARGO_TARGET_DIR"/release/build/librocksdb-sys-*/out/librocksdb.a | head -1)
  mkdir -p "$rocksdb_dir"
  # Debug info makes the archive ~1.5 GB and every link slow; symbols stay.
  strip --strip-debug -o "$rocksdb_dir/librocksdb.a.partial" "$built"
  mv "$rocksdb_dir/librocksdb.a.partial" "$rocksdb_dir/librocksdb.a"
  echo "rocksdb.sh: RocksDB ready after $(( $(date +%s) - started )) s"
fi
export ROCKSDB_LIB_DIR="$rocksdb_dir"
export ROCKSDB_STATIC=1
