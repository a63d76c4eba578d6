#!/usr/bin/env bash
# The README's first command: set up (toolchain packages, model), build, and run
# `clusterwatch demo`. Extra arguments go to the demo, e.g. `--listen 127.0.0.1:0`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The dev profile compiles every dependency at opt-level 3 (see Cargo.toml), so the model runs at
# full speed, and it shares its build with `scripts/test.sh` instead of compiling everything twice.
cargo build --bin clusterwatch
exec ./target/debug/clusterwatch demo "$@"
