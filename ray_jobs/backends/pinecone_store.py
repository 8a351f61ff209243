"""Production vector store: a Pinecone serverless index through the ``pinecone`` SDK.

Environment (``PineconeStore.from_env``):

| env var                      | meaning                                                  |
|------------------------------|----------------------------------------------------------|
| PINECONE_API_KEY_SECRET_ARN  | Secrets Manager secret holding the API key (required)    |
| PINECONE_INDEX_HOST          | the index's data-plane host, e.g. ``https://x.svc...``   |
|                              | (``http://127.0.0.1:PORT`` for a local fake)             |
| PINECONE_NAMESPACE           | default ``docpipe``                                      |

Limits respected (Pinecone docs): an upsert carries at most 1000 vectors and 2 MB; a
delete or fetch at most 1000 ids; a list page at most 100 ids; metadata at most 40 KB
per vector. ``upsert`` splits its records itself, estimating each record's JSON size,
so no request is ever sent over a limit (the SDK's own ``batch_size`` mode is not used:
it reports a rejected batch only through ``has_errors`` instead of raising).

Metadata rule: ``text`` is cut to ``max_text_chars`` (``identity.TEXT_IN_INDEX``, the
contract in docs/architecture.md); if the metadata's JSON is still over 40,000 bytes, the
enrichment lists (``entities``, then ``key_phrases``, then ``entity_types``) lose items from
their ends, and then ``text`` is cut further, until it fits; other fields are never changed.
``None`` values and empty enrichment lists are dropped (Pinecone rejects null metadata;
a missing list matches no filter, as an empty one would). Metadata still too large
without any ``text`` or list items raises ``StageFailed``.

Keyword search (``keyword_query``): every record carries ``sparse_values`` =
``ray_jobs.keywords.sparse_vector(text)`` (hashed terms with BM25 term-frequency weights,
computed from the whole ``text`` given, before any cut), and a keyword query is a hybrid
query whose dense part is a constant ``_DENSE_EPSILON`` in every dimension (Pinecone
refuses all-zero dense vectors on upsert; a tiny constant adds at most ~1e-5 to a score)
and whose sparse part is ``sparse_query(text)``. Matches at or below ``_MIN_KEYWORD_SCORE``
share no term with the query and are dropped. Pinecone only scores sparse values on an
index with the ``dotproduct`` metric (docs/deploy.md, "Pinecone index"): the metric and
dimension come from ``describe_index_stats`` once, and ``keyword_query`` on another
metric raises ``StageFailed`` saying so. With ``dotproduct``, ``query`` scores are dot
products, which equal cosine similarities for the normalised vectors both embedders make.

Retries: the SDK's own. Its data-plane transport makes 4 attempts on 408/429/5xx and
connection errors, with jittered backoff that honours ``Retry-After`` (pinecone 10.2 has
no setting for them on a REST ``Index``); when they fail, this class raises
``docpipe.errors.VectorStoreUnavailable`` and the ASL retries the stage. A 401 forgets
the cached secret and rebuilds the client once (rotated key). A 413 splits the batch in
two. Other 4xx (wrong dimension, bad filter) raise ``StageFailed``: retrying cannot fix
them.

``delete_prefix``: serverless indexes cannot delete by metadata filter, so ids are
listed by prefix and deleted by id, at most 1000 per request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from docpipe import identity
from docpipe.errors import StageFailed, VectorStoreUnavailable
from ray_jobs.backends import secrets
from ray_jobs.backends.base import KeywordSearchUnavailable, Match, VectorRecord
from ray_jobs.keywords import sparse_query, sparse_vector
from ray_jobs.settings import StageSettings

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = StageSettings.pinecone_namespace
MAX_UPSERT_VECTORS = 1000
MAX_UPSERT_BYTES = 2_000_000
MAX_METADATA_BYTES = 40_000  # under 40 KB whichever way a KB is counted
MAX_IDS_PER_DELETE = 1000
LIST_PAGE_SIZE = 100
# Room for the request envelope ({"vectors":[...],"namespace":"..."}) and for the
# SDK's serializer writing a float differently from json.dumps.
_BYTES_HEADROOM = 0.95
# Enrichment lists, in the order they give up items when metadata is over the limit.
TRIMMABLE_LISTS = ("entities", "key_phrases", "entity_types")
_DENSE_EPSILON = 1e-7
_MIN_KEYWORD_SCORE = 1e-4  # the smallest BM25 term weight is ~0.1; the dense part < 1e-5


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def fit_metadata(metadata: Mapping[str, Any], *, max_text_chars: int = identity.TEXT_IN_INDEX,
                 max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """Metadata Pinecone will accept: no None values or empty enrichment lists, ``text``
    cut to ``max_text_chars``, and then enrichment lists shortened and ``text`` cut
    further until the JSON is at most ``max_bytes``."""
    meta = {k: (list(v) if k in TRIMMABLE_LISTS and isinstance(v, (list, tuple)) else v)
            for k, v in metadata.items() if v is not None}
    for name in TRIMMABLE_LISTS:
        if meta.get(name) == []:
            del meta[name]
    text = meta.get("text")
    if isinstance(text, str) and len(text) > max_text_chars:
        meta["text"] = text = text[:max_text_chars]
    size = len(_compact(meta))
    for name in TRIMMABLE_LISTS:
        items = meta.get(name)
        while size > max_bytes and isinstance(items, list) and items:
            # Each item costs its JSON plus a comma: dropping it saves at least that.
            size -= len(_compact(items.pop())) + (1 if items else 0)
        if isinstance(items, list) and not items:
            del meta[name]
        size = len(_compact(meta))
    if size <= max_bytes:
        return meta
    if not isinstance(text, str):
        raise StageFailed(f"vector metadata is {len(_compact(meta))} bytes without a text field to cut")
    without = len(_compact({**meta, "text": ""}))
    if without > max_bytes:
        raise StageFailed(f"vector metadata is {without} bytes even with an empty text (limit {max_bytes})")
    # Binary search for the longest prefix that fits (JSON escaping makes bytes != chars).
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if without + len(_compact(text[:mid])) - 2 <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    meta["text"] = text[:lo]
    return meta


class PineconeStore:
    """``VectorStore`` on one namespace of a Pinecone index."""

    def __init__(
        self,
        index: Any = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        index_factory: Callable[[], Any] | None = None,
        on_auth_error: Callable[[], None] | None = None,
        max_batch_vectors: int = MAX_UPSERT_VECTORS,
        max_batch_bytes: int = MAX_UPSERT_BYTES,
        max_text_chars: int = identity.TEXT_IN_INDEX,
    ) -> None:
        if index is None and index_factory is None:
            raise ValueError("pass an Index or an index_factory")
        self._index = index
        self._index_factory = index_factory
        self._on_auth_error = on_auth_error
        self.namespace = namespace
        self.max_batch_vectors = min(max_batch_vectors, MAX_UPSERT_VECTORS)
        self.max_batch_bytes = min(max_batch_bytes, MAX_UPSERT_BYTES)
        self.max_text_chars = max_text_chars
        self.requests_sent = 0
        self._index_shape: tuple[str | None, int] | None = None  # (metric, dimension), read once

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> PineconeStore:
        settings = StageSettings.from_env(env)
        arn, host = settings.pinecone_api_key_secret_arn, settings.pinecone_index_host
        if not arn:
            raise ValueError("PINECONE_API_KEY_SECRET_ARN is not set (keys never come from plain env vars)")
        if not host:
            raise ValueError("PINECONE_INDEX_HOST is not set")

        def factory() -> Any:
            from pinecone import Pinecone

            return Pinecone(api_key=secrets.get_secret(arn, field="PINECONE_API_KEY")).Index(host=host)

        return cls(
            index_factory=factory,
            on_auth_error=lambda: secrets.invalidate(arn),
            namespace=settings.pinecone_namespace,
            **kwargs,
        )

    @property
    def index(self) -> Any:
        if self._index is None:
            assert self._index_factory is not None
            self._index = self._index_factory()
        return self._index

    def _call(self, what: str, fn: Callable[[Any], Any], *, reauth: bool = True) -> Any:
        """One request; when it raises, the SDK's transport has made its retries."""
        from pinecone.errors import (
            ApiError,
            PayloadTooLargeError,
            PineconeConnectionError,
            PineconeTimeoutError,
            UnauthorizedError,
        )

        try:
            result = fn(self.index)
        except UnauthorizedError as exc:
            if reauth and self._index_factory is not None:
                if self._on_auth_error:
                    self._on_auth_error()  # the key may have been rotated
                self._index = None
                return self._call(what, fn, reauth=False)
            raise StageFailed(f"Pinecone rejected the API key during {what}: {exc}") from exc
        except PayloadTooLargeError:
            raise  # the caller splits the batch
        except (PineconeConnectionError, PineconeTimeoutError) as exc:
            raise VectorStoreUnavailable(f"Pinecone {what} unreachable: {type(exc).__name__}: {exc}") from exc
        except ApiError as exc:
            status = getattr(exc, "status_code", None) or 0
            if status in (408, 429) or status >= 500:
                raise VectorStoreUnavailable(
                    f"Pinecone {what} still failing after the SDK's retries ({status}): {exc}"
                ) from exc
            raise StageFailed(f"Pinecone refused {what} ({status}): {exc}") from exc
        self.requests_sent += 1
        return result

    # -- writes -------------------------------------------------------------------------
    def _record_dict(self, record: VectorRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"id": record.id, "values": [float(v) for v in record.vector]}
        text = record.metadata.get("text")
        if isinstance(text, str):
            sparse = sparse_vector(text)
            if sparse["indices"]:  # Pinecone refuses an empty sparse vector
                out["sparse_values"] = sparse
        if record.metadata:
            out["metadata"] = fit_metadata(record.metadata, max_text_chars=self.max_text_chars)
        return out

    def plan_batches(self, records: Iterable[VectorRecord]) -> list[list[dict[str, Any]]]:
        """Records as request bodies' ``vectors`` lists, each under both limits."""
        budget = int(self.max_batch_bytes * _BYTES_HEADROOM)
        batches: list[list[dict[str, Any]]] = []
        current: list[dict[str, Any]] = []
        size = 0
        for record in records:
            item = self._record_dict(record)
            item_bytes = len(_compact(item)) + 1  # + the comma between items
            if item_bytes > budget:
                raise StageFailed(f"vector {record.id} alone is {item_bytes} bytes of JSON")
            if current and (len(current) >= self.max_batch_vectors or size + item_bytes > budget):
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += item_bytes
        if current:
            batches.append(current)
        return batches

    def _upsert_batch(self, batch: list[dict[str, Any]]) -> int:
        from pinecone.errors import PayloadTooLargeError

        try:
            response = self._call("upsert", lambda idx: idx.upsert(vectors=batch, namespace=self.namespace))
        except PayloadTooLargeError as exc:
            if len(batch) == 1:
                raise StageFailed(f"Pinecone refused vector {batch[0]['id']} as too large: {exc}") from exc
            half = len(batch) // 2  # our size estimate was off: split rather than fail
            return self._upsert_batch(batch[:half]) + self._upsert_batch(batch[half:])
        return int(getattr(response, "upserted_count", len(batch)))

    def upsert(self, records: list[VectorRecord]) -> int:
        written = 0
        for batch in self.plan_batches(records):
            written += self._upsert_batch(batch)
        return written

    def delete_ids(self, ids: Iterable[str]) -> int:
        """Delete exactly these ids, at most 1000 per request; returns how many were asked."""
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), MAX_IDS_PER_DELETE):
            chunk = ids[start:start + MAX_IDS_PER_DELETE]

            def delete(idx: Any, chunk: list[str] = chunk) -> Any:
                return idx.delete(ids=chunk, namespace=self.namespace)

            self._call("delete", delete)
        return len(ids)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix (it would empty the namespace)")
        return self.delete_ids(self.list_ids(prefix))

    # -- reads --------------------------------------------------------------------------
    def list_ids(self, prefix: str) -> list[str]:
        ids: list[str] = []
        token: str | None = None
        while True:

            def list_page(idx: Any, token: str | None = token) -> Any:
                return idx.list_paginated(
                    prefix=prefix, limit=LIST_PAGE_SIZE, pagination_token=token, namespace=self.namespace
                )

            page = self._call("list", list_page)
            ids.extend(item.id for item in page.vectors if item.id is not None)
            token = page.pagination.next if page.pagination is not None else None
            if not token:
                return ids

    def query(self, vector: list[float], top_k: int = 5, filter: dict[str, Any] | None = None) -> list[Match]:
        response = self._call(
            "query",
            lambda idx: idx.query(
                vector=[float(v) for v in vector], top_k=top_k, namespace=self.namespace,
                filter=filter, include_metadata=True,
            ),
        )
        return [Match(id=m.id, score=float(m.score), metadata=dict(m.metadata or {})) for m in response.matches]

    def keyword_query(self, text: str, top_k: int = 5, filter: dict[str, Any] | None = None) -> list[Match]:
        """Keyword (BM25-weighted sparse) search, best first; ``Match.score`` is the sparse
        dot product (see the module docstring)."""
        sparse = sparse_query(text)
        if top_k <= 0 or not sparse["indices"]:
            return []
        shape = self._shape()
        if shape is None:
            return []  # an empty index (no dimension fixed yet) has nothing to find
        metric, dims = shape
        if metric is not None and metric != "dotproduct":
            raise KeywordSearchUnavailable(
                f"keyword search needs a Pinecone index with the dotproduct metric; this one uses {metric}"
                " (docs/deploy.md, 'Pinecone index': create a dotproduct index and re-ingest)"
            )
        dense = [_DENSE_EPSILON] * dims
        response = self._call(
            "keyword query",
            lambda idx: idx.query(
                vector=dense, sparse_vector=sparse, top_k=top_k, namespace=self.namespace,
                filter=filter, include_metadata=True,
            ),
        )
        return [Match(id=m.id, score=float(m.score), metadata=dict(m.metadata or {}))
                for m in response.matches if m.score > _MIN_KEYWORD_SCORE]

    def _shape(self) -> tuple[str | None, int] | None:
        """The index's metric (None if not reported) and dense dimension, asked once;
        None while an index without a dimension is empty."""
        if self._index_shape is None:
            stats = self._call("describe_index_stats", lambda idx: idx.describe_index_stats())
            if not stats.dimension:
                if not stats.total_vector_count:
                    return None
                raise StageFailed("the Pinecone index reports no dense dimension: keyword search needs a dense"
                                  " (hybrid) index with the dotproduct metric")
            self._index_shape = (stats.metric, int(stats.dimension))
        return self._index_shape

    def count(self) -> int:
        stats = self._call("describe_index_stats", lambda idx: idx.describe_index_stats())
        summary = stats.namespaces.get(self.namespace or "__default__")
        return int(summary.vector_count) if summary is not None else 0
