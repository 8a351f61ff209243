"""Recording a failed document: where the user looks, and nothing lost.

FAILED + a stable error code and a message (what happened, then what to do: HINTS) in
the control item, an audit item, a failures metric, `errors/<doc>/<ver>/error.json` and a copy of the
input beside it (`input.<its extension>`).
The upload under input/ is never touched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from docpipe import aws, doctypes, identity
from docpipe.config import Settings
from docpipe.documents import Registration, identify, version_args
from docpipe.errors import DocpipeError
from docpipe.records import Records
from docpipe.timeutil import now_iso

# Step Functions' own names for a stage that stopped answering, folded into one code.
TIMEOUT_ERRORS = {"States.Timeout", "States.HeartbeatTimeout", "States.TaskFailed.Timeout"}
MAX_MESSAGE = 1000
# Control item attribute: the execution whose failure the daily metrics counted last.
FAILURE_MARKER = "failure_counted_for"


@dataclass
class Failure:
    document_id: str
    processing_version: str
    s3_key: str
    error_code: str
    error_message: str
    stage: str
    report_uri: str
    input_copy_uri: str
    execution_arn: str
    failed_at: str


# What to do about each code: appended to the message wherever a user reads it (control
# item, errors/ report, alert, the execution's cause). Every code of docpipe.errors has
# one, plus StageTimeout (Step Functions' timeouts folded into one code).
HINTS: dict[str, str] = {
    "EmptyDocument": "the upload has nothing to index (zero bytes: an interrupted upload or copy? or a DOCX, "
                     "HTML, Markdown or text file without text); upload the file again with its content",
    "TooLarge": "the file is over the size limit (template parameter MaxDocumentBytes) or parsing it went "
                "over the Ray workers' memory limit (PDF_MAX_MEMORY_MB); raise the limit the message names, "
                "or split the PDF, and upload it again",
    "DocumentNotFound": "the object was deleted or renamed before docpipe read it; upload it again if it "
                        "should be indexed",
    "PdfEncrypted": "the PDF needs a password docpipe does not have; upload a copy without the password "
                    "(e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`)",
    "PdfMalformed": "the file is damaged or not a PDF; open it in a PDF viewer and re-export (or print) it "
                    "to a new PDF, or try `qpdf in.pdf out.pdf`, and upload that",
    "PdfNoText": "no page has a text layer and OCR recovered none (blank pages, pictures without words, "
                 "or OCR is off: template parameter OcrBackend); if the pages do show text, set "
                 "OcrBackend=local or textract, or OCR it yourself (e.g. `ocrmypdf in.pdf out.pdf`), "
                 "and upload it again",
    "DocumentMalformed": "the file is damaged, password-protected or not what its extension says; open it "
                         "in the program that made it, save a new copy (without a password) and upload that",
    "OcrThrottled": "Amazon Textract kept throttling (its per-second quota); raise the quota, lower the "
                    "concurrency or set OcrBackend=local, then run the Backfill (`docpipe backfill`)",
    "PdfTimeout": "parsing took longer than PDF_TIMEOUT_SECONDS (Ray workers, default 300 s); raise it "
                  "for very large documents or split the PDF, then upload it again",
    "StageTimeout": "the Ray stage holding the document went silent or ran past ExtractTimeoutSeconds / "
                    "EmbedTimeoutSeconds (killed, out of memory, node lost); check the stage services "
                    "(`docpipe stack status`) and their Ray job logs, then run the Backfill "
                    "(`docpipe backfill`) to try it again",
    "RayHeadUnavailable": "the Ray Jobs API (RayDashboardUrl) stayed unreachable through the retries; check "
                          "the Ray head, then run the Backfill (`docpipe backfill`) to try it again",
    "StoreThrottled": "DynamoDB or S3 kept throttling through the retries; run the Backfill "
                      "(`docpipe backfill`) later to try it again",
    "EmbeddingRateLimited": "the embedding API kept answering 429 (rate limit); lower the concurrency or "
                            "raise the account's limit, then run the Backfill (`docpipe backfill`)",
    "EnrichmentThrottled": "Amazon Comprehend kept throttling; raise its quota or set "
                           "EnrichmentBackend=local, then run the Backfill (`docpipe backfill`)",
    "VectorStoreUnavailable": "the vector store refused writes or was unreachable; check it (Pinecone host "
                              "and key, or the LanceDB path), then run the Backfill (`docpipe backfill`)",
    "RayJobRejected": "the Ray Jobs API refused the submission (a 4xx: token, entrypoint or resources); "
                      "check RayTokenSecretArn and RayEntrypointResources against the cluster",
    "JobInterrupted": "the Ray job was stopped (scale-in, preemption or a stopped cluster) before it "
                      "finished; run the Backfill (`docpipe backfill`) to try it again",
    "StageFailed": "an unexpected error inside a stage; see the audit trail (`docpipe status FILE`), the "
                   "execution (`docpipe graph FILE`) and the stage's Ray job log",
}
# Any other name (a Lambda's own failure such as Lambda.Unknown, an engine error).
DEFAULT_HINT = ("see the execution's history (`docpipe graph FILE`, or the Step Functions console) and "
                "the failed function's log")


def hint_for(code: str) -> str:
    return HINTS.get(code, DEFAULT_HINT)


def explain(code: str, cause: str) -> str:
    """What happened (the cause, if any) and what to do: never empty."""
    cause = cause.strip().rstrip(".;")
    return f"{cause} — {hint_for(code)}" if cause else hint_for(code)


def parse_error(error: dict[str, Any] | None) -> tuple[str, str]:
    """(code, message) from a Catch's {"Error", "Cause"}. A Lambda's Cause is its JSON
    error object; a Ray job's Cause is the short message it sent."""
    error = error or {}
    name = error.get("Error") or "StageFailed"
    cause = error.get("Cause") or ""
    try:
        parsed = json.loads(cause)
        if isinstance(parsed, dict):
            cause = parsed.get("errorMessage") or parsed.get("cause") or cause
    except (ValueError, TypeError):
        pass
    code = "StageTimeout" if name in TIMEOUT_ERRORS else name
    if name in TIMEOUT_ERRORS and not cause:
        cause = "the stage stopped sending heartbeats or ran past its timeout"
    return code, str(cause)[:MAX_MESSAGE]


def _registration(state: dict[str, Any], settings: Settings) -> Registration:
    reg = state.get("registration")
    if reg:
        return Registration(**reg)
    try:  # the failure happened in RegisterDocument itself: identify from the event
        return identify(state, settings)
    except (DocpipeError, ClientError):  # gone, unreadable or denied: the event says enough
        bucket, key, obj = _event_object(state)
        return Registration(identity.document_id(bucket, key),
                            identity.unread_version(obj.get("etag", ""), settings.pipeline_version),
                            bucket, key, "PROCESS", size=int(obj.get("size", 0) or 0),
                            etag=obj.get("etag", ""))


def _event_object(state: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    detail = state.get("detail", {})
    return detail.get("bucket", {}).get("name", ""), detail.get("object", {}).get("key", ""), \
        detail.get("object", {})


def record_failure(state: dict[str, Any], settings: Settings, records: Records, execution_arn: str) -> Failure:
    reg = _registration(state, settings)
    code, cause = parse_error(state.get("error"))
    message = explain(code, cause)
    existing = records.get(reg.document_id, reg.processing_version)
    # SubmitRayJob records the stage it started; before that, registration failed.
    stage = (existing or {}).get("current_stage") or "register"
    if stage == "registered":
        stage = "register" if not state.get("registration") else "extract"
    s3 = aws.client("s3")
    base = identity.artifact_key("errors", reg.document_id, reg.processing_version, "")
    copy_uri = ""
    if reg.s3_key:
        try:  # server-side copy; the original stays where it is
            # The registered version: the bytes that failed, not what was written since.
            # input.<the upload's extension>: input.pdf, input.docx... opens in the right program.
            copy_key = base + "input" + doctypes.extension_of(reg.s3_key)
            s3.copy_object(Bucket=reg.bucket, Key=copy_key, CopySource={
                "Bucket": reg.bucket, "Key": reg.s3_key, **version_args(reg.s3_version_id)})
            copy_uri = identity.s3_uri(reg.bucket, copy_key)
        except ClientError:
            copy_uri = ""  # the input is gone (DocumentNotFound): nothing to copy
    failure = Failure(reg.document_id, reg.processing_version, reg.s3_key, code, message, stage,
                      identity.s3_uri(reg.bucket, base + "error.json"), copy_uri, execution_arn,
                      now_iso())
    report = {**asdict(failure), "size": reg.size, "sha256": reg.sha256,
              "raw_error": state.get("error")}
    s3.put_object(Bucket=reg.bucket, Key=base + "error.json",
                  Body=json.dumps(report, indent=2, default=str).encode(),
                  ContentType="application/json")
    fields = {"status": "FAILED", "error_code": code, "error_message": message,
              "failed_stage": stage, "execution_arn": execution_arn,
              "error_report": failure.report_uri}
    if existing is None:
        records.create({"document_id": reg.document_id, "processing_version": reg.processing_version,
                        "s3_key": reg.s3_key, "bucket": reg.bucket, "etag": reg.etag,
                        "size": reg.size, "current_stage": stage, **fields})
    else:
        retry = existing.get("status") == "FAILED" and existing.get("execution_arn") == execution_arn
        records.update(reg.document_id, reg.processing_version, fields,
                       action="failed_retry" if retry else "failed",
                       detail={"error_code": code, "stage": stage})
    # Once per execution: a retried RecordFailure finds its own mark and adds nothing.
    records.add_metrics_once(reg.document_id, reg.processing_version,
                             {"failures": {"count": 1, code: 1}, "documents": {"failed": 1}},
                             marker=FAILURE_MARKER, token=execution_arn)
    return failure


def alert_message(failure: Failure) -> dict[str, Any]:
    """The SNS message body (also what NotifyFailure publishes)."""
    return {"event": "DocumentFailed", **asdict(failure)}
