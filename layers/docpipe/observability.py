"""Powertools Logger, Tracer and Metrics, set up the same way for every function.

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME and
POWERTOOLS_METRICS_NAMESPACE (set in template.yaml Globals).
"""

from __future__ import annotations

import functools

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
tracer = Tracer()
metrics = Metrics()

__all__ = ["logger", "tracer", "metrics", "MetricUnit", "lambda_entry"]


def lambda_entry(fn):
    """Structured logs with the Lambda context, an X-Ray subsegment, and EMF metrics
    flushed at the end of every invocation."""

    @functools.wraps(fn)
    @logger.inject_lambda_context(log_event=False, clear_state=True)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics(raise_on_empty_metrics=False)
    def wrapper(event, context):
        return fn(event, context)

    return wrapper
