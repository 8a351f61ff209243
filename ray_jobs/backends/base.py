"""The three backend interfaces. Embedded defaults and production services both
implement them; the stages only ever see these types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    tokens: int = 0  # tokens billed (0 for a local model)
    cost_usd: float = 0.0  # at list price
    cache_hits: int = 0  # texts served from the embedding cache


@dataclass
class VectorRecord:
    id: str  # <document_id>#<processing_version>#<chunk_index>
    vector: list[float]
    # document_id, processing_version, chunk_index, page_start, page_end, s3_key, locator,
    # text; char_start, char_end (the chunk's span in the document's text); entity_types
    # (unique, sorted), entities (<= 32), key_phrases (<= 16): lists of strings.
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Match:
    id: str
    score: float  # higher is better: cosine similarity (query) or BM25 score (keyword_query)
    metadata: dict[str, Any] = field(default_factory=dict)


class KeywordSearchUnavailable(RuntimeError):
    """The store cannot search by keyword as configured (a Pinecone index without the
    dotproduct metric): search falls back to vector in hybrid mode and refuses keyword mode."""


@runtime_checkable
class Embedder(Protocol):
    model: str
    dims: int

    def embed(self, texts: list[str]) -> EmbeddingResult: ...


@runtime_checkable
class VectorStore(Protocol):
    def upsert(self, records: list[VectorRecord]) -> int:
        """Insert or replace by id; returns how many were written. Idempotent."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every id that starts with `prefix`; returns how many were deleted."""

    def list_ids(self, prefix: str) -> list[str]:
        """Every id that starts with `prefix`."""

    def query(self, vector: list[float], top_k: int = 5, filter: dict[str, Any] | None = None) -> list[Match]:
        """The nearest vectors, best first; `Match.score` = cosine similarity."""

    def keyword_query(self, text: str, top_k: int = 5, filter: dict[str, Any] | None = None) -> list[Match]:
        """BM25 keyword search over the chunk text (terms of ray_jobs.keywords), best first;
        `Match.score` = the BM25 score (higher is better), metadata as `query`'s.

        `filter` (both methods): {field: {"$eq": v}}, {"$in": [...]}, {"$gte": n},
        {"$lte": n} (or both), fields ANDed; on the list fields entity_types, entities and
        key_phrases $eq means "contains" and $in "contains one of" (Pinecone's semantics)."""

    def count(self) -> int: ...


@runtime_checkable
class Enricher(Protocol):
    name: str

    def enrich(self, texts: list[str]) -> list[dict[str, Any]]:
        """One dict per text: {"key_phrases": [str], "entities": [{"type", "text"}]}."""
