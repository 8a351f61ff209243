"""API keys from Secrets Manager, read at run time and cached in-process for a while.

The environment only ever holds a secret's ARN (``OPENAI_API_KEY_SECRET_ARN``,
``PINECONE_API_KEY_SECRET_ARN``), never the key itself: env vars end up in Ray's job
list, CloudFormation outputs and crash dumps. The TTL bounds how long a rotated key
keeps being used; callers that get a 401 call ``invalidate()`` and read again.

boto3 honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SECRETSMANAGER`` by itself, so
the local stack (moto) needs no code path of its own.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

DEFAULT_TTL_SECONDS = 300.0
# Field names looked up, in order, when the SecretString is a JSON object, after the
# caller's own (``OPENAI_API_KEY``, ``PINECONE_API_KEY``: the names the usual console
# setup stores, often both in one secret).
JSON_KEY_FIELDS = ("api_key", "token")

_lock = threading.Lock()
_cache: dict[tuple[str, str | None], tuple[float, str]] = {}


def _default_client():
    import boto3

    return boto3.client("secretsmanager")


def _parse(secret_string: str, arn_or_name: str, field: str | None = None) -> str:
    text = secret_string.strip()
    if text.startswith("{"):
        try:
            doc: Any = json.loads(text)
        except json.JSONDecodeError:
            return text  # a key that happens to start with "{": use it as is
        if isinstance(doc, dict):
            names = ((field,) if field else ()) + JSON_KEY_FIELDS
            for name in names:
                value = doc.get(name)
                if isinstance(value, str) and value:
                    return value
            raise ValueError(
                f"secret {arn_or_name!r} is a JSON object without a non-empty "
                f"{' or '.join(names)!s} field"
            )
    if not text:
        raise ValueError(f"secret {arn_or_name!r} is empty")
    return text


def get_secret(
    arn_or_name: str,
    *,
    field: str | None = None,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    client: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """The secret's value: its SecretString, or of a JSON SecretString the ``field``
    given (e.g. ``OPENAI_API_KEY``), else its ``api_key`` / ``token`` field. Cached per
    ARN and field for ``ttl_seconds``."""
    if not arn_or_name:
        raise ValueError("no secret ARN given (the env var holding it is empty)")
    now = clock()
    with _lock:
        hit = _cache.get((arn_or_name, field))
        if hit is not None and hit[0] > now:
            return hit[1]
    # Read outside the lock: a slow Secrets Manager call must not serialise every thread.
    sm = client if client is not None else _default_client()
    response = sm.get_secret_value(SecretId=arn_or_name)
    raw = response.get("SecretString")
    if raw is None:
        binary = response.get("SecretBinary") or b""
        raw = binary.decode("utf-8") if isinstance(binary, (bytes, bytearray)) else str(binary)
    value = _parse(raw, arn_or_name, field)
    with _lock:
        _cache[(arn_or_name, field)] = (now + ttl_seconds, value)
    return value


def invalidate(arn_or_name: str | None = None) -> None:
    """Forget one cached secret (after a 401: the key was probably rotated), or all."""
    with _lock:
        if arn_or_name is None:
            _cache.clear()
        else:
            for key in [k for k in _cache if k[0] == arn_or_name]:
                del _cache[key]


def clear_cache() -> None:
    invalidate(None)
