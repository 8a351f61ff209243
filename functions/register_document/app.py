"""RegisterDocument: identify the upload, record it, decide PROCESS / DUPLICATE / SKIPPED.

Event: {"detail": <EventBridge S3 'Object Created' detail>, "execution_arn": str}
Returns the registration (ids, key, size, sha256, decision) that travels in the state.
"""

from docpipe.config import Settings
from docpipe.documents import register
from docpipe.observability import MetricUnit, lambda_entry, logger, metrics
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    reg = register(event, settings, Records(settings, actor="RegisterDocument"),
                   event.get("execution_arn", ""))
    logger.info("registered", extra={"document_id": reg.document_id, "decision": reg.decision,
                                     "processing_version": reg.processing_version, "reason": reg.reason})
    metrics.add_metric(name=f"Documents{reg.decision.title()}", unit=MetricUnit.Count, value=1)
    return reg.to_state()
