#!/bin/bash
# Secured against plaintext, end to end: `dynamo-server bench` against a
# `dev` cluster started three ways, interleaved so each round sees the same
# machine conditions:
#   secured  - dev's default: mutual TLS between the nodes
#   auth     - the same plus `--auth`: every request carries a bearer token
#   plain    - `dev --plaintext`: plaintext peer links, no tokens
# Usage: scripts/secured_vs_plaintext.sh [BIN] [OUT] ; env ROUNDS (3),
# DUR (10 s), DURABILITY (buffered), CASES ("a:64 w:64 a:1").
# Prints one line per run; the JSON summaries are in OUT.
set -u
BIN=${1:-target/release/dynamo-server}; OUT=${2:-/tmp/secured-vs-plaintext}
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}; DURABILITY=${DURABILITY:-buffered}; CASES=${CASES:-"a:64 w:64 a:1"}
BIN=$(realpath "$BIN"); mkdir -p "$OUT"
run() { # round mode case
  local round=$1 mode=$2 c=$3 w=${3%%:*} n=${3##*:} dir extra=() token=()
  dir=$(mktemp -d)
  case $mode in
    plain) extra=(--plaintext) ;;
    auth) extra=(--auth); token=(--token-file "$dir/dev/admin.token") ;;
  esac
  "$BIN" dev --data-dir "$dir/dev" --durability "$DURABILITY" --reconciler last-write-wins "${extra[@]}" > "$OUT/dev-$mode.log" 2>&1 &
  local dev=$!
  for _ in $(seq 1 120); do
    curl -sf http://127.0.0.1:8003/health > /dev/null && curl -sf http://127.0.0.1:8001/health > /dev/null && break
    sleep 0.5
  done
  local file="$OUT/$round-$mode-$DURABILITY-$w-$n.txt"
  "$BIN" bench --workload "$w" --concurrency "$n" --duration "$DUR" --warmup 2 --baseline false --json "${token[@]}" > "$file" 2> /dev/null
  echo "round $round $mode $DURABILITY $w c=$n: $(grep -E 'throughput [0-9]' "$file" | head -1)"
  kill -INT $dev; wait $dev 2> /dev/null
  rm -rf "$dir"
}
for round in $(seq 1 "$ROUNDS"); do
  for c in $CASES; do
    for mode in secured auth plain; do run "$round" "$mode" "$c"; done
  done
done
