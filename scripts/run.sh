#!/usr/bin/env bash
# `make run`: a local Redis and two relay nodes when redis-server is
# installed, else one node in embedded memory mode, with the live page at
# /demo and `relay-sim simulate` playing a small city on them.
# `make run-cluster` (RUN_CLUSTER=1): Redis, three nodes and nginx in front
# of them on port 3000, the simulator going through nginx.
# RUN_SIMULATE=0 leaves the city out. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RELAY_BIN:-target/release/relay}
SIM=${RELAY_SIM_BIN:-target/release/relay-sim}
export RELAY_JWT_SECRET=${RELAY_JWT_SECRET:-dev-secret}
export RELAY_API_KEY=${RELAY_API_KEY:-dev-api-key}
REDIS_PORT=${RUN_REDIS_PORT:-6399}
# The page at /demo (off by default in a node; on for trying it out here).
export RELAY_DEMO=${RELAY_DEMO:-true}
if [ -n "${RUN_CLUSTER:-}" ]; then
  PORTS=(${RUN_PORTS:-3001 3002 3003})
  LB_PORT=${RUN_LB_PORT:-3000}
  command -v redis-server >/dev/null 2>&1 || { echo "make run-cluster needs redis-server (make deps)" >&2; exit 1; }
else
  PORTS=(${RUN_PORTS:-3000 3001})
fi
RUN_DIR=target/run
mkdir -p "$RUN_DIR"

pids=() helpers=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${helpers[@]}" "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
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

entry="http://127.0.0.1:${PORTS[0]}"
sim_urls=$(printf 'http://127.0.0.1:%s,' "${PORTS[@]}")
sim_urls=${sim_urls%,}
if [ -n "${RUN_CLUSTER:-}" ]; then
  nodes=$(printf '127.0.0.1:%s ' "${PORTS[@]}")
  scripts/nginx.sh "127.0.0.1:$LB_PORT" $nodes 2> >(sed -u "s/^/[nginx] /" >&2) &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$LB_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  entry="http://127.0.0.1:$LB_PORT"
  sim_urls=$entry
  mode="$mode, nginx on port $LB_PORT in front of them"
fi

if [ "${RUN_SIMULATE:-1}" != 0 ]; then
  "$SIM" simulate --url "$sim_urls" > >(sed -u "s/^/[simulate] /") 2> >(sed -u "s/^/[simulate] /" >&2) &
  # Stopped with the rest, but its own exit (it says why) stops nothing.
  helpers+=($!)
fi

customer=$("$BIN" token --sub 42 --role customer --ttl 24h)
merchant=$("$BIN" token --sub m1 --role merchant --store-ids s1 --ttl 24h)
driver=$("$BIN" token --sub d7 --role driver --ttl 24h)
admin=$("$BIN" token --sub a1 --role admin --ttl 24h)
cat <<MSG

relay is running ($mode)
  live city:  $entry/demo
  $entry/readyz   /metrics   Socket.IO at /socket.io/

dev tokens (24 h, secret \$RELAY_JWT_SECRET=$RELAY_JWT_SECRET):
  customer 42: $customer
  merchant m1 (store s1): $merchant
  driver d7:   $driver
  admin a1:    $admin

try it (Node.js with socket.io-client@4 installed):
  node -e "require('socket.io-client').io('$entry',{auth:{token:'$admin'}}).on('connect',()=>console.log('connected')).onAny((e,d)=>console.log(e,d))"
or without a client, the Engine.IO handshake over long-polling:
  curl "$entry/socket.io/?EIO=4&transport=polling&token=$customer"

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
