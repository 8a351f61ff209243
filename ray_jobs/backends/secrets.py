"""API keys from Secrets Manager, read at run time through Powertools' parameters cache.

The environment only ever holds a secret's ARN (``OPENAI_API_KEY_SECRET_ARN``,
``PINECONE_API_KEY_SECRET_ARN``), never the key itself: env vars end up in Ray's job
list, CloudFormation outputs and crash dumps. ``max_age`` bounds how long a rotated key
keeps being used; callers that get a 401 call ``invalidate()`` and the next read goes to
Secrets Manager.

The provider's client is ``docpipe.aws.client("secretsmanager")``, so the local stack
(``AWS_ENDPOINT_URL``) and ``aws.reset_clients()`` in tests apply here too.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from aws_lambda_powertools.utilities.parameters import SecretsProvider

from docpipe import aws

DEFAULT_MAX_AGE_SECONDS = 300
# Field names looked up, in order, when the SecretString is a JSON object, after the
# caller's own (``OPENAI_API_KEY``, ``PINECONE_API_KEY``: the names the usual console
# setup stores, often both in one secret).
JSON_KEY_FIELDS = ("api_key", "token")

_lock = threading.Lock()
_providers: dict[int, SecretsProvider] = {}  # by aws.generation(): a reset means a new world
_stale: set[str] = set()  # secrets to read again, bypassing the cache (after a 401)


def _provider() -> SecretsProvider:
    generation = aws.generation()
    with _lock:
        if generation not in _providers:
            _providers.clear()
            _providers[generation] = SecretsProvider(boto3_client=aws.client("secretsmanager"))
        return _providers[generation]


def _field(raw: str, arn: str, field: str | None) -> str:
    """The key in a SecretString: the whole string, or of a JSON object the ``field``
    given, else its ``api_key`` / ``token`` field. (Powertools' ``transform="json"``
    would refuse the plain-string form, which is as valid here.)"""
    text = raw.strip()
    if text.startswith("{"):
        try:
            parsed: Any = json.loads(text)
        except json.JSONDecodeError:
            return text  # a key that happens to start with "{": use it as is
        if isinstance(parsed, dict):
            names = ((field,) if field else ()) + JSON_KEY_FIELDS
            for name in names:
                value = parsed.get(name)
                if isinstance(value, str) and value:
                    return value
            raise ValueError(f"secret {arn!r} is a JSON object without a non-empty {' or '.join(names)!s} field")
    if not text:
        raise ValueError(f"secret {arn!r} is empty")
    return text


def get_secret(arn: str, *, field: str | None = None, max_age: int = DEFAULT_MAX_AGE_SECONDS) -> str:
    """The API key held by secret ``arn`` (see ``_field``), at most ``max_age`` seconds old."""
    if not arn:
        raise ValueError("no secret ARN given (the env var holding it is empty)")
    with _lock:
        force = arn in _stale
        _stale.discard(arn)
    raw = _provider().get(arn, max_age=max_age, force_fetch=force)
    if isinstance(raw, (bytes, bytearray)):  # a SecretBinary
        raw = raw.decode("utf-8")
    return _field(str(raw), arn, field)


def invalidate(arn: str) -> None:
    """Read ``arn`` from Secrets Manager on its next use (after a 401: probably rotated)."""
    with _lock:
        _stale.add(arn)


def clear_cache() -> None:
    """Forget every cached secret (tests switching worlds)."""
    with _lock:
        _providers.clear()
        _stale.clear()
