#!/usr/bin/env bash
# scripts/hits-ab.sh BIN LABEL: 4 KiB GET hits with `wrk -t2 -c64 -d10s` against a
# fresh node of the binary BIN, its log written to a file (as in production).
# Prints req/s, the node's CPU ticks (1/100 s) over the whole run, and the log's
# size. Run it alternately on two builds to compare them on a noisy machine:
#   cp target/release/blobcache /tmp/bc-before   # then change, rebuild, and:
#   for i in 1 2 3; do scripts/hits-ab.sh /tmp/bc-before before; scripts/hits-ab.sh target/release/blobcache after; done
set -u
BIN=$1; LABEL=$2
D=$(mktemp -d /tmp/hits.XXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$BIN serve --listen 127.0.0.1:$PORT --data-dir $D/data --disk-cache 256MiB > $D/log.txt 2>&1 &
PID=$!
curl -sf --retry 100 --retry-connrefused --retry-delay 0 --retry-max-time 20 http://127.0.0.1:$PORT/healthz > /dev/null
head -c 4096 /dev/urandom > $D/4k; K=$(md5sum $D/4k | cut -c1-32)
curl -sf -T $D/4k http://127.0.0.1:$PORT/blobs/$K > /dev/null
for i in $(seq 100); do curl -sf http://127.0.0.1:$PORT/blobs/$K/status | grep -q '"cached":true' && break; sleep 0.1; done
curl -sf -o /dev/null http://127.0.0.1:$PORT/blobs/$K
R=$(wrk -t2 -c64 -d10s http://127.0.0.1:$PORT/blobs/$K | awk '/Requests\/sec/ {print $2}')
CPU=$(awk '{print $14+$15}' /proc/$PID/stat)
echo "$LABEL $R req/s, node CPU ticks $CPU, log $(wc -c < $D/log.txt) bytes"
kill $PID; wait $PID 2>/dev/null; rm -rf $D
