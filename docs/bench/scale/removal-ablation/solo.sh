#!/bin/bash
# usage: solo.sh BIN OUT : one MetaStore (rocksdb), scale 1M against it
BIN=$1; OUT=$2
D=$(mktemp -d /tmp/solo.XXXX)
$BIN --name solo --data-dir $D --engine rocksdb --listen-client-urls http://127.0.0.1:25379 --listen-peer-urls http://127.0.0.1:25380 --initial-advertise-peer-urls http://127.0.0.1:25380 --initial-cluster solo=http://127.0.0.1:25380 > $D.log 2>&1 &
PID=$!
sleep 2
$HOME/.cache/metastore-target/release/deps/loadgen-eb4e83ac82a7868f --bench --endpoints 127.0.0.1:25379 --server-pid $PID --workload scale --keys 1000000 --clients 50 --scale-lists 0 > $OUT 2>&1
echo "rc=$?" >> $OUT
kill $PID; wait $PID; rm -rf $D
