"""RecordFailure: FAILED + error code, errors/ report with a copy of the input, audit, metric.

Event: {"state": <the state at the Catch, with "error": {"Error", "Cause"}>, "execution_arn": str}
Returns the failure summary that NotifyFailure publishes to SNS; its error_code and
error_message (what happened, then what to do) also become the execution's error and
cause (the DocumentFailed Fail state's ErrorPath and CausePath).
"""

from docpipe.config import Settings
from docpipe.failures import alert_message, record_failure
from docpipe.observability import count_by, lambda_entry, logger
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    failure = record_failure(event["state"], settings, Records(settings, actor="RecordFailure"),
                             event.get("execution_arn", ""))
    logger.warning("document failed", extra={"document_id": failure.document_id,
                                             "error_code": failure.error_code, "stage": failure.stage})
    count_by("DocumentsFailed", "ErrorCode", failure.error_code)
    return alert_message(failure)
