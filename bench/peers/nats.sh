#!/usr/bin/env bash
# nats.sh: a 3-node NATS cluster with JetStream on 127.0.0.1, the "nats" peer of sealpost's
# load benchmark.
#
# Usage:
#   nats.sh install      apt-install nats-server (and curl, iproute2) if missing, making sure
#                        no packaged server is left running on the default port 4222.
#   nats.sh start DIR    start nodes nats-1..nats-3 with configs DIR/nats-N.conf, JetStream
#                        stores DIR/nats-N.data, logs DIR/logs/nats-N.log, pid files
#                        DIR/nats-N.pid; wait (at most NATS_START_TIMEOUT seconds, default 20)
#                        until every node is healthy and sees the same JetStream meta leader,
#                        then print on stdout, one per line:
#                          version X.Y.Z
#                          endpoint nats://127.0.0.1:PORT      (one per node client URL)
#                          pid nats-N PID                      (one per node)
#                        Diagnostics go to stderr. On failure it stops what it started and
#                        exits non-zero with a message naming the problem.
#   nats.sh stop DIR     TERM each node recorded in DIR, wait (bounded), then KILL; safe to
#                        call twice, or on a DIR where nothing runs.
#
# Ports (NATS_BASE_PORT, default 24220): node N takes client port BASE+N-1, HTTP monitoring
# port BASE+10+N-1 and cluster route port BASE+20+N-1, so the default uses 24220-24222,
# 24230-24232 and 24240-24242. start refuses if any of them is already in use. Never 4222.
#
# Durability, as nats-server 2.9.10 implements it (server/stream.go, server/filestore.go,
# server/jetstream_cluster.go at tag v2.9.10): a PubAck from an R3 file-storage stream means
# the message was replicated through the stream's Raft group, committed by a quorum (2 of 3),
# and stored by the leader. Each node writes every message to its Raft log and its stream
# file store with write(2) as it goes (no buffering in the server), so an acknowledged message
# survives the crash of the nats-server processes. It does NOT fsync per message: stream
# blocks are fsync'd by a background timer every 2 minutes, the stream Raft logs every 5
# minutes and the meta Raft log every 60 s (not on block roll-over, nor on shutdown). Version
# 2.9 has no setting to change this (`sync_interval: always` arrived in 2.10). So a power loss or
# kernel crash of a majority of machines can lose writes acknowledged in the last minutes;
# on one machine, as here, all three copies share one page cache. etcd, by contrast, fsyncs
# its WAL before acknowledging.
set -euo pipefail

readonly NATS_BIN=/usr/sbin/nats-server
readonly NODES=3
readonly SCRIPT=nats.sh PEER_BIN="$NATS_BIN" PEER_PREFIX=nats PEER_COUNT="$NODES"
readonly START_TIMEOUT="${NATS_START_TIMEOUT:-20}"
readonly STOP_TIMEOUT="${NATS_STOP_TIMEOUT:-10}"
readonly CLUSTER_NAME="sealpost-bench"
[[ "$START_TIMEOUT" =~ ^[0-9]+$ && "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] \
  || { echo "nats.sh: error: NATS_START_TIMEOUT and NATS_STOP_TIMEOUT must be whole seconds" >&2; exit 2; }

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat >&2 <<'EOF'
usage: nats.sh install | start DIR | stop DIR
  env: NATS_BASE_PORT (default 24220), NATS_START_TIMEOUT (s, default 20),
       NATS_STOP_TIMEOUT (s, default 10), NATS_MAX_FILE_STORE (per node, default 4GB)
EOF
  exit 2
}

base_port() { base_port_from NATS_BASE_PORT 24220 $((20 + NODES)); }

cmd_install() {
  # nats-server ships only a systemd unit, which its postinst starts only where systemd runs.
  apt_install_missing nats-server curl iproute2
  [[ -x "$NATS_BIN" ]] || die "$NATS_BIN is missing after install"
  # Make sure no packaged server (config /etc/nats-server.conf, port 4222) was left running.
  # shellcheck disable=SC2046 # pids are digits: one word each
  stop_packaged "*/nats-[0-9].conf*" $(listeners_on 4222)
  if port_in_use 4222; then
    say "warning: something other than the packaged nats-server listens on port 4222"
  fi
  say "ok: $("$NATS_BIN" --version 2>/dev/null | head -n1)"
}

nats_version() {
  "$NATS_BIN" --version 2>/dev/null | sed -n 's/^nats-server: *v\{0,1\}//p' | head -n1
}

# Writes the config of node I (1-based) into DIR/nats-I.conf.
write_config() {
  local dir="$1" i="$2" base="$3" max_file="$4" j routes=""
  for ((j = 1; j <= NODES; j++)); do
    routes+="    nats-route://127.0.0.1:$((base + 20 + j - 1))"$'\n'
  done
  cat >"$dir/nats-$i.conf" <<EOF
# Written by bench/peers/nats.sh start; node $i of $NODES.
server_name: nats-$i
listen: 127.0.0.1:$((base + i - 1))
http: 127.0.0.1:$((base + 10 + i - 1))
logtime: true

jetstream {
  store_dir: "$dir/nats-$i.data"
  max_memory_store: 256MB
  max_file_store: $max_file
}

cluster {
  name: $CLUSTER_NAME
  listen: 127.0.0.1:$((base + 20 + i - 1))
  routes: [
$routes  ]
}
EOF
}

# Prints the JetStream meta leader node I sees (empty if none or unreachable).
meta_leader() {
  local port="$1" body
  body="$(curl -fsS --max-time 1 "http://127.0.0.1:$port/jsz" 2>/dev/null || true)"
  [[ -n "$body" ]] || return 0
  # "meta_cluster": {"name": ..., "leader": "nats-2", ... "cluster_size": 3}
  body="$(printf '%s' "$body" | tr -d ' \n\t')"
  if [[ "$body" =~ \"meta_cluster\":\{[^}]*\"leader\":\"([^\"]+)\" ]]; then
    printf '%s\n' "${BASH_REMATCH[1]}"
  fi
}

healthz_ok() {
  local port="$1" body
  body="$(curl -fsS --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null || true)"
  [[ "$(printf '%s' "$body" | tr -d ' \n\t')" == *'"status":"ok"'* ]]
}

cmd_start() {
  local dir="$1"
  [[ -x "$NATS_BIN" ]] || die "$NATS_BIN not found: run '$0 install' first"
  local base; base="$(base_port)"
  local max_file="${NATS_MAX_FILE_STORE:-4GB}"
  [[ "$max_file" =~ ^[0-9]+[KMGT]?B?$ ]] || die "NATS_MAX_FILE_STORE='$max_file' is not a size like 4GB"
  mkdir -p "$dir/logs" || die "cannot create $dir/logs"
  dir="$(cd "$dir" && pwd)"
  [[ "$dir" != *[\"\\]* ]] || die "DIR may not contain quotes or backslashes: $dir"

  refuse_running "$dir"
  local i pid

  local port
  for ((i = 0; i < NODES; i++)); do
    for port in $((base + i)) $((base + 10 + i)) $((base + 20 + i)); do
      if port_in_use "$port"; then
        die "port $port is already in use (NATS_BASE_PORT=$base uses $base-$((base + NODES - 1)), $((base + 10))-$((base + 10 + NODES - 1)) and $((base + 20))-$((base + 20 + NODES - 1))): choose another NATS_BASE_PORT"
      fi
    done
  done

  for ((i = 1; i <= NODES; i++)); do
    write_config "$dir" "$i" "$base" "$max_file"
    "$NATS_BIN" -t -c "$dir/nats-$i.conf" >/dev/null 2>"$dir/logs/nats-$i.configtest" \
      || die "config $dir/nats-$i.conf rejected: $(head -c 400 "$dir/logs/nats-$i.configtest")"
    rm -f "$dir/logs/nats-$i.configtest"
  done

  # From here on, a failure stops what was started.
  STARTING_DIR="$dir"
  trap 'stop_recorded "$STARTING_DIR" >/dev/null 2>&1 || true' EXIT
  for ((i = 1; i <= NODES; i++)); do
    if [[ -d "$dir/nats-$i.data/jetstream" ]]; then
      say "nats-$i: reusing the existing JetStream store in $dir/nats-$i.data"
    fi
    "$NATS_BIN" -c "$dir/nats-$i.conf" </dev/null >>"$dir/logs/nats-$i.log" 2>&1 &
    printf '%s\n' "$!" >"$dir/nats-$i.pid"
  done

  # Wait until every node is healthy and all agree on one JetStream meta leader, bounded by
  # START_TIMEOUT.
  local deadline=$((SECONDS + START_TIMEOUT)) tries=0 leader leaders ready
  while :; do
    ready=0
    leaders=" "
    for ((i = 1; i <= NODES; i++)); do
      require_started "$dir" "$i"
      leader="$(meta_leader "$((base + 10 + i - 1))")"
      if [[ -n "$leader" ]] && healthz_ok "$((base + 10 + i - 1))"; then
        ready=$((ready + 1))
        [[ "$leaders" == *" $leader "* ]] || leaders+="$leader "
      fi
    done
    if ((ready == NODES)) && [[ "$leaders" =~ ^\ [^\ ]+\ $ ]]; then
      break
    fi
    tries=$((tries + 1))
    if ((SECONDS >= deadline || tries > START_TIMEOUT * 20)); then
      log_tails "$dir"
      die "no JetStream meta leader agreed by all nodes after ${START_TIMEOUT}s ($ready of $NODES nodes ready; leaders seen:${leaders% })"
    fi
    sleep 0.2
  done
  trap - EXIT

  print_started "$dir" nats "$base" "$(nats_version)"
  say "cluster ready: $NODES nodes, JetStream meta leader${leaders% }, data in $dir"
}

dispatch "$@"
