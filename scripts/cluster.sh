#!/usr/bin/env bash
# A 3-member MetaStore cluster on this machine (as etcd's Procfile runs one):
#   scripts/cluster.sh start [--engine rocksdb ...]   build (release) if needed, start n1, n2, n3
#   scripts/cluster.sh status                         etcdctl endpoint status --cluster
#   scripts/cluster.sh stop                           stop all three (SIGTERM)
# Clients: 127.0.0.1:2379, :22379, :32379; peers: :2380, :22380, :32380.
# Data and logs under $CLUSTER_DIR (default /tmp/metastore-cluster); extra
# arguments to `start` go to every member. BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CLUSTER_DIR:-/tmp/metastore-cluster}
target=${CARGO_TARGET_DIR:-$HOME/.cache/metastore-target}
bin=${BIN:-$target/release/metastore}
names=(n1 n2 n3)
client=(2379 22379 32379)
peer=(2380 22380 32380)
initial=""
for i in 0 1 2; do
  initial+="${initial:+,}${names[$i]}=http://127.0.0.1:${peer[$i]}"
done
endpoints="127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"

case "${1:-}" in
start)
  shift
  if [ -z "${BIN:-}" ]; then
    ./scripts/setup.sh
    CARGO_TARGET_DIR=$target cargo build --release --bin metastore
  fi
  mkdir -p "$dir"
  for i in 0 1 2; do
    n=${names[$i]}
    if [ -f "$dir/$n.pid" ] && kill -0 "$(cat "$dir/$n.pid")" 2>/dev/null; then
      echo "$n already running (pid $(cat "$dir/$n.pid"))"
      continue
    fi
    "$bin" --name "$n" --data-dir "$dir/$n" \
      --listen-client-urls "http://127.0.0.1:${client[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${client[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --initial-cluster-token metastore-cluster "$@" >"$dir/$n.log" 2>&1 &
    echo $! >"$dir/$n.pid"
    echo "$n started (pid $!), client 127.0.0.1:${client[$i]}, log $dir/$n.log"
  done
  for _ in $(seq 100); do
    if curl -fs "127.0.0.1:${client[0]}/health" | grep -q true; then
      echo "cluster healthy; try: ETCDCTL_API=3 etcdctl --endpoints $endpoints member list -w table"
      exit 0
    fi
    sleep 0.1
  done
  echo "cluster not healthy after 10 s; see $dir/*.log" >&2
  exit 1
  ;;
status)
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status --cluster -w table
  ;;
stop)
  for n in "${names[@]}"; do
    if [ -f "$dir/$n.pid" ]; then
      kill "$(cat "$dir/$n.pid")" 2>/dev/null && echo "$n stopped" || true
      rm -f "$dir/$n.pid"
    fi
  done
  ;;
*)
  echo "usage: $0 start [member flags...] | status | stop" >&2
  exit 2
  ;;
esac
