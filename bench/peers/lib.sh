# shellcheck shell=bash
# lib.sh: what etcd.sh and nats.sh share (sourced, not run). Before sourcing, a script sets
#   SCRIPT        its name, for messages
#   PEER_BIN      the server binary its processes run
#   PEER_PREFIX   the name of its processes and pid files: <prefix>-N, DIR/<prefix>-N.pid
#   PEER_COUNT    how many it runs
#   STOP_TIMEOUT  seconds a process may take to stop after TERM
# Every loop here is bounded in count.

say() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Prints the base port from the variable named $1 (default $2), checked so that base + $3
# stays a valid unprivileged port.
base_port_from() {
  local var="$1" default="$2" span="$3" base
  base="${!var:-$default}"
  [[ "$base" =~ ^[0-9]+$ ]] || die "$var='$base' is not a number"
  (( base >= 1024 && base + span <= 65535 )) \
    || die "$var=$base out of range (1024..$((65535 - span)))"
  printf '%s\n' "$base"
}

# True if something listens on PORT (on any address).
port_in_use() {
  local port="$1" out
  if command -v ss >/dev/null 2>&1; then
    out="$(ss -Hltn "sport = :$port" 2>/dev/null || true)"
    [[ -n "$out" ]]
  else
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null
  fi
}

# True if PID exists and is not a zombie (PID 1 here may reap stopped servers slowly).
alive() {
  local pid="$1" stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null || true)"
  stat="${stat##*) }"
  [[ -n "$stat" && "${stat:0:1}" != "Z" ]]
}

# True if PID is alive and runs PEER_BIN (guards against a recycled pid).
is_peer_pid() {
  local pid="$1" exe
  alive "$pid" || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  # A binary replaced by an upgrade shows as "<path> (deleted)".
  [[ "$exe" == "$PEER_BIN" || "$exe" == "$PEER_BIN (deleted)" ]]
}

# TERM the pid, wait up to STOP_TIMEOUT seconds, then KILL and wait up to 5 s more.
stop_pid() {
  local name="$1" pid="$2" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive "$pid" || { say "$name (pid $pid) stopped"; return 0; }
    sleep 0.1
  done
  say "$name (pid $pid) still running after ${STOP_TIMEOUT}s: KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  say "warning: $name (pid $pid) survived KILL"
  return 1
}

# Stops every process recorded in DIR (pid files), removing the pid files.
stop_recorded() {
  local dir="$1" i pidfile pid rc=0
  for ((i = 1; i <= PEER_COUNT; i++)); do
    pidfile="$dir/$PEER_PREFIX-$i.pid"
    [[ -e "$pidfile" ]] || continue
    pid="$(tr -dc '0-9' <"$pidfile" || true)"
    if [[ -n "$pid" ]] && is_peer_pid "$pid"; then
      stop_pid "$PEER_PREFIX-$i" "$pid" || rc=1
    else
      say "$PEER_PREFIX-$i: not running (stale pid file)"
    fi
    rm -f "$pidfile"
  done
  return "$rc"
}

cmd_stop() {
  local dir="$1"
  if [[ ! -d "$dir" ]]; then
    say "nothing to stop: $dir does not exist"
    return 0
  fi
  stop_recorded "$dir" || die "some process of $dir could not be stopped"
}

# Refuses to start over processes already running from DIR; removes stale pid files.
refuse_running() {
  local dir="$1" i pid pidfile
  for ((i = 1; i <= PEER_COUNT; i++)); do
    pidfile="$dir/$PEER_PREFIX-$i.pid"
    if [[ -e "$pidfile" ]]; then
      pid="$(tr -dc '0-9' <"$pidfile" || true)"
      if [[ -n "$pid" ]] && is_peer_pid "$pid"; then
        die "$PEER_PREFIX-$i already runs from $dir (pid $pid): run '$SCRIPT stop $dir' first"
      fi
      rm -f "$pidfile"
    fi
  done
}

# apt-installs the packages given that are missing. A package's postinst may start its
# service (etcd-server's SysV script does); a policy-rc.d answering 101 forbids that, so a
# temporary one goes in place if the machine has none (container images usually ship one).
apt_install_missing() {
  export DEBIAN_FRONTEND=noninteractive
  local missing=() pkg status
  for pkg in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    say "installed already: $*"
    return 0
  fi
  [[ "$(id -u)" == 0 ]] || die "installing ${missing[*]} needs root"
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary, from sealpost bench/peers/%s install\nexit 101\n' "$SCRIPT" >"$policy"
    chmod 755 "$policy"
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  say "installing: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  if ((made_policy)); then rm -f "$policy"; trap - EXIT; fi
}

# Prints the pids of processes listening on PORT.
listeners_on() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 || true
}

# Dies, with the end of its log, if process I of DIR (from its pid file) has exited.
require_started() {
  local dir="$1" i="$2" pid
  pid="$(tr -dc '0-9' <"$dir/$PEER_PREFIX-$i.pid")"
  if ! alive "$pid"; then
    say "$PEER_PREFIX-$i (pid $pid) exited during start; end of $dir/logs/$PEER_PREFIX-$i.log:"
    tail -n 15 "$dir/logs/$PEER_PREFIX-$i.log" >&2 || true
    die "$PEER_PREFIX-$i did not start"
  fi
}

# Prints the end of every process's log in DIR (after a start that timed out).
log_tails() {
  local dir="$1" i
  for ((i = 1; i <= PEER_COUNT; i++)); do
    say "end of $dir/logs/$PEER_PREFIX-$i.log:"
    tail -n 5 "$dir/logs/$PEER_PREFIX-$i.log" >&2 || true
  done
}

# What `start` prints on stdout for the benchmark: `version V`, then `endpoint URL` for the
# client port BASE+N-1 of each process (SCHEME://127.0.0.1:PORT), then `pid NAME PID`.
print_started() {
  local dir="$1" scheme="$2" base="$3" version="$4" i
  printf 'version %s\n' "$version"
  for ((i = 1; i <= PEER_COUNT; i++)); do
    printf 'endpoint %s://127.0.0.1:%s\n' "$scheme" "$((base + i - 1))"
  done
  for ((i = 1; i <= PEER_COUNT; i++)); do
    printf 'pid %s-%s %s\n' "$PEER_PREFIX" "$i" "$(tr -dc '0-9' <"$dir/$PEER_PREFIX-$i.pid")"
  done
}

# Stops every PEER_BIN process among PIDS... whose command line does not match the glob
# OURS: a service the package install left running (not one of the benchmark's).
stop_packaged() {
  local ours="$1" pid cmdline stopped=" "
  shift
  for pid in "$@"; do
    [[ -n "$pid" && "$stopped" != *" $pid "* ]] || continue
    is_peer_pid "$pid" || continue
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    # shellcheck disable=SC2053 # OURS is a glob on purpose
    if [[ "$cmdline" != $ours ]]; then
      say "stopping the packaged $PEER_PREFIX (pid $pid), left running by the install"
      stop_pid "packaged $PEER_PREFIX" "$pid" || true
      stopped+="$pid "
    fi
  done
}

# The subcommands every peer script takes.
dispatch() {
  case "${1:-}" in
    install) (($# == 1)) || usage; cmd_install ;;
    start) (($# == 2)) || usage; cmd_start "$2" ;;
    stop) (($# == 2)) || usage; cmd_stop "$2" ;;
    *) usage ;;
  esac
}
