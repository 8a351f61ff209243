"""OpenAIEmbedder through the real ``openai`` client against a local wire-compatible
server (tests/fakes/openai_server.py); token budgets with injected clocks (no sleeping);
the shared budget on DynamoDB under moto."""

from __future__ import annotations

import calendar
import json
import threading

import boto3
import numpy as np
import openai
import pytest
from fakes.openai_server import MAX_INPUT_TOKENS, MAX_INPUTS, MAX_REQUEST_TOKENS, FakeOpenAIServer, pseudo_embedding
from moto import mock_aws

from docpipe.errors import EmbeddingRateLimited, StageFailed
from ray_jobs import tokens as tok
from ray_jobs.backends import secrets
from ray_jobs.backends.base import Embedder
from ray_jobs.backends.openai_embedder import (
    DynamoDBTokenBudget,
    InProcessTokenBudget,
    OpenAIEmbedder,
    UnlimitedBudget,
    token_budget_from_env,
)

API_KEY = "sk-test-123"


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self, start: float) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture(autouse=True)
def _fresh_secrets():
    secrets.clear_cache()
    yield
    secrets.clear_cache()


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def aws_env(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETSMANAGER", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(autouse=True)
def client_pauses(monkeypatch) -> list[float]:
    """The pauses the client's retries choose (the one retry layer), recorded and not slept."""
    pauses: list[float] = []
    choose = openai.OpenAI._calculate_retry_timeout

    def record(self, *args, **kwargs):
        pauses.append(choose(self, *args, **kwargs))
        return 0.0

    monkeypatch.setattr(openai.OpenAI, "_calculate_retry_timeout", record)
    return pauses


def make_embedder(server: FakeOpenAIServer, **kwargs) -> OpenAIEmbedder:
    client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, timeout=30)
    return OpenAIEmbedder(client, **kwargs)


def words(n_tokens: int, seed: int = 0) -> str:
    """Text of exactly n_tokens cl100k tokens (" w" + digits words are one token each
    for these short forms; checked below)."""
    text = "".join(f" w{(seed + i) % 10}" for i in range(n_tokens // 2))
    assert tok.count_tokens(text) == n_tokens // 2 * 2
    return text


def test_is_an_embedder(server):
    embedder = make_embedder(server)
    assert isinstance(embedder, Embedder)
    assert (embedder.model, embedder.dims) == ("text-embedding-3-small", 1536)


def test_2049_inputs_are_split_under_every_limit(server):
    embedder = make_embedder(server, dims=64)
    texts = [f"chunk number {i} of a document" for i in range(2049)]
    result = embedder.embed(texts)

    ok = server.ok_requests
    assert len(ok) >= 2
    assert all(len(r["inputs"]) <= MAX_INPUTS and r["tokens"] <= MAX_REQUEST_TOKENS for r in ok)
    assert not [r for r in server.requests if r["status"] != 200]
    assert sum(len(r["inputs"]) for r in ok) == 2049
    assert len(result.vectors) == 2049
    for i in (0, 2047, 2048):  # order kept across requests
        np.testing.assert_allclose(result.vectors[i], pseudo_embedding(texts[i], dims=64), rtol=1e-6)
    assert result.tokens == sum(r["tokens"] for r in ok) == sum(tok.count_tokens(t) for t in texts)
    assert result.cost_usd == pytest.approx(result.tokens * 0.02 / 1e6)
    assert result.cache_hits == 0


def test_token_limit_per_request_splits_requests(server):
    embedder = make_embedder(server, dims=32)
    texts = [words(8000, seed=i) for i in range(40)]  # 320k tokens: over one request's 300k
    result = embedder.embed(texts)
    ok = server.ok_requests
    assert len(ok) == 2
    assert all(r["tokens"] <= MAX_REQUEST_TOKENS for r in ok)
    assert result.tokens == 320_000


def test_long_input_is_split_into_windows_and_averaged(server):
    embedder = make_embedder(server, dims=48)
    long_text = words(20_000)
    result = embedder.embed(["short one", long_text])

    (request,) = server.ok_requests
    windows = request["inputs"][1:]
    assert len(windows) == 3  # 8192 + 8192 + 3616
    counts = [tok.count_tokens(w) for w in windows]
    assert max(counts) <= MAX_INPUT_TOKENS and sum(counts) == 20_000
    assert "".join(windows) == long_text  # nothing truncated away

    expected = sum(n * pseudo_embedding(w, dims=48).astype(np.float64) for n, w in zip(counts, windows, strict=True))
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(result.vectors[1], expected, rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(result.vectors[1]) == pytest.approx(1.0)
    np.testing.assert_allclose(result.vectors[0], pseudo_embedding("short one", dims=48), rtol=1e-6)
    assert result.tokens == 20_000 + tok.count_tokens("short one")


def test_empty_string_is_sent_as_a_space(server):
    embedder = make_embedder(server, dims=16)
    result = embedder.embed(["", "x"])
    assert server.ok_requests[0]["inputs"] == [" ", "x"]
    assert len(result.vectors) == 2


def test_dimensions_sent_only_when_not_the_model_default(server):
    default = make_embedder(server)
    default.embed(["a"])
    shortened = make_embedder(server, dims=256)
    result = shortened.embed(["a"])
    assert [r["dimensions"] for r in server.ok_requests] == [None, 256]
    assert len(result.vectors[0]) == 256
    assert server.ok_requests[0]["encoding_format"] == "base64"  # the SDK's default, decoded for us


def test_429_with_retry_after_ms_is_retried_and_honoured(server, client_pauses):
    embedder = make_embedder(server, dims=8)
    server.fail_next(2, 429, retry_after_ms=1500)
    result = embedder.embed(["hello"])
    assert [r["status"] for r in server.requests] == [429, 429, 200]
    assert client_pauses == [1.5, 1.5]  # the server's delay
    assert len(result.vectors) == 1


def test_retry_after_seconds_header_is_honoured(server, client_pauses):
    embedder = make_embedder(server, dims=8)
    server.fail_next(1, 429, retry_after="3")
    embedder.embed(["hello"])
    assert client_pauses == [3.0]


def test_5xx_is_retried_with_growing_backoff(server, client_pauses):
    embedder = make_embedder(server, dims=8)
    server.fail_next(3, 500)
    embedder.embed(["hello"])
    assert [r["status"] for r in server.requests] == [500, 500, 500, 200]
    assert len(client_pauses) == 3 and client_pauses[0] < client_pauses[2]


def test_persistent_429_raises_embedding_rate_limited(server):
    embedder = make_embedder(server, dims=8, max_attempts=4)
    server.fail_next(100, 429, retry_after_ms=10)
    with pytest.raises(EmbeddingRateLimited) as info:
        embedder.embed(["hello"])
    assert info.value.code == "EmbeddingRateLimited" and info.value.retryable
    assert len(server.requests) == 4  # max_attempts, in one layer of retries


def test_persistent_5xx_raises_embedding_rate_limited(server):
    embedder = make_embedder(server, dims=8, max_attempts=2)
    server.fail_next(100, 503)
    with pytest.raises(EmbeddingRateLimited, match="503"):
        embedder.embed(["hello"])
    assert len(server.requests) == 2


def test_unreachable_api_raises_embedding_rate_limited():
    with FakeOpenAIServer(api_key=API_KEY) as gone:
        url = gone.base_url
    embedder = OpenAIEmbedder(openai.OpenAI(api_key=API_KEY, base_url=url, timeout=5), dims=8, max_attempts=2)
    with pytest.raises(EmbeddingRateLimited, match="unreachable"):
        embedder.embed(["hello"])


def test_insufficient_quota_fails_the_stage(server):
    embedder = make_embedder(server, dims=8, max_attempts=2)
    server.fail_next(100, 429, code="insufficient_quota")
    with pytest.raises(StageFailed, match="quota"):
        embedder.embed(["hello"])
    assert len(server.requests) == 2  # the client cannot tell it from a rate limit


def test_other_4xx_is_not_retried(server, client_pauses):
    embedder = make_embedder(server, model="text-embedding-ada-002", dims=256)
    with pytest.raises(StageFailed, match="400"):
        embedder.embed(["hello"])
    assert len(server.requests) == 1 and client_pauses == []


# -- configuration from the environment --------------------------------------------------
def _secret(value: str) -> str:
    return boto3.client("secretsmanager").create_secret(Name="docpipe/openai", SecretString=value)["ARN"]


def test_from_env_reads_the_key_from_secrets_manager(server, aws_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-plain-env-var-is-never-used")
    with mock_aws():
        arn = _secret(json.dumps({"api_key": API_KEY}))
        env = {
            "OPENAI_API_KEY_SECRET_ARN": arn,
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_EMBEDDING_DIMS": "128",
            "OPENAI_PRICE_PER_MTOK": "0.13",
        }
        embedder = OpenAIEmbedder.from_env(env)
        result = embedder.embed(["hello world"])
    assert len(result.vectors[0]) == 128 and server.ok_requests[0]["dimensions"] == 128
    assert result.cost_usd == pytest.approx(result.tokens * 0.13 / 1e6)
    assert isinstance(embedder.budget, UnlimitedBudget)


def test_from_env_reads_the_console_setups_secret_with_both_keys(server, aws_env):
    """The usual console setup stores {"OPENAI_API_KEY": ..., "PINECONE_API_KEY": ...}."""
    with mock_aws():
        arn = _secret(json.dumps({"PINECONE_API_KEY": "pc-not-this-one", "OPENAI_API_KEY": API_KEY}))
        embedder = OpenAIEmbedder.from_env({"OPENAI_API_KEY_SECRET_ARN": arn, "OPENAI_BASE_URL": server.base_url,
                                            "OPENAI_EMBEDDING_DIMS": "16"})
        assert len(embedder.embed(["hello"]).vectors[0]) == 16
    assert server.ok_requests  # the server accepts API_KEY only


def test_wrong_key_refreshes_the_secret_once_then_fails(server, aws_env):
    with mock_aws():
        arn = _secret("sk-wrong")
        embedder = OpenAIEmbedder.from_env({"OPENAI_API_KEY_SECRET_ARN": arn, "OPENAI_BASE_URL": server.base_url})
        with pytest.raises(StageFailed, match="API key"):
            embedder.embed(["hello"])
    assert [r["status"] for r in server.requests] == [401, 401]


def test_from_env_requires_the_secret_arn():
    with pytest.raises(ValueError, match="OPENAI_API_KEY_SECRET_ARN"):
        OpenAIEmbedder.from_env({})


def test_get_secret_forms_cache_and_invalidation(aws_env):
    with mock_aws():
        sm = boto3.client("secretsmanager")
        plain = _secret("plain-key")
        assert secrets.get_secret(plain) == "plain-key"
        sm.put_secret_value(SecretId=plain, SecretString=json.dumps({"token": "tok-1"}))
        assert secrets.get_secret(plain) == "plain-key"  # cached (max_age)
        secrets.invalidate(plain)  # a 401: read again
        assert secrets.get_secret(plain) == "tok-1"
        sm.put_secret_value(SecretId=plain, SecretString=json.dumps({"other": "x"}))
        secrets.invalidate(plain)
        with pytest.raises(ValueError, match="api_key or token"):
            secrets.get_secret(plain)
        both = sm.create_secret(Name="docpipe/both", SecretString=json.dumps(
            {"OPENAI_API_KEY": "sk-1", "PINECONE_API_KEY": "pc-1"}))["ARN"]
        assert secrets.get_secret(both, field="PINECONE_API_KEY") == "pc-1"
        assert secrets.get_secret(both, field="OPENAI_API_KEY") == "sk-1"
        binary = sm.create_secret(Name="docpipe/binary", SecretBinary=b"bin-key")["ARN"]
        assert secrets.get_secret(binary) == "bin-key"
    with pytest.raises(ValueError, match="no secret ARN"):
        secrets.get_secret("")


# -- token budgets -----------------------------------------------------------------------
def test_in_process_budget_caps_requests_and_waits(server):
    clock = FakeClock(0.0)
    budget = InProcessTokenBudget(1000, clock=clock, sleep=clock.sleep)
    embedder = make_embedder(server, dims=8, budget=budget)
    texts = [words(100, seed=i) for i in range(25)]  # 2,500 tokens against 1,000/min
    embedder.embed(texts)
    ok = server.ok_requests
    assert all(r["tokens"] <= 1000 for r in ok) and len(ok) == 3
    assert clock.sleeps == [60.0, 60.0]  # requests 2 and 3 each wait for the window to clear


def test_in_process_budget_is_thread_safe():
    clock = FakeClock(0.0)
    budget = InProcessTokenBudget(1000, clock=clock, sleep=clock.sleep, max_wait_seconds=0)
    admitted, refused = [], []

    def worker():
        try:
            budget.acquire(100)
            admitted.append(1)
        except EmbeddingRateLimited:
            refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert (len(admitted), len(refused)) == (10, 15)
    assert budget.used() == 1000


TABLE = "pipeline_metrics_daily"
T0 = calendar.timegm((2026, 11, 24, 12, 0, 10))  # 12:00:10 UTC


def _metrics_table() -> None:
    boto3.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "date", "KeyType": "HASH"}, {"AttributeName": "metric_type", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "date", "AttributeType": "S"},
            {"AttributeName": "metric_type", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def _item(minute: str) -> dict:
    return boto3.client("dynamodb").get_item(
        TableName=TABLE, Key={"date": {"S": f"budget#{minute}"}, "metric_type": {"S": "openai_tokens"}}
    ).get("Item", {})


def test_shared_budget_makes_a_second_worker_wait_for_the_next_minute(aws_env):
    with mock_aws():
        _metrics_table()
        clock = FakeClock(T0)
        worker_a = DynamoDBTokenBudget(TABLE, 1000, client=boto3.client("dynamodb"), clock=clock, sleep=clock.sleep)
        worker_b = DynamoDBTokenBudget(TABLE, 1000, client=boto3.client("dynamodb"), clock=clock,
                                       sleep=clock.sleep, jitter=lambda: 0.5)
        assert worker_a.acquire(800) == 0.0
        waited = worker_b.acquire(300)  # 800 + 300 > 1000: wait for 12:01
        assert waited == pytest.approx(50.5) and clock.sleeps == [pytest.approx(50.5)]
        first, second = _item("2026-11-24T12:00"), _item("2026-11-24T12:01")
        assert first["tokens"]["N"] == "800" and second["tokens"]["N"] == "300"
        assert int(first["ttl"]["N"]) > T0
        assert worker_a.used() == 300  # the clock is in 12:01 now


def test_shared_budget_refuses_rather_than_exceeding(aws_env):
    with mock_aws():
        _metrics_table()
        clock = FakeClock(T0)
        budgets = [DynamoDBTokenBudget(TABLE, 1000, client=boto3.client("dynamodb"), clock=clock,
                                       sleep=clock.sleep, max_wait_seconds=10) for _ in range(3)]
        budgets[0].acquire(600)
        budgets[1].acquire(400)  # exactly at the budget: allowed
        with pytest.raises(EmbeddingRateLimited, match="shared token budget"):
            budgets[2].acquire(1)
        assert _item("2026-11-24T12:00")["tokens"]["N"] == "1000"
        assert clock.sleeps == []


def test_embedder_uses_the_shared_budget_from_env(server, aws_env):
    with mock_aws():
        _metrics_table()
        clock = FakeClock(T0)
        env = {"OPENAI_TPM_BUDGET": "50000", "TOKEN_BUDGET_TABLE": TABLE}
        budget = token_budget_from_env(env, clock=clock, sleep=clock.sleep)
        assert isinstance(budget, DynamoDBTokenBudget)
        embedder = make_embedder(server, dims=8, budget=budget)
        result = embedder.embed(["one two three", "four five"])
        assert _item("2026-11-24T12:00")["tokens"]["N"] == str(result.tokens)
    assert isinstance(token_budget_from_env({"OPENAI_TPM_BUDGET": "10"}), InProcessTokenBudget)
    assert isinstance(token_budget_from_env({}), UnlimitedBudget)
