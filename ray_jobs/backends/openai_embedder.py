"""Production embedder: OpenAI embeddings through the ``openai`` SDK.

Environment (read by ``OpenAIEmbedder.from_env``):

| env var                    | meaning                                                        |
|----------------------------|----------------------------------------------------------------|
| OPENAI_API_KEY_SECRET_ARN  | Secrets Manager secret holding the API key (required)          |
| OPENAI_BASE_URL            | API base, e.g. ``http://127.0.0.1:PORT/v1`` (default: OpenAI)  |
| OPENAI_EMBEDDING_MODEL     | default ``text-embedding-3-small``                             |
| OPENAI_EMBEDDING_DIMS      | default: the model's own (1536); sent as ``dimensions`` only   |
|                            | when it differs from the model's default                       |
| OPENAI_TPM_BUDGET          | tokens per minute this pipeline may use; unset/0 = no budget   |
| TOKEN_BUDGET_TABLE         | DynamoDB table for a budget shared by all workers; unset =     |
|                            | an in-process budget (one worker)                              |
| OPENAI_PRICE_PER_MTOK      | USD per million tokens for ``cost_usd``, default 0.02          |
| OPENAI_MAX_ATTEMPTS        | attempts per request on 429/5xx/connection errors, default 6   |

Request limits (from the API's docs): at most 2048 inputs, 300,000 tokens summed over a
request, 8192 tokens per input, and no empty string. ``embed`` packs inputs greedily
into requests under all three, counting tokens offline with cl100k_base
(``ray_jobs.tokens``, the encoding of every text-embedding-3 model).

Long inputs (> 8192 tokens): the text is cut into consecutive windows of at most 8192
tokens, each window is embedded, and the text's vector is the average of the window
vectors weighted by each window's token count, re-normalised to unit length (the
recipe of OpenAI's cookbook). Nothing is truncated away, so a long chunk's tail still
counts; callers should keep chunks far below the limit anyway.

Empty strings are sent as a single space: the API rejects empty input, and one vector
per input keeps the result aligned with ``texts``.

Retries are the SDK's: the embedder sets the client's ``max_retries`` so that a request
gets ``max_attempts`` attempts on 408, 409, 429, 5xx and connection errors, with
exponential backoff and jitter, a ``retry-after-ms`` or ``retry-after`` header winning.
When they run out ``docpipe.errors.EmbeddingRateLimited`` is raised (the ASL retries the
stage). A 429 whose code is ``insufficient_quota`` raises ``StageFailed`` (not transient:
the SDK cannot tell it from a rate limit, so it is found out after the client's
attempts), as does any other 4xx (a bug or a configuration error that retrying cannot
fix). A 401 forgets the cached secret and tries once more (the key may have been
rotated).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from docpipe import aws
from docpipe.errors import EmbeddingRateLimited, StageFailed
from ray_jobs import tokens as tok
from ray_jobs.backends import secrets
from ray_jobs.backends.base import EmbeddingResult
from ray_jobs.settings import StageSettings

log = logging.getLogger(__name__)

DEFAULT_MODEL = StageSettings.openai_embedding_model
MODEL_DEFAULT_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_TOKENS_PER_INPUT = 8192
DEFAULT_PRICE_PER_MTOK = StageSettings.openai_price_per_mtok
BUDGET_METRIC_TYPE = "openai_tokens"


# ------------------------------------------------------------------------------------
# Token budgets
# ------------------------------------------------------------------------------------
class TokenBudget(Protocol):
    tokens_per_minute: int

    def acquire(self, tokens: int) -> float:
        """Block until ``tokens`` fit in the budget and take them; returns the seconds
        waited. Raises EmbeddingRateLimited when that would take over ``max_wait``."""


class UnlimitedBudget:
    """No budget: the API's own 429s are the only brake."""

    tokens_per_minute = 0

    def acquire(self, tokens: int) -> float:
        return 0.0


class InProcessTokenBudget:
    """Sliding 60-second window shared by the threads of one process.

    A request larger than the whole budget is let through alone (when the window is
    empty) rather than blocking for ever.
    """

    def __init__(
        self,
        tokens_per_minute: int,
        *,
        window_seconds: float = 60.0,
        max_wait_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if tokens_per_minute <= 0:
            raise ValueError("tokens_per_minute must be positive")
        self.tokens_per_minute = tokens_per_minute
        self.window = window_seconds
        self.max_wait = max_wait_seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._spent: deque[tuple[float, int]] = deque()

    def used(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return sum(n for _, n in self._spent)

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window:
            self._spent.popleft()

    def acquire(self, tokens: int) -> float:
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._expire(now)
                used = sum(n for _, n in self._spent)
                if used + tokens <= self.tokens_per_minute or not self._spent:
                    self._spent.append((now, tokens))
                    return waited
                # Wait until enough of the oldest spending has left the window.
                need = used + tokens - self.tokens_per_minute
                freed, wake = 0, now
                for t, n in self._spent:
                    freed += n
                    wake = t + self.window
                    if freed >= need:
                        break
                delay = max(wake - now, 0.001)
            if waited + delay > self.max_wait:
                raise EmbeddingRateLimited(
                    f"token budget {self.tokens_per_minute}/min: {tokens} tokens would wait "
                    f"over {self.max_wait:.0f} s"
                )
            self._sleep(delay)
            waited += delay


class DynamoDBTokenBudget:
    """Budget shared by every worker: one atomic counter per UTC minute in DynamoDB.

    Item ``{"date": "budget#<YYYY-MM-DDTHH:MM>", "metric_type": "openai_tokens"}`` (the
    key schema of the metrics table, so that table can hold it: the ``budget#`` prefix
    keeps it apart from the daily ``YYYY-MM-DD`` items). ``acquire`` does one
    ``UpdateItem`` with ``ADD tokens :n`` under ``attribute_not_exists(tokens) OR
    tokens <= :budget - :n``: DynamoDB evaluates the condition and the add atomically,
    so concurrent workers can never push a minute over the budget. A worker whose
    condition fails sleeps until the next minute (plus up to a second of jitter, so the
    waiting workers do not all retry at the same instant) and tries again.

    Windows are fixed UTC minutes, so up to twice the budget can be spent across a
    minute boundary; set ``OPENAI_TPM_BUDGET`` somewhat under the account's TPM limit.
    Items carry a ``ttl`` (epoch seconds) so the table does not grow.
    """

    def __init__(
        self,
        table_name: str,
        tokens_per_minute: int,
        *,
        client: Any = None,
        metric_type: str = BUDGET_METRIC_TYPE,
        ttl_seconds: int = 2 * 86400,
        max_wait_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if tokens_per_minute <= 0:
            raise ValueError("tokens_per_minute must be positive")
        if not table_name:
            raise ValueError("table_name is required")
        self.table_name = table_name
        self.tokens_per_minute = tokens_per_minute
        self.metric_type = metric_type
        self.ttl_seconds = ttl_seconds
        self.max_wait = max_wait_seconds
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    @staticmethod
    def minute_key(epoch_seconds: float) -> str:
        return "budget#" + time.strftime("%Y-%m-%dT%H:%M", time.gmtime(epoch_seconds))

    def used(self, epoch_seconds: float | None = None) -> int:
        """Tokens taken in the minute of ``epoch_seconds`` (default: now)."""
        now = self._clock() if epoch_seconds is None else epoch_seconds
        item = self.client.get_item(
            TableName=self.table_name,
            Key={"date": {"S": self.minute_key(now)}, "metric_type": {"S": self.metric_type}},
            ConsistentRead=True,
        ).get("Item")
        return int(item["tokens"]["N"]) if item and "tokens" in item else 0

    def acquire(self, tokens: int) -> float:
        from botocore.exceptions import ClientError

        waited = 0.0
        while True:
            now = self._clock()
            minute_start = math.floor(now / 60.0) * 60
            # A request bigger than the budget may only take an unused minute.
            limit_before = max(self.tokens_per_minute - tokens, 0)
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key={
                        "date": {"S": self.minute_key(minute_start)},
                        "metric_type": {"S": self.metric_type},
                    },
                    UpdateExpression="ADD #tokens :n, #requests :one SET #ttl = if_not_exists(#ttl, :ttl)",
                    ConditionExpression="attribute_not_exists(#tokens) OR #tokens <= :limit_before",
                    ExpressionAttributeNames={"#tokens": "tokens", "#requests": "requests", "#ttl": "ttl"},
                    ExpressionAttributeValues={
                        ":n": {"N": str(tokens)},
                        ":one": {"N": "1"},
                        ":limit_before": {"N": str(limit_before)},
                        ":ttl": {"N": str(int(minute_start) + self.ttl_seconds)},
                    },
                )
                return waited
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
            delay = (minute_start + 60.0 - now) + self._jitter()
            if waited + delay > self.max_wait:
                raise EmbeddingRateLimited(
                    f"shared token budget {self.tokens_per_minute}/min in {self.table_name}: "
                    f"{tokens} tokens would wait over {self.max_wait:.0f} s"
                )
            log.info("token budget full for this minute: waiting %.1f s", delay)
            self._sleep(delay)
            waited += delay


def token_budget_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> TokenBudget:
    """``OPENAI_TPM_BUDGET`` unset/0 -> UnlimitedBudget; with ``TOKEN_BUDGET_TABLE`` ->
    DynamoDBTokenBudget (shared across workers); else InProcessTokenBudget."""
    settings = StageSettings.from_env(env)
    tpm, table = settings.openai_tpm_budget, settings.token_budget_table
    if tpm <= 0:
        return UnlimitedBudget()
    if table:
        return DynamoDBTokenBudget(table, tpm, **kwargs)
    return InProcessTokenBudget(tpm, **kwargs)


# ------------------------------------------------------------------------------------
# Embedder
# ------------------------------------------------------------------------------------
@dataclass
class _Piece:
    owner: int  # index into the caller's texts
    text: str
    tokens: int


def _normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm > 0 else vec


class OpenAIEmbedder:
    """``Embedder`` backed by the OpenAI embeddings API (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        *,
        model: str = DEFAULT_MODEL,
        dims: int | None = None,
        budget: TokenBudget | None = None,
        price_per_mtok: float = DEFAULT_PRICE_PER_MTOK,
        max_attempts: int = 6,
        max_inputs_per_request: int = MAX_INPUTS_PER_REQUEST,
        max_tokens_per_request: int = MAX_TOKENS_PER_REQUEST,
        max_tokens_per_input: int = MAX_TOKENS_PER_INPUT,
        api_key_secret_arn: str | None = None,
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        # The client's own retries make the attempts (a copy: the caller's client is not changed).
        self._client = client.with_options(max_retries=self.max_attempts - 1)
        self.model = model
        default_dims = MODEL_DEFAULT_DIMS.get(model)
        if dims is None:
            if default_dims is None:
                raise ValueError(f"unknown model {model!r}: set OPENAI_EMBEDDING_DIMS")
            dims = default_dims
        self.dims = int(dims)
        self._send_dimensions = self.dims != default_dims
        self.budget: TokenBudget = budget if budget is not None else UnlimitedBudget()
        self.price_per_mtok = price_per_mtok
        self.max_inputs_per_request = max_inputs_per_request
        # A request must also fit in one minute's budget, or it could never be admitted
        # (a single input over it is sent alone; the budget admits it into an empty window).
        cap = max_tokens_per_request
        if self.budget.tokens_per_minute > 0:
            cap = min(cap, self.budget.tokens_per_minute)
        self.max_tokens_per_request = cap
        self.max_tokens_per_input = max_tokens_per_input
        self._secret_arn = api_key_secret_arn
        self.requests_sent = 0  # successful API calls, for logs and tests

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        client: Any = None,
        budget: TokenBudget | None = None,
        **kwargs: Any,
    ) -> OpenAIEmbedder:

        settings = StageSettings.from_env(env)
        arn = settings.openai_api_key_secret_arn
        if client is None:
            if not arn:
                raise ValueError("OPENAI_API_KEY_SECRET_ARN is not set (keys never come from plain env vars)")
            import openai

            client = openai.OpenAI(
                # A callable is asked before every request: rotation is picked up once the
                # secret cache expires, without rebuilding the client.
                api_key=lambda: secrets.get_secret(arn, field="OPENAI_API_KEY"),
                base_url=settings.openai_base_url or None,
                timeout=settings.openai_timeout_seconds,
            )
        return cls(
            client,
            model=settings.openai_embedding_model,
            dims=settings.openai_embedding_dims or None,
            budget=budget if budget is not None else token_budget_from_env(env),
            price_per_mtok=settings.openai_price_per_mtok,
            max_attempts=settings.openai_max_attempts,
            api_key_secret_arn=arn or None,
            **kwargs,
        )

    # -- planning -----------------------------------------------------------------------
    def _pieces(self, texts: list[str]) -> list[_Piece]:
        pieces: list[_Piece] = []
        limit = self.max_tokens_per_input
        for i, text in enumerate(texts):
            text = text if text else " "  # the API rejects empty input
            ids = tok.encode(text)
            if len(ids) <= limit:
                pieces.append(_Piece(i, text, max(len(ids), 1)))
                continue
            start = 0
            while start < len(ids):
                end = min(start + limit, len(ids))
                window = tok.decode(ids[start:end])
                n = tok.count_tokens(window)
                # Decoding a cut through a multi-byte character can re-encode longer.
                while n > limit and end > start + 1:
                    end -= max(1, n - limit)
                    window = tok.decode(ids[start:end])
                    n = tok.count_tokens(window)
                pieces.append(_Piece(i, window or " ", max(n, 1)))
                start = end
        return pieces

    def _batches(self, pieces: list[_Piece]) -> list[list[_Piece]]:
        batches: list[list[_Piece]] = []
        current: list[_Piece] = []
        current_tokens = 0
        for piece in pieces:
            if current and (
                len(current) >= self.max_inputs_per_request
                or current_tokens + piece.tokens > self.max_tokens_per_request
            ):
                batches.append(current)
                current, current_tokens = [], 0
            current.append(piece)
            current_tokens += piece.tokens
        if current:
            batches.append(current)
        return batches

    # -- calling --------------------------------------------------------------------------
    def _create(self, inputs: list[str], *, reauth: bool = True) -> Any:
        """One request; when it raises, the client has made its attempts."""
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "input": inputs}
        if self._send_dimensions:
            kwargs["dimensions"] = self.dims
        try:
            response = self._client.embeddings.create(**kwargs)
        except openai.RateLimitError as exc:
            if getattr(exc, "code", None) == "insufficient_quota":
                raise StageFailed(f"OpenAI quota exhausted: {exc.message}") from exc
            raise EmbeddingRateLimited(
                f"OpenAI embeddings still rate limited after {self.max_attempts} attempts: {exc.message}"
            ) from exc
        except openai.AuthenticationError as exc:
            if self._secret_arn and reauth:
                secrets.invalidate(self._secret_arn)  # the key may have been rotated
                return self._create(inputs, reauth=False)
            raise StageFailed(f"OpenAI rejected the API key: {exc.message}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                raise EmbeddingRateLimited(
                    f"OpenAI embeddings still failing after {self.max_attempts} attempts "
                    f"({exc.status_code}): {exc.message}"
                ) from exc
            raise StageFailed(f"OpenAI embeddings request rejected ({exc.status_code}): {exc.message}") from exc
        except openai.APIConnectionError as exc:  # includes timeouts
            raise EmbeddingRateLimited(
                f"OpenAI embeddings unreachable after {self.max_attempts} attempts: {type(exc).__name__}: {exc.message}"
            ) from exc
        self.requests_sent += 1
        return response

    def embed(self, texts: list[str]) -> EmbeddingResult:
        texts = list(texts)
        if not texts:
            return EmbeddingResult(vectors=[])
        pieces = self._pieces(texts)
        piece_vectors: list[list[float]] = []
        billed = 0
        for batch in self._batches(pieces):
            batch_tokens = sum(p.tokens for p in batch)
            # Once per request, not per attempt: a retried request resends the same
            # tokens the budget has already admitted.
            self.budget.acquire(batch_tokens)
            response = self._create([p.text for p in batch])
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise StageFailed(f"OpenAI returned {len(data)} embeddings for {len(batch)} inputs")
            for item in data:
                vec = [float(v) for v in item.embedding]
                if len(vec) != self.dims:
                    raise StageFailed(f"OpenAI returned {len(vec)} dims, expected {self.dims}")
                piece_vectors.append(vec)
            usage = getattr(response, "usage", None)
            billed += int(getattr(usage, "total_tokens", 0) or getattr(usage, "prompt_tokens", 0) or batch_tokens)

        # Recombine: one piece -> its vector as returned; several windows -> the
        # token-weighted mean, re-normalised.
        parts: list[list[tuple[_Piece, list[float]]]] = [[] for _ in texts]
        for piece, vec in zip(pieces, piece_vectors, strict=True):
            parts[piece.owner].append((piece, vec))
        vectors: list[list[float]] = []
        for owned in parts:
            if len(owned) == 1:
                vectors.append(owned[0][1])
                continue
            acc = [0.0] * self.dims
            for piece, vec in owned:
                for k, v in enumerate(vec):
                    acc[k] += v * piece.tokens
            vectors.append(_normalise(acc))
        return EmbeddingResult(
            vectors=vectors,
            tokens=billed,
            cost_usd=billed * self.price_per_mtok / 1_000_000,
        )
