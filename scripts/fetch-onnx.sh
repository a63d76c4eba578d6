#!/usr/bin/env bash
# Prepares the `onnx` embedder: ONNX Runtime's shared library, and all-MiniLM-L6-v2 as an ONNX
# graph in fp32 and int8.
#
#   - A virtualenv (.cache/onnx-venv) gets pinned onnx, onnxruntime and numpy from PyPI.
#   - libonnxruntime.so is copied out of the onnxruntime wheel into models/onnxruntime/. clusterwatch
#     loads it at run time (`ort` with load-dynamic); ort's own build would download binaries,
#     which an offline build cannot do.
#   - scripts/export_onnx.py writes model.onnx and model-int8.onnx beside model.safetensors
#     (scripts/fetch-model.sh first). No wheel we can fetch ships an ONNX file of this model, and
#     exporting through PyTorch would pull in PyTorch.
#
# Idempotent: skips what is present and current. Run by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "fetch-onnx: $*" >&2; }
trap 'echo "fetch-onnx: ERROR: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

ORT_VERSION=1.20.1      # ONNX Runtime API 20; ort 2.0.0-rc.15 needs API 17 or later
ONNX_VERSION=1.17.0
NUMPY_VERSION=2.2.6
VENV=.cache/onnx-venv
MODEL_DIR=models/all-MiniLM-L6-v2
LIB_DIR=models/onnxruntime
STAMP="$MODEL_DIR/onnx.json"

[ -s "$MODEL_DIR/model.safetensors" ] || { log "no $MODEL_DIR/model.safetensors: run scripts/fetch-model.sh first"; exit 1; }

model_sum=$(sha256sum "$MODEL_DIR/model.safetensors" | cut -d' ' -f1)
export_sum=$(sha256sum scripts/export_onnx.py | cut -d' ' -f1)
if [ -s "$LIB_DIR/libonnxruntime.so" ] && [ -s "$MODEL_DIR/model-int8.onnx" ] && [ -s "$MODEL_DIR/model.onnx" ] \
  && [ -f "$STAMP" ] && grep -q "$model_sum" "$STAMP" && grep -q "$export_sum" "$STAMP" && grep -q "\"$ORT_VERSION\"" "$STAMP"; then
  log "ONNX graphs and runtime up to date ($STAMP)"
  exit 0
fi

if [ ! -x "$VENV/bin/pip" ]; then
  log "creating $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    # Debian splits venv (ensurepip) out of python3; a failed attempt leaves a venv without pip.
    rm -rf "$VENV"
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    else
      log "python3 -m venv failed: install python3-venv"; exit 1
    fi
  }
fi
log "installing onnxruntime==$ORT_VERSION onnx==$ONNX_VERSION numpy==$NUMPY_VERSION into $VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" "numpy==$NUMPY_VERSION"

lib=$("$VENV/bin/python" - <<'EOF'
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
print(libs[0] if libs else "")
EOF
)
[ -n "$lib" ] || { log "no libonnxruntime.so in the onnxruntime wheel"; exit 1; }
mkdir -p "$LIB_DIR"
cp "$lib" "$LIB_DIR/libonnxruntime.so"
log "copied $(basename "$lib") to $LIB_DIR/libonnxruntime.so"

"$VENV/bin/python" scripts/export_onnx.py "$MODEL_DIR"
printf '{"model_sha256": "%s", "export_script_sha256": "%s", "onnxruntime": "%s", "onnx": "%s"}\n' \
  "$model_sum" "$export_sum" "$ORT_VERSION" "$ONNX_VERSION" > "$STAMP"
log "done: $MODEL_DIR/model.onnx, $MODEL_DIR/model-int8.onnx, $LIB_DIR/libonnxruntime.so"
