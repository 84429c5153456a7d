#!/usr/bin/env bash
# The scaled-out service on one CPU machine, for trying and testing (no GPU, tiny random weights):
#   scripts/cluster_demo.sh --port PORT --replicas N [--redis-port P] [python -m app.cluster flags]
# starts a local Ray head (small object store, no dashboard), a local redis-server with persistence
# and the Serve application in demo mode with N CPU try-on replicas, prints the URL, serves until
# SIGINT/SIGTERM, then stops everything it started (and only that: no `ray stop`).
# Needs `pip install -r requirements-cluster.txt` and redis-server (Debian: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
RAY="$(dirname "$PYTHON")/ray"

port=8000
replicas=2
redis_port=
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --redis-port) redis_port=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
for tool in redis-server "$RAY"; do
  command -v "$tool" >/dev/null || {
    echo "cluster_demo: $tool not found (pip install -r requirements-cluster.txt;" \
      "apt-get install redis-server)" >&2
    exit 2
  }
done

# Free loopback ports: Ray's GCS (its default, 6379, is Redis' own), its client server, dashboard
# and dashboard agent (fixed defaults that a second Ray head on this machine would collide with).
read -r ray_port ray_client_port agent_port dashboard_port free_redis_port < <("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(5)]
for sock in socks:
    sock.bind(("127.0.0.1", 0))
print(*(sock.getsockname()[1] for sock in socks))
PY
)
redis_port=${redis_port:-$free_redis_port}
state=$(mktemp -d -t catvton-cluster.XXXXXX)
pids=()

stop_all() {
  trap - EXIT INT TERM
  # Reverse order: the application first, then Ray (its --block process stops its own
  # children on SIGTERM), then Redis (which writes its data on SIGTERM).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$state"
}
trap stop_all EXIT
trap 'exit 0' INT TERM

# Persistence (append-only file in the state folder): finished jobs survive a Redis restart.
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$state" --appendonly yes \
  --save "" --loglevel warning >"$state/redis.log" 2>&1 &
pids+=($!)

# Every Ray process started below (the HTTP proxy among them) imports `app` from this checkout; the
# proxy drops Ray's client-controlled headers (app/cluster/headers.py).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=app.cluster.headers:proxy_middlewares
# The HTTP port and Redis listen on loopback only. Ray 2.60 replaces a loopback --node-ip-address
# with the machine's own address, so its internal ports (GCS, raylet, workers) listen on every
# interface whatever is asked: run the demo where a firewall keeps them in.
"$RAY" start --head --block --node-ip-address 127.0.0.1 --port "$ray_port" \
  --ray-client-server-port "$ray_client_port" --dashboard-agent-listen-port "$agent_port" \
  --dashboard-port "$dashboard_port" \
  --num-cpus=4 --include-dashboard=false --object-store-memory=500000000 \
  --disable-usage-stats --temp-dir "$state/ray" >"$state/ray.log" 2>&1 &
pids+=($!)

# Wait for Redis and the Ray head (a few seconds): their own words, not an open port (a port
# picked above may have been taken meanwhile by another program, and then they stop instead).
ray_pid=${pids[-1]}
for _ in $(seq 600); do
  grep -q "block forever" "$state/ray.log" && redis-cli -p "$redis_port" ping >/dev/null 2>&1 \
    && break
  if ! kill -0 "$ray_pid" 2>/dev/null || ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "cluster_demo: Ray or Redis did not start:" >&2
    tail -n 20 "$state/ray.log" "$state/redis.log" >&2
    exit 1
  fi
  sleep 0.2
done

echo "cluster_demo: Ray head on 127.0.0.1:$ray_port, Redis on 127.0.0.1:$redis_port" \
  "(logs in $state)"
"$PYTHON" -m app.cluster --demo --demo-dir "$state/demo-weights" \
  --host 127.0.0.1 --port "$port" --replicas "$replicas" --gpus-per-replica 0 \
  --cpus-per-replica 1 --ray-address "127.0.0.1:$ray_port" \
  --redis-url "redis://127.0.0.1:$redis_port/0" "${extra[@]}" &
pids+=($!)
wait "${pids[-1]}"
