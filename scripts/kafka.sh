#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft) broker for clusterwatch's integration tests.
#
#   scripts/kafka.sh install   fetch the broker jars from Maven Central into .cache/kafka/libs
#   scripts/kafka.sh start     start a broker on 127.0.0.1:19092 (controller 19093), wait until it
#                              serves metadata, print KAFKA_BOOTSTRAP=127.0.0.1:19092
#   scripts/kafka.sh stop      stop it (pidfile), wait for the process to exit
#   scripts/kafka.sh restart   stop it and start it again on the same data (topics, offsets and
#                              committed positions survive): the broker-outage fault test
#   scripts/kafka.sh status    exit 0 if it is up
#   scripts/kafka.sh env       print "export KAFKA_BOOTSTRAP=..."
#
# Environment:
#   KAFKA_BOOTSTRAP        an existing broker: start/status only check that it is reachable
#                          (127.0.0.1:19092, this script's own address, is still managed here
#                          unless something else already listens there)
#   KAFKA_HOME             an existing Kafka install: its libs/ is the classpath, no Maven
#   KAFKA_START_TIMEOUT    seconds start waits for the broker (default 90)
#   KAFKA_INSTANCE         a second, private broker: its name picks the directory
#                          (.cache/kafka-<name>/) and KAFKA_PORT / KAFKA_CONTROLLER_PORT its
#                          ports, so a test may stop and restart it without touching the shared one
#
# Everything lives under .cache/kafka/ (git-ignored). See scripts/SERVICES.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/kafka${KAFKA_INSTANCE:+-$KAFKA_INSTANCE}"
LIBS="$ROOT/.cache/kafka/libs"
POM="$ROOT/scripts/kafka/pom.xml"
LOG4J2_CONF="$ROOT/scripts/kafka/log4j2.xml"
PIDFILE="$CACHE/kafka.pid"
CURRENT="$CACHE/current"          # symlink to this run's data-<stamp> dir
HOST=127.0.0.1
PORT="${KAFKA_PORT:-19092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
DEFAULT_BOOTSTRAP="$HOST:$PORT"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# helpers

# port_open HOST PORT: a TCP connect succeeds within 2 s.
port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

split_bootstrap() { # "h1:p1,h2:p2" -> echo "h1 p1" (first entry)
  local first="${1%%,*}"
  first="${first#*://}"
  echo "${first%:*} ${first##*:}"
}

# metadata_ok HOST PORT: sends a Kafka Metadata v4 request (no topics) over /dev/tcp and checks
# that the answer lists at least one broker. Metadata v4 is the oldest version Kafka 4 accepts
# (KIP-896) and is still served by Kafka 2.x/3.x. Prints "node=<id> <host>:<port>" on success.
metadata_ok() {
  local host="$1" port="$2"
  timeout 5 bash -c '
    set -e
    exec 3<>"/dev/tcp/$1/$2"
    # size=17 | api_key=3 (Metadata) | api_version=4 | correlation_id=7 | client_id="cw"
    # | topics=[] (int32 0) | allow_auto_topic_creation=false
    printf "\x00\x00\x00\x11\x00\x03\x00\x04\x00\x00\x00\x07\x00\x02cw\x00\x00\x00\x00\x00" >&3
    head -c 4 <&3 | od -An -tu1 -v | { read -r a b c d; n=$(( (a<<24)|(b<<16)|(c<<8)|d )); head -c "$n" <&3; } | od -An -tu1 -v
  ' _ "$host" "$port" 2>/dev/null | tr -s ' \n' ' ' | {
    # response: correlation_id(4) throttle_ms(4) brokers_count(4) node_id(4) host_len(2) host port(4)
    read -r -a b || true
    [ "${#b[@]}" -ge 18 ] || exit 1
    be32() { echo $(( (b[$1]<<24)|(b[$1+1]<<16)|(b[$1+2]<<8)|b[$1+3] )); }
    [ "$(be32 0)" -eq 7 ] || exit 1
    count=$(be32 8)
    [ "$count" -ge 1 ] && [ "$count" -lt 10000 ] || exit 1
    node=$(be32 12)
    hlen=$(( (b[16]<<8)|b[17] ))
    h=""
    for ((i = 18; i < 18 + hlen; i++)); do h+=$(printf "\\$(printf '%03o' "${b[i]}")"); done
    p=$(be32 $((18 + hlen)))
    echo "node=$node $h:$p"
  }
}

# external: KAFKA_BOOTSTRAP names a broker other than the one this script runs. (When it names
# 127.0.0.1:19092, e.g. after sourcing .cache/services.env, the script still manages its own.)
external() { [ -n "${KAFKA_BOOTSTRAP:-}" ] && [ "$KAFKA_BOOTSTRAP" != "$DEFAULT_BOOTSTRAP" ]; }

running_pid() { # echo the broker's pid if our pidfile names a live java process
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = java ] || return 1
  echo "$pid"
}

ensure_java() {
  if ! command -v java >/dev/null 2>&1; then
    log "java not found; installing openjdk-17-jre-headless with apt-get"
    apt_install openjdk-17-jre-headless
  fi
  local major
  major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  major="${major#1.}"
  [ "${major:-0}" -ge 17 ] 2>/dev/null || die "Kafka 4 brokers need Java 17+, found '${major:-?}'"
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

classpath() {
  if [ -n "${KAFKA_HOME:-}" ]; then
    [ -d "$KAFKA_HOME/libs" ] || die "KAFKA_HOME=$KAFKA_HOME has no libs/ directory"
    echo "$KAFKA_HOME/libs/*"
  else
    echo "$LIBS/*"
  fi
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_install() {
  if external; then
    log "KAFKA_BOOTSTRAP is set ($KAFKA_BOOTSTRAP): nothing to install"
    return 0
  fi
  ensure_java
  if [ -n "${KAFKA_HOME:-}" ]; then
    classpath >/dev/null
    log "using KAFKA_HOME=$KAFKA_HOME: nothing to install"
    return 0
  fi
  # The marker holds the hash of pom.xml: a changed pom (new version) re-installs.
  local want have=""
  want="$(sha256sum "$POM" | cut -d' ' -f1)"
  [ -f "$LIBS/.installed" ] && have="$(cat "$LIBS/.installed")"
  if [ "$want" = "$have" ] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
    log "broker jars already in ${LIBS#"$ROOT"/}"
    return 0
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    log "mvn not found; installing maven with apt-get"
    apt_install maven
  fi
  mkdir -p "$(dirname "$LIBS")" "$CACHE"
  local tmp="$LIBS.tmp.$$"
  rm -rf "$tmp"
  log "fetching the broker jars with Maven (first run: ~45 MB, ~30 s)"
  # Maven's output goes to a file (even -B -q prints stray ANSI resets); shown on failure.
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$CACHE/mvn.log" 2>&1; then
    tail -n 40 "$CACHE/mvn.log" >&2
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed (full output: ${CACHE#"$ROOT"/}/mvn.log)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "no kafka_2.13 jar was copied"; }
  echo "$want" >"$tmp/.installed"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  local jars=("$LIBS"/*.jar)
  log "installed ${#jars[@]} jars into ${LIBS#"$ROOT"/}"
}

cmd_start() {
  if external; then
    local h p
    read -r h p <<<"$(split_bootstrap "$KAFKA_BOOTSTRAP")"
    port_open "$h" "$p" || die "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set but $h:$p is not reachable"
    echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
    return 0
  fi

  local pid t_start=$SECONDS
  if pid="$(running_pid)"; then
    if metadata_ok "$HOST" "$PORT" >/dev/null; then
      log "already running (pid $pid)"
      echo "KAFKA_BOOTSTRAP=$DEFAULT_BOOTSTRAP"
      return 0
    fi
    log "pid $pid is alive but does not answer on $DEFAULT_BOOTSTRAP; restarting it"
    cmd_stop
  fi
  rm -f "$PIDFILE"
  if [ -n "${KAFKA_BOOTSTRAP:-}" ] && port_open "$HOST" "$PORT"; then
    log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set and reachable; not starting a broker"
    echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
    return 0
  fi
  if port_open "$HOST" "$PORT" || port_open "$HOST" "$CONTROLLER_PORT"; then
    die "port $PORT or $CONTROLLER_PORT on $HOST is taken by a process this script did not start" \
        "(set KAFKA_BOOTSTRAP to use an existing broker)"
  fi

  [ -n "${KAFKA_HOME:-}" ] || cmd_install
  ensure_java
  local cp
  cp="$(classpath)"

  # Fresh data and logs for every start; drop the previous runs'.
  mkdir -p "$CACHE"
  local run
  run="$CACHE/data-$(date +%Y%m%d-%H%M%S)-$$"
  find "$CACHE" -maxdepth 1 -name 'data-*' -type d -exec rm -rf {} +
  mkdir -p "$run/kraft" "$run/logs/tools"
  ln -sfn "$run" "$CURRENT"

  cat >"$run/server.properties" <<EOF
# Written by scripts/kafka.sh: one KRaft node that is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$run/kraft
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF

  # Short-lived JVMs for the storage tool: C1 only and the serial GC start ~1 s faster here.
  local tool_opts=(-XX:TieredStopAtLevel=1 -XX:+UseSerialGC
                   "-Dlog4j2.configurationFile=$LOG4J2_CONF" "-Dkafka.logs.dir=$run/logs/tools")
  local cluster_id
  cluster_id="$(java "${tool_opts[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid 2>>"$run/logs/tools/storage-tool.out" | tail -n 1)"
  [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid printed '$cluster_id' (see $run/logs/tools/storage-tool.out)"
  java "${tool_opts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$run/server.properties" >>"$run/logs/tools/storage-tool.out" 2>&1 \
    || { tail -n 20 "$run/logs/tools/storage-tool.out" >&2; die "StorageTool format failed"; }

  launch "$run" "$t_start"
}

# launch RUN_DIR T_START: starts the broker on RUN_DIR's formatted storage and waits until it
# serves metadata.
launch() {
  local run="$1" t_start="$2" pid
  local t0=$SECONDS
  local jvm_opts=(-Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
                  -Djava.awt.headless=true
                  "-Dlog4j2.configurationFile=$LOG4J2_CONF" "-Dkafka.logs.dir=$run/logs")
  if [ -n "${KAFKA_HOME:-}" ] && [ -f "$KAFKA_HOME/config/log4j.properties" ]; then
    jvm_opts+=("-Dlog4j.configuration=file:$KAFKA_HOME/config/log4j.properties") # Kafka 3.x
  fi
  nohup java "${jvm_opts[@]}" -cp "$cp" kafka.Kafka "$run/server.properties" \
    </dev/null >>"$run/logs/kafkaServer.out" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  log "started pid $pid, logs in ${run#"$ROOT"/}/logs/, waiting up to ${START_TIMEOUT}s"

  local started=""
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "broker exited during start; last lines of its logs:"
      tail -n 30 "$run/logs/kafkaServer.out" "$run/logs/server.log" >&2 2>/dev/null || true
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ -z "$started" ] && grep -qs 'Kafka Server started' "$run/logs/server.log" "$run/logs/kafkaServer.out"; then
      started=1
    fi
    if [ -n "$started" ] && metadata_ok "$HOST" "$PORT" >/dev/null; then
      break
    fi
    if (( SECONDS - t0 >= START_TIMEOUT )); then
      log "broker not ready after ${START_TIMEOUT}s; last lines of its logs:"
      tail -n 30 "$run/logs/server.log" "$run/logs/kafkaServer.out" >&2 2>/dev/null || true
      cmd_stop || true
      exit 1
    fi
    sleep 0.5
  done
  log "ready: $((SECONDS - t_start))s in all, $((SECONDS - t0))s after launching the broker ($(metadata_ok "$HOST" "$PORT"))"
  echo "KAFKA_BOOTSTRAP=$DEFAULT_BOOTSTRAP"
}

cmd_restart() {
  external && die "KAFKA_BOOTSTRAP names an external broker; not restarting it"
  [ -d "$CURRENT/kraft" ] || die "no broker data in $CURRENT; start one first"
  cmd_stop
  ensure_java
  local t_start=$SECONDS cp
  cp="$(classpath)"
  launch "$(readlink -f "$CURRENT")" "$t_start"
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
  for ((i = 0; i < 300; i++)); do # 30 s for a controlled shutdown
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  local h p
  if external; then
    read -r h p <<<"$(split_bootstrap "$KAFKA_BOOTSTRAP")"
    if port_open "$h" "$p"; then echo "up: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP (external)"; return 0; fi
    echo "down: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is not reachable"; return 1
  fi
  local pid info
  if pid="$(running_pid)" && info="$(metadata_ok "$HOST" "$PORT")"; then
    echo "up: pid $pid, KAFKA_BOOTSTRAP=$DEFAULT_BOOTSTRAP ($info)"
    return 0
  fi
  if [ -n "${KAFKA_BOOTSTRAP:-}" ] && ! running_pid >/dev/null && port_open "$HOST" "$PORT"; then
    echo "up: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP (not started by this script)"
    return 0
  fi
  echo "down"
  return 1
}

cmd_env() {
  echo "export KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-$DEFAULT_BOOTSTRAP}"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_restart ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 {install|start|stop|status|env}" >&2; exit 2 ;;
esac
