"""The pipeline's backlog, its stage services, and today's cost (PublishBacklog, every minute).

PendingDocuments (what the Ray workers scale on) = stage-queue messages waiting (visible)
+ held by a stage service (in flight) + documents running in a Ray job of their own.
Scaling from zero works because the first upload makes it 1.

Every run also starts a stage service for a queue that holds messages while no service of
that stage runs (a service that went idle just as a message arrived), and deletes the
records of finished Ray jobs, which the head would otherwise keep forever.
DailyCostUsd comes from today's `costs` counters.
"""

from __future__ import annotations

from typing import Any

from docpipe import rayjobs
from docpipe.config import Settings
from docpipe.errors import RayHeadUnavailable, RayJobRejected
from docpipe.observability import logger
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


def tend_ray(settings: Settings, queues: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Ensure services for non-empty queues, reap finished job records, count running jobs."""
    started: list[str] = []
    out: dict[str, Any] = {"jobs_running": 0, "services_started": started, "job_records_deleted": 0, "ray_error": ""}
    if not settings.ray_dashboard_url:
        return out
    try:
        token = rayjobs._token(settings)
        jobs = rayjobs.list_jobs(settings, token)
        out["jobs_running"] = sum(1 for j in jobs if (j.get("metadata") or {}).get("docpipe") == rayjobs.KIND_DOCUMENT
                                  and j.get("status") not in rayjobs.TERMINAL)
        for stage, depth in queues.items():
            if depth["visible"] or depth["held"]:
                before = {j["submission_id"] for j in rayjobs.services(jobs, stage) if j.get("status") not in rayjobs.TERMINAL}
                sid = rayjobs.ensure_service(settings, stage, token, jobs)
                if sid not in before:
                    started.append(sid)
        out["job_records_deleted"] = rayjobs.reap_finished_jobs(settings, token, jobs)
    except (RayHeadUnavailable, RayJobRejected) as err:
        # The metrics still go out: scaling must not wait for a healthy head.
        out["ray_error"] = str(err)[:300]
        logger.warning("Ray Jobs API not usable; backlog counts only the queues", extra={"error": out["ray_error"]})
    return out


def snapshot(settings: Settings, records: Records) -> dict[str, Any]:
    counts = {s.lower(): count_status(records, s) for s in IN_FLIGHT}
    queues = rayjobs.queue_depths(settings)
    ray = tend_ray(settings, queues)
    costs = records.metrics().get("costs", {})
    queued = sum(d["visible"] for d in queues.values())
    held = sum(d["held"] for d in queues.values())
    return {
        "pending_documents": queued + held + ray["jobs_running"],
        "queued": queued,
        "held": held,
        "queues": queues,
        **ray,
        **counts,
        "daily_cost_usd": float(sum(v for v in costs.values() if isinstance(v, (int, float)))),
    }
