"""Backoff for the few repeats no SDK can make for us.

Failed requests are retried by the SDKs themselves (botocore's retry modes, the OpenAI
client's ``max_retries``, the Pinecone SDK's transport). What is left is work that
succeeded as a request but is not done yet: texts a Comprehend batch answered with a
per-text ``InternalServerException``, and vector listings that lag an upsert or a delete.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Up to ``attempts`` tries, pausing ``base_delay * 2**(n-1)`` seconds (at most
    ``max_delay``) after try n, with "equal jitter": half the pause fixed, half random."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """The pause after try ``attempt`` (1-based)."""
        pause = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return pause * (0.5 + 0.5 * self.rng())

    def until(self, done: Callable[[], bool]) -> bool:
        """Call ``done`` until it returns True, at most ``attempts`` times; whether it did."""
        for attempt in range(1, max(1, self.attempts) + 1):
            if done():
                return True
            if attempt < self.attempts:
                self.sleep(self.delay(attempt))
        return False
