"""boto3 clients, created once per process (Lambda reuses them across invocations).

boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE>, which is all the local
stack needs: no endpoint is ever passed in code.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import boto3
from botocore.config import Config

_lock = threading.Lock()
_RETRIES = Config(retries={"max_attempts": 5, "mode": "standard"})


@lru_cache(maxsize=None)
def _client(service: str, region: str | None):
    with _lock:  # boto3's default session is not thread-safe while creating clients
        return boto3.session.Session().client(service, region_name=region, config=_RETRIES)


def client(service: str, region: str | None = None):
    return _client(service, region)


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
