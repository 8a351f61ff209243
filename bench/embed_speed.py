"""The local embedder's speed on real corpus chunks, per runtime and graph variant.

    python -m bench.embed_speed [--variants onnx-int8,onnx,onnx-int8+mha] [--repeats 3]

The chunk set: ../shared/corpus PDFs through docpipe's own extract (OCR off) and chunker
with the stage's settings (as bench/bare.py runs them), then --chunks of them picked
evenly over the whole list (cached in /tmp: the extraction takes ~30 s). Per variant:
chunks/s and tokens/s with 1 and with 2 threads (wall clock, and per CPU-second of this
process, which other processes on a shared machine disturb less), load time, and the
cosine of its vectors to the float32 reference (the `onnx` runtime, which matches numpy
and sentence-transformers to ~1e-6): mean and min over all chunks. Variants run
interleaved, --repeats times, in a rotating order; rates are the best repeat's, medians
are in the JSON. Also:
- `torch`: sentence-transformers on torch (the LangChain peer's embedder), if importable;
- `procs`: the default runtime as 2 processes x 1 thread each vs 1 process x 2 threads,
  on the same chunks (how bench/bare.py and the stage services run it);
- `batching`: the int8 session on texts alone vs batches of 8 of one length (CPU time);
- `cache`: what a memory-cache hit and a miss cost against embedding a chunk, and how many
  of the corpus's chunks repeat.
A variant is a runtime (onnx-int8, onnx, numpy) with optional onnx_bert.GRAPH_VARIANTS
after "+". Results: bench/results/embed-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
RESULTS = REPO / "bench" / "results"
REFERENCE = "onnx"
CALL = 64  # texts per embed() call, as the embed stage sends them (EMBED_BATCH_SIZE)


def corpus_chunks(n: int, corpus: Path = CORPUS, cache_dir: Path = Path("/tmp")) -> list[str]:
    """`n` chunk texts of the corpus PDFs, picked evenly over all of them (cached)."""
    pdfs = sorted(corpus.rglob("*.pdf"))
    digest = hashlib.sha256("\n".join(str(p.relative_to(corpus)) for p in pdfs).encode()).hexdigest()[:12]
    cached = cache_dir / f"docpipe-embed-chunks-{digest}.json"
    if cached.is_file():
        every = json.loads(cached.read_text())
    else:
        every = _extract_and_chunk(pdfs)
        cached.write_text(json.dumps(every))
    if n >= len(every):
        return every
    step = len(every) / n
    return [every[int(i * step)] for i in range(n)]


def _extract_and_chunk(pdfs: list[Path]) -> list[str]:
    from docpipe import errors
    from ray_jobs.extract import chunk, extract_any
    from ray_jobs.settings import StageSettings

    settings = StageSettings.from_env({**os.environ, "OCR_BACKEND": "none"})
    texts: list[str] = []
    for path in pdfs:
        try:
            result, _ = extract_any(str(path), "pdf", "bench-embed", "v1", settings)
            texts += [c["text"] for c in chunk(result.pages, "bench-embed", "v1", settings)]
        except errors.DocpipeError as err:
            print(f"skipped {path.name}: {err.code}", file=sys.stderr)
    return texts


def _embedder(variant: str, threads: int) -> Any:
    from ray_jobs.backends.local_embedder import LocalEmbedder

    runtime, *graph = variant.split("+")
    return LocalEmbedder(runtime=runtime, threads=threads, graph_variants=frozenset(graph)).load()


def _torch_embedder(threads: int) -> Any:
    """sentence-transformers on torch, loaded from the wheel's directory (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from ray_jobs.backends.base import EmbeddingResult
    from ray_jobs.backends.local_embedder import default_model_dir

    model = SentenceTransformer(str(default_model_dir()), device="cpu")

    class Torch:
        load_seconds = 0.0

        def embed(self, texts: list[str]) -> EmbeddingResult:
            torch.set_num_threads(threads)
            return EmbeddingResult(vectors=model.encode(texts, batch_size=32, normalize_embeddings=True).tolist())

    return Torch()


def _time(embed: Callable[[list[str]], Any], texts: list[str]) -> tuple[float, float, np.ndarray]:
    """Wall and process-CPU seconds to embed `texts` in calls of CALL, and the vectors."""
    out = []
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(texts), CALL):
        out += list(embed(texts[s:s + CALL]).vectors)
    return time.perf_counter() - wall, time.process_time() - cpu, np.asarray(out, dtype=np.float32)


def _cosines(v: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (v * ref).sum(axis=1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1))
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5)}


# ---- 2 processes x 1 thread --------------------------------------------------------------

_P: dict[str, Any] = {}


def _proc_init(variant: str) -> None:
    _P["e"] = _embedder(variant, 1)
    _P["e"].embed(["warm up"])


def _proc_embed(texts: list[str]) -> float:
    cpu = time.process_time()
    for s in range(0, len(texts), CALL):
        _P["e"].embed(texts[s:s + CALL])
    return time.process_time() - cpu


def _ready(_: int) -> int:
    time.sleep(0.3)  # long enough for the pool to hand the next one to another worker
    return os.getpid()


def _procs_pool(variant: str, procs: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(procs, mp_context=get_context("spawn"), initializer=_proc_init, initargs=(variant,))
    while len(set(pool.map(_ready, range(procs)))) < procs:
        pass
    return pool


def _procs_time(pool: ProcessPoolExecutor, texts: list[str], procs: int) -> tuple[float, float]:
    """Wall seconds for `procs` processes to embed `texts` together, and their CPU seconds."""
    # Alternate over the texts so each process gets the same mix of lengths.
    parts = [texts[i::procs] for i in range(procs)]
    t0 = time.perf_counter()
    cpu = sum(pool.map(_proc_embed, parts))
    return time.perf_counter() - t0, cpu


# ---- probes ------------------------------------------------------------------------------

def _batching(e: Any, texts: list[str], repeats: int) -> dict[str, Any]:
    """CPU ms per text on the int8 session: each text alone vs 8 of one length per run."""
    from ray_jobs.backends.local_embedder import _pad

    ids = [x.ids for x in e._tok.encode_batch(texts)]
    full = [x for x in ids if len(x) == max(map(len, ids))][:32]
    out: dict[str, Any] = {"tokens": len(full[0]), "texts": len(full)}
    alone, batched = [], []
    for _ in range(repeats):
        t = time.process_time()
        for x in full:
            e._onnx(*_pad([x]))
        alone.append((time.process_time() - t) / len(full) * 1000)
        t = time.process_time()
        for s in range(0, len(full), 8):
            e._onnx(*_pad(full[s:s + 8]))
        batched.append((time.process_time() - t) / len(full) * 1000)
    out.update(alone_cpu_ms_per_text=round(min(alone), 2), batch8_cpu_ms_per_text=round(min(batched), 2))
    return out


def _cache(e: Any, texts: list[str], every: list[str], embed_ms: float) -> dict[str, Any]:
    from ray_jobs.backends.embedding_cache import CachedEmbedder, LruCacheStore

    class Known:
        """Answers from precomputed vectors: times the cache's own work, not the model."""

        model, dims = e.model, e.dims

        def __init__(self) -> None:
            self.vectors = dict(zip(texts, e.embed(texts).vectors, strict=True))

        def embed(self, batch: list[str]) -> Any:
            from ray_jobs.backends.base import EmbeddingResult

            return EmbeddingResult(vectors=[self.vectors[t] for t in batch])

    cached = CachedEmbedder(Known(), LruCacheStore(len(texts)))
    t0 = time.perf_counter()
    for s in range(0, len(texts), CALL):
        cached.embed(texts[s:s + CALL])  # all misses: hash, look up, store
    miss = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, len(texts), CALL):
        cached.embed(texts[s:s + CALL])  # all hits
    hit = time.perf_counter() - t0
    return {"miss_overhead_us_per_text": round(miss / len(texts) * 1e6, 1),
            "hit_us_per_text": round(hit / len(texts) * 1e6, 1),
            "embed_ms_per_text_2_threads": round(embed_ms, 2),
            "corpus_chunks": len(every), "corpus_distinct_chunks": len(set(every)),
            "corpus_repeated_share": round(1 - len(set(every)) / len(every), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.embed_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="onnx-int8,onnx",
                    help="comma-separated runtimes, each with optional +graph variants (default: %(default)s)")
    ap.add_argument("--chunks", type=int, default=400, help="chunks in the set (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="thread counts to time (default: %(default)s)")
    ap.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers row")
    ap.add_argument("--no-procs", action="store_true", help="skip 2 processes x 1 thread")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, help="default: bench/results/embed-<timestamp>.json")
    args = ap.parse_args(argv)

    every = corpus_chunks(10**9, args.corpus)
    texts = corpus_chunks(args.chunks, args.corpus)
    variants = [v for v in args.variants.split(",") if v]
    threads = [int(t) for t in args.threads.split(",")]
    ref_e = _embedder(REFERENCE, 2)
    tokens = sum(min(len(x.ids), ref_e.max_seq_length) for x in ref_e._tok.encode_batch(texts))
    ref = np.asarray(ref_e.embed(texts).vectors, dtype=np.float32)

    rows: dict[str, dict[str, Any]] = {}
    makers: dict[str, Callable[[int], Any]] = {v: (lambda t, v=v: _embedder(v, t)) for v in variants}
    if not args.no_torch:
        try:
            import sentence_transformers  # noqa: F401
            import torch  # noqa: F401

            makers["torch"] = _torch_embedder
        except ImportError:
            print("torch not importable: no sentence-transformers row", file=sys.stderr)
    embedders: dict[tuple[str, int], Any] = {}
    for name, make in makers.items():
        rows[name] = {"load_s": {}, "wall_s": {str(t): [] for t in threads}, "cpu_s": {str(t): [] for t in threads}}
        for t in threads:
            t0 = time.perf_counter()
            embedders[name, t] = make(t)
            rows[name]["load_s"][str(t)] = round(time.perf_counter() - t0, 3)
            embedders[name, t].embed(["warm up"])
    pool = None if args.no_procs else _procs_pool(variants[0], 2)
    procs_wall: list[float] = []
    procs_cpu: list[float] = []
    names = list(makers)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            for t in threads:
                wall, cpu, vectors = _time(embedders[name, t].embed, texts)
                rows[name]["wall_s"][str(t)].append(round(wall, 3))
                rows[name]["cpu_s"][str(t)].append(round(cpu, 3))
                rows[name].setdefault("cosine", {})[str(t)] = _cosines(vectors, ref)
            if pool is not None and name == variants[0]:
                # Right after the same variant's 1 process x 2 threads: the same load around.
                wall, cpu = _procs_time(pool, texts, 2)
                procs_wall.append(round(wall, 3))
                procs_cpu.append(round(cpu, 3))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    if pool is not None:
        pool.shutdown()

    n = len(texts)
    for row in rows.values():
        for t in map(str, threads):
            best, cpu = min(row["wall_s"][t]), min(row["cpu_s"][t])
            row[f"chunks_per_s_{t}t"] = round(n / best, 1)
            row[f"tokens_per_s_{t}t"] = round(tokens / best)
            row[f"chunks_per_cpu_s_{t}t"] = round(n / cpu, 1)
            row[f"median_chunks_per_s_{t}t"] = round(n / statistics.median(row["wall_s"][t]), 1)
    out: dict[str, Any] = {"chunks": n, "tokens": tokens, "repeats": args.repeats, "reference": REFERENCE,
                           "cpu_affinity": len(os.sched_getaffinity(0)), "load_avg_at_end": os.getloadavg(),
                           "variants": rows}
    if procs_wall:
        two = rows[variants[0]]
        out["procs"] = {"variant": variants[0], "2_procs_x_1_thread_wall_s": procs_wall,
                        "2_procs_x_1_thread_cpu_s": procs_cpu,
                        "2_procs_x_1_thread_chunks_per_s": round(n / min(procs_wall), 1),
                        "2_procs_x_1_thread_chunks_per_cpu_s": round(n / min(procs_cpu), 1),
                        "1_proc_x_2_threads_wall_s": two["wall_s"].get("2"),
                        "1_proc_x_2_threads_chunks_per_s": two.get("chunks_per_s_2t"),
                        "1_proc_x_2_threads_chunks_per_cpu_s": two.get("chunks_per_cpu_s_2t")}
    first = embedders[variants[0], threads[-1]]
    if first.runtime == "onnx-int8":
        out["batching"] = _batching(embedders[variants[0], threads[0]], texts, args.repeats)
    out["cache"] = _cache(first, texts, every, 1000 / rows[variants[0]][f"chunks_per_s_{threads[-1]}t"])

    path = args.out or RESULTS / f"embed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"{'variant':28s} {'load s':>7s} " + " ".join(f"{f'chunks/s {t}t':>12s} {f'tok/s {t}t':>9s}" for t in threads)
          + f" {'cos mean':>8s} {'cos min':>8s}")
    for name, row in rows.items():
        cos = row["cosine"][str(threads[0])]
        print(f"{name:28s} {row['load_s'][str(threads[0])]:7.2f} "
              + " ".join(f"{row[f'chunks_per_s_{t}t']:12.1f} {row[f'tokens_per_s_{t}t']:9d}" for t in threads)
              + f" {cos['cosine_mean']:8.4f} {cos['cosine_min']:8.4f}")
    for key in ("procs", "batching", "cache"):
        if key in out:
            print(key, json.dumps(out[key]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
