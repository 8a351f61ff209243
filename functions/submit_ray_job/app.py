"""SubmitRayJob: hand one stage of a document to Ray; whoever runs it answers the task token.

Small documents go to the stage's queue and its long-lived stage service, large ones to a
Ray job of their own (docpipe.rayjobs).

Event: {"stage": "extract"|"embed", "task_token": str, "registration": {...},
        "inputs": {...}, "execution_arn": str, "execution_name": str, "retry_count": int}
The state machine waits (.waitForTaskToken); this function's return value is ignored.
"""

from docpipe.config import Settings
from docpipe.observability import MetricUnit, lambda_entry, logger, metrics
from docpipe.rayjobs import dispatch_stage, prepare_stage
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    sub = prepare_stage(event, settings)
    reg = event["registration"]
    # Recorded before dispatch: a stage service can answer before this function returns,
    # and a later write would put a finished document back to PROCESSING.
    Records(settings, actor="SubmitRayJob").update(
        reg["document_id"], reg["processing_version"],
        {"status": "PROCESSING", "current_stage": sub.stage, f"{sub.stage}_submission_id": sub.submission_id,
         f"{sub.stage}_route": sub.route},
        action=f"{sub.stage}_submitted", detail={"route": sub.route})
    dispatch_stage(sub, event, settings)
    # Never log the event: it carries the task token.
    logger.info("stage submitted", extra={"submission_id": sub.submission_id, "stage": sub.stage,
                                          "route": sub.route, "stage_service": sub.service_id,
                                          "already_submitted": sub.already_submitted})
    metrics.add_metric(name="StagesSubmitted", unit=MetricUnit.Count, value=1)
    return {"submission_id": sub.submission_id, "job_uri": sub.job_uri, "route": sub.route}
