#!/usr/bin/env bash
# Prometheus Alertmanager (Debian's prometheus-alertmanager 0.25) for clusterwatch's tests.
#
#   scripts/alertmanager.sh install   apt-get install prometheus prometheus-alertmanager (if missing)
#   scripts/alertmanager.sh start     run it on 127.0.0.1:19193 with
#                                     deploy/alertmanager/test-alertmanager.yml, wait for /-/ready,
#                                     print ALERTMANAGER_URL=http://127.0.0.1:19193
#   scripts/alertmanager.sh stop      stop it (pidfile), wait for the process to exit
#   scripts/alertmanager.sh status    exit 0 if it is up
#   scripts/alertmanager.sh env       print "export ALERTMANAGER_URL=..."
#
# The config sends every alert to the webhook http://127.0.0.1:19194/hook that the tests serve.
# State (.cache/alertmanager/data: notification log, silences) is wiped at every start, so a
# notification remembered from an earlier run can never suppress one in this run.
#
# Environment (a second, private Alertmanager that a test may stop without touching the shared
# one; the defaults are the shared one's):
#   ALERTMANAGER_INSTANCE       its name picks the directory (.cache/alertmanager-<name>/)
#   ALERTMANAGER_PORT           its port (default 19193)
#   ALERTMANAGER_CONFIG         its config file (default deploy/alertmanager/test-alertmanager.yml)
#   ALERTMANAGER_START_TIMEOUT  seconds start waits for /-/ready (default 30)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/alertmanager${ALERTMANAGER_INSTANCE:+-$ALERTMANAGER_INSTANCE}"
DATA="$CACHE/data"
PIDFILE="$CACHE/alertmanager.pid"
LOGFILE="$CACHE/alertmanager.log"
CONFIG="${ALERTMANAGER_CONFIG:-$ROOT/deploy/alertmanager/test-alertmanager.yml}"
HOST=127.0.0.1
PORT="${ALERTMANAGER_PORT:-19193}"
URL="http://$HOST:$PORT"
BIN=prometheus-alertmanager
START_TIMEOUT="${ALERTMANAGER_START_TIMEOUT:-30}"

log() { echo "alertmanager.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# http_code PATH: the HTTP status of GET $URL$PATH, or 000 (plain bash: curl may be absent).
http_code() {
  local out
  out="$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2"
    printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$3" "$1" "$2" >&3
    head -n 1 <&3
  ' _ "$HOST" "$PORT" "$1" 2>/dev/null || true)"
  [[ "$out" =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] && echo "${BASH_REMATCH[1]}" || echo 000
}

running_pid() { # echo the pid if our pidfile names a live alertmanager
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # comm is cut to 15 characters: "prometheus-aler"
  [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == prometheus-ale* ]] || return 1
  echo "$pid"
}

cmd_install() {
  if command -v "$BIN" >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 \
      && command -v promtool >/dev/null 2>&1; then
    log "already installed ($("$BIN" --version 2>&1 | head -n 1))"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "need root to apt-get install prometheus prometheus-alertmanager"
  export DEBIAN_FRONTEND=noninteractive
  log "installing prometheus prometheus-alertmanager with apt-get"
  apt-get update -qq
  # --no-install-recommends: leaves out prometheus-node-exporter, which the tests do not use.
  apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
  command -v "$BIN" >/dev/null 2>&1 || die "$BIN is still missing after apt-get install"
  log "installed ($("$BIN" --version 2>&1 | head -n 1))"
}

cmd_start() {
  local pid
  if pid="$(running_pid)" && [ "$(http_code /-/ready)" = 200 ]; then
    log "already running (pid $pid)"
    echo "ALERTMANAGER_URL=$URL"
    return 0
  fi
  [ -n "${pid:-}" ] && cmd_stop
  rm -f "$PIDFILE"
  if [ "$(http_code /-/ready)" != 000 ]; then
    die "$HOST:$PORT is taken by a process this script did not start"
  fi
  command -v "$BIN" >/dev/null 2>&1 || cmd_install
  amtool check-config "$CONFIG" >/dev/null || die "amtool check-config $CONFIG failed"

  rm -rf "$DATA"
  mkdir -p "$DATA"
  local t0=$SECONDS
  # --cluster.listen-address= (empty) turns clustering (gossip on 0.0.0.0:9094) off.
  nohup "$BIN" \
    --config.file="$CONFIG" \
    --storage.path="$DATA" \
    --web.listen-address="$HOST:$PORT" \
    --cluster.listen-address= \
    --log.level=info \
    </dev/null >"$LOGFILE" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  while [ "$(http_code /-/ready)" != 200 ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOGFILE" >&2 || true
      rm -f "$PIDFILE"
      die "alertmanager exited during start (log: ${LOGFILE#"$ROOT"/})"
    fi
    if (( SECONDS - t0 >= START_TIMEOUT )); then
      tail -n 20 "$LOGFILE" >&2 || true
      cmd_stop || true
      die "alertmanager not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "ready in $((SECONDS - t0))s (pid $pid, log ${LOGFILE#"$ROOT"/})"
  echo "ALERTMANAGER_URL=$URL"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid="$(running_pid)" && [ "$(http_code /-/ready)" = 200 ]; then
    echo "up: pid $pid, ALERTMANAGER_URL=$URL"
    return 0
  fi
  echo "down"
  return 1
}

cmd_env() {
  echo "export ALERTMANAGER_URL=$URL"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 {install|start|stop|status|env}" >&2; exit 2 ;;
esac
