#!/usr/bin/env bash
# A three-process sealpost cluster on this machine (ports 7101-7103; /metrics, /health,
# /ready and the operator console on 9101-9103).
#   ./run.sh start            create certificates if missing, start the three nodes (alias: up)
#   ./run.sh status           show the cluster through the CLI
#   ./run.sh rolling-restart  restart the nodes one at a time, each back and caught up first
#   ./run.sh stop             stop the three nodes (alias: down)
# The sealpost binary is $SEALPOST_BIN, or `sealpost` on PATH, or the perf build
# (`cargo build --profile perf --workspace`).
# Everything the cluster writes lives in ./run (data, certificates, logs, client.toml).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="$here/run"
bin="${SEALPOST_BIN:-}"
if [ -z "$bin" ]; then
  if command -v sealpost >/dev/null 2>&1; then bin=sealpost
  else bin="${CARGO_TARGET_DIR:-/var/cache/sealpost-target}/perf/sealpost"; fi
fi
export SEALPOST_CLIENT_CONFIG="$run/client.toml"

start() {
  mkdir -p "$run/logs"
  "$bin" certs --out "$run/tls" --provider prov-local --nodes 3 --clients admin >/dev/null
  cat > "$run/client.toml" <<TOML
default_profile = "admin"

[profiles.admin]
endpoints = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
ca = "tls/ca.pem"
cert = "tls/clients/admin.pem"
key = "tls/clients/admin-key.pem"
provider = "prov-local"
TOML
  for n in 1 2 3; do
    pidf="$run/node-$n.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
      echo "node $n already running (pid $(cat "$pidf"))"; continue
    fi
    nohup "$bin" node --config "$here/node$n.toml" >"$run/logs/node-$n.log" 2>&1 &
    echo $! >"$pidf"
    echo "node $n started (pid $!, log $run/logs/node-$n.log)"
  done
  # Wait (bounded) until the cluster answers with a leader that every node knows: right
  # after a first start a node that was slow to start may still call an election and
  # unseat the first leader, so one node saying "leader" is not enough.
  for _ in $(seq 1 100); do
    status=$("$bin" cluster status --json 2>/dev/null || true)
    # (No match yet is not an error: under `set -e -o pipefail` a failing grep here used
    # to end the script before the nodes were listening.)
    leaders=$(printf '%s' "$status" | grep -o '"leader_id":[0-9]*' | sort -u || true)
    if printf '%s' "$status" | grep -q '"role":"leader"' \
      && [ "$(printf '%s\n' "$leaders" | grep -c . || true)" = 1 ] \
      && [ "$leaders" != '"leader_id":0' ] \
      && [ "$(printf '%s' "$status" | grep -o '"reachable":true' | grep -c . || true)" = 3 ]; then
      echo "cluster is up; SEALPOST_CLIENT_CONFIG=$run/client.toml"
      return 0
    fi
    sleep 0.2
  done
  echo "the cluster did not elect a leader in 20 s; see $run/logs" >&2
  return 1
}

# Stops node $1 (SIGTERM, then SIGKILL after 5 s).
stop_one() {
  local n="$1" pidf pid
  pidf="$run/node-$n.pid"
  [ -f "$pidf" ] || return 0
  pid="$(cat "$pidf")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "node $n stopped"
  fi
  rm -f "$pidf"
}

stop() {
  for n in 1 2 3; do stop_one "$n"; done
}

# One node at a time: stop it, start it again, and wait (bounded) until every member is
# reachable and it has applied as far as the leader had when it stopped.
rolling_restart() {
  # Reads `cluster status --json` on stdin: the leader's applied index, or node $1's, and
  # how many members answered.
  field() {
    python3 -c '
import json, sys
want = sys.argv[1]
try:
    nodes = json.load(sys.stdin)
    nodes = nodes.get("nodes", []) if isinstance(nodes, dict) else nodes
except Exception:
    nodes = []
if want == "leader":
    print(max([n["last_applied_index"] for n in nodes if n.get("role") == "leader"] or [0]))
elif want == "reachable":
    print(sum(1 for n in nodes if n.get("reachable")))
else:
    print(max([n["last_applied_index"] for n in nodes if n.get("id") == int(want) and n.get("reachable")] or [-1]))
' "$1"
  }
  for n in 1 2 3; do
    local before applied status ok=0
    before=$("$bin" cluster status --json 2>/dev/null | field leader)
    stop_one "$n"
    nohup "$bin" node --config "$here/node$n.toml" >>"$run/logs/node-$n.log" 2>&1 &
    echo $! >"$run/node-$n.pid"
    echo "node $n started again (pid $!)"
    for _ in $(seq 1 300); do
      status=$("$bin" cluster status --json 2>/dev/null || true)
      applied=$(printf '%s' "$status" | field "$n")
      if [ "$(printf '%s' "$status" | field reachable)" = 3 ] && [ "$applied" -ge "$before" ]; then
        ok=1; break
      fi
      sleep 0.2
    done
    if [ "$ok" != 1 ]; then
      echo "node $n did not come back and catch up in 60 s; see $run/logs/node-$n.log" >&2
      return 1
    fi
    echo "node $n is back and caught up (applied $applied >= $before)"
  done
}

case "${1:-}" in
  start|up) start ;;
  stop|down) stop ;;
  status) "$bin" cluster status ;;
  rolling-restart) rolling_restart ;;
  *) echo "usage: $0 start|up|status|rolling-restart|stop|down" >&2; exit 2 ;;
esac
