"""SubmitRayJob: start one stage as a Ray job that will answer with the task token.

Event: {"stage": "extract"|"embed", "task_token": str, "registration": {...},
        "inputs": {...}, "execution_arn": str, "execution_name": str, "retry_count": int}
The state machine waits (.waitForTaskToken); this function's return value is ignored.
"""

from docpipe.config import Settings
from docpipe.observability import MetricUnit, lambda_entry, logger, metrics
from docpipe.rayjobs import submit_stage
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    sub = submit_stage(event, settings)
    reg = event["registration"]
    Records(settings, actor="SubmitRayJob").update(
        reg["document_id"], reg["processing_version"],
        {"status": "PROCESSING", "current_stage": sub.stage, f"{sub.stage}_submission_id": sub.submission_id},
        action=f"{sub.stage}_submitted", detail={"already_submitted": sub.already_submitted})
    # Never log the event: it carries the task token.
    logger.info("stage submitted", extra={"submission_id": sub.submission_id, "stage": sub.stage,
                                          "already_submitted": sub.already_submitted})
    metrics.add_metric(name="StagesSubmitted", unit=MetricUnit.Count, value=1)
    return {"submission_id": sub.submission_id, "job_uri": sub.job_uri}
