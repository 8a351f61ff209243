"""PublishBacklog (every minute): PendingDocuments and DailyCostUsd as CloudWatch metrics;
starts a stage service for a queue left without one and deletes finished Ray job records.

The Ray workers' ECS service scales on PendingDocuments; the cost alarm reads DailyCostUsd.
"""

from docpipe.backlog import snapshot
from docpipe.config import Settings
from docpipe.observability import MetricUnit, lambda_entry, logger, metrics
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    snap = snapshot(settings, Records(settings, actor="PublishBacklog"))
    metrics.add_metric(name="PendingDocuments", unit=MetricUnit.Count, value=snap["pending_documents"])
    metrics.add_metric(name="DailyCostUsd", unit=MetricUnit.NoUnit, value=snap["daily_cost_usd"])
    logger.info("backlog", extra=snap)
    return snap
