#!/usr/bin/env bash
# The README's first command: set up (toolchain packages, model), build, and run
# `clusterwatch demo`. Extra arguments go to the demo, e.g. `--listen 127.0.0.1:0`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin clusterwatch
exec ./target/release/clusterwatch demo "$@"
