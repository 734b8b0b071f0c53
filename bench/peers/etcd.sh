#!/usr/bin/env bash
# etcd.sh: a 3-member etcd cluster on 127.0.0.1, the "etcd" peer of sealpost's load benchmark.
#
# Usage:
#   etcd.sh install      apt-install etcd-server (and etcd-client, curl, iproute2) if missing,
#                        making sure the package's own service is not left running.
#   etcd.sh start DIR    start members etcd-1..etcd-3 with data in DIR/etcd-N.data, logs in
#                        DIR/logs/etcd-N.log and pid files DIR/etcd-N.pid; wait (at most
#                        ETCD_START_TIMEOUT seconds, default 20) until every member reports
#                        healthy, then print on stdout, one per line:
#                          version X.Y.Z
#                          endpoint http://127.0.0.1:PORT      (one per member client URL)
#                          pid etcd-N PID                      (one per member)
#                        Diagnostics go to stderr. On failure it stops what it started and
#                        exits non-zero with a message naming the problem.
#   etcd.sh stop DIR     TERM each member recorded in DIR, wait (bounded), then KILL; safe to
#                        call twice, or on a DIR where nothing runs.
#
# Ports (ETCD_BASE_PORT, default 23790): member N listens for clients on BASE+N-1 and for
# peers on BASE+10+N-1, so the default uses 23790-23792 and 23800-23802. start refuses if
# any of them is already in use. Never 2379/2380, the package's defaults.
#
# Durability: etcd's defaults are kept (no --unsafe-no-fsync). etcd answers a put only once
# its Raft entry is committed and applied (etcdserver/raft.go, wal/wal.go at tag v3.4.23): by
# then the entry is written and fdatasync'd in the write-ahead log of a majority of members
# (2 of 3 here), the leader included, since followers sync before acknowledging an append and
# the leader syncs a batch before raft hands it back as committed. WAL syncs are group
# commits: one fdatasync covers every entry of a Raft batch, so concurrent puts share a sync.
# The bbolt backend is committed in batches (every 100 ms or 10000 writes by default); after
# a crash it is caught up from the WAL, which is the durable record.
set -euo pipefail

readonly ETCD_BIN=/usr/bin/etcd
readonly MEMBERS=3
readonly SCRIPT=etcd.sh PEER_BIN="$ETCD_BIN" PEER_PREFIX=etcd PEER_COUNT="$MEMBERS"
readonly START_TIMEOUT="${ETCD_START_TIMEOUT:-20}"
readonly STOP_TIMEOUT="${ETCD_STOP_TIMEOUT:-10}"
[[ "$START_TIMEOUT" =~ ^[0-9]+$ && "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] \
  || { echo "etcd.sh: error: ETCD_START_TIMEOUT and ETCD_STOP_TIMEOUT must be whole seconds" >&2; exit 2; }
readonly TOKEN_PREFIX="sealpost-bench-etcd"

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat >&2 <<'EOF'
usage: etcd.sh install | start DIR | stop DIR
  env: ETCD_BASE_PORT (default 23790), ETCD_START_TIMEOUT (s, default 20),
       ETCD_STOP_TIMEOUT (s, default 10)
EOF
  exit 2
}

base_port() { base_port_from ETCD_BASE_PORT 23790 $((10 + MEMBERS)); }

cmd_install() {
  apt_install_missing etcd-server etcd-client curl iproute2
  [[ -x "$ETCD_BIN" ]] || die "$ETCD_BIN is missing after install"
  # No boot-time start of the packaged service (harmless where there is no init system).
  if [[ -x /etc/init.d/etcd ]] && command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
  # Make sure no packaged/default member was left running: an etcd listening on the default
  # client or peer port, or one started by the SysV script (pid file /run/etcd.pid).
  local pids=() pid port
  for port in 2379 2380; do
    while read -r pid; do
      if [[ -n "$pid" ]]; then pids+=("$pid"); fi
    done < <(listeners_on "$port")
  done
  local pidfile
  for pidfile in /run/etcd.pid /var/run/etcd.pid; do
    if [[ -r "$pidfile" ]]; then pids+=("$(tr -dc '0-9' <"$pidfile" || true)"); fi
  done
  stop_packaged "*$TOKEN_PREFIX*" "${pids[@]+"${pids[@]}"}"
  if port_in_use 2379; then
    say "warning: something other than the packaged etcd listens on port 2379"
  fi
  say "ok: $("$ETCD_BIN" --version 2>/dev/null | head -n1)"
}

etcd_version() {
  "$ETCD_BIN" --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -n1
}

cmd_start() {
  local dir="$1"
  [[ -x "$ETCD_BIN" ]] || die "$ETCD_BIN not found: run '$0 install' first"
  local base; base="$(base_port)"
  mkdir -p "$dir/logs" || die "cannot create $dir/logs"
  dir="$(cd "$dir" && pwd)"

  refuse_running "$dir"
  local i pid

  local port
  for ((i = 0; i < MEMBERS; i++)); do
    for port in $((base + i)) $((base + 10 + i)); do
      if port_in_use "$port"; then
        die "port $port is already in use (ETCD_BASE_PORT=$base uses $base-$((base + MEMBERS - 1)) and $((base + 10))-$((base + 10 + MEMBERS - 1))): choose another ETCD_BASE_PORT"
      fi
    done
  done

  local cluster="" sep=""
  for ((i = 1; i <= MEMBERS; i++)); do
    cluster+="${sep}etcd-$i=http://127.0.0.1:$((base + 10 + i - 1))"
    sep=","
  done

  # From here on, a failure stops what was started.
  STARTING_DIR="$dir"
  trap 'stop_recorded "$STARTING_DIR" >/dev/null 2>&1 || true' EXIT
  local cport pport state
  for ((i = 1; i <= MEMBERS; i++)); do
    cport=$((base + i - 1))
    pport=$((base + 10 + i - 1))
    state=new
    if [[ -d "$dir/etcd-$i.data/member" ]]; then
      say "etcd-$i: reusing the existing data in $dir/etcd-$i.data"
      state=existing
    fi
    "$ETCD_BIN" \
      --name "etcd-$i" \
      --data-dir "$dir/etcd-$i.data" \
      --listen-client-urls "http://127.0.0.1:$cport" \
      --advertise-client-urls "http://127.0.0.1:$cport" \
      --listen-peer-urls "http://127.0.0.1:$pport" \
      --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
      --initial-cluster "$cluster" \
      --initial-cluster-token "$TOKEN_PREFIX-$base" \
      --initial-cluster-state "$state" \
      --logger zap --log-outputs stderr \
      </dev/null >>"$dir/logs/etcd-$i.log" 2>&1 &
    printf '%s\n' "$!" >"$dir/etcd-$i.pid"
  done

  # Wait until every member answers /health with "health":"true" (it needs a leader and a
  # committed read), bounded by START_TIMEOUT.
  local deadline=$((SECONDS + START_TIMEOUT)) healthy body tries=0
  while :; do
    healthy=0
    for ((i = 1; i <= MEMBERS; i++)); do
      require_started "$dir" "$i"
      body="$(curl -fsS --max-time 1 "http://127.0.0.1:$((base + i - 1))/health" 2>/dev/null || true)"
      if [[ "$body" == *'"health":"true"'* ]]; then
        healthy=$((healthy + 1))
      fi
    done
    ((healthy == MEMBERS)) && break
    tries=$((tries + 1))
    if ((SECONDS >= deadline || tries > START_TIMEOUT * 20)); then
      log_tails "$dir"
      die "cluster not healthy after ${START_TIMEOUT}s ($healthy of $MEMBERS members healthy)"
    fi
    sleep 0.2
  done
  trap - EXIT

  print_started "$dir" http "$base" "$(etcd_version)"
  say "cluster healthy: $MEMBERS members, data in $dir"
}

dispatch "$@"
