"""Backends behind one interface each; chosen by env vars, never by code edits.

| env var               | values (default first)   |
|-----------------------|--------------------------|
| EMBEDDING_BACKEND     | local, openai            |
| VECTOR_STORE_BACKEND  | lancedb, pinecone        |
| ENRICHMENT_BACKEND    | local, comprehend        |
"""

from __future__ import annotations

import os

from ray_jobs.backends.base import Embedder, Enricher, VectorStore


def make_embedder() -> Embedder:
    kind = os.environ.get("EMBEDDING_BACKEND", "local")
    if kind == "local":
        from ray_jobs.backends.local_embedder import LocalEmbedder

        return LocalEmbedder()
    if kind == "openai":
        from ray_jobs.backends.openai_embedder import OpenAIEmbedder

        return OpenAIEmbedder.from_env()
    raise ValueError(f"EMBEDDING_BACKEND={kind!r}: expected 'local' or 'openai'")


def make_vector_store() -> VectorStore:
    kind = os.environ.get("VECTOR_STORE_BACKEND", "lancedb")
    if kind == "lancedb":
        from ray_jobs.backends.lancedb_store import LanceDBStore

        return LanceDBStore.from_env()
    if kind == "pinecone":
        from ray_jobs.backends.pinecone_store import PineconeStore

        return PineconeStore.from_env()
    raise ValueError(f"VECTOR_STORE_BACKEND={kind!r}: expected 'lancedb' or 'pinecone'")


def make_enricher() -> Enricher:
    kind = os.environ.get("ENRICHMENT_BACKEND", "local")
    if kind == "local":
        from ray_jobs.backends.local_enricher import LocalEnricher

        return LocalEnricher()
    if kind == "comprehend":
        from ray_jobs.backends.comprehend_enricher import ComprehendEnricher

        return ComprehendEnricher.from_env()
    raise ValueError(f"ENRICHMENT_BACKEND={kind!r}: expected 'local' or 'comprehend'")
