"""Backends behind one interface each; chosen by env vars (ray_jobs.settings), never by code edits.

| env var               | values (default first)   |
|-----------------------|--------------------------|
| EMBEDDING_BACKEND     | local, openai            |
| VECTOR_STORE_BACKEND  | lancedb, pinecone        |
| ENRICHMENT_BACKEND    | local, comprehend        |
"""

from __future__ import annotations

from ray_jobs.backends.base import Embedder, Enricher, VectorStore
from ray_jobs.settings import StageSettings


def make_embedder() -> Embedder:
    kind = StageSettings.from_env().embedding_backend
    if kind == "local":
        from ray_jobs.backends.local_embedder import LocalEmbedder

        return LocalEmbedder()
    if kind == "openai":
        from ray_jobs.backends.openai_embedder import OpenAIEmbedder

        return OpenAIEmbedder.from_env()
    raise ValueError(f"EMBEDDING_BACKEND={kind!r}: expected 'local' or 'openai'")


def make_vector_store() -> VectorStore:
    kind = StageSettings.from_env().vector_store_backend
    if kind == "lancedb":
        from ray_jobs.backends.lancedb_store import LanceDBStore

        return LanceDBStore.from_env()
    if kind == "pinecone":
        from ray_jobs.backends.pinecone_store import PineconeStore

        return PineconeStore.from_env()
    raise ValueError(f"VECTOR_STORE_BACKEND={kind!r}: expected 'lancedb' or 'pinecone'")


def make_enricher() -> Enricher:
    kind = StageSettings.from_env().enrichment_backend
    if kind == "local":
        from ray_jobs.backends.local_enricher import LocalEnricher

        return LocalEnricher()
    if kind == "comprehend":
        from ray_jobs.backends.comprehend_enricher import ComprehendEnricher

        return ComprehendEnricher.from_env()
    raise ValueError(f"ENRICHMENT_BACKEND={kind!r}: expected 'local' or 'comprehend'")
