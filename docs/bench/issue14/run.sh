#!/usr/bin/env bash
# Issue 14 (items 2 and 6): the cost of client TLS and of auth, and an
# Authenticate storm, MetaStore vs etcd 3.4 side by side (loadgen --compare:
# etcd, then MetaStore, per round; one server at a time on the machine).
# Usage: docs/bench/issue14/run.sh [ROUNDS] [MEMBERS...]
# Writes <name>.csv and <name>.txt next to this script. LOADGEN overrides
# the command (default: cargo bench --bench loadgen --), e.g. a loadgen
# binary built earlier, with METASTORE_BIN set to the server binary.
set -u
cd "$(dirname "$0")/../../.."
out=docs/bench/issue14
rounds=${1:-3}
shift || true
members=${*:-1 3}
lg() {
    local name=$1
    shift
    echo "== $name: $*"
    ${LOADGEN:-cargo bench --bench loadgen --} --compare --engine memory --rounds "$rounds" \
        --clients 50 --total 20000 "$@" --csv "$out/$name.csv" >"$out/$name.txt" 2>&1
    echo "   exit $?"
    tail -4 "$out/$name.txt"
}
for m in $members; do
    for wl in put get; do
        lg "$wl-m$m-plain" --members "$m" --workload "$wl"
        lg "$wl-m$m-auth" --members "$m" --workload "$wl" --auth
        lg "$wl-m$m-tls" --members "$m" --workload "$wl" --tls
        lg "$wl-m$m-tls-auth" --members "$m" --workload "$wl" --tls --auth
    done
    # etcd's puts slow down so much under the storm that a phase is cut at
    # 40 s (throughput is then ops done / 40 s).
    lg "storm-m$m-none" --members "$m" --workload put --auth --max-seconds 40
    lg "storm-m$m-20" --members "$m" --workload put --auth --auth-storm 20 --max-seconds 40
done
