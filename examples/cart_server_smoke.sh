#!/usr/bin/env bash
# The cart_server example as an operator runs it: a `dev` cluster of the
# example binary with the cart-union reconciler, two carts written through
# different nodes without seeing each other, one merged cart read back,
# then Ctrl-C (SIGINT) stops everything. Used by .ci/run.
#
#   bash examples/cart_server_smoke.sh target/debug/examples/cart_server
set -euo pipefail
exe=$1
dir=$(mktemp -d)
http=${CART_HTTP_PORT:-18101}
peer=${CART_PEER_PORT:-18201}
"$exe" dev --data-dir "$dir" --reconciler cart-union --http-port "$http" --peer-port "$peer" >"$dir/dev.out" 2>&1 &
dev=$!
trap 'kill -9 "$dev" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 600); do
  grep -q "Ctrl-C stops every node" "$dir/dev.out" && break
  kill -0 "$dev" 2>/dev/null || { cat "$dir/dev.out"; exit 1; }
  sleep 0.1
done
url() { echo "http://127.0.0.1:$((http + $1 - 1))"; }
"$exe" put cart:alice milk --url "$(url 1)" >/dev/null
"$exe" put cart:alice eggs --url "$(url 2)" >/dev/null
got=$("$exe" get cart:alice --url "$(url 3)")
if [ "$got" != $'eggs\nmilk' ]; then
  echo "expected the merged cart eggs, milk; got: $got"
  cat "$dir/dev.out"
  exit 1
fi
kill -INT "$dev"
wait "$dev"
echo "cart_server: concurrent carts merged over HTTP: $(echo "$got" | paste -sd, -)"
