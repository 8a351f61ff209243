"""A local server that speaks Amazon Textract's AWS JSON 1.1 protocol as boto3 calls it:
``POST /`` with ``X-Amz-Target: Textract.<Operation>`` and a JSON body; errors as HTTP
400/500 with ``{"__type": <code>, "message": ...}``. Point boto3 at it with
``AWS_ENDPOINT_URL_TEXTRACT=<url>`` (and ``docpipe.aws.reset_clients()``).

Operations (shapes as in the Textract API reference):
- ``DetectDocumentText``  {"Document": {"Bytes": base64} | {"S3Object": ...}}
  -> {"DocumentMetadata": {"Pages": 1}, "Blocks": [PAGE, LINE..., WORD...]}. Validates what
  the service does: exactly one of Bytes/S3Object; Bytes is a PNG or JPEG
  (UnsupportedDocumentException otherwise), at most 5 MB (DocumentTooLargeException; the
  Document.Bytes limit), at most 10000 px a side (InvalidParameterException).
- ``StartDocumentTextDetection``  {"DocumentLocation": {"S3Object": {"Bucket", "Name",
  "Version"?}}} -> {"JobId"}; InvalidParameterException without Bucket or Name.
- ``GetDocumentTextDetection``  {"JobId", "MaxResults"? (1..1000), "NextToken"?}
  -> {"JobStatus", "StatusMessage"?, "DocumentMetadata": {"Pages"}, "Blocks", "NextToken"?,
  "Warnings"?}; InvalidJobIdException for an unknown job.

Scripting:
- ``throttle_next(operation, n, code=ProvisionedThroughputExceededException)``: the next n
  calls of that operation fail with that code (400; InternalServerError is a 500).
- ``fail_next(operation, n, code, message)``: the next n calls fail with any other code.
- ``answer_sync(lines, ...)``: queue one answer per DetectDocumentText call (a list of line
  texts or ``FakeLine``); when the queue is empty, a call answers one line "fake page text".
- ``script_job(pages, status=SUCCEEDED, polls_in_progress=1, status_message=None,
  missing_pages=(), blocks_per_response=50)``: the next StartDocumentTextDetection creates
  this job; it answers IN_PROGRESS that many times, then its status with the pages' blocks
  split across NextToken pages (``min(MaxResults, blocks_per_response)`` blocks each);
  PARTIAL_SUCCESS leaves ``missing_pages`` out and lists them in Warnings.
Every call is recorded in ``calls`` ({"operation", "params", "status", "code"}; Bytes is
replaced by {"bytes": n, "format": "png"|"jpeg"|...}).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from . import FakeHTTPServer

OPERATIONS = ("DetectDocumentText", "StartDocumentTextDetection", "GetDocumentTextDetection")
MAX_BYTES = 5 * 1024 * 1024
MAX_SIDE_PX = 10000
_BUCKET = re.compile(r"^[0-9A-Za-z.\-_]{3,255}$")


@dataclass
class FakeLine:
    text: str
    confidence: float = 99.0  # 0..100, as Textract reports it
    left: float | None = None  # ratios of the page; None: laid out one per row
    top: float | None = None
    width: float = 0.5
    height: float = 0.02


@dataclass
class Job:
    pages: dict[int, list[FakeLine]]
    status: str
    polls_in_progress: int
    status_message: str | None
    missing_pages: tuple[int, ...]
    blocks_per_response: int
    s3_object: dict[str, Any] = field(default_factory=dict)


def _lines(items: list[str] | list[FakeLine] | list[str | FakeLine]) -> list[FakeLine]:
    out: list[FakeLine] = []
    for i, item in enumerate(items):
        line = FakeLine(item) if isinstance(item, str) else item
        if line.top is None:
            line.top = 0.05 + 0.04 * i
        if line.left is None:
            line.left = 0.1
        out.append(line)
    return out


def _image_format(data: bytes) -> tuple[str, int, int]:
    """-> (format, width, height); width/height 0 when not parsed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg", 0, 0
    return "unknown", 0, 0


class FakeTextract(FakeHTTPServer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self._faults: dict[str, list[list[Any]]] = {}  # operation -> [[remaining, code, message]]
        self._sync_answers: list[list[FakeLine]] = []
        self._next_job: Job | None = None
        self.jobs: dict[str, Job] = {}
        self._job_ids = itertools.count(1)
        self._polls: dict[str, int] = {}

    # -- scripting ----------------------------------------------------------------------
    def throttle_next(self, operation: str, n: int, code: str = "ProvisionedThroughputExceededException") -> None:
        self.fail_next(operation, n, code, "Rate exceeded")

    def fail_next(self, operation: str, n: int, code: str, message: str = "Request has invalid parameters") -> None:
        assert operation in OPERATIONS, operation
        with self.lock:
            self._faults.setdefault(operation, []).append([n, code, message])

    def answer_sync(self, *answers: list[str] | list[FakeLine] | list[str | FakeLine]) -> None:
        with self.lock:
            self._sync_answers.extend(_lines(a) for a in answers)

    def script_job(self, pages: dict[int, list[str]] | dict[int, list[FakeLine]], *, status: str = "SUCCEEDED",
                   polls_in_progress: int = 1, status_message: str | None = None,
                   missing_pages: tuple[int, ...] = (), blocks_per_response: int = 50) -> None:
        with self.lock:
            self._next_job = Job({n: _lines(v) for n, v in pages.items()}, status, polls_in_progress, status_message,
                                 tuple(missing_pages), blocks_per_response)

    def calls_of(self, operation: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["operation"] == operation]

    # -- HTTP ---------------------------------------------------------------------------
    def handle(self, method, path, query, body, headers):
        target = headers.get("X-Amz-Target", "")
        operation = target.removeprefix("Textract.")
        record: dict[str, Any] = {"operation": operation, "params": None, "status": None, "code": None}
        with self.lock:
            self.calls.append(record)
        if method != "POST" or path != "/" or not target.startswith("Textract.") or operation not in OPERATIONS:
            return self._error(record, 400, "UnknownOperationException", f"unknown operation {target!r}")
        if "x-amz-json-1.1" not in headers.get("Content-Type", ""):
            return self._error(record, 400, "SerializationException", "expected application/x-amz-json-1.1")
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            return self._error(record, 400, "SerializationException", "body is not JSON")
        record["params"] = self._redacted(params)
        with self.lock:
            fault = next((f for f in self._faults.get(operation, []) if f[0] > 0), None)
            if fault is not None:
                fault[0] -= 1
        if fault is not None:
            return self._error(record, 500 if fault[1] == "InternalServerError" else 400, fault[1], fault[2])
        status, payload = getattr(self, f"_{operation}")(params)
        if status != 200:
            return self._error(record, status, payload["__type"], payload["message"])
        record["status"] = 200
        return 200, {"x-amzn-RequestId": f"req-{len(self.calls)}"}, payload

    def _error(self, record: dict[str, Any], status: int, code: str, message: str):
        record["status"], record["code"] = status, code
        return status, {"x-amzn-RequestId": f"req-{len(self.calls)}"}, {"__type": code, "message": message}

    @staticmethod
    def _redacted(params: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(params))
        doc = out.get("Document")
        if isinstance(doc, dict) and isinstance(doc.get("Bytes"), str):
            try:
                data = base64.b64decode(doc["Bytes"], validate=True)
            except ValueError:
                data = b""
            doc["Bytes"] = {"bytes": len(data), "format": _image_format(data)[0]}
        return out

    # -- operations ---------------------------------------------------------------------
    @staticmethod
    def _bad(code: str, message: str) -> tuple[int, dict[str, str]]:
        return 400, {"__type": code, "message": message}

    def _DetectDocumentText(self, params: dict[str, Any]):
        doc = params.get("Document")
        if not isinstance(doc, dict) or ("Bytes" in doc) == ("S3Object" in doc):
            return self._bad("InvalidParameterException", "Document needs exactly one of Bytes or S3Object")
        if "S3Object" in doc:
            return self._bad("InvalidS3ObjectException", "this fake reads Bytes only")
        try:
            data = base64.b64decode(doc["Bytes"], validate=True)
        except (ValueError, TypeError):
            return self._bad("InvalidParameterException", "Bytes is not base64")
        if len(data) > MAX_BYTES:
            return self._bad("DocumentTooLargeException", "Document size exceeds the limit for synchronous operations")
        fmt, width, height = _image_format(data)
        if fmt not in ("png", "jpeg"):
            return self._bad("UnsupportedDocumentException", "Request has unsupported document format")
        if max(width, height) > MAX_SIDE_PX:
            return self._bad("InvalidParameterException", f"image of {width}x{height} px exceeds {MAX_SIDE_PX} px")
        with self.lock:
            lines = self._sync_answers.pop(0) if self._sync_answers else _lines(["fake page text"])
        return 200, {"DocumentMetadata": {"Pages": 1}, "Blocks": self._page_blocks(1, lines, with_page=False),
                     "DetectDocumentTextModelVersion": "1.0"}

    def _StartDocumentTextDetection(self, params: dict[str, Any]):
        s3 = (params.get("DocumentLocation") or {}).get("S3Object") or {}
        bucket, name = s3.get("Bucket"), s3.get("Name")
        if not isinstance(bucket, str) or not _BUCKET.match(bucket):
            return self._bad("InvalidParameterException", "DocumentLocation.S3Object.Bucket is missing or invalid")
        if not isinstance(name, str) or not 1 <= len(name) <= 1024 or not name.strip():
            return self._bad("InvalidParameterException", "DocumentLocation.S3Object.Name is missing or invalid")
        if "Version" in s3 and not (isinstance(s3["Version"], str) and s3["Version"].strip()):
            return self._bad("InvalidParameterException", "DocumentLocation.S3Object.Version is empty")
        with self.lock:
            job = self._next_job or Job({1: _lines(["fake page text"])}, "SUCCEEDED", 1, None, (), 50)
            self._next_job = None
            job.s3_object = dict(s3)
            job_id = f"job-{next(self._job_ids):04d}"
            self.jobs[job_id] = job
            self._polls[job_id] = 0
        return 200, {"JobId": job_id}

    def _GetDocumentTextDetection(self, params: dict[str, Any]):
        job_id = params.get("JobId")
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return self._bad("InvalidJobIdException", f"unknown JobId {job_id!r}")
        max_results = params.get("MaxResults", 1000)
        if not isinstance(max_results, int) or max_results < 1:
            return self._bad("InvalidParameterException", "MaxResults must be >= 1")
        with self.lock:
            self._polls[job_id] += 1
            polls = self._polls[job_id]
        metadata = {"Pages": max(job.pages, default=0)}
        if polls <= job.polls_in_progress and "NextToken" not in params:
            return 200, {"JobStatus": "IN_PROGRESS"}
        if job.status == "FAILED":
            return 200, {"JobStatus": "FAILED", "StatusMessage": job.status_message or "Internal processing error",
                         "DocumentMetadata": metadata}
        blocks = [b for n in sorted(job.pages) if n not in job.missing_pages
                  for b in self._page_blocks(n, job.pages[n], with_page=True)]
        start = 0
        token = params.get("NextToken")
        if token is not None:
            if not (isinstance(token, str) and token.startswith(f"{job_id}:")):
                return self._bad("InvalidParameterException", "invalid NextToken")
            start = int(token.split(":")[1])
        size = min(max_results, 1000, job.blocks_per_response)
        out: dict[str, Any] = {"JobStatus": job.status, "DocumentMetadata": metadata,
                               "Blocks": blocks[start:start + size], "DetectDocumentTextModelVersion": "1.0"}
        if start + size < len(blocks):
            out["NextToken"] = f"{job_id}:{start + size}"
        if job.status_message:
            out["StatusMessage"] = job.status_message
        if job.missing_pages:
            out["Warnings"] = [{"ErrorCode": "PAGE_PROCESSING_FAILED", "Pages": list(job.missing_pages)}]
        return 200, out

    @staticmethod
    def _page_blocks(page: int, lines: list[FakeLine], with_page: bool) -> list[dict[str, Any]]:
        def box(left: float, top: float, width: float, height: float) -> dict[str, Any]:
            return {"BoundingBox": {"Width": width, "Height": height, "Left": left, "Top": top},
                    "Polygon": [{"X": left, "Y": top}, {"X": left + width, "Y": top},
                                {"X": left + width, "Y": top + height}, {"X": left, "Y": top + height}]}

        page_id = f"p{page}"
        blocks: list[dict[str, Any]] = [{"BlockType": "PAGE", "Id": page_id, "Geometry": box(0.0, 0.0, 1.0, 1.0),
                                         "Relationships": [{"Type": "CHILD", "Ids": []}]}]
        for i, line in enumerate(lines):
            line_id = f"p{page}-l{i}"
            blocks[0]["Relationships"][0]["Ids"].append(line_id)
            words = line.text.split()
            word_ids = [f"{line_id}-w{j}" for j in range(len(words))]
            assert line.left is not None and line.top is not None
            blocks.append({"BlockType": "LINE", "Id": line_id, "Text": line.text, "Confidence": line.confidence,
                           "Geometry": box(line.left, line.top, line.width, line.height),
                           "Relationships": [{"Type": "CHILD", "Ids": word_ids}]})
            step = line.width / max(1, len(words))
            for j, word in enumerate(words):
                blocks.append({"BlockType": "WORD", "Id": word_ids[j], "Text": word, "TextType": "PRINTED",
                               "Confidence": line.confidence,
                               "Geometry": box(line.left + j * step, line.top, step, line.height)})
        if with_page:
            for block in blocks:
                block["Page"] = page
        return blocks
