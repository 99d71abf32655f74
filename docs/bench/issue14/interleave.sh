#!/usr/bin/env bash
# The four modes of one workload interleaved (plain, auth, tls, tls+auth,
# then again), one round each, so that the machine's drift between
# invocations does not land on one mode. Usage: interleave.sh WORKLOAD MEMBERS CYCLES
set -u
cd "$(dirname "$0")/../../.."
out=docs/bench/issue14/interleaved
mkdir -p "$out"
wl=$1 m=$2 cycles=$3
for c in $(seq 1 "$cycles"); do
    for mode in plain auth tls tls-auth; do
        case $mode in
            plain) flags=() ;;
            auth) flags=(--auth) ;;
            tls) flags=(--tls) ;;
            tls-auth) flags=(--tls --auth) ;;
        esac
        name="$wl-m$m-$mode-c$c"
        ${LOADGEN:-cargo bench --bench loadgen --} --compare --engine memory --clients 50 \
            --total 20000 --members "$m" --workload "$wl" "${flags[@]}" \
            --csv "$out/$name.csv" >"$out/$name.txt" 2>&1
        echo "$name exit $? $(tail -1 "$out/$name.txt")"
    done
done
