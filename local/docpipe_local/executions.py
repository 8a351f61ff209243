"""Step Functions executions as the local tools, tests and benchmarks read them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions import SFNClient


def execution_history(sfn: SFNClient, execution_arn: str) -> list[dict[str, Any]]:
    """Every event of one execution, oldest first, with inputs and outputs (all pages)."""
    pages = sfn.get_paginator("get_execution_history").paginate(
        executionArn=execution_arn, includeExecutionData=True, PaginationConfig={"PageSize": 1000})
    return [dict(event) for page in pages for event in page["events"]]
