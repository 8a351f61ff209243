"""Where the local stack keeps its state: $DOCPIPE_HOME, default <repo>/.docpipe."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def home() -> Path:
    return Path(os.environ.get("DOCPIPE_HOME") or (REPO / ".docpipe")).resolve()


def state_file() -> Path:
    return home() / "stack.json"


def logs_dir() -> Path:
    return home() / "logs"


def vectors_dir() -> Path:
    return home() / "vectors"


def env_vars_file() -> Path:
    """`sam local invoke --env-vars` / `docpipe invoke --env-vars` for the running stack."""
    return home() / "env.json"


def events_dir() -> Path:
    """events/*.json filled in for the running stack (`docpipe events`)."""
    return home() / "events"
