"""A local server that speaks OpenAI's ``POST /v1/embeddings`` as the SDK uses it.

Validates what the real API validates (model, at most 2048 inputs, at most 8192 tokens
per input and 300,000 per request by cl100k_base, no empty string, ``dimensions`` only
on text-embedding-3 models) and answers with the real error JSON shape otherwise.
Embeddings are deterministic pseudo-vectors from a hash of (model, text): a full-length
vector, truncated to ``dimensions`` and re-normalised, as the real API shortens them;
float32, sent as JSON floats or as base64 float32 little-endian (the SDK's default).

Fault injection: ``fail_next(n, status=429, retry_after_ms=...)`` answers the next n
requests with that status. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_jobs import tokens as tok

from . import FakeHTTPServer

MODELS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


def pseudo_embedding(text: str | list[int], model: str = "text-embedding-3-small", dims: int | None = None) -> np.ndarray:
    full = MODELS[model]
    key = text if isinstance(text, str) else tok.decode(list(text))
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{key}".encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(full)
    vec = vec[: dims or full]
    return (vec / np.linalg.norm(vec)).astype(np.float32)


@dataclass
class Fault:
    remaining: int
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    code: str | None = None


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None, headers: dict | None = None):
    return status, headers or {}, {"error": {"message": message, "type": type_, "param": param, "code": code}}


class FakeOpenAIServer(FakeHTTPServer):
    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key  # None: accept any bearer token
        self.requests: list[dict[str, Any]] = []
        self._faults: list[Fault] = []

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- scripting ----------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 429, *, retry_after_ms: int | None = None,
                  retry_after: str | None = None, code: str | None = None) -> None:
        headers: dict[str, str] = {}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        if retry_after is not None:
            headers["retry-after"] = retry_after
        if code is None and status == 429:
            code = "rate_limit_exceeded"
        with self.lock:
            self._faults.append(Fault(n, status, headers, code))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    @property
    def ok_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] == 200]

    # -- HTTP ---------------------------------------------------------------------------
    def handle(self, method, path, query, body, headers):
        if method != "POST" or path != "/v1/embeddings":
            return _error(404, f"Invalid URL ({method} {path})")
        record: dict[str, Any] = {"path": path, "status": None, "headers": dict(headers.items())}
        with self.lock:
            self.requests.append(record)
            fault = next((f for f in self._faults if f.remaining > 0), None)
            if fault is not None:
                fault.remaining -= 1
        status, out_headers, payload = self._embeddings(body, headers, fault, record)
        record["status"] = status
        return status, out_headers, payload

    def _embeddings(self, body: bytes, headers, fault: Fault | None, record: dict):
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or (self.api_key is not None and auth[7:] != self.api_key):
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        if fault is not None:
            if fault.status == 429:
                return _error(429, "Rate limit reached for requests per min (RPM). Please try again later.",
                              type_="requests", code=fault.code, headers=fault.headers)
            return _error(fault.status, "The server had an error while processing your request. Sorry about that!",
                          type_="server_error", code=fault.code, headers=fault.headers)
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        model = req.get("model")
        record.update(model=model, dimensions=req.get("dimensions"), encoding_format=req.get("encoding_format"))
        if model not in MODELS:
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")
        raw = req.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            inputs: list = [raw]
        elif isinstance(raw, list) and raw:
            inputs = raw
        else:
            return _error(400, "'$.input' is invalid. Please check the API reference.", param="input")
        record["inputs"] = inputs
        if len(inputs) > MAX_INPUTS:
            return _error(400, f"'$.input' is invalid: array too long ({len(inputs)} > {MAX_INPUTS}).", param="input")
        counts = []
        for item in inputs:
            if isinstance(item, str):
                if item == "":
                    return _error(400, "'$.input' is invalid: empty string.", param="input")
                counts.append(tok.count_tokens(item))
            elif isinstance(item, list) and all(isinstance(t, int) for t in item) and item:
                counts.append(len(item))
            else:
                return _error(400, "'$.input' is invalid. Please check the API reference.", param="input")
        record["tokens"] = total = sum(counts)
        record["max_input_tokens"] = max(counts)
        if max(counts) > MAX_INPUT_TOKENS:
            return _error(400, f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                               f"requested {max(counts)} tokens. Please reduce your prompt.")
        if total > MAX_REQUEST_TOKENS:
            return _error(400, f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
                          type_="max_tokens_per_request", code="max_tokens_per_request")
        dims = req.get("dimensions")
        if dims is not None:
            if not model.startswith("text-embedding-3"):
                return _error(400, "This model does not support specifying dimensions.", param="dimensions")
            if not isinstance(dims, int) or not 1 <= dims <= MODELS[model]:
                return _error(400, f"Invalid value for 'dimensions': {dims}.", param="dimensions")
        fmt = req.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            return _error(400, f"Invalid value for 'encoding_format': {fmt}.", param="encoding_format")
        data = []
        for i, item in enumerate(inputs):
            vec = pseudo_embedding(item, model, dims)
            emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return 200, {"x-request-id": f"req_{len(self.requests)}"}, {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
