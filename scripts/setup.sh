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
