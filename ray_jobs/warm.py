"""Warm state: heavy objects loaded once per process, reused by every document it runs.

In a stage service each Ray worker process keeps its own model, tokenizer, vector-store
connection and clients for as long as the service lives; a document's own Ray job keeps
them for that job. Never one per document (the model loads in ~0.5 s, lancedb imports in
~1.8 CPU-s) and never one per cluster: a detached actor served every document of the
cluster from a single process, so adding workers added no embedding capacity.

The configuration comes from the process's environment (the Ray containers' env plus the
job's runtime_env, which carries backend names and ARNs only, never credentials).
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_cache: dict[tuple, object] = {}
# Variables that configure a backend: another value is another object (tests switch them).
CONFIG_PREFIXES = ("EMBEDDING_", "OPENAI_", "LOCAL_EMBEDDING_", "LANCEDB_", "PINECONE_",
                   "VECTOR_STORE_", "ENRICHMENT_", "COMPREHEND_", "TOKEN_BUDGET_", "DOCUMENT_BUCKET",
                   "AWS_ENDPOINT_URL", "EMBED_")


def _key(name: str) -> tuple:
    from docpipe import aws

    config = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(CONFIG_PREFIXES)))
    return name, config, aws.generation()


def _once(name: str, make):
    key = _key(name)
    with _lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def embedding_cache_mode(env) -> str:
    """EMBEDDING_CACHE with ``auto`` (the default) resolved: pay once per distinct text
    with a paid API; a local model is cheaper than S3. infra/ray-cluster.yaml grants the
    workers embedding-cache/ under the same rule (condition UseEmbeddingCache)."""
    mode = (env.get("EMBEDDING_CACHE") or "auto").strip().lower()
    if mode == "auto":
        return "s3" if env.get("EMBEDDING_BACKEND", "local") == "openai" else "off"
    return mode


def _make_embedder():
    from ray_jobs.backends import make_embedder
    from ray_jobs.backends.embedding_cache import wrap_with_cache_from_env

    env = dict(os.environ)
    env["EMBEDDING_CACHE"] = embedding_cache_mode(env)
    return wrap_with_cache_from_env(make_embedder(), env)


def embedder():
    """The process's embedder (`.embed(texts)`, `.model`, `.dims`)."""
    return _once("embedder", _make_embedder)


def vector_store():
    from ray_jobs.backends import make_vector_store

    return _once("vector_store", make_vector_store)


def enricher():
    from ray_jobs.backends import make_enricher

    return _once("enricher", make_enricher)


def replace_document_version(records, document_id: str, version: str) -> dict:
    from ray_jobs.backends.version_sync import replace_document_version as sync

    return sync(vector_store(), records, document_id, version)

