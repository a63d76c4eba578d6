"""Writes all-MiniLM-L6-v2 as an ONNX graph, in fp32 and dynamically quantised to int8.

clusterwatch's `onnx` embedder runs the transformer through ONNX Runtime instead of candle. No
ONNX file of the model ships in any wheel we can fetch offline, and exporting through PyTorch
would pull in PyTorch, so this script writes the BERT graph itself, op by op, from the same
model.safetensors the candle path loads (scripts/fetch-model.sh). The graph takes `input_ids`
and `attention_mask` (int64, batch x sequence) and returns `sentence_embedding` (batch x 384):
mean pooling over the mask and L2 normalisation happen inside the graph, as in
sentence-transformers, so the Rust side only tokenizes.

Then `onnxruntime.quantization.quantize_dynamic` makes the int8 variant: weights of every MatMul
stored as int8 (per output channel), activations quantised on the fly.

    python scripts/export_onnx.py models/all-MiniLM-L6-v2

Writes model.onnx and model-int8.onnx beside model.safetensors. Run by scripts/fetch-onnx.sh
in a virtualenv holding onnx, onnxruntime and numpy.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def read_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    dtypes = {"F32": np.float32, "I64": np.int64}
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]])
        tensors[name] = array.reshape(meta["shape"])
    return tensors


class Graph:
    """A list of nodes and initializers with fresh names."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self.count = 0
        # MatMuls of two activations (attention scores and context): left in fp32, as the
        # quantiser would quantise both sides on the fly and the scores are where precision
        # matters most.
        self.activation_matmuls = []

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build(tensors, config):
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))
    g = Graph()

    def t(name):
        return tensors[name].astype(np.float32)

    def linear(x, prefix):
        # x @ W^T + b, with W^T stored once so the quantiser sees a plain MatMul weight.
        w = g.const(prefix + ".wt", np.ascontiguousarray(t(prefix + ".weight").T))
        b = g.const(prefix + ".b", t(prefix + ".bias"))
        return g.op("Add", [g.op("MatMul", [x, w]), b])

    def layer_norm(x, prefix):
        scale = g.const(prefix + ".g", t(prefix + ".weight"))
        bias = g.const(prefix + ".beta", t(prefix + ".bias"))
        return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)

    # Embeddings: word + position + token type 0 (every input is one segment).
    words = g.op("Gather", [g.const("word_emb", t("embeddings.word_embeddings.weight")), "input_ids"])
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one", np.array(1, np.int64))])
    positions = g.op(
        "Range", [g.const("zero", np.array(0, np.int64)), seq_len, g.const("step", np.array(1, np.int64))]
    )
    pos = g.op("Gather", [g.const("pos_emb", t("embeddings.position_embeddings.weight")), positions])
    token_type = g.const("type0", t("embeddings.token_type_embeddings.weight")[0])
    x = g.op("Add", [g.op("Add", [words, pos]), token_type])
    x = layer_norm(x, "embeddings.LayerNorm")

    # Additive attention mask: 0 where attended, -10000 at padding (as BERT), (b, 1, 1, s).
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("onef", np.array(1.0, np.float32)), mask])
    additive = g.op("Mul", [inverted, g.const("neg", np.array(-10000.0, np.float32))])
    additive = g.op("Unsqueeze", [additive, g.const("axes12", np.array([1, 2], np.int64))])

    split_heads = g.const("split", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("merge", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    sqrt2 = g.const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(name, perm):
            projected = linear(x, f"{p}.attention.self.{name}")
            return g.op("Transpose", [g.op("Reshape", [projected, split_heads])], perm=perm)

        q = heads_of("query", [0, 2, 1, 3])  # (b, h, s, d)
        k = heads_of("key", [0, 2, 3, 1])  # (b, h, d, s)
        v = heads_of("value", [0, 2, 1, 3])  # (b, h, s, d)
        raw_scores = g.op("MatMul", [q, k])
        scores = g.op("Add", [g.op("Mul", [raw_scores, scale]), additive])
        probs = g.op("Softmax", [scores], axis=-1)
        weighted = g.op("MatMul", [probs, v])
        g.activation_matmuls += [raw_scores, weighted]
        context = g.op("Transpose", [weighted], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads])
        attended = linear(context, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attended, x]), f"{p}.attention.output.LayerNorm")

        inner = linear(x, f"{p}.intermediate.dense")
        # Exact GELU, as the model was trained: x * 0.5 * (1 + erf(x / sqrt 2)).
        erf = g.op("Erf", [g.op("Div", [inner, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [inner, half]), g.op("Add", [erf, g.const("onef", np.array(1.0, np.float32))])])
        out = linear(gelu, f"{p}.output.dense")
        x = layer_norm(g.op("Add", [out, x]), f"{p}.output.LayerNorm")

    # Mean pooling over attended positions, then L2 normalisation.
    weights = g.op("Unsqueeze", [mask, g.const("axis2", np.array([2], np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, weights]), g.const("axis1", np.array([1], np.int64))], keepdims=0)
    counts = g.op("ReduceSum", [mask, g.const("axis1b", np.array([1], np.int64))], keepdims=1)
    counts = g.op("Max", [counts, g.const("tiny", np.array(1e-9, np.float32))])
    pooled = g.op("Div", [summed, counts])
    g.nodes.append(helper.make_node("LpNormalization", [pooled], ["sentence_embedding"], axis=-1, p=2))

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="clusterwatch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, g.activation_matmuls


def main():
    model_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2")
    config = json.loads((model_dir / "config.json").read_text())
    tensors = read_safetensors(model_dir / "model.safetensors")
    model, activation_matmuls = build(tensors, config)
    fp32 = model_dir / "model.onnx"
    onnx.save(model, fp32)
    print(f"export_onnx: wrote {fp32} ({fp32.stat().st_size} bytes)")

    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = model_dir / "model-int8.onnx"
    quantize_dynamic(
        str(fp32),
        str(int8),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=activation_matmuls,
    )
    print(f"export_onnx: wrote {int8} ({int8.stat().st_size} bytes)")

    # A smoke check against the graph's own invariants: unit vectors, padding ignored.
    import onnxruntime as ort

    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ids = np.array([[101, 7592, 2088, 102, 0, 0], [101, 7592, 2088, 102, 0, 0]], np.int64)
        mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int64)
        (out,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        short = session.run(None, {"input_ids": ids[:1, :4], "attention_mask": mask[:1, :4]})[0]
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4), path
        # int8 quantises activations per tensor, over the padded batch too: close, not equal.
        tolerance = 1e-4 if path == fp32 else 2e-2
        cosine = float(out[0] @ short[0])
        assert cosine > 1 - tolerance, f"{path}: padding moved the vector (cosine {cosine})"
        print(f"export_onnx: {path.name}: unit vectors; padded vs unpadded cosine {cosine:.6f}")


if __name__ == "__main__":
    main()
