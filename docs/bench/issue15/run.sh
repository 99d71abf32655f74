#!/usr/bin/env bash
# Issue 15 (item 2): the Kubernetes traffic profile (loadgen --workload k8s),
# MetaStore vs etcd 3.4 side by side (--compare: etcd, then MetaStore, per
# round; one server at a time on the machine), 1 and 3 members.
# Usage: docs/bench/issue15/run.sh [ROUNDS] [MEMBERS...]
# Writes k8s-m<N>.txt (raw output), .csv (one row per kind), -timeline.csv
# and logs-m<N>/ (every member's log) next to this script. LOADGEN
# overrides the command (default: cargo bench --bench loadgen --, linked
# against the prebuilt RocksDB of scripts/rocksdb.sh; set CARGO_TARGET_DIR).
set -u
cd "$(dirname "$0")/../../.."
[ -n "${LOADGEN:-}" ] || . scripts/rocksdb.sh
out=docs/bench/issue15
rounds=${1:-2}
shift || true
members=${*:-1 3}
for m in $members; do
    echo "== k8s-m$m"
    ${LOADGEN:-cargo bench --bench loadgen --} --compare --engine memory --rounds "$rounds" \
        --members "$m" --workload k8s --clients 50 --keys 10000 \
        --k8s-duration 75s --k8s-compact-interval 10s \
        --keep-logs "$out/logs-m$m" --csv "$out/k8s-m$m.csv" \
        --timeline-csv "$out/k8s-m$m-timeline.csv" >"$out/k8s-m$m.txt" 2>&1
    echo "   exit $?"
    tail -16 "$out/k8s-m$m.txt"
done
# Neither server writes a snapshot within these runs at the default
# --snapshot-count (100000 entries): once more, one round, 1 member, with
# both snapshotting every 20000 entries, to see what a snapshot costs.
echo "== k8s-m1-snap20k"
${LOADGEN:-cargo bench --bench loadgen --} --compare --engine memory --rounds 1 \
    --members 1 --workload k8s --clients 50 --keys 10000 \
    --k8s-duration 75s --k8s-compact-interval 10s \
    --metastore-arg=--snapshot-count=20000 --etcd-arg=--snapshot-count=20000 \
    --keep-logs "$out/logs-m1-snap20k" --csv "$out/k8s-m1-snap20k.csv" \
    >"$out/k8s-m1-snap20k.txt" 2>&1
echo "   exit $?"
tail -16 "$out/k8s-m1-snap20k.txt"
# The checker bites on a live run: one delivered event dropped before the
# check must fail the run with exactly that violation (on both servers).
echo "== planted-drop"
${LOADGEN:-cargo bench --bench loadgen --} --compare --engine memory --members 1 \
    --workload k8s --clients 10 --keys 2000 --k8s-duration 10s \
    --k8s-compact-interval 3s --k8s-plant-drop >"$out/planted-drop.txt" 2>&1
echo "   exit $? (1 expected)"
grep -A2 VIOLATIONS "$out/planted-drop.txt"
gzip -f "$out"/logs-*/*.log
