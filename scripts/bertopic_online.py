#!/usr/bin/env python3
"""BERTopic ONLINE-mode baseline for `clusterwatch bench clustering`.

What it measures
    The speed and clustering quality of BERTopic's documented online topic
    modelling recipe ("Online Topic Modeling" in the BERTopic docs) on
    embeddings that are handed to it, so no embedding model runs here:

        BERTopic(umap_model=IncrementalPCA(n_components=5),
                 hdbscan_model=MiniBatchKMeans(n_clusters=K, random_state=0),
                 vectorizer_model=OnlineCountVectorizer(stop_words="english", decay=.01))
        for each consecutive batch of --batch documents:
            topic_model.partial_fit(docs_batch, embeddings=vectors_batch)
            topics.extend(topic_model.topics_)

    Only the partial_fit loop is timed (wall clock, time.perf_counter); loading
    the inputs, importing BERTopic and building the model are not. The topic
    each document got in the batch it arrived with (BERTopic's `topics_` holds
    only the LAST batch's assignments after a partial_fit, so they are
    accumulated as the docs' recipe does) is scored against the truth labels
    with scikit-learn's normalized_mutual_info_score and
    adjusted_mutual_info_score.

How the Rust bench calls it
    `clusterwatch bench clustering` writes the same vectors it clusters
    itself to files and runs, in the same invocation,

        .cache/bertopic-venv/bin/python scripts/bertopic_online.py \\
            --vectors V.f32 --dim 384 --docs docs.txt --labels labels.txt \\
            [--batch 1000] [--clusters K]

    then reads the single JSON line printed on stdout:

        {"system":"bertopic-online","bertopic_version":...,"events":N,
         "seconds":S,"events_per_sec":E,"nmi":X,"ami":Y,"topics":T,
         "batch":B,"clusters":K}

    Everything else (progress, warnings) goes to stderr. Exit status is
    non-zero, with a message on stderr, when the inputs are inconsistent or
    BERTopic fails.

Inputs
    --vectors  raw little-endian f32, row-major, --dim columns (unit-norm rows)
    --docs     one document (a short request summary) per line, same order
    --labels   one truth label per line (integers), same order
    --clusters MiniBatchKMeans n_clusters; default = number of distinct labels

The venv comes from scripts/bertopic-venv.sh. This is a comparison harness,
not part of the clusterwatch service.
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark BERTopic's online mode (partial_fit) on given embeddings; "
        "prints one JSON line on stdout."
    )
    p.add_argument("--vectors", required=True, help="raw little-endian f32, row-major")
    p.add_argument("--dim", type=int, required=True, help="columns per vector")
    p.add_argument("--docs", required=True, help="one document per line")
    p.add_argument("--labels", required=True, help="one integer truth label per line")
    p.add_argument("--batch", type=int, default=1000, help="documents per partial_fit (default 1000)")
    p.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="MiniBatchKMeans n_clusters (default: number of distinct labels)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/OpenMP/numba threads (default 1, to compare with a one-core Rust run)",
    )
    return p.parse_args(argv)


ARGS = parse_args()

# Single-threaded by default: the Rust side is measured on one core, so the
# BLAS (OpenBLAS/MKL), OpenMP (scikit-learn's k-means) and numba thread pools
# are pinned to --threads (default 1). These must be set before numpy is
# imported, which is why argument parsing happens first.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import warnings  # noqa: E402

import numpy as np  # noqa: E402


def log(msg):
    print(f"[bertopic_online] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(f"ERROR: {msg}")
    sys.exit(2)


def read_lines(path):
    # Split on "\n" only (not str.splitlines, which also splits on \x0b,
    # \u2028, ... and would shift the alignment with the vectors).
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def load_inputs(args):
    if args.dim <= 0:
        fail("--dim must be positive")
    if args.batch <= 0:
        fail("--batch must be positive")
    try:
        raw = np.fromfile(args.vectors, dtype="<f4")
    except OSError as e:
        fail(f"cannot read --vectors {args.vectors}: {e}")
    if raw.size == 0 or raw.size % args.dim != 0:
        fail(f"--vectors has {raw.size} floats, not a positive multiple of --dim {args.dim}")
    # Handed to BERTopic as float64: with float32 input, scikit-learn 1.7's
    # IncrementalPCA returns float64 from the first partial_fit's transform and
    # float32 from later ones, and MiniBatchKMeans.partial_fit then fails with
    # "Buffer dtype mismatch, expected 'const double' but got 'float'". The
    # conversion is done here, outside the timed loop.
    vectors = raw.reshape(-1, args.dim).astype(np.float64)
    if not np.isfinite(vectors).all():
        fail("--vectors contains NaN or infinite values")

    try:
        docs = read_lines(args.docs)
        label_lines = read_lines(args.labels)
    except OSError as e:
        fail(f"cannot read inputs: {e}")
    try:
        labels = [int(x.strip()) for x in label_lines]
    except ValueError as e:
        fail(f"--labels must hold one integer per line: {e}")

    n = vectors.shape[0]
    if len(docs) != n or len(labels) != n:
        fail(f"row counts differ: vectors={n}, docs={len(docs)}, labels={len(labels)}")
    return vectors, docs, np.asarray(labels)


def main(args):
    vectors, docs, labels = load_inputs(args)
    n = vectors.shape[0]
    k = args.clusters if args.clusters is not None else int(np.unique(labels).size)
    n_components = 5
    if k <= 0:
        fail("--clusters must be positive")
    first = min(args.batch, n)
    # MiniBatchKMeans needs >= n_clusters samples and IncrementalPCA >=
    # n_components samples in the first partial_fit call.
    if first < max(k, n_components):
        fail(
            f"the first batch has {first} documents but MiniBatchKMeans(n_clusters={k}) and "
            f"IncrementalPCA(n_components={n_components}) need at least {max(k, n_components)}; "
            "raise --batch or lower --clusters"
        )
    log(f"{n} events, dim {vectors.shape[1]}, batch {args.batch}, clusters {k}, threads {args.threads}")

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bertopic
        from bertopic import BERTopic
        from bertopic.vectorizers import OnlineCountVectorizer
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.decomposition import IncrementalPCA
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
    log(f"imported bertopic {bertopic.__version__} in {time.perf_counter() - t0:.2f}s")

    # The recipe from BERTopic's "Online Topic Modeling" page, with the
    # embeddings given instead of computed.
    umap_model = IncrementalPCA(n_components=n_components)
    cluster_model = MiniBatchKMeans(n_clusters=k, random_state=0)
    vectorizer_model = OnlineCountVectorizer(stop_words="english", decay=0.01)
    topic_model = BERTopic(
        umap_model=umap_model,
        hdbscan_model=cluster_model,
        vectorizer_model=vectorizer_model,
    )

    topics = []
    batches = (n + args.batch - 1) // args.batch
    report_every = max(1, batches // 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        for b, i in enumerate(range(0, n, args.batch)):
            topic_model.partial_fit(docs[i : i + args.batch], embeddings=vectors[i : i + args.batch])
            # topics_ holds only this batch's assignments; accumulate them.
            topics.extend(topic_model.topics_)
            if (b + 1) % report_every == 0 or b + 1 == batches:
                log(f"batch {b + 1}/{batches}: {len(topics)} events, {time.perf_counter() - start:.2f}s")
        seconds = time.perf_counter() - start

    if len(topics) != n:
        fail(f"BERTopic returned {len(topics)} topic assignments for {n} documents")
    topics = np.asarray(topics)
    nmi = float(normalized_mutual_info_score(labels, topics))
    ami = float(adjusted_mutual_info_score(labels, topics))

    result = {
        "system": "bertopic-online",
        "bertopic_version": bertopic.__version__,
        "events": int(n),
        "seconds": round(seconds, 6),
        "events_per_sec": round(n / seconds, 3) if seconds > 0 else None,
        "nmi": round(nmi, 6),
        "ami": round(ami, 6),
        "topics": int(np.unique(topics).size),
        "batch": int(args.batch),
        "clusters": int(k),
    }
    return result


if __name__ == "__main__":
    import contextlib

    try:
        # Anything a library prints goes to stderr; stdout carries only the JSON line.
        real_stdout = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            result = main(ARGS)
        real_stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
        real_stdout.flush()
    except SystemExit:
        raise
    except Exception as e:  # report BERTopic/sklearn failures on stderr, non-zero exit
        import traceback

        traceback.print_exc(file=sys.stderr)
        fail(f"{type(e).__name__}: {e}")
