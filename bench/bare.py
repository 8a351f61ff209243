"""The bare-compute bound: docpipe's own extract/chunk/enrich/embed/load code in a warm
process pool, with no Step Functions, Lambda, S3 or Ray job around it.

    python -m bench.bare --out result.json --lancedb DIR FILE...
    python -m bench.bare --out result.json --lancedb DIR --spec workloads.json

Same code and settings as the stages: ray_jobs.pdf.extract_pdf (its parse still runs in
a limited child interpreter, as in production), chunk_pages with CHUNK_MAX_TOKENS /
CHUNK_OVERLAP_TOKENS, LocalEnricher in batches of 64, LocalEmbedder in batches of
EMBED_BATCH_SIZE (64), and the load the embed stage does (replace_document_version on
a LanceDBStore: upsert, then list and delete older versions). What is left out is what
the pipeline adds: job start-up, S3 reads/writes of the JSONL artifacts, callbacks.

Two worker processes (both cores) when a workload has several files, each embedding with
one thread; one process with two embedding threads for a single file. Every worker loads
the model, the tokenizer and LanceDB before any clock starts (`warmup_s` reports it), and
the pools stay warm across workloads. Files are handed out largest first, so the two
workers finish together.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from bench import read_workloads, workload_parser

_W: dict = {}


def _init(threads: int, lancedb_uri: str) -> None:
    os.environ["LOCAL_EMBEDDING_THREADS"] = str(threads)
    os.environ["LANCEDB_URI"] = lancedb_uri
    t0 = time.monotonic()
    from ray_jobs.backends.lancedb_store import LanceDBStore
    from ray_jobs.backends.local_embedder import LocalEmbedder
    from ray_jobs.backends.local_enricher import LocalEnricher
    from ray_jobs.tokens import chunk_tokenizer

    # The chunker's tokenizer (the embedding model's), loaded as a warm stage service has it.
    chunk_tokenizer().count("warm up the tokenizer")
    _W["embedder"] = LocalEmbedder(threads=threads).load()
    _W["embedder"].embed(["warm up the model"])
    _W["enricher"] = LocalEnricher()
    _W["enricher"].enrich(["Warm up: Northwind grew 5% in 2025."])
    _W["store"] = LanceDBStore.from_env()
    _W["store"].count()  # imports lancedb and opens (or creates) the table
    import ray_jobs.backends.version_sync
    import ray_jobs.embed
    import ray_jobs.pdf  # noqa: F401
    from ray_jobs.pdf_sandbox import start_zygote

    start_zygote()  # the parse children's zygote, as a warm stage worker has it
    _W["warmup_s"] = time.monotonic() - t0


def process(path: str) -> dict:
    from docpipe import doctypes, errors, identity
    from ray_jobs.backends.base import VectorRecord
    from ray_jobs.backends.version_sync import replace_document_version
    from ray_jobs.embed import ENRICH_BATCH, batch_size
    from ray_jobs.extract import chunk, extract_any, no_text_error
    from ray_jobs.settings import StageSettings

    settings = StageSettings.from_env()  # the same knobs and defaults as the extract stage

    data = Path(path).read_bytes()
    doc = identity.document_id("bench-bare", Path(path).name)
    ver = identity.processing_version(hashlib.sha256(data).hexdigest())
    row = {"file": Path(path).name, "bytes": len(data), "worker_pid": os.getpid(), "warmup_s": _W["warmup_s"]}
    t = [time.monotonic()]
    c0 = time.process_time()
    try:
        # As the extract stage reads it: by type, a PDF's pages without text through OCR.
        doc_type = doctypes.document_type(path) or "pdf"
        result, ocr = extract_any(path, doc_type, doc, ver, settings)
        t.append(time.monotonic())
        if result.pages_with_text == 0:
            raise no_text_error(result, doc_type, ocr)
        chunks = chunk(result.pages, doc, ver, settings)
        t.append(time.monotonic())
        texts = [c["text"] for c in chunks]
        for start in range(0, len(texts), ENRICH_BATCH):
            _W["enricher"].enrich(texts[start:start + ENRICH_BATCH])
        t.append(time.monotonic())
        vectors = []
        n = batch_size()
        for start in range(0, len(texts), n):
            vectors += _W["embedder"].embed(texts[start:start + n]).vectors
        t.append(time.monotonic())
        records = [VectorRecord(identity.vector_id(doc, ver, c["chunk_index"]), list(map(float, v)), {
            "document_id": doc, "processing_version": ver, "chunk_index": c["chunk_index"],
            "page_start": c["page_start"], "page_end": c["page_end"], "s3_key": f"input/{Path(path).name}",
            "text": c["text"][:identity.TEXT_IN_INDEX]}) for c, v in zip(chunks, vectors, strict=True)]
        replace_document_version(_W["store"], records, doc, ver)
        t.append(time.monotonic())
    except errors.DocpipeError as err:
        row.update(status="FAILED", error_code=err.code, seconds=time.monotonic() - t[0])
        return row
    row.update(status="COMPLETED", pages=result.page_count, chunks=len(chunks),
               chunk_tokens=sum(c["token_count"] for c in chunks), seconds=t[-1] - t[0],
               cpu_s=round(time.process_time() - c0, 3),
               durations={k: round(b - a, 4) for k, (a, b) in
                          zip(("extract", "chunk", "enrich", "embed", "load"), itertools.pairwise(t), strict=True)})
    return row


def _pool(workers: int, threads: int, lancedb_uri: str) -> tuple[ProcessPoolExecutor, float]:
    ctx = get_context("spawn")  # a clean interpreter per worker, like a job driver
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(threads, lancedb_uri))
    # Start every worker and wait for its warm-up before any clock starts.
    warm: dict[int, float] = {}
    while len(warm) < workers:
        warm.update(pool.map(_ready, range(workers)))
    return pool, max(warm.values())


def _ready(_):
    time.sleep(0.3)  # long enough for the pool to hand the next one to another worker
    return os.getpid(), _W["warmup_s"]


def run(workloads: dict[str, list[str]], lancedb_uri: str, procs: int = 2) -> dict:
    """Each workload timed on its own; pools (and their warm models) are reused."""
    cores = len(os.sched_getaffinity(0))  # --split-cores gives this process part of the machine
    pools: dict[int, tuple[ProcessPoolExecutor, float]] = {}
    out = {}
    try:
        for name, files in workloads.items():
            files = sorted(files, key=lambda f: -os.path.getsize(f))
            workers = max(1, min(procs, len(files)))
            if workers not in pools:
                pools[workers] = _pool(workers, max(1, cores // workers), lancedb_uri)
            pool, warmup = pools[workers]
            t0 = time.monotonic()
            rows = list(pool.map(process, files))
            wall = time.monotonic() - t0
            out[name] = {"workers": workers, "embed_threads_per_worker": max(1, cores // workers),
                         "wall_s": round(wall, 4), "warmup_s": round(warmup, 3), "docs": rows}
    finally:
        for pool, _ in pools.values():
            pool.shutdown()
    return out


def main(argv=None) -> int:
    ap = workload_parser("python -m bench.bare", __doc__)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args(argv)
    result = run(read_workloads(args), args.lancedb, args.procs)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
