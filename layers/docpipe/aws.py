"""boto3 clients, created once per process (Lambda reuses them across invocations).

boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE>, which is all the local
stack needs: no endpoint is ever passed in code.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any, Literal

import boto3
from botocore.config import Config

_lock = threading.Lock()
_DEFAULT = Config(retries={"max_attempts": 5, "mode": "standard"})


@cache
def retries(max_attempts: int, mode: Literal["standard", "adaptive"] = "standard") -> Config:
    """botocore's own retries with ``max_attempts`` attempts in all (botocore's own
    ``max_attempts`` key counts retries only). One object per setting, so callers asking
    for the same retries share one cached client."""
    return Config(retries={"total_max_attempts": max_attempts, "mode": mode})


@cache
def _client(service: str, region: str | None, config: Config | None) -> Any:
    merged = _DEFAULT if config is None else _DEFAULT.merge(config)
    with _lock:  # boto3's default session is not thread-safe while creating clients
        session: Any = boto3.session.Session()  # Any: the stubs type clients per literal service name
        return session.client(service, region_name=region, config=merged)


def client(service: str, region: str | None = None, *, config: Config | None = None) -> Any:
    """The process's client for ``service``: botocore's standard mode with 5 retries unless
    ``config`` (merged over that) says otherwise. Cached per (service, region, config);
    a Config is compared by identity, so pass a constant or ``retries(...)``."""
    return _client(service, region, config)


_generation = 0


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and credentials between runs)."""
    global _generation
    _client.cache_clear()
    _generation += 1


def generation() -> int:
    """How many times clients were reset: objects that hold clients key their caches on it."""
    return _generation


THROTTLING_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "SlowDown",
    "InternalServerError",
    "ServiceUnavailable",
    "InternalError",
}
