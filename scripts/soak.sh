#!/usr/bin/env bash
# The soak test of issue 7 ("Load"), outside CI: a release build of clusterwatch produces the demo
# traffic into the real Kafka broker at twice the throughput `bench pipeline` measures (or at
# --rate) for 10 minutes while a `clusterwatch run` child consumes, then prints RSS and lag over
# time, p50/p99 event->cluster latency, produced vs processed and the verdicts.
#
#   scripts/soak.sh                              # static embedder, 10 min, 2x the measured rate
#   scripts/soak.sh --embedder transformer --minutes 2
#   scripts/soak.sh --rate 3000 --json-out soak.json
#
# Uses the broker in .cache/services.env (scripts/services.sh start) or KAFKA_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KAFKA_BOOTSTRAP:-}" ] && [ -f .cache/services.env ]; then
  # shellcheck disable=SC1091
  source .cache/services.env
fi
: "${KAFKA_BOOTSTRAP:?no broker: run scripts/services.sh start, or set KAFKA_BOOTSTRAP}"
export KAFKA_BOOTSTRAP
cargo build --release --bin clusterwatch
exec ./target/release/clusterwatch bench soak "$@"
