#!/usr/bin/env bash
# The real external services that clusterwatch's integration tests use.
#
#   scripts/services.sh start    install (if needed) and start Kafka and Alertmanager; print
#                                "export NAME=value" lines and write them to .cache/services.env
#   scripts/services.sh stop     stop both (no error if they are not running)
#   scripts/services.sh status   exit 0 if both are up
#
# Typical use in .ci/run:
#   scripts/services.sh start
#   trap 'scripts/services.sh stop' EXIT
#   source .cache/services.env          # KAFKA_BOOTSTRAP, ALERTMANAGER_URL
#
# KAFKA_BOOTSTRAP / KAFKA_HOME are honoured as in scripts/kafka.sh. See scripts/SERVICES.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
S="$ROOT/scripts"
ENV_FILE="$ROOT/.cache/services.env"

log() { echo "services.sh: $*" >&2; }

cmd_start() {
  local t0=$SECONDS
  mkdir -p "$ROOT/.cache"
  "$S/chromium.sh" # headless Chromium for tests/explorer.rs; before the parallel apt-gets below
  # The two installs are independent (apt vs Maven): on a fresh machine run them side by side,
  # unless kafka.sh itself needs apt-get (no java or mvn), which would fight over dpkg's lock.
  if command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then
    local am_log="$ROOT/.cache/alertmanager-install.log" am_pid
    "$S/alertmanager.sh" install >"$am_log" 2>&1 &
    am_pid=$!
    if ! "$S/kafka.sh" install; then
      wait "$am_pid" || true
      log "kafka install failed"
      exit 1
    fi
    if ! wait "$am_pid"; then
      cat "$am_log" >&2
      log "alertmanager install failed"
      exit 1
    fi
    cat "$am_log" >&2
    rm -f "$am_log"
  else
    "$S/alertmanager.sh" install
    "$S/kafka.sh" install
  fi

  "$S/alertmanager.sh" start >/dev/null
  if ! "$S/kafka.sh" start >/dev/null; then
    log "kafka start failed; stopping alertmanager"
    "$S/alertmanager.sh" stop || true
    exit 1
  fi
  { "$S/kafka.sh" env; "$S/alertmanager.sh" env; } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  log "services up in $((SECONDS - t0))s; environment in ${ENV_FILE#"$ROOT"/}"
  cat "$ENV_FILE"
}

cmd_stop() {
  local rc=0
  "$S/kafka.sh" stop || rc=1
  "$S/alertmanager.sh" stop || rc=1
  rm -f "$ENV_FILE"
  return "$rc"
}

cmd_status() {
  local rc=0
  "$S/kafka.sh" status || rc=1
  "$S/alertmanager.sh" status || rc=1
  return "$rc"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
