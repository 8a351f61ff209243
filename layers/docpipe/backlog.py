"""The pipeline's backlog and today's cost: what worker autoscaling and alarms read.

PendingDocuments = control items PENDING or PROCESSING (status-index), counted with
Select=COUNT so no item is read. DailyCostUsd comes from today's `costs` counters.
"""

from __future__ import annotations

from docpipe.config import Settings
from docpipe.records import Records

IN_FLIGHT = ("PENDING", "PROCESSING")


def count_status(records: Records, status: str) -> int:
    total, kwargs = 0, {
        "TableName": records.settings.control_table, "IndexName": "status-index",
        "KeyConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": status}}, "Select": "COUNT",
    }
    while True:
        resp = records.ddb.query(**kwargs)
        total += int(resp.get("Count", 0))
        if "LastEvaluatedKey" not in resp:
            return total
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def snapshot(settings: Settings, records: Records) -> dict:
    counts = {s.lower(): count_status(records, s) for s in IN_FLIGHT}
    costs = records.metrics().get("costs", {})
    return {
        "pending_documents": sum(counts.values()),
        **counts,
        "daily_cost_usd": float(sum(v for v in costs.values() if isinstance(v, (int, float)))),
    }
