#!/usr/bin/env bash
# The README's handoff figure: time and bytes to move one node's share at
# 100,000 keys (a fourth node joins a three-node `dev` cluster), and the
# client throughput during the move against before it.
#
#   cargo build --release -p dynamo-server && bash scripts/handoff_figure.sh
#
# Uses ports 8001-8004 and 7001-7004 on 127.0.0.1; KEYS, BASE and DUR
# override the key count and the two bench durations (seconds).
set -euo pipefail
BIN=${BIN:-target/release/dynamo-server}
D=$(mktemp -d)
$BIN dev --nodes 3 --data-dir $D --reconciler last-write-wins > "$D/dev.log" 2>&1 &
DEV=$!
trap 'kill -INT $DEV; wait $DEV; rm -rf "$D"' EXIT
for i in $(seq 1 100); do curl -sf http://127.0.0.1:8003/health >/dev/null && break; sleep 0.2; done
URLS=http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003
echo "== baseline (preloads 100,000 keys)"
$BIN bench --urls $URLS --keys ${KEYS:-100000} --workload a --duration ${BASE:-20} --json | tail -1 | tee "$D/before.json"
$BIN dev add --data-dir $D
sleep 1
$BIN cluster join 4 --url http://127.0.0.1:8001
$BIN cluster plan --url http://127.0.0.1:8001 | head -5
$BIN bench --urls $URLS --keys ${KEYS:-100000} --workload a --duration ${DUR:-20} --warmup 0 --preload false --json > "$D/during.json" &
BENCH=$!
START=$(date +%s.%N)
$BIN cluster commit --url http://127.0.0.1:8001 | head -3
settled() {
  for n in 8001 8002 8003 8004; do
    curl -s http://127.0.0.1:$n/admin/handoff | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["settled"] and d["epoch"] == 2 else 1)' || return 1
  done
}
until settled; do sleep 0.2; done
END=$(date +%s.%N)
echo "move settled in $(python3 -c "print(round($END-$START,1))") s"
curl -s http://127.0.0.1:8004/metrics | grep -E "^dynamo_handoff_(keys|bytes)_received_total"
curl -s http://127.0.0.1:8001/metrics | grep -E "^dynamo_handoff_(keys|bytes)_sent_total"
wait $BENCH
tail -1 "$D/during.json"
