#!/usr/bin/env bash
# A Ray cluster of a head and N worker nodes on this host, bound to 127.0.0.1: the multi-node
# code paths (trials on several nodes, shared storage, the Jobs API) without a second machine.
#
#   clusters/local.sh start  [--dir DIR] [--cpus N] [--gpus N] [--workers N]
#                            [--port P] [--dashboard-port P]
#   clusters/local.sh status [--dir DIR]
#   clusters/local.sh stop   [--dir DIR]
#
# --cpus/--gpus are per node; the GPUs are fake (a resource count, no device) unless the host
# has them, which is how Ray packs `resources: {gpu: 0.5}` trials with no GPU at hand.
# Every node runs `ray start --block` in its own session; DIR records its PID, its temp dir
# and its log, so `stop` ends exactly what `start` started (never `ray stop`, which stops
# every Ray on the host). Token auth is off (RAY_AUTH_MODE=disabled) unless you set it:
# everything listens on 127.0.0.1 only.
#
# Then:  kdtune sweep submit SPEC --address http://127.0.0.1:8299 --shared-storage
# (one host: any local storage path is "shared"; tracking must be an MLflow server).
set -euo pipefail

cmd=${1:-}
[ $# -gt 0 ] && shift
DIR=${KDTUNE_CLUSTER_DIR:-/tmp/kdtune-cluster}
CPUS=1 GPUS=1 WORKERS=1 PORT=6399 DASH_PORT=8299
while [ $# -gt 0 ]; do
  case $1 in
    --dir) DIR=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASH_PORT=$2; shift 2 ;;
    *) echo "local.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
RAY=${RAY:-ray}
PY=${PYTHON:-python3}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {  # a port nobody listens on now (Ray's fixed defaults clash with a 2nd node)
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Loopback only. `--node-ip-address=127.0.0.1` alone does not do it in Ray 2.60: Ray resolves a
# loopback address to the machine's outward IP (`services.resolve_ip_for_localhost`) in every
# process that starts or joins a cluster, and its gRPC servers then listen on every interface.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps 127.0.0.1 as it is in every process the nodes start
# (raylets, agents, workers, job drivers: they connect to 127.0.0.1), but it also makes
# `ray start --address` refuse to add a node; so `ray start` itself runs with that refusal off
# and the address kept as given. Every process of every node then listens on 127.0.0.1 only
# (tests/test_cluster.py checks it).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
ray_py() {  # the Python that runs `$RAY` (its shebang: /path/python or /usr/bin/env python3)
  local line
  read -r line <"$(command -v "$RAY")" || true
  set -- ${line#\#!}
  if [ "$(basename "$1")" = env ]; then echo "$2"; else echo "$1"; fi
}
RAY_LOOPBACK='import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True  # this process may join a cluster; its children see the env
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())'

start_node() {  # name, then ray start arguments
  local name=$1; shift
  local tmp="$DIR/$name"  # keep it short: Ray's unix socket paths must stay < 108 bytes
  mkdir -p "$tmp"
  # setsid: the node and everything it spawns form one process group that `stop` can end.
  setsid "$(ray_py)" -c "$RAY_LOOPBACK" start --block --node-ip-address=127.0.0.1 --temp-dir="$tmp" \
    --num-cpus="$CPUS" --num-gpus="$GPUS" --disable-usage-stats \
    --dashboard-agent-listen-port="$(free_port)" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_for() {  # seconds, what, command...
  local n=$1 what=$2; shift 2
  for _ in $(seq "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "local.sh: $what not up after ${n}s; see $DIR/*.log" >&2
  return 1
}

nodes_up() {  # the cluster sees $1 alive nodes
  "$PY" - "$DASH_PORT" "$1" <<'EOF'
import json, sys, urllib.request
port, want = sys.argv[1], int(sys.argv[2])
with urllib.request.urlopen(f"http://127.0.0.1:{port}/nodes?view=summary", timeout=5) as r:
    nodes = json.load(r)["data"]["summary"]
sys.exit(0 if sum(n["raylet"]["state"] == "ALIVE" for n in nodes) >= want else 1)
EOF
}

stop_all() {
  local pids=() pid f
  for f in "$DIR"/worker-*.pid "$DIR"/head.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  # TERM the `ray start --block` processes: each stops the Ray processes it started.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ $left = 0 ] && break
    sleep 1
  done
  # anything left in those process groups (a stuck raylet or worker): end it too
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  rm -f "$DIR"/head.pid "$DIR"/worker-*.pid "$DIR/address"
}

case $cmd in
  start)
    mkdir -p "$DIR"
    if alive "$DIR/head.pid"; then
      echo "local.sh: a cluster from $DIR is running; stop it first" >&2
      exit 1
    fi
    command -v "$RAY" >/dev/null || { echo "local.sh: '$RAY' not found (activate the venv)" >&2; exit 1; }
    start_node head --head --port="$PORT" --dashboard-host=127.0.0.1 \
      --dashboard-port="$DASH_PORT" --ray-client-server-port="$(free_port)"
    if ! wait_for 90 "the head node" nodes_up 1; then stop_all; exit 1; fi
    for i in $(seq "$WORKERS"); do
      start_node "worker-$i" --address="127.0.0.1:$PORT"
    done
    if ! wait_for 90 "$WORKERS worker node(s)" nodes_up $((WORKERS + 1)); then stop_all; exit 1; fi
    echo "http://127.0.0.1:$DASH_PORT" >"$DIR/address"
    echo "Ray cluster up: head + $WORKERS worker(s), $CPUS CPU / $GPUS GPU each"
    echo "  Jobs API / dashboard: http://127.0.0.1:$DASH_PORT   GCS: 127.0.0.1:$PORT"
    echo "  stop: $0 stop --dir $DIR"
    ;;
  status)
    for f in "$DIR"/head.pid "$DIR"/worker-*.pid; do
      [ -f "$f" ] || continue
      n=$(basename "$f" .pid)
      if alive "$f"; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: dead (pid $(cat "$f"))"; fi
    done
    if alive "$DIR/head.pid"; then
      echo "address: $(cat "$DIR/address" 2>/dev/null || echo starting)"
    else
      echo "no cluster running from $DIR"
      exit 1
    fi
    ;;
  stop)
    stop_all
    echo "stopped the cluster from $DIR"
    ;;
  *)
    echo "usage: $0 start|status|stop [--dir DIR] [--cpus N] [--gpus N] [--workers N] [--port P] [--dashboard-port P]" >&2
    exit 2
    ;;
esac
