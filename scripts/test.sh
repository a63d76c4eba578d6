#!/usr/bin/env bash
# The README's second command, and what CI runs (.ci/run): set up, start a real Kafka broker
# (KRaft, single node on 127.0.0.1) and Alertmanager, then run every test.
#
# Honours KAFKA_BOOTSTRAP (use that broker) and KAFKA_HOME (use that Kafka install); see
# scripts/kafka.sh. Services started here are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# Compile while the services install and start: both take minutes on a fresh machine.
# The log is kept whole: a failed build prints its errors below instead of a truncated tail.
mkdir -p .cache
build_log=.cache/test-build.log
cargo test --all-targets --no-run >"$build_log" 2>&1 &
build_pid=$!

started_services=0
cleanup() {
  if [ "$started_services" = 1 ]; then bash scripts/services.sh stop || true; fi
}
trap cleanup EXIT
bash scripts/services.sh start
started_services=1
# shellcheck disable=SC1091
source .cache/services.env
export KAFKA_BOOTSTRAP ALERTMANAGER_URL

if ! wait "$build_pid"; then
  echo "test.sh: the test build failed; its output:" >&2
  grep -v '^ *Compiling ' "$build_log" >&2 || true
  df -h . >&2 || true
  exit 1
fi
tail -n 3 "$build_log"

# Two test threads: the integration tests each run the real model, and the machine has 2 cores.
cargo test --all-targets -- --test-threads=2
bash scripts/fuzz.sh smoke
