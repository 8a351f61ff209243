"""Amazon Textract as an OCR engine (OCR_BACKEND=textract; engine name "textract").

Two ways in (rules from AWS's documentation, cited where they are used):
- synchronous, one page: ``DetectDocumentText`` on the PNG ocr_render made
  (``TextractEngine.recognize``);
- asynchronous, the whole PDF in S3: ``StartDocumentTextDetection`` +
  ``GetDocumentTextDetection`` (``detect_document``), used by ray_jobs.ocr.apply_ocr when
  every page lacks text, the document has >= TEXTRACT_ASYNC_MIN_PAGES pages, all of them
  fit OCR_MAX_PAGES and the caller gave the upload's S3 location. A FAILED job falls back
  to synchronous calls per page; PARTIAL_SUCCESS keeps its pages and reads the missing
  ones synchronously.

Throttling (ProvisionedThroughputExceededException, ThrottlingException,
LimitExceededException, InternalServerError) is retried here with exponential backoff and
full jitter up to TEXTRACT_MAX_ATTEMPTS attempts in all, then docpipe.errors.OcrThrottled
(retryable: the state machine's Retry takes over). botocore's own retries are off for this
client (total_max_attempts=1), so the attempts counted are ours. Bad input for one page
(InvalidParameterException, UnsupportedDocumentException, BadDocumentException,
DocumentTooLargeException) becomes that page's ``ocr_error``; other errors (AccessDenied,
...) raise: they are configuration, not the document.

IAM actions this code calls (for the Ray workers' role):
- ``textract:DetectDocumentText``
- ``textract:StartDocumentTextDetection``
- ``textract:GetDocumentTextDetection``
- ``s3:GetObject`` (and ``s3:GetObjectVersion`` when a version id is passed) on the
  uploaded object, ``input/*`` of the document bucket: for the asynchronous API Textract
  reads the object from S3 with the caller's identity ("For Amazon Textract to process a
  file in an S3 bucket, the user must have permission to access the S3 bucket and file",
  API_S3Object), and the bucket must be in the Textract client's Region. A KMS-encrypted
  bucket also needs ``kms:Decrypt`` on its key.

Tests point the client at tests/fakes/textract.py with AWS_ENDPOINT_URL_TEXTRACT (boto3's
per-service endpoint variable; docpipe.aws passes no endpoint and lets boto3 read it).
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from docpipe import aws, errors
from ray_jobs.ocr import Line, OcrPageError, OcrText, S3Source, assemble
from ray_jobs.pdf_parse import ERROR_MAX
from ray_jobs.settings import StageSettings

# "ThrottlingException: Amazon Textract is temporarily unable to process the request. Try
# your call again"; ProvisionedThroughputExceededException: over the TPS quota ("Handling
# Connection Errors"); LimitExceededException: too many concurrent async jobs, raised by
# the Start operations "until the number of concurrently running jobs is below the
# limit"; InternalServerError: "Try your call again" (botocore Textract exceptions).
THROTTLING_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                              "LimitExceededException", "InternalServerError"})
BAD_INPUT_CODES = frozenset({"InvalidParameterException", "UnsupportedDocumentException",
                             "BadDocumentException", "DocumentTooLargeException"})
# Document.Bytes: "The maximum size of a document that's provided in a blob of bytes is
# 5 MB. The document bytes must be in PNG or JPEG format" (API_Document). The quotas page
# says 10 MB for synchronous operations; we keep under the stricter figure.
MAX_BYTES = 5 * 1024 * 1024
# "Amazon Textract supports images with a resolution less than or equal to 10000 pixels on
# all sides" (limits-document); ocr_render caps at 4000.
MAX_SIDE_PX = 10000
# GetDocumentTextDetection MaxResults: "The largest value you can specify is 1,000".
MAX_RESULTS = 1000
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0


def sleep(seconds: float) -> None:
    """Every wait of this module (backoff, polling) goes through here: tests replace it."""
    time.sleep(seconds)


def backoff_seconds(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))


def _client() -> Any:
    return aws.client("textract", config=aws.retries(1))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)


def call(operation: str, max_attempts: int, **params: Any) -> dict[str, Any]:
    """One Textract operation (CamelCase name), throttling retried with backoff; after
    `max_attempts` attempts in all, OcrThrottled. Other errors raise as ClientError."""
    method = getattr(_client(), "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_"))
    attempts = max(1, max_attempts)
    for attempt in range(attempts):
        try:
            response: dict[str, Any] = method(**params)
            return response
        except ClientError as exc:
            code = _code(exc)
            if code not in THROTTLING_CODES:
                raise
            if attempt + 1 >= attempts:
                raise errors.OcrThrottled(
                    f"Textract {operation} still throttled ({code}) after {attempts} attempts") from exc
            sleep(backoff_seconds(attempt))
    raise AssertionError("unreachable")  # the loop returns or raises


def pages_from_blocks(blocks: list[dict[str, Any]], min_confidence: float,
                      default_page: int = 1) -> dict[int, OcrText]:
    """Textract Blocks -> OcrText per page. PAGE blocks say which pages were processed
    (a page without LINE blocks is an empty page, not a missing one); LINE blocks carry
    Text, Confidence (0..100) and Geometry.BoundingBox (Left/Top/Width/Height as ratios of
    the page, origin top-left) and Page (1-based; DetectDocumentText's single page is 1)."""
    lines: dict[int, list[Line]] = {}
    for block in blocks:
        page = int(block.get("Page") or default_page)
        kind = block.get("BlockType")
        if kind == "PAGE":
            lines.setdefault(page, [])
        elif kind == "LINE":
            box = (block.get("Geometry") or {}).get("BoundingBox") or {}
            left, top = float(box.get("Left", 0.0)), float(box.get("Top", 0.0))
            lines.setdefault(page, []).append(Line(
                text=str(block.get("Text", "")), confidence=float(block.get("Confidence", 0.0)) / 100.0,
                left=left, top=top, right=left + float(box.get("Width", 0.0)), bottom=top + float(box.get("Height", 0.0))))
    return {page: assemble(page_lines, min_confidence) for page, page_lines in sorted(lines.items())}


def fit_for_textract(png: bytes) -> bytes:
    """The PNG as is when Textract takes it; else a JPEG (the other accepted format) small
    enough. Raises OcrPageError when nothing fits."""
    if len(png) <= MAX_BYTES:
        from PIL import Image

        try:
            width, height = Image.open(io.BytesIO(png)).size
        except Exception as exc:
            raise OcrPageError(f"textract: not an image: {exc}"[:ERROR_MAX]) from exc
        if max(width, height) <= MAX_SIDE_PX:
            return png
    from PIL import Image

    try:
        opened = Image.open(io.BytesIO(png))
        opened.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX))
        image = opened.convert("L")
        for quality in (85, 70, 50):
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            if buf.tell() <= MAX_BYTES:
                return buf.getvalue()
    except Exception as exc:
        raise OcrPageError(f"textract: cannot re-encode the page: {exc}"[:ERROR_MAX]) from exc
    raise OcrPageError(f"textract: page image over the {MAX_BYTES // (1024 * 1024)} MB limit even as JPEG")


class TextractEngine:
    """Synchronous DetectDocumentText, one page per call."""

    name = "textract"

    def __init__(self, settings: StageSettings):
        self.settings = settings

    def recognize(self, png: bytes) -> OcrText:
        data = fit_for_textract(png)
        try:
            response = call("DetectDocumentText", self.settings.textract_max_attempts, Document={"Bytes": data})
        except ClientError as exc:
            if _code(exc) in BAD_INPUT_CODES:
                raise OcrPageError(f"textract: {_code(exc)}: {_message(exc)}"[:ERROR_MAX]) from exc
            raise
        pages = pages_from_blocks(response.get("Blocks") or [], self.settings.ocr_min_confidence)
        return next(iter(pages.values()), OcrText("", 0.0, 0))


def use_async(page_count: int, pages_without_text: int, pages_selected: int, settings: StageSettings) -> bool:
    """The asynchronous API reads (and bills) the whole document: only when no page has
    text, the document is long enough to be worth a job, and OCR_MAX_PAGES covers it."""
    return (pages_without_text == page_count and page_count >= settings.textract_async_min_pages
            and pages_selected == pages_without_text)


@dataclass
class AsyncJob:
    status: str  # SUCCEEDED | PARTIAL_SUCCESS | FAILED | NOT_STARTED | TIMED_OUT
    pages: dict[int, OcrText] = field(default_factory=dict)  # pages the job returned (1-based)
    billable_pages: int = 0
    note: str = ""
    timed_out: bool = False


def detect_document(source: S3Source, settings: StageSettings, *, deadline_epoch: float, page_count: int = 0,
                    heartbeat: Callable[[], None] | None = None) -> AsyncJob:
    """Run one asynchronous text detection job over the PDF at `source` and collect its
    pages. Polls every TEXTRACT_POLL_SECONDS until `deadline_epoch`. Raises OcrThrottled
    and configuration errors; a job that cannot start or fails comes back as data."""
    # DocumentLocation.S3Object: Bucket, Name, Version ("If the bucket has versioning
    # enabled, you can specify the object version"; API_S3Object).
    s3_object: dict[str, str] = {"Bucket": source.bucket, "Name": source.key}
    if source.version_id:
        s3_object["Version"] = source.version_id
    attempts = settings.textract_max_attempts
    try:
        job_id = str(call("StartDocumentTextDetection", attempts, DocumentLocation={"S3Object": s3_object})["JobId"])
    except ClientError as exc:
        if _code(exc) in BAD_INPUT_CODES or _code(exc) == "InvalidS3ObjectException":
            return AsyncJob("NOT_STARTED", note=f"Textract could not start a job ({_code(exc)}: {_message(exc)}); "
                                                "pages read one by one instead"[:ERROR_MAX])
        raise
    # JobStatus: IN_PROGRESS | SUCCEEDED | FAILED | PARTIAL_SUCCESS; results come in pages
    # of at most MaxResults blocks with a NextToken to the next (GetDocumentTextDetection).
    while True:
        response = call("GetDocumentTextDetection", attempts, JobId=job_id, MaxResults=MAX_RESULTS)
        status = str(response.get("JobStatus", ""))
        if status != "IN_PROGRESS":
            break
        if time.time() + settings.textract_poll_seconds > deadline_epoch:
            # The job runs on and bills the document whether or not we wait for it.
            return AsyncJob("TIMED_OUT", billable_pages=page_count, timed_out=True,
                            note=f"the Textract job {job_id} did not finish within "
                                 f"OCR_TIMEOUT_SECONDS={settings.ocr_timeout_seconds:g}")
        if heartbeat is not None:
            heartbeat()
        sleep(settings.textract_poll_seconds)
    message = str(response.get("StatusMessage") or "no StatusMessage")
    if status == "FAILED":
        return AsyncJob("FAILED", note=f"the Textract job failed ({message}); pages read one by one instead")
    blocks: list[dict[str, Any]] = list(response.get("Blocks") or [])
    billable = int((response.get("DocumentMetadata") or {}).get("Pages") or 0)
    token = response.get("NextToken")
    while token:
        if heartbeat is not None:
            heartbeat()
        more = call("GetDocumentTextDetection", attempts, JobId=job_id, MaxResults=MAX_RESULTS, NextToken=token)
        blocks.extend(more.get("Blocks") or [])
        token = more.get("NextToken")
    pages = pages_from_blocks(blocks, settings.ocr_min_confidence)
    note = ""
    if status == "PARTIAL_SUCCESS":
        missing = sorted(set(range(1, page_count + 1)) - set(pages)) if page_count else []
        note = (f"the Textract job partly succeeded ({message}): {len(missing)} missing pages read one by one")
    elif status != "SUCCEEDED":
        note = f"the Textract job ended {status!r}; pages it did not return read one by one"
    return AsyncJob(status, pages=pages, billable_pages=billable, note=note)
