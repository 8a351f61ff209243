"""Content-addressed embedding cache in front of any ``Embedder``.

Key: ``sha256(model + "\\0" + str(dims) + "\\0" + text)``. The same text under the same
model and dimensions always has the same vector, so a re-run of a stage, a re-upload
of a document whose chunks mostly did not change, or the same boilerplate in many
documents costs no API call. Hits skip the inner embedder; the misses of a call are
embedded in ONE inner call (which batches them itself) and written back.

Storage layouts:
- ``S3CacheStore``: one object per text,
  ``<prefix><model>/<dims>/<hh>/<hash>.json`` where ``hh`` is the first two hex digits
  of the hash. One object per text (rather than one per document or per batch) makes a
  hit independent of how texts were grouped: a chunk shared by two documents, or kept
  when a document is re-chunked, still hits. The ``hh`` level spreads keys over 256
  prefixes, so S3's per-prefix request rates are far from reached; gets and puts run
  on a small thread pool to hide per-object latency. The body is JSON with the vector
  as a list of floats (Python's shortest round-trip repr), so a cached vector is
  bit-identical to the one first returned, whatever the inner embedder's precision.
  Put an S3 lifecycle rule on the prefix to expire entries (e.g. 90 days).
- ``MemoryCacheStore``: an unbounded dict, for tests.
- ``LruCacheStore``: at most ``max_entries`` vectors in this process, least recently
  used out first: the local model's cache (one per worker process, ray_jobs/warm.py). A
  hit costs ~20 us against ~15-23 ms to embed a chunk on 2 cores, and a miss adds
  ~25-35 us (~0.15%; bench/embed_speed.py), so it pays as soon as more than ~0.2% of
  texts repeat: 0.9% of the corpus's chunks do, and a retried or re-run document's all do.
  Vectors are kept as float32 when that holds them exactly (the local model's always
  are: 10000 entries take ~18 MB), else float64, so a hit is bit-identical to the first
  result.

A cache failure never fails the stage: an unreadable entry is a miss, a failed write
is logged and dropped.

Environment (``wrap_with_cache_from_env``):

| env var                | meaning                                                     |
|------------------------|-------------------------------------------------------------|
| EMBEDDING_CACHE        | ``auto`` (default: ``s3`` for openai, ``memory`` for the local model), ``off``, ``s3``, ``memory`` |
| DOCUMENT_BUCKET        | bucket of the S3 cache (the pipeline's own bucket)          |
| EMBEDDING_CACHE_PREFIX | default ``embedding-cache/``                                |
| EMBEDDING_CACHE_MEMORY_ENTRIES | vectors the ``memory`` cache keeps per process (10000) |
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, Protocol, TypeVar, cast

import numpy as np
from botocore.config import Config

from docpipe import aws
from ray_jobs.backends.base import Embedder, EmbeddingResult
from ray_jobs.settings import StageSettings

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

DEFAULT_PREFIX = StageSettings.embedding_cache_prefix


def cache_key(model: str, dims: int, text: str) -> str:
    return hashlib.sha256(f"{model}\0{dims}\0{text}".encode()).hexdigest()


class CacheStore(Protocol):
    def get_many(self, model: str, dims: int, keys: list[str]) -> dict[str, list[float]]:
        """The vectors found, by key; absent keys are misses."""

    def put_many(self, model: str, dims: int, entries: dict[str, list[float]]) -> None: ...


class MemoryCacheStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()
        self.gets = 0
        self.puts = 0

    def get_many(self, model: str, dims: int, keys: list[str]) -> dict[str, list[float]]:
        with self._lock:
            self.gets += len(keys)
            return {k: list(self._data[(model, dims, k)]) for k in keys if (model, dims, k) in self._data}

    def put_many(self, model: str, dims: int, entries: dict[str, list[float]]) -> None:
        with self._lock:
            self.puts += len(entries)
            for k, v in entries.items():
                self._data[(model, dims, k)] = list(v)

    def __len__(self) -> int:
        return len(self._data)


class LruCacheStore:
    """At most ``max_entries`` vectors, the least recently used dropped first; thread-safe."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("an LRU embedding cache needs max_entries >= 1")
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, model: str, dims: int, keys: list[str]) -> dict[str, list[float]]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for k in keys:
                v = self._data.get((model, dims, k))
                if v is not None:
                    self._data.move_to_end((model, dims, k))
                    found[k] = v
        return {k: cast(list[float], v.tolist()) for k, v in found.items()}

    def put_many(self, model: str, dims: int, entries: dict[str, list[float]]) -> None:
        stored = {k: _compact(v) for k, v in entries.items()}
        with self._lock:
            for k, v in stored.items():
                self._data[(model, dims, k)] = v
                self._data.move_to_end((model, dims, k))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _compact(vector: list[float]) -> np.ndarray:
    """float32 when that is exact (the local model's vectors), else float64: never lossy."""
    wide = np.asarray(vector, dtype=np.float64)
    narrow = wide.astype(np.float32)
    return narrow if np.array_equal(narrow, wide) else wide


@cache
def _pool(connections: int) -> Config:
    """One connection per worker thread; one Config object per size (aws.client caches by it)."""
    return Config(max_pool_connections=connections)


def _safe_segment(value: str) -> str:
    # Model names may carry "/" or ":" (fine-tunes, proxies); keep keys one level deep.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)


class S3CacheStore:
    def __init__(self, bucket: str, prefix: str = DEFAULT_PREFIX, *, client: Any = None, max_workers: int = 16) -> None:
        if not bucket:
            raise ValueError("S3 embedding cache needs a bucket (DOCUMENT_BUCKET)")
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._client = client
        self.max_workers = max_workers

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("s3", config=_pool(self.max_workers))
        return self._client

    def key_for(self, model: str, dims: int, key: str) -> str:
        return f"{self.prefix}{_safe_segment(model)}/{dims}/{key[:2]}/{key}.json"

    def _get(self, model: str, dims: int, key: str) -> list[float] | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key_for(model, dims, key))["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("NoSuchKey", "404", "NotFound"):
                log.warning("embedding cache read failed (%s): treated as a miss", code)
            return None
        try:
            entry = json.loads(body)
            vector = [float(v) for v in entry["vector"]]
        except (ValueError, KeyError, TypeError):
            log.warning("embedding cache entry %s is corrupt: treated as a miss", key)
            return None
        if entry.get("model") != model or entry.get("dims") != dims or len(vector) != dims:
            return None  # a hash collision is astronomically unlikely; a bad write is not
        return vector

    def _put(self, model: str, dims: int, key: str, vector: list[float]) -> None:
        body = json.dumps({"model": model, "dims": dims, "vector": vector}, separators=(",", ":"))
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key_for(model, dims, key), Body=body.encode(), ContentType="application/json"
            )
        except Exception as exc:  # a cache write must never fail the stage
            log.warning("embedding cache write failed: %s", exc)

    def _map(self, fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        if len(items) <= 1 or self.max_workers <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items))) as pool:
            return list(pool.map(fn, items))

    def get_many(self, model: str, dims: int, keys: list[str]) -> dict[str, list[float]]:
        found = self._map(lambda k: self._get(model, dims, k), keys)
        return {k: v for k, v in zip(keys, found, strict=True) if v is not None}

    def put_many(self, model: str, dims: int, entries: dict[str, list[float]]) -> None:
        self._map(lambda kv: self._put(model, dims, kv[0], kv[1]), list(entries.items()))


class CachedEmbedder:
    """An ``Embedder`` that serves repeated texts from ``store``.

    ``EmbeddingResult.cache_hits`` counts the input positions served from the store;
    ``tokens`` and ``cost_usd`` are the inner embedder's, for the misses only.
    ``hit_rate`` is over this instance's lifetime (hits / texts looked up).
    """

    def __init__(self, inner: Embedder, store: CacheStore) -> None:
        self.inner = inner
        self.store = store
        self.model = inner.model
        self.dims = inner.dims
        self.lookups = 0
        self.hits = 0
        self._lock = threading.Lock()

    @property
    def hit_rate(self) -> float:
        with self._lock:
            return self.hits / self.lookups if self.lookups else 0.0

    def embed(self, texts: list[str]) -> EmbeddingResult:
        texts = list(texts)
        if not texts:
            return EmbeddingResult(vectors=[])
        keys = [cache_key(self.model, self.dims, t) for t in texts]
        unique = list(dict.fromkeys(keys))
        try:
            found = self.store.get_many(self.model, self.dims, unique)
        except Exception as exc:  # the cache is an optimisation: never fail the stage for it
            log.warning("embedding cache lookup failed, embedding everything: %s", exc)
            found = {}
        # Each distinct missing text once, in one inner call (it batches by itself).
        miss_keys = [k for k in unique if k not in found]
        first_text: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            first_text.setdefault(k, t)
        tokens, cost = 0, 0.0
        fresh: dict[str, list[float]] = {}
        if miss_keys:
            result = self.inner.embed([first_text[k] for k in miss_keys])
            fresh = dict(zip(miss_keys, result.vectors, strict=True))
            tokens, cost = result.tokens, result.cost_usd
            try:
                self.store.put_many(self.model, self.dims, fresh)
            except Exception as exc:
                log.warning("embedding cache write-back failed: %s", exc)
        vectors = [found[k] if k in found else fresh[k] for k in keys]
        hits = sum(1 for k in keys if k in found)
        with self._lock:
            self.lookups += len(keys)
            self.hits += hits
        return EmbeddingResult(vectors=vectors, tokens=tokens, cost_usd=cost, cache_hits=hits)


def wrap_with_cache_from_env(embedder: Embedder, env: Mapping[str, str] | None = None, *, client: Any = None) -> Embedder:
    """Wrap ``embedder`` as ``EMBEDDING_CACHE`` says (``auto`` resolved by
    ray_jobs.settings): ``off`` returns it unchanged; ``s3`` caches under
    ``s3://$DOCUMENT_BUCKET/$EMBEDDING_CACHE_PREFIX``; ``memory`` in this process, in an
    LRU of ``EMBEDDING_CACHE_MEMORY_ENTRIES`` vectors (0: no cache)."""
    settings = StageSettings.from_env(env)
    kind = settings.embedding_cache_mode()
    if kind == "off":
        return embedder
    if kind == "s3":
        store = S3CacheStore(
            settings.document_bucket,
            settings.embedding_cache_prefix,
            client=client,
        )
        return CachedEmbedder(embedder, store)
    if kind == "memory":
        if settings.embedding_cache_memory_entries < 1:
            return embedder
        return CachedEmbedder(embedder, LruCacheStore(settings.embedding_cache_memory_entries))
    raise ValueError(f"EMBEDDING_CACHE={kind!r}: expected 'off', 's3' or 'memory'")
