#!/usr/bin/env bash
# CPU time per put of each MetaStore thread (main = API + Raft + apply, wal, ...)
# under the load generator: starts a release daemon on a temp dir, runs 50,000
# puts from 50 clients, reads /proc/<pid>/task/*/stat before and after.
#
#   cargo build --release --bins --benches && scripts/thread-cpu.sh rocksdb
set -euo pipefail
engine=${1:-memory}
port=${2:-23799}
target=${CARGO_TARGET_DIR:-$HOME/.cache/metastore-target}
bin=${BIN:-$target/release/metastore}
loadgen=$(ls -t "$target"/release/deps/loadgen-* | grep -v '\.d$' | head -1)
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" --engine "$engine" --data-dir "$dir/data" \
  --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
  --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((port + 1))" \
  >"$dir/log" 2>&1 &
pid=$!
until curl -s "127.0.0.1:$port/health" | grep -q true; do sleep 0.05; done
ticks() {
  for t in /proc/"$pid"/task/*; do
    echo "$(cat "$t/comm") $(cut -d' ' -f14,15 "$t/stat" | awk '{print $1 + $2}')"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
ticks >"$dir/before"
"$loadgen" --endpoints "127.0.0.1:$port" --workload put --clients 50 --total 50000 | grep throughput
ticks >"$dir/after"
hz=$(getconf CLK_TCK)
join "$dir/before" "$dir/after" | awk -v hz="$hz" '{printf "%-16s %5.1f us/put\n", $1, ($3 - $2) * 1e6 / hz / 50000}'
