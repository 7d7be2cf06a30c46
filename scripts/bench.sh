#!/usr/bin/env bash
# `make bench`: Redis, two relay nodes and the load generator on this
# machine; runs the standard scenarios and writes docs/benchmarks.md.
# Scale with BENCH_* variables (see below); the defaults are the targets.
# BENCH_ONLY=storm (or a comma-separated list of location, ceiling, idle,
# orders, scale, cluster, storm, chat, presence) runs only those; such a partial run leaves docs/benchmarks.md
# alone unless BENCH_OUT is set, and prints its report.
set -euo pipefail
cd "$(dirname "$0")/.."

# BENCH_BIN runs another relay binary (a before/after comparison);
# BENCH_NODE_ENV="KEY=VALUE ..." sets variables of the nodes only (not of
# the load generator), e.g. allocator or runtime settings to compare.
BIN=${BENCH_BIN:-${RELAY_BIN:-target/release/relay}}
NODE_ENV=(${BENCH_NODE_ENV:-})
SIM=${BENCH_SIM:-${RELAY_SIM_BIN:-target/release/relay-sim}}
OUT=${BENCH_OUT:-docs/benchmarks.md}
REDIS_PORT=${BENCH_REDIS_PORT:-6421}
PORTS=(${BENCH_PORTS:-3201 3202})
DRIVERS=${BENCH_DRIVERS:-4000}
# The target rate, one this machine can carry with the load generator on
# it, and issue #19's reference rate for CPU per update.
RATES=(${BENCH_RATES:-20000 8000 5000})
DURATION=${BENCH_DURATION_S:-20}
# The highest rate with p99 under 50 ms: rising from CEILING_FROM, then bisected.
CEILING_FROM=${BENCH_CEILING_FROM:-5000}
CEILING_DURATION=${BENCH_CEILING_DURATION_S:-10}
IDLE=${BENCH_IDLE_PER_NODE:-20000}
# Smaller counts measured on the way up to IDLE, so that the growth shows.
IDLE_STEPS=${BENCH_IDLE_STEPS:-1000,10000}
IDLE_SETTLE=${BENCH_IDLE_SETTLE_S:-30}
# RSS this long after the idle clients left, against RSS at start.
IDLE_AFTER=${BENCH_IDLE_AFTER_S:-60}
ORDER_RATE=${BENCH_ORDER_RATE:-1000}
ORDER_CUSTOMERS=${BENCH_ORDER_CUSTOMERS:-500}
# Scale-out: clusters of these sizes, all clients on the first two nodes.
SCALE_NODES=(${BENCH_SCALE_NODES:-2 4 8})
SCALE_RATE=${BENCH_SCALE_RATE:-4000}
SCALE_DRIVERS=${BENCH_SCALE_DRIVERS:-1000}
SCALE_DURATION=${BENCH_SCALE_DURATION_S:-15}
# Order chat: customer and driver of each order on different nodes.
CHAT_PAIRS=${BENCH_CHAT_PAIRS:-100}
CHAT_RATE=${BENCH_CHAT_RATE:-200}
# Presence: drivers connecting and leaving, with a short grace so that the
# run does not wait 10 s for the offline entries.
PRESENCE_DRIVERS=${BENCH_PRESENCE_DRIVERS:-200}
PRESENCE_GRACE_MS=${BENCH_PRESENCE_GRACE_MS:-1000}
# Redis Cluster (issue #16): location and order scenarios on one server and
# on 3 primaries with a replica each, one after the other, at this rate.
CLUSTER_REDIS_PORTS=(${BENCH_CLUSTER_REDIS_PORTS:-6431 6432 6433 6434 6435 6436})
CLUSTER_RATE=${BENCH_CLUSTER_RATE:-8000}
RUN_DIR=$(realpath -m "${BENCH_RUN_DIR:-target/bench}")
mkdir -p "$RUN_DIR"

# Whether scenario $1 runs this time.
want() {
  [ -z "${BENCH_ONLY:-}" ] || [[ ",${BENCH_ONLY// /,}," == *",$1,"* ]]
}

command -v redis-server >/dev/null || { echo "make bench needs redis-server (Debian package redis-server)" >&2; exit 1; }
ulimit -n 262144 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# One load generator per node holds that node's idle clients; each process
# (node and load generator) needs a descriptor per connection.
FD_LIMIT=$(ulimit -n)
if [ "$FD_LIMIT" != unlimited ] && [ "$IDLE" -gt $((FD_LIMIT - 200)) ]; then
  echo "bench: open-file limit $FD_LIMIT: idle scenario at $((FD_LIMIT - 200)) connections per node instead of $IDLE" >&2
  IDLE=$((FD_LIMIT - 200))
fi

export RELAY_JWT_SECRET=bench-secret
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export RELAY_KEY_PREFIX="bench:"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Starts Redis and the nodes of PORTS, or, when the first argument is a
# number N, N nodes on the ports after BENCH_PORT_BASE. Further arguments
# KEY=VALUE are settings of every node on top of the ones below.
PORT_BASE=${BENCH_PORT_BASE:-3200}
start_stack() {
  local ports=("${PORTS[@]}")
  if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    ports=(); for i in $(seq 1 "$1"); do ports+=($((PORT_BASE + i))); done
    shift
  fi
  if [ "${REDIS_MODE:-server}" = cluster ]; then
    start_redis_cluster
  else
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN_DIR" \
      --logfile "$RUN_DIR/redis.log" &
    redis_pid=$!
    redis_pids=($!)
    pids+=($!)
    for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  node_pids=()
  urls=()
  for port in "${ports[@]}"; do
    # Each simulated driver sends 5 updates/s (real ones: one every 5-10 s),
    # so the per-driver throttle is off: the load generator's tick jitter
    # would otherwise count as rejects.
    RELAY_ADDR="127.0.0.1:$port" RELAY_NODE_ID="bench-$port" RELAY_LOG=warn \
      RELAY_LOCATION_MIN_INTERVAL_MS=0 RELAY_CLIENT_EVENTS_PER_S=50 RELAY_MAX_NEW_CONNECTIONS_PER_S=0 \
      RELAY_MAX_NEW_CONNECTIONS_PER_ADDR_PER_S=0 \
      env "${redis_env[@]}" "${NODE_ENV[@]}" "$@" "$BIN" serve 2>>"$RUN_DIR/node-$port.log" &
    pids+=($!)
    node_pids+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

# Six cluster-enabled redis-servers joined as 3 primaries with a replica
# each (what the integration tests start, with the default node timeout);
# the nodes and the load generator get REDIS_CLUSTER_URLS instead of REDIS_URL.
start_redis_cluster() {
  local dir="$RUN_DIR/cluster" addrs=() urls_=() port
  rm -rf "$dir"; mkdir -p "$dir"
  redis_pids=()
  for port in "${CLUSTER_REDIS_PORTS[@]}"; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
      --logfile "$dir/redis-$port.log" &
    pids+=($!)
    redis_pids+=($!)
    addrs+=("127.0.0.1:$port")
    urls_+=("redis://127.0.0.1:$port")
  done
  for port in "${CLUSTER_REDIS_PORTS[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  for port in "${CLUSTER_REDIS_PORTS[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok && break; sleep 0.1
    done
  done
  redis_env=(-u REDIS_URL REDIS_CLUSTER_URLS="$(IFS=,; echo "${urls_[*]}")")
}
redis_env=()

stop_stack() {
  cleanup
  pids=()
  redis_env=()
}

loadgen() {
  env "${redis_env[@]}" "$SIM" loadgen --nodes "$(IFS=,; echo "${urls[*]}")" --node-pids "$(IFS=,; echo "${node_pids[*]}")" \
    --redis-pid "$(IFS=,; echo "${redis_pids[*]}")" --report "$RUN_DIR/report.md" "$@"
}

# --- Reconnect storm (issue #17): node 1 SIGKILLed under its clients, who
# come back to node 2 with last_event_id. The connection rate limit is on at
# the chart's default (maxNewConnectionsPerSecond), so node 2 sheds part of
# the storm with 503 + Retry-After and the clients retry; the per-address
# limit stays off, since every simulated client comes from 127.0.0.1.
STORM_CLIENTS=${BENCH_STORM_CLIENTS:-10000}
STORM_SURVIVOR_CLIENTS=${BENCH_STORM_SURVIVOR_CLIENTS:-1000}
STORM_RATE=${BENCH_STORM_RATE:-1000}
STORM_CONNECT_RATE=${BENCH_STORM_CONNECT_RATE:-2000}
bench_storm() {
  start_stack RELAY_MAX_NEW_CONNECTIONS_PER_S="$STORM_CONNECT_RATE"
  loadgen storm --clients "$STORM_CLIENTS" --survivor-clients "$STORM_SURVIVOR_CLIENTS" \
    --rate "$STORM_RATE"
  stop_stack
}

rm -f "$RUN_DIR/report.md"
# A fresh stack per scenario, so that one's connections don't weigh on the next.
if want location; then
  for rate in "${RATES[@]}"; do
    start_stack
    loadgen location --drivers "$DRIVERS" --rate "$rate" --duration-s "$DURATION"
    stop_stack
  done
fi
if want idle; then
  start_stack
  for i in "${!urls[@]}"; do
    "$SIM" loadgen --nodes "${urls[$i]}" --node-pids "${node_pids[$i]}" --first-node $((i + 1)) \
      --report "$RUN_DIR/report.md" \
      idle --connections "$IDLE" --steps "$IDLE_STEPS" --settle-s "$IDLE_SETTLE" --after-leave-s "$IDLE_AFTER"
  done
  stop_stack
fi
if want ceiling; then
  start_stack
  loadgen ceiling --drivers "$DRIVERS" --from "$CEILING_FROM" --duration-s "$CEILING_DURATION"
  stop_stack
fi
if want orders; then
  start_stack
  loadgen orders --customers "$ORDER_CUSTOMERS" --rate "$ORDER_RATE" --duration-s "$DURATION"
  # BENCH_METRICS=1 keeps each node's /metrics (relay_stream_stage_seconds
  # says which Redis round trip the time went to).
  if [ -n "${BENCH_METRICS:-}" ]; then
    for url in "${urls[@]}"; do curl -fsS "$url/metrics" > "$RUN_DIR/metrics-${url##*:}.txt" || true; done
  fi
  stop_stack
fi
if want scale; then
  # Clients on the first two nodes only; the others hold none, and their
  # CPU and Redis's bytes sent per update are what should stay flat.
  for n in "${SCALE_NODES[@]}"; do
    start_stack "$n"
    echo "### Scale-out: $n nodes, clients on the first two" >> "$RUN_DIR/report.md"
    echo >> "$RUN_DIR/report.md"
    "$SIM" loadgen --nodes "${urls[0]},${urls[1]}" --node-pids "$(IFS=,; echo "${node_pids[*]}")" \
      --redis-pid "$redis_pid" --report "$RUN_DIR/report.md" \
      location --drivers "$SCALE_DRIVERS" --rate "$SCALE_RATE" --duration-s "$SCALE_DURATION"
    stop_stack
  done
fi
if want cluster; then
  # The same load on one server and on the cluster, back to back.
  for mode in server cluster; do
    label=$([ "$mode" = cluster ] && echo "a Redis Cluster (3 primaries, 1 replica each)" || echo "one Redis server")
    REDIS_MODE=$mode start_stack
    { echo "### On $label: location"; echo; } >> "$RUN_DIR/report.md"
    loadgen location --drivers "$DRIVERS" --rate "$CLUSTER_RATE" --duration-s "$DURATION"
    stop_stack
    REDIS_MODE=$mode start_stack
    { echo "### On $label: order events"; echo; } >> "$RUN_DIR/report.md"
    loadgen orders --customers "$ORDER_CUSTOMERS" --rate "$ORDER_RATE" --duration-s "$DURATION"
    stop_stack
  done
fi
if want storm; then
  bench_storm
fi
if want chat; then
  start_stack
  loadgen chat --pairs "$CHAT_PAIRS" --rate "$CHAT_RATE" --duration-s "$DURATION"
  stop_stack
fi
if want presence; then
  start_stack RELAY_PRESENCE_GRACE_MS="$PRESENCE_GRACE_MS"
  loadgen presence --drivers "$PRESENCE_DRIVERS" --grace-ms "$PRESENCE_GRACE_MS"
  stop_stack
fi

if [ -n "${BENCH_ONLY:-}" ] && [ -z "${BENCH_OUT:-}" ]; then
  echo "partial run (BENCH_ONLY=$BENCH_ONLY): report in $RUN_DIR/report.md, $OUT left as it is"
  exit 0
fi

{
  echo "# Benchmarks"
  echo
  echo "Produced by \`make bench\` ($(date -u +%Y-%m-%d), relay $("$BIN" --version | cut -d' ' -f2), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
  echo "Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2), two relay nodes (release build) and the load generator all on one machine:"
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)."
  echo "Node settings: RELAY_LOCATION_MIN_INTERVAL_MS=0, RELAY_CLIENT_EVENTS_PER_S=50, RELAY_MAX_NEW_CONNECTIONS_PER_S=0 (the reconnect storm: $STORM_CONNECT_RATE, the chart's default) and RELAY_MAX_NEW_CONNECTIONS_PER_ADDR_PER_S=0 (the load generator opens thousands of connections a second, all from one address), RELAY_LOG=warn; everything else default."
  echo "Open-file limit $(ulimit -n) per process: $IDLE idle connections per node."
  echo
  cat "$RUN_DIR/report.md"
  if [ -f docs/benchmarks-notes.md ]; then echo; cat docs/benchmarks-notes.md; fi
} > "$OUT"
echo "wrote $OUT"
