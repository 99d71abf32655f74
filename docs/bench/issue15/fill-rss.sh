#!/usr/bin/env bash
# Issue 15, item 5: RSS while loading a million keys (256-byte values, 50
# clients, one member), etcd 3.4 and MetaStore (memory, rocksdb) one after the
# other on the same machine, each with default flags and a fresh data dir.
# A sampler reads VmRSS every 200 ms; rss-<server>.csv holds the series,
# fill-rss.txt the peak, the RSS after the load and their ratio.
# Usage: docs/bench/issue15/fill-rss.sh [KEYS] [SERVERS...]
# (servers: etcd, memory, rocksdb). METASTORE_BIN and LOADGEN as in loadgen.
set -u
cd "$(dirname "$0")/../../.."
out=docs/bench/issue15
keys=${1:-1000000}
shift || true
servers=${*:-etcd memory rocksdb}
bin=${METASTORE_BIN:-${CARGO_TARGET_DIR:-target}/release/metastore}
loadgen=${LOADGEN:-cargo bench --bench loadgen --}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/ {print $2}' /proc/"$1"/status 2>/dev/null; }
for server in $servers; do
    dir=$(mktemp -d /tmp/fill-rss-XXXXXX)
    cp=$(port)
    pp=$(port)
    case $server in
        etcd) cmd=(etcd) ;;
        *) cmd=("$bin" --engine "$server") ;;
    esac
    "${cmd[@]}" --name m --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "m=http://127.0.0.1:$pp" >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$cp" endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
    csv="$out/rss-$server.csv"
    echo "t_s,rss_kib" >"$csv"
    start=$(date +%s.%N)
    (while kill -0 "$pid" 2>/dev/null; do
        echo "$(echo "$(date +%s.%N) - $start" | bc),$(rss "$pid")" >>"$csv"
        sleep 0.2
    done) &
    sampler=$!
    $loadgen --endpoints "127.0.0.1:$cp" --server-pid "$pid" --workload put --clients 50 \
        --total "$keys" --key-size 16 --value-size 256 --label "$server" >"$out/fill-$server.txt" 2>&1
    loaded=$(date +%s.%N)
    sleep 10 # what the load left behind settles (snapshots finish)
    after=$(rss "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null
    kill "$sampler" 2>/dev/null
    peak=$(tail -n +2 "$csv" | cut -d, -f2 | sort -n | tail -1)
    secs=$(echo "$loaded - $start" | bc)
    line="$server keys=$keys load_s=$secs peak_kib=$peak after_kib=$after peak/after=$(echo "scale=2; $peak / $after" | bc)"
    echo "$line" | tee -a "$out/fill-rss.txt"
    rm -rf "$dir"
done
