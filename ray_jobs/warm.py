"""Warm state: heavy objects loaded once per process, reused by every document it runs.

In a stage service each Ray worker process keeps its own model, tokenizer, vector-store
connection and clients for as long as the service lives; a document's own Ray job keeps
them for that job. Never one per document (the model loads in ~0.5 s, lancedb imports in
~1.8 CPU-s) and never one per cluster: a detached actor served every document of the
cluster from a single process, so adding workers added no embedding capacity.

The configuration is ray_jobs.settings.StageSettings (the Ray containers' env plus the
job's runtime_env, which carries backend names and ARNs only, never credentials).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ray_jobs.settings import StageSettings

if TYPE_CHECKING:
    from ray_jobs.backends.base import Embedder, Enricher, VectorRecord, VectorStore
    from ray_jobs.ocr import OcrEngine

T = TypeVar("T")
_lock = threading.Lock()
_cache: dict[tuple[str, str, int], object] = {}


def _key(name: str, settings: StageSettings | None = None) -> tuple[str, str, int]:
    """Another configuration is another object (tests switch it within one process);
    so are new clients (docpipe.aws.reset_clients, e.g. another endpoint)."""
    from docpipe import aws

    return name, (settings or StageSettings.from_env()).key(), aws.generation()


def _once(name: str, make: Callable[[], T], settings: StageSettings | None = None) -> T:
    """The process's `name` for `settings` (default: this process's environment)."""
    key = _key(name, settings)
    with _lock:
        if key not in _cache:
            _cache[key] = make()
        return cast(T, _cache[key])


def _make_embedder() -> Embedder:
    from ray_jobs.backends import make_embedder
    from ray_jobs.backends.embedding_cache import wrap_with_cache_from_env

    return wrap_with_cache_from_env(make_embedder())


def embedder() -> Embedder:
    """The process's embedder (`.embed(texts)`, `.model`, `.dims`)."""
    return _once("embedder", _make_embedder)


def vector_store() -> VectorStore:
    from ray_jobs.backends import make_vector_store

    return _once("vector_store", make_vector_store)


def enricher() -> Enricher:
    from ray_jobs.backends import make_enricher

    return _once("enricher", make_enricher)


def ocr_engine(settings: StageSettings) -> OcrEngine:
    """The process's OCR engine for `settings` (OCR_BACKEND local or textract): the model
    loads once per worker process, not once per page or document."""
    from ray_jobs.ocr import make_engine

    return _once("ocr_engine", lambda: make_engine(settings), settings)


def replace_document_version(records: list[VectorRecord], document_id: str, version: str) -> dict[str, Any]:
    from ray_jobs.backends.version_sync import replace_document_version as sync

    return sync(vector_store(), records, document_id, version)


def warm_up(stage: str) -> int:
    """Load what `stage` needs in this worker process before its first document: the
    stage service runs it once per worker slot when it starts, so no document pays a
    worker's start (model, tokenizer, lancedb import, the parse zygote: seconds of CPU).
    Returns the process id."""
    import importlib
    import os

    if stage == "extract":
        importlib.import_module("ray_jobs.extract")  # and its imports: formats, pdf, chunking
        from ray_jobs.pdf_sandbox import start_zygote
        from ray_jobs.tokens import chunk_tokenizer

        start_zygote()
        chunk_tokenizer().count("warm up the tokenizer")
    elif stage == "embed":
        importlib.import_module("ray_jobs.embed")
        embedder().embed(["warm up the model"])
        enricher().enrich(["Warm up: Northwind grew 5% in 2025."])
        vector_store().count()  # imports lancedb and opens the table
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return os.getpid()
