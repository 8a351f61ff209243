"""Powertools Logger, Tracer and Metrics, set up the same way for every function.

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME and
POWERTOOLS_METRICS_NAMESPACE (set in template.yaml Globals).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

logger = Logger()
tracer = Tracer()
metrics = Metrics()

Handler = TypeVar("Handler", bound=Callable[[Any, Any], Any])

__all__ = ["MetricUnit", "breakdown", "count_by", "lambda_entry", "logger", "metrics", "tracer"]


def breakdown(name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
    """One metric under {service, *dimensions}, in an EMF record of its own:
    `metrics.add_dimension` would apply to every metric of the batch (and a metric the
    alarms read under {service} would then never match them)."""
    with single_metric(name=name, unit=unit, value=value, namespace=metrics.namespace,
                       default_dimensions={"service": metrics.service}) as metric:
        for dim, dim_value in dimensions.items():
            metric.add_dimension(name=dim, value=dim_value)


def count_by(name: str, dimension: str, value: str) -> None:
    """Count `name` once under {service} (what alarms and the dashboard read) and once
    under {service, dimension} (the breakdown)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    breakdown(name, MetricUnit.Count, 1, **{dimension: value})


def lambda_entry(fn: Handler) -> Handler:
    """Structured logs with the Lambda context, an X-Ray subsegment, and EMF metrics
    flushed at the end of every invocation."""

    @functools.wraps(fn)
    @logger.inject_lambda_context(log_event=False, clear_state=True)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics(raise_on_empty_metrics=False)
    def wrapper(event: Any, context: Any) -> Any:
        return fn(event, context)

    return cast(Handler, wrapper)
