"""CachedEmbedder in front of the real OpenAIEmbedder + fake OpenAI server; the S3
store under moto."""

from __future__ import annotations

import boto3
import openai
import pytest
from fakes.openai_server import FakeOpenAIServer
from moto import mock_aws

from ray_jobs.backends.base import Embedder, EmbeddingResult
from ray_jobs.backends.embedding_cache import (
    CachedEmbedder,
    LruCacheStore,
    MemoryCacheStore,
    S3CacheStore,
    cache_key,
    wrap_with_cache_from_env,
)
from ray_jobs.backends.openai_embedder import OpenAIEmbedder

BUCKET = "docpipe-documents"


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def aws_env(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def openai_embedder(server: FakeOpenAIServer, dims: int = 64) -> OpenAIEmbedder:
    client = openai.OpenAI(api_key="sk-x", base_url=server.base_url, timeout=30)
    return OpenAIEmbedder(client, dims=dims)


TEXTS = [f"paragraph {i}: the quarterly revenue grew by {i} percent" for i in range(40)]


def test_reembedding_the_same_texts_makes_no_request(server):
    cached = CachedEmbedder(openai_embedder(server), MemoryCacheStore())
    assert isinstance(cached, Embedder)
    first = cached.embed(TEXTS)
    assert len(server.requests) == 1 and first.cache_hits == 0 and first.tokens > 0

    second = cached.embed(TEXTS)
    assert len(server.requests) == 1  # nothing new reached the API
    assert second.cache_hits == len(TEXTS)
    assert second.tokens == 0 and second.cost_usd == 0.0
    assert second.vectors == first.vectors
    assert cached.hit_rate == pytest.approx(0.5)  # 40 misses then 40 hits

    again = CachedEmbedder(openai_embedder(server), cached.store)  # a later run
    again.embed(TEXTS)
    assert again.hit_rate == 1.0 and len(server.requests) == 1


def test_partial_hits_embed_only_the_misses_in_one_batch(server):
    cached = CachedEmbedder(openai_embedder(server), MemoryCacheStore())
    warm = cached.embed(["alpha", "beta"])
    result = cached.embed(["alpha", "gamma", "beta", "delta", "gamma"])
    assert len(server.requests) == 2
    assert server.requests[1]["inputs"] == ["gamma", "delta"]  # each miss once
    assert result.cache_hits == 2
    assert result.vectors[0] == warm.vectors[0] and result.vectors[2] == warm.vectors[1]
    assert result.vectors[1] == result.vectors[4]
    assert result.tokens == server.requests[1]["tokens"]


def test_key_covers_model_and_dims(server):
    store = MemoryCacheStore()
    CachedEmbedder(openai_embedder(server, dims=64), store).embed(["same text"])
    CachedEmbedder(openai_embedder(server, dims=32), store).embed(["same text"])
    assert len(server.requests) == 2 and len(store) == 2
    assert cache_key("m", 64, "t") != cache_key("m", 32, "t") != cache_key("n", 64, "t")


def test_a_failing_store_never_fails_the_embedding(server):
    class Broken:
        def get_many(self, *a):
            raise RuntimeError("cache down")

        def put_many(self, *a):
            raise RuntimeError("cache down")

    result = CachedEmbedder(openai_embedder(server), Broken()).embed(["a", "b"])
    assert len(result.vectors) == 2 and result.cache_hits == 0


def test_s3_cache_round_trip_and_layout(server, aws_env):
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        env = {"EMBEDDING_CACHE": "s3", "DOCUMENT_BUCKET": BUCKET}
        first_run = wrap_with_cache_from_env(openai_embedder(server), env)
        assert isinstance(first_run, CachedEmbedder) and isinstance(first_run.store, S3CacheStore)
        first = first_run.embed(TEXTS[:10])

        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert len(keys) == 10
        h = cache_key("text-embedding-3-small", 64, TEXTS[0])
        assert f"embedding-cache/text-embedding-3-small/64/{h[:2]}/{h}.json" in keys

        second_run = wrap_with_cache_from_env(openai_embedder(server), env)  # e.g. another worker
        second = second_run.embed([*TEXTS[:10], "a new one"])
        assert len(server.requests) == 2 and server.requests[1]["inputs"] == ["a new one"]
        assert second.cache_hits == 10
        assert second.vectors[:10] == first.vectors  # bit-identical after the round trip


def test_s3_corrupt_entry_is_a_miss_and_is_rewritten(server, aws_env):
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        store = S3CacheStore(BUCKET, client=s3)
        h = cache_key("text-embedding-3-small", 64, "x")
        s3.put_object(Bucket=BUCKET, Key=store.key_for("text-embedding-3-small", 64, h), Body=b"{not json")
        result = CachedEmbedder(openai_embedder(server), store).embed(["x"])
        assert result.cache_hits == 0 and len(server.requests) == 1
        assert store.get_many("text-embedding-3-small", 64, [h])[h] == result.vectors[0]


def test_wrap_from_env_choices():
    class Dummy:
        model, dims = "m", 3

        def embed(self, texts):
            return EmbeddingResult(vectors=[[0.0, 0.0, 1.0] for _ in texts])

    inner = Dummy()
    local = wrap_with_cache_from_env(inner, {})  # default: the local model, cached in memory
    assert isinstance(local, CachedEmbedder) and isinstance(local.store, LruCacheStore)
    assert local.store.max_entries == 10000
    assert wrap_with_cache_from_env(inner, {"EMBEDDING_CACHE_MEMORY_ENTRIES": "0"}) is inner
    assert wrap_with_cache_from_env(inner, {"EMBEDDING_CACHE": "off"}) is inner
    with pytest.raises(ValueError, match="DOCUMENT_BUCKET"):  # openai: S3, as before
        wrap_with_cache_from_env(inner, {"EMBEDDING_BACKEND": "openai"})
    with pytest.raises(ValueError, match="DOCUMENT_BUCKET"):
        wrap_with_cache_from_env(inner, {"EMBEDDING_CACHE": "s3"})
    with pytest.raises(ValueError, match="EMBEDDING_CACHE"):
        wrap_with_cache_from_env(inner, {"EMBEDDING_CACHE": "redis"})


class CountingLocal:
    """Vectors that are exact float32 values (as the local model's are) or not."""

    model, dims = "local", 3

    def __init__(self, float32: bool = True) -> None:
        self.texts: list[str] = []
        self.float32 = float32

    def embed(self, texts: list[str]) -> EmbeddingResult:
        self.texts += texts
        third = 0.5 if self.float32 else 1 / 3
        return EmbeddingResult(vectors=[[float(len(t)), third, -1.0] for t in texts])


def test_lru_store_keeps_the_most_recently_used():
    inner = CountingLocal()
    cached = CachedEmbedder(inner, LruCacheStore(max_entries=3))
    cached.embed(["a", "bb", "ccc"])
    cached.embed(["a"])  # "a" is now the most recently used
    cached.embed(["dddd"])  # evicts "bb", the least recently used
    assert len(cached.store) == 3
    inner.texts.clear()
    result = cached.embed(["a", "ccc", "dddd", "bb"])
    assert inner.texts == ["bb"] and result.cache_hits == 3
    assert result.vectors == [[1.0, 0.5, -1.0], [3.0, 0.5, -1.0], [4.0, 0.5, -1.0], [2.0, 0.5, -1.0]]


@pytest.mark.parametrize("float32", [True, False])
def test_lru_hit_is_bit_identical(float32):
    inner = CountingLocal(float32)
    cached = CachedEmbedder(inner, LruCacheStore(max_entries=10))
    first = cached.embed(["x", "yy"]).vectors
    again = cached.embed(["yy", "x"])
    assert again.cache_hits == 2 and again.vectors == [first[1], first[0]]
    assert inner.texts == ["x", "yy"]
    with pytest.raises(ValueError):
        LruCacheStore(max_entries=0)


def test_local_model_behind_the_memory_cache_embeds_a_text_once():
    from ray_jobs.backends.local_embedder import LocalEmbedder

    local = LocalEmbedder(runtime="onnx-int8", threads=1)
    cached = wrap_with_cache_from_env(local, {})
    texts = ["The board approved the budget.", "Invoice 42 is overdue.", "The board approved the budget."]
    first = cached.embed(texts)
    runs: list[int] = []
    session = local._onnx

    def counting(ids, mask):
        runs.append(len(ids))
        return session(ids, mask)

    local._onnx = counting
    second = cached.embed([texts[1], "A new sentence.", texts[0]])
    assert runs == [1]  # only the new sentence reached the model
    assert second.cache_hits == 2
    assert second.vectors[0] == first.vectors[1] and second.vectors[2] == first.vectors[0]
    assert first.vectors[0] == first.vectors[2]
