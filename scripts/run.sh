#!/usr/bin/env bash
# `make run`: a local Redis and two relay nodes when redis-server is
# installed, else one node in embedded memory mode. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RELAY_BIN:-target/release/relay}
export RELAY_JWT_SECRET=${RELAY_JWT_SECRET:-dev-secret}
export RELAY_API_KEY=${RELAY_API_KEY:-dev-api-key}
REDIS_PORT=${RUN_REDIS_PORT:-6399}
PORTS=(${RUN_PORTS:-3000 3001})
RUN_DIR=target/run
mkdir -p "$RUN_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

if [ -z "${RELAY_EMBEDDED:-}" ] && [ -z "${REDIS_URL:-}" ] && command -v redis-server >/dev/null 2>&1; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN_DIR" --logfile "$PWD/$RUN_DIR/redis.log" &
  pids+=($!)
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  mode="cluster: Redis on 127.0.0.1:$REDIS_PORT, nodes on ports ${PORTS[*]}"
elif [ -n "${REDIS_URL:-}" ]; then
  mode="cluster: your REDIS_URL, nodes on ports ${PORTS[*]}"
else
  PORTS=("${PORTS[0]}")
  unset REDIS_URL
  mode="embedded: one node on port ${PORTS[0]}, everything in memory (install redis-server for a two-node cluster)"
fi

i=0
for port in "${PORTS[@]}"; do
  name="node-$((i += 1))"
  RELAY_ADDR="127.0.0.1:$port" RELAY_NODE_ID="$name" "$BIN" serve \
    2> >(sed -u "s/^/[$name] /" >&2) &
  pids+=($!)
done

for port in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

customer=$("$BIN" token --sub 42 --role customer --ttl 24h)
merchant=$("$BIN" token --sub m1 --role merchant --store-ids s1 --ttl 24h)
driver=$("$BIN" token --sub d7 --role driver --ttl 24h)
admin=$("$BIN" token --sub a1 --role admin --ttl 24h)
cat <<MSG

relay is running ($mode)
  http://127.0.0.1:${PORTS[0]}/readyz   /metrics   Socket.IO at /socket.io/

dev tokens (24 h, secret \$RELAY_JWT_SECRET=$RELAY_JWT_SECRET):
  customer 42: $customer
  merchant m1 (store s1): $merchant
  driver d7:   $driver
  admin a1:    $admin

try it (Node.js with socket.io-client@4 installed):
  node -e "require('socket.io-client').io('http://127.0.0.1:${PORTS[0]}',{auth:{token:'$admin'}}).on('connect',()=>console.log('connected')).onAny((e,d)=>console.log(e,d))"
or without a client, the Engine.IO handshake over long-polling:
  curl "http://127.0.0.1:${PORTS[0]}/socket.io/?EIO=4&transport=polling&token=$customer"

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
