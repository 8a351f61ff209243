"""The Ray side's log lines: Powertools Logger, one JSON object per line on stdout, in the
shape the functions' lines have (level, location, message, timestamp, service "docpipe",
then the line's own keys), so CloudWatch Logs Insights reads both sides with one query.

Ray keeps a job driver's stdout as the job log; ray_jobs/node_guard.py copies it to the
container's log group, and `log_to_driver` brings the lines of the job's tasks there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

SERVICE = "docpipe"  # what template.yaml Globals set as the functions' POWERTOOLS_SERVICE_NAME
logger = Logger(service=SERVICE)
# Keys a LogRecord owns: passed as `extra` they would raise, so such a key gets a "_".
_RECORD_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def emit(message: str, **fields: Any) -> None:
    """One structured log line: `message` plus `fields` as top-level keys."""
    _write(logger.info, message, fields)


def emit_warning(message: str, **fields: Any) -> None:
    _write(logger.warning, message, fields)


def emit_error(message: str, **fields: Any) -> None:
    _write(logger.error, message, fields)


def _write(write: Callable[..., None], message: str, fields: dict[str, Any]) -> None:
    write(message, stacklevel=4,  # the line's location is the caller of emit*
          extra={f"{k}_" if k in _RECORD_KEYS else k: v for k, v in fields.items()})


def setup_process() -> None:
    """For a process's entry point: what other loggers (the backends', botocore's) write
    goes out in the same shape, unless the process already configured logging."""
    logging.basicConfig(level=logging.INFO, handlers=[logger.registered_handler])
    # Lines of `logger` itself are written once, by its own handler, not again via the root.
    logging.getLogger(SERVICE).propagate = False
