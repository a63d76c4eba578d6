#!/usr/bin/env bash
# Builds the Python virtualenv used by `clusterwatch bench clustering` to run
# the BERTopic comparison (scripts/bertopic_online.py). It is a benchmark
# harness only, not part of the service.
#
# The venv lives at .cache/bertopic-venv inside the repository (.cache/ is
# git-ignored). Everything is pinned and installed with --no-deps, so the set
# is exactly the list below. BERTopic's declared dependencies also include
# sentence-transformers (torch), umap-learn (numba/llvmlite), hdbscan and
# plotly; none of them is needed here: the benchmark passes embeddings in, uses
# IncrementalPCA + MiniBatchKMeans from scikit-learn for the online recipe, and
# BERTopic 0.17.4 imports umap/hdbscan/plotly only optionally. The script
# checks that `from bertopic import BERTopic` and
# `from bertopic.vectorizers import OnlineCountVectorizer` work.
#
# Idempotent: a stamp file records the pin list; when it matches and the
# imports work, nothing is reinstalled. Set BERTOPIC_VENV_FORCE=1 to rebuild.
#
# Usage: scripts/bertopic-venv.sh            (from anywhere)
#        PYTHON=python3.11 scripts/bertopic-venv.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/bertopic-venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.clusterwatch-pins"

# BERTopic and the import-time closure of what its online mode needs.
PINS=(
  bertopic==0.17.4
  numpy==2.3.5
  scipy==1.16.3
  scikit-learn==1.7.2
  joblib==1.5.2
  threadpoolctl==3.6.0
  pandas==2.3.3
  python-dateutil==2.9.0.post0
  pytz==2025.2
  tzdata==2025.2
  six==1.17.0
  tqdm==4.67.1
  PyYAML==6.0.3
  packaging==25.0
)

log() { echo "[bertopic-venv] $*" >&2; }
die() { echo "[bertopic-venv] ERROR: $*" >&2; exit 1; }

CHECK='from bertopic import BERTopic; from bertopic.vectorizers import OnlineCountVectorizer; from sklearn.decomposition import IncrementalPCA; from sklearn.cluster import MiniBatchKMeans; import bertopic; print(bertopic.__version__)'

want="$(printf '%s\n' "${PINS[@]}")"
if [[ "${BERTOPIC_VENV_FORCE:-0}" != 1 && -x "$VENV/bin/python" && -f "$STAMP" ]] \
   && [[ "$(cat "$STAMP")" == "$want" ]]; then
  if ver="$("$VENV/bin/python" -c "$CHECK" 2>/dev/null)"; then
    log "up to date: $VENV (bertopic $ver)"
    exit 0
  fi
  log "venv exists but the imports fail; reinstalling"
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$PYTHON is older than 3.10; the pinned wheels need Python >= 3.10"

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtualenv at $VENV with $($PYTHON --version 2>&1)"
  mkdir -p "$ROOT/.cache"
  "$PYTHON" -m venv "$VENV" || die "could not create the virtualenv (is python3-venv installed?)"
fi

log "installing (--no-deps, pinned): ${PINS[*]}"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
      --no-deps --only-binary=:all: "${PINS[@]}" >&2; then
  rm -f "$STAMP"
  die "pip install failed (network? no wheel for this Python/platform?). See the pip output above."
fi

log "checking imports"
if ! ver="$("$VENV/bin/python" -c "$CHECK")"; then
  rm -f "$STAMP"
  die "installed, but 'from bertopic import BERTopic' / OnlineCountVectorizer failed to import (see above)"
fi
printf '%s\n' "${PINS[@]}" > "$STAMP"
log "done in $(( $(date +%s) - start ))s: $VENV (bertopic $ver)"
log "run: $VENV/bin/python $ROOT/scripts/bertopic_online.py --help"
