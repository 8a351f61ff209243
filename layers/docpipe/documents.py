"""Registering a document version and deciding whether it needs work.

A document is the S3 object path; a version is its content. Outcomes of `register`:
- PROCESS:   a new version (or a retry of a FAILED one) -> PENDING, run the stages.
- DUPLICATE: the same bytes are COMPLETED/PARTIAL, or in flight in another execution
             -> no work, no cost (a re-delivered event or a re-upload of the same file).
- SKIPPED:   not ours to process (outside input/, or a type docpipe does not read:
             docpipe.doctypes) -> recorded as SKIPPED with the reason.
Bad input that *is* ours (empty, too large, vanished) raises a named error; the state
machine's Catch records it as FAILED.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from docpipe import aws, doctypes, identity
from docpipe.config import Settings
from docpipe.errors import DocumentNotFound, EmptyDocument, StoreThrottled, TooLarge
from docpipe.records import DONE_STATUSES, Records

SKIPPED_VERSION = "skipped"
HASH_CHUNK = 1024 * 1024


@dataclass
class Registration:
    document_id: str
    processing_version: str
    bucket: str
    s3_key: str  # the name the control item, the error report and the vectors use too
    decision: str  # PROCESS | DUPLICATE | SKIPPED
    # pdf | docx | html | markdown | text (docpipe.doctypes): how the extract stage reads it.
    document_type: str = ""
    size: int = 0
    etag: str = ""
    sha256: str = ""
    # The S3 version hashed here, and the one every later read of the upload asks for:
    # an overwrite of the key never changes what this version is. "" without versioning.
    s3_version_id: str = ""
    attempt: int = 1
    reason: str = ""
    reason_message: str = ""  # a SKIPPED item's error_message: what the reason means here
    limits: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """What travels in the state machine: ids, the key and counts, never content."""
        return asdict(self)


def s3_object_from_event(event: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(bucket, key, detail.object) from an EventBridge S3 event, or from its detail."""
    detail = event.get("detail", event)
    try:
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"not an EventBridge S3 'Object Created' event: missing {err}") from err
    return bucket, key, obj


def _head(s3: Any, bucket: str, key: str) -> tuple[str, dict[str, Any]]:
    """HEAD the object; EventBridge may deliver the key URL-encoded (spaces as '+'),
    so try the decoded form when the literal one is not found."""
    candidates = [key] + ([unquote_plus(key)] if unquote_plus(key) != key else [])
    for candidate in candidates:
        try:
            # ChecksumMode: S3 returns the checksum it verified at upload, if any.
            return candidate, s3.head_object(Bucket=bucket, Key=candidate, ChecksumMode="ENABLED")
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                continue
            if code in aws.THROTTLING_CODES or code.startswith("5"):
                raise StoreThrottled(f"S3 HEAD answered {code}") from err
            raise
    raise DocumentNotFound(f"s3://{bucket}/{key} does not exist (deleted before processing?)")


def version_args(version_id: str) -> dict[str, str]:
    """Extra arguments of a read pinned to `version_id` (none for an unversioned object)."""
    return {"VersionId": version_id} if version_id else {}


def sha256_from_checksum(head: dict[str, Any]) -> str:
    """The upload's SHA-256 (hex) when S3 verified a full-object SHA-256 at upload
    (`aws s3 cp --checksum-algorithm SHA256`, `docpipe ingest`), else "". A multipart
    upload's SHA-256 is a checksum of part checksums ("<b64>-<parts>", type COMPOSITE):
    not the content's hash."""
    value = head.get("ChecksumSHA256") or ""
    if not value or "-" in value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return ""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return raw.hex() if len(raw) == hashlib.sha256().digest_size else ""


def _sha256(s3: Any, bucket: str, key: str, version_id: str) -> str:
    """Streamed in blocks: a document near MAX_DOCUMENT_BYTES is never held in memory."""
    body = s3.get_object(Bucket=bucket, Key=key, **version_args(version_id))["Body"]
    digest = hashlib.sha256()
    with contextlib.closing(body):
        for block in iter(lambda: body.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def identify(event: dict[str, Any], settings: Settings) -> Registration:
    """Identity of the object in `event`, reading it only when it is in scope.

    Raises EmptyDocument / TooLarge / DocumentNotFound for bad input in scope."""
    bucket, key, _ = s3_object_from_event(event)
    doc_id = identity.document_id(bucket, key)
    if not key.startswith(identity.INPUT_PREFIX):
        return Registration(doc_id, SKIPPED_VERSION, bucket, key, "SKIPPED", reason="NotInInputPrefix")
    doc_type = doctypes.document_type(key)
    if doc_type is None:
        return Registration(doc_id, SKIPPED_VERSION, bucket, key, "SKIPPED", reason="UnsupportedType",
                            reason_message=doctypes.unsupported_reason(key))
    s3 = aws.client("s3")
    real_key, head = _head(s3, bucket, key)
    if real_key != key:
        doc_id = identity.document_id(bucket, real_key)
    size = int(head.get("ContentLength", 0))
    etag = head.get("ETag", "").strip('"')
    # "null": an object written while versioning was off; its key reads it.
    version_id = "" if head.get("VersionId") in (None, "null") else str(head["VersionId"])
    base = Registration(doc_id, identity.unread_version(etag, settings.pipeline_version),
                        bucket, real_key, "PROCESS", document_type=doc_type, size=size, etag=etag,
                        s3_version_id=version_id)
    if size == 0:
        raise EmptyDocument(f"s3://{bucket}/{real_key} has zero bytes")
    if size > settings.max_document_bytes:
        raise TooLarge(f"s3://{bucket}/{real_key} is {size} bytes; the limit is "
                       f"{settings.max_document_bytes} (MAX_DOCUMENT_BYTES)")
    # The upload is read once, by extract, when S3 already knows its SHA-256.
    base.sha256 = sha256_from_checksum(head) or _sha256(s3, bucket, real_key, version_id)
    base.processing_version = identity.processing_version(base.sha256, settings.pipeline_version)
    return base


def _age_seconds(iso: str) -> float:
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return float("inf")
    return (datetime.now(UTC) - then).total_seconds()


def register(event: dict[str, Any], settings: Settings, records: Records, execution_arn: str) -> Registration:
    reg = identify(event, settings)
    reg.limits = settings.stage_limits()
    if reg.decision == "SKIPPED":
        # One SKIPPED item per key (version "skipped"): a repeat upload just touches it.
        if not records.create({"document_id": reg.document_id, "processing_version": SKIPPED_VERSION,
                               "status": "SKIPPED", "s3_key": reg.s3_key, "error_code": reg.reason,
                               "error_message": reg.reason_message or None,
                               "execution_arn": execution_arn}):
            records.audit(reg.document_id, "skipped_again", "SKIPPED", "SKIPPED", {"reason": reg.reason})
        return reg

    item = {
        "document_id": reg.document_id, "processing_version": reg.processing_version,
        "status": "PENDING", "current_stage": "registered", "s3_key": reg.s3_key,
        "document_type": reg.document_type, "bucket": reg.bucket, "etag": reg.etag, "sha256": reg.sha256, "size": reg.size,
        "s3_version_id": reg.s3_version_id or None, "execution_arn": execution_arn, "attempt": 1,
    }
    for _ in range(3):  # create-or-decide; a lost race re-reads the winner's item
        if records.create(item):
            return reg
        existing = records.get(reg.document_id, reg.processing_version)
        if existing is None:
            continue
        status = existing.get("status")
        same_run = existing.get("execution_arn") == execution_arn
        if status in DONE_STATUSES:
            reg.decision, reg.reason = "DUPLICATE", f"already {status}"
        elif status in ("PENDING", "PROCESSING") and not same_run and \
                _age_seconds(existing.get("updated_at", "")) < settings.stale_after_seconds:
            reg.decision, reg.reason = "DUPLICATE", "in progress in another execution"
        else:
            # FAILED before, stale in-flight run, or the same execution retrying: take it over.
            reg.attempt = int(existing.get("attempt", 1)) + (0 if same_run else 1)
            records.update(reg.document_id, reg.processing_version, {
                "status": "PENDING", "current_stage": "registered", "execution_arn": execution_arn,
                "attempt": reg.attempt, "error_code": None, "error_message": None,
                # The same bytes may be a later upload (another S3 version): read that one.
                "s3_version_id": reg.s3_version_id or None,
            }, action="retry" if not same_run else "register_retry",
                detail={"previous_status": status})
            return reg
        records.audit(reg.document_id, "duplicate_ignored", status, status,
                      {"processing_version": reg.processing_version, "reason": reg.reason,
                       "execution_arn": execution_arn})
        return reg
    raise StoreThrottled("could not register after 3 conditional writes")
