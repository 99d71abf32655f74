#!/bin/bash
# usage: m3.sh start|stop [extra flags...]
BIN=$HOME/.cache/metastore-target/release/metastore
act=$1; shift
if [ "$act" = stop ]; then pkill -f "$BIN --name m" ; sleep 1; rm -rf /tmp/m3d; exit 0; fi
rm -rf /tmp/m3d; mkdir -p /tmp/m3d
IC="m0=http://127.0.0.1:24800,m1=http://127.0.0.1:24801,m2=http://127.0.0.1:24802"
for i in 0 1 2; do
  nohup $BIN --name m$i --engine memory --data-dir /tmp/m3d/m$i \
    --listen-client-urls http://127.0.0.1:2479$i --advertise-client-urls http://127.0.0.1:2479$i \
    --listen-peer-urls http://127.0.0.1:2480$i --initial-advertise-peer-urls http://127.0.0.1:2480$i \
    --initial-cluster $IC --initial-cluster-state new "$@" > /tmp/m3d/m$i.log 2>&1 &
done
sleep 3
pgrep -f "$BIN --name m" | tr '\n' ','
