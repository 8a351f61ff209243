"""Timestamps in one format everywhere: ISO-8601 UTC with milliseconds and 'Z'."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def epoch_in_days(days: int) -> int:
    return int(time.time()) + days * 86400
