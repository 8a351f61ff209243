"""docpipe's side of `python -m bench.eval`: the index set, its text (extracted once per
file and cached), one LanceDB index per chunking choice, and search in each mode.

Everything runs in this process with docpipe's own code, no local stack: the extract
stage's `extract_any` (OCR_BACKEND=none), `chunk_pages`, LocalEnricher, LocalEmbedder
(batches of 64), a LanceDBStore in a temporary directory with the embed stage's metadata,
and `ray_jobs.search.search` pointed at that store through LANCEDB_URI.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.run import REPO

INDEX_CATEGORIES = ("normal", "non-latin", "many-page")
MODES = ("vector", "keyword", "hybrid")
PAGE_BREAKS = ("prefer", "cross", "never")
BATCH = 64  # texts per enrich and per embed call (the embed stage's ENRICH_BATCH and local batch)
# The process's configuration, as the stages would have it here: local backends, no OCR,
# no S3 embedding cache, no Ray (a long PDF's page ranges are parsed in local children).
ENV = {"OCR_BACKEND": "none", "EMBEDDING_BACKEND": "local", "ENRICHMENT_BACKEND": "local",
       "VECTOR_STORE_BACKEND": "lancedb", "EMBEDDING_CACHE": "off", "LANCEDB_TABLE": "chunks",
       "HF_HUB_OFFLINE": "1", "DOCPIPE_NO_RAY": "1"}


@dataclass(frozen=True)
class Chunking:
    max_tokens: int
    overlap_tokens: int
    page_breaks: str

    @property
    def label(self) -> str:
        return f"{self.max_tokens}/{self.overlap_tokens} {self.page_breaks}"

    @classmethod
    def parse(cls, spec: str) -> Chunking:
        """"254/32/prefer" (or "254/32 prefer")."""
        parts = spec.replace(" ", "/").split("/")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or parts[2] not in PAGE_BREAKS:
            raise ValueError(f"chunking {spec!r}: want MAX/OVERLAP/{'|'.join(PAGE_BREAKS)}, e.g. 254/32/prefer")
        return cls(int(parts[0]), int(parts[1]), parts[2])


def manifest(corpus: Path) -> list[dict[str, str]]:
    """MANIFEST.tsv's rows as dicts (path, pages, has_text, category, ...)."""
    lines = (corpus / "MANIFEST.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line.strip()]


def index_set(corpus: Path) -> list[str]:
    """Every PDF with a text layer in the readable categories, in manifest order."""
    return [r["path"] for r in manifest(corpus)
            if r["path"].lower().endswith(".pdf") and r.get("has_text") == "yes" and r.get("category") in INDEX_CATEGORIES]


def apply_env() -> None:
    os.environ.update(ENV)


# ---------------------------------------------------------------------------- extraction
def _code_version() -> str:
    """The extraction code and its PDF_* settings: a change to either extracts again."""
    h = hashlib.sha256()
    for src in [*sorted((REPO / "ray_jobs").glob("pdf*.py")), REPO / "ray_jobs" / "extract.py"]:
        h.update(src.read_bytes())
    h.update(json.dumps({k: v for k, v in os.environ.items() if k.startswith("PDF_")}, sort_keys=True).encode())
    return h.hexdigest()[:12]


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(cache_dir: Path | None, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`make()` once per `name` in `cache_dir` (None: no cache); the answer says `cached`."""
    path = cache_dir / f"{name}.json" if cache_dir else None
    if path and path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    out = make()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)  # atomic: a concurrent --check-questions never reads half a file
    return {**out, "cached": False}


def extract(corpus: Path, rel: str, cache_dir: Path | None) -> dict[str, Any]:
    """The file's pages as the extract stage reads them with OCR off ->
    {"sha256", "pages": [{"page_number", "text"}], "seconds", "error", "cached"}."""
    path = corpus / rel
    sha = file_sha(path)

    def make() -> dict[str, Any]:
        from docpipe import errors, identity
        from ray_jobs.extract import extract_any
        from ray_jobs.settings import StageSettings

        t0 = time.monotonic()
        try:
            result, _ = extract_any(str(path), "pdf", document_id(rel), identity.processing_version(sha),
                                    StageSettings.from_env())
        except errors.DocpipeError as err:
            return {"sha256": sha, "pages": [], "seconds": round(time.monotonic() - t0, 3),
                    "error": f"{err.code}: {err}"}
        pages = [{"page_number": p["page_number"], "text": p.get("text") or ""} for p in result.pages]
        return {"sha256": sha, "pages": pages, "seconds": round(time.monotonic() - t0, 3),
                "error": None if result.pages_with_text else "no page has text"}

    return cached(cache_dir, f"docpipe-{sha[:16]}-{_code_version()}", make)


def document_id(rel: str) -> str:
    from docpipe import identity

    return identity.document_id("eval", rel)


# ---------------------------------------------------------------------------- what is there yet
def supports_page_breaks() -> bool:
    from ray_jobs.chunking import chunk_pages

    return "page_breaks" in inspect.signature(chunk_pages).parameters


def available_modes() -> tuple[list[str], list[str]]:
    """The search modes this checkout has, and a note per missing one."""
    from ray_jobs import search
    from ray_jobs.backends.lancedb_store import LanceDBStore

    if "mode" not in inspect.signature(search.search).parameters:
        return ["vector"], ["ray_jobs.search.search has no `mode` argument yet: keyword and hybrid not run "
                            "(vector through search(text, top_k))"]
    if not hasattr(LanceDBStore, "keyword_query"):
        return ["vector"], ["LanceDBStore has no keyword_query yet: keyword and hybrid not run"]
    return list(MODES), []


# ---------------------------------------------------------------------------- vectors
class SqliteVectorCache:
    """ray_jobs.backends.embedding_cache's CacheStore on one SQLite file: the eval embeds
    tens of thousands of chunks per run, and a vector is a pure function of the model, its
    runtime and the text, so a re-run (or a chunk two chunking choices share) costs a
    lookup. Keys are embedding_cache.cache_key (model, dims and text)."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path))
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def get_many(self, model: str, dims: int, keys: list[str]) -> dict[str, list[float]]:
        import numpy as np

        out: dict[str, list[float]] = {}
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            batch = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(batch))})",
                                    batch)
            out.update((k, np.frombuffer(v, dtype=np.float64).tolist()) for k, v in rows)
        return out

    def put_many(self, model: str, dims: int, entries: dict[str, list[float]]) -> None:
        import numpy as np

        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 [(k, np.asarray(v, dtype=np.float64).tobytes()) for k, v in entries.items()])


def cached_embedder(embedder: Any, cache_dir: Path | None) -> Any:
    """`embedder` behind a SqliteVectorCache in `cache_dir` (one file per runtime: the
    numpy and onnx runtimes agree to ~1e-6, not bit for bit); as is without a cache."""
    if cache_dir is None:
        return embedder
    from ray_jobs.backends.embedding_cache import CachedEmbedder
    from ray_jobs.settings import StageSettings

    runtime = StageSettings.from_env().local_embedding_runtime
    return CachedEmbedder(embedder, SqliteVectorCache(cache_dir / f"vectors-{runtime}.sqlite"))


# ---------------------------------------------------------------------------- one index
def _records(chunks: list[dict[str, Any]], enrichment: list[dict[str, Any]], vectors: list[list[float]],
             rel: str) -> list[Any]:
    """The embed stage's VectorRecords (ray_jobs.embed.vector_records), with s3_key = the
    corpus-relative path so hits map back to files."""
    from docpipe import identity
    from ray_jobs.embed import as_float32, vector_records

    if not chunks:
        return []
    doc, version = chunks[0]["document_id"], chunks[0]["processing_version"]  # one document version
    return vector_records([identity.vector_id(doc, version, c["chunk_index"]) for c in chunks],
                          [{**c, **e} for c, e in zip(chunks, enrichment, strict=True)],
                          [as_float32(v) for v in vectors], document_id=doc, processing_version=version, s3_key=rel)


def build(chunking: Chunking, docs: dict[str, dict[str, Any]], store_dir: Path, embedder: Any,
          progress: Any) -> dict[str, Any]:
    """Chunk, enrich, embed and load every document into a LanceDBStore at `store_dir`
    -> {"chunks", "tokens", "durations": {chunk, enrich, embed, load}}."""
    from docpipe import identity
    from ray_jobs.backends.lancedb_store import LanceDBStore
    from ray_jobs.backends.local_enricher import LocalEnricher
    from ray_jobs.chunking import chunk_pages

    enricher = LocalEnricher()
    store = LanceDBStore(str(store_dir), table=ENV["LANCEDB_TABLE"], dims=embedder.dims)
    kwargs: dict[str, Any] = {"max_tokens": chunking.max_tokens, "overlap_tokens": chunking.overlap_tokens}
    if supports_page_breaks():
        kwargs["page_breaks"] = chunking.page_breaks
    spent = dict.fromkeys(("chunk", "enrich", "embed", "load"), 0.0)
    n_chunks = tokens = 0
    task = progress.add_task(f"docpipe {chunking.label}", total=len(docs), item="")
    for rel, doc in docs.items():
        progress.update(task, item=rel)
        t0 = time.monotonic()
        chunks = chunk_pages(doc["pages"], document_id=document_id(rel),
                             processing_version=identity.processing_version(doc["sha256"]), **kwargs)
        t1 = time.monotonic()
        texts = [c["text"] for c in chunks]
        enrichment = [e for s in range(0, len(texts), BATCH) for e in enricher.enrich(texts[s:s + BATCH])]
        t2 = time.monotonic()
        vectors = [v for s in range(0, len(texts), BATCH) for v in embedder.embed(texts[s:s + BATCH]).vectors]
        t3 = time.monotonic()
        store.upsert(_records(chunks, enrichment, vectors, rel))
        t4 = time.monotonic()
        for k, a, b in (("chunk", t0, t1), ("enrich", t1, t2), ("embed", t2, t3), ("load", t3, t4)):
            spent[k] += b - a
        n_chunks += len(chunks)
        tokens += sum(c["token_count"] for c in chunks)
        progress.advance(task)
    # As the deployed index is every 50 writes: the keyword index folded over every row
    # (rows written after it was built are otherwise searched by a flat pass).
    t0 = time.monotonic()
    store.compact()
    spent["load"] += time.monotonic() - t0
    progress.update(task, item="")
    return {"chunks": n_chunks, "tokens": tokens, "durations": {k: round(v, 3) for k, v in spent.items()}}


def query(store_dir: Path, questions: list[dict[str, Any]], modes: list[str], label: str,
          progress: Any) -> tuple[dict[str, list[list[dict[str, Any]]]], dict[str, float]]:
    """Every question through ray_jobs.search.search (top 10) in each mode, against the
    store at `store_dir` -> ({mode: [hits per question]}, {mode: seconds})."""
    from ray_jobs import search, warm

    os.environ["LANCEDB_URI"] = str(store_dir)
    # Another LANCEDB_URI is another cache key already; clearing also closes the previous
    # index's store instead of keeping one open per chunking choice.
    with warm._lock:
        warm._cache.clear()
    has_mode = "mode" in inspect.signature(search.search).parameters
    hits: dict[str, list[list[dict[str, Any]]]] = {}
    seconds: dict[str, float] = {}
    task = progress.add_task(f"queries {label}", total=len(questions) * len(modes), item="")
    for mode in modes:
        progress.update(task, item=mode)
        search.search("warm up", top_k=10, **({"mode": mode} if has_mode else {}))
        t0 = time.monotonic()
        hits[mode] = []
        for q in questions:
            found = search.search(q["question"], top_k=10, **({"mode": mode} if has_mode else {}))
            hits[mode].append([{"document": h.get("s3_key"), "page_start": h.get("page_start"),
                                "page_end": h.get("page_end")} for h in found])
            progress.advance(task)
        seconds[mode] = round(time.monotonic() - t0, 3)
    progress.update(task, item="")
    return hits, seconds
