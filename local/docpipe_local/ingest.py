"""Uploading documents to the local stack and following them to a terminal status."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import ClientError

from docpipe import doctypes, identity
from docpipe.documents import SKIPPED_VERSION

TERMINAL = ("COMPLETED", "PARTIAL", "FAILED", "SKIPPED")
BATCH_GET_KEYS = 100  # BatchGetItem's limit
UNREAD_CHECK_SECONDS = 3.0


@dataclass
class Doc:
    path: Path
    key: str
    document_id: str
    processing_version: str
    uploaded: bool = False
    status: str = "UPLOADING"
    stage: str = ""
    item: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    next_unread_check: float = 0.0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Source:
    """A document to upload and its name below the prefix: the path relative to the parent of
    the folder it was found in (the folder's own name included), or a single file's
    base name. Always with `/`, on every OS."""

    path: Path
    name: str


def find_documents(paths: list[str]) -> list[Source]:
    """The files to upload: each file named, and in each folder named every file of a type
    docpipe reads (docpipe.doctypes: PDF, DOCX, HTML, Markdown, text). A file named
    explicitly is uploaded whatever its type: the pipeline records it SKIPPED with the reason."""
    found: list[Source] = []
    for p in map(Path, paths):
        if p.is_dir():
            top = p.resolve().name  # `docpipe ingest reports/` and `ingest .` keep the folder's name
            for x in sorted(x for x in p.rglob("*") if x.is_file() and doctypes.document_type(x.name)):
                found.append(Source(x, "/".join(filter(None, (top, *x.relative_to(p).parts)))))
        elif p.is_file():
            found.append(Source(p, p.name))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return found


def demo_files() -> list[str]:
    """The samples `docpipe demo` ingests, as single files: keys input/<name>, the
    documents events/*.json name."""
    from docpipe_local import paths

    return sorted(str(p) for p in (paths.REPO / "samples").iterdir()
                  if p.is_file() and doctypes.document_type(p.name))


def key_for(name: str, prefix: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan(sources: list[Source] | list[Path], bucket: str, prefix: str, pipeline_version: str = "v1") -> list[Doc]:
    """One Doc per upload. A bare Path is a single file argument (its base name)."""
    docs: list[Doc] = []
    seen: dict[str, Path] = {}
    for src in sources:
        if isinstance(src, Path):
            src = Source(src, src.name)
        key = key_for(src.name, prefix)
        if key in seen:
            if seen[key].resolve() == src.path.resolve():
                continue  # the same file named twice (`ingest a.pdf a.pdf`)
            raise ValueError(f"{seen[key]} and {src.path} would both upload to {key!r}: "
                             "rename one, or pass their folders instead")
        seen[key] = src.path
        p = src.path
        if not key.startswith(identity.INPUT_PREFIX) or doctypes.document_type(key) is None:
            # RegisterDocument records such a key SKIPPED under this one version, whatever
            # its bytes (docpipe.documents): follow that item.
            version = SKIPPED_VERSION
        elif p.stat().st_size:
            version = identity.processing_version(sha256_of(p), pipeline_version)
        else:
            version = identity.processing_version(hashlib.sha256(b"").hexdigest(), pipeline_version)
        docs.append(Doc(p, key, identity.document_id(bucket, key), version))
    return docs


def already_there(s3, bucket: str, doc: Doc) -> bool:
    """The same bytes are already at that key: a re-run resumes instead of re-uploading."""
    try:
        head = s3.head_object(Bucket=bucket, Key=doc.key, ChecksumMode="ENABLED")
    except ClientError:
        return False
    stored = head.get("Metadata", {}).get("sha256")
    return stored == sha256_of(doc.path)


def upload_order(docs: list[Doc]) -> list[Doc]:
    """Largest first: the longest documents start first instead of finishing last on one
    worker while the others idle."""
    return sorted(docs, key=lambda d: -d.path.stat().st_size)


def upload(s3, bucket: str, doc: Doc) -> None:
    data = doc.path.read_bytes()
    s3.put_object(Bucket=bucket, Key=doc.key, Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                  # S3 verifies the SHA-256 and keeps it: RegisterDocument then hashes nothing.
                  ChecksumAlgorithm="SHA256")
    doc.uploaded = True


def refresh(ddb, table: str, doc: Doc) -> None:
    item = ddb.get_item(TableName=table, ConsistentRead=True, Key=_key(doc)).get("Item")
    _apply(doc, item or _unread_failure(ddb, table, doc))


# What the live table shows of a document in flight. A poll reads only these; a document
# is read whole once, when it turns terminal (its durations, error message, artifacts):
# whole control items (~35 attributes) twice a second were most of what the poll cost.
POLLED = ("document_id", "processing_version", "status", "current_stage", "pages", "chunks", "vectors", "error_code")


def refresh_all(ddb, table: str, docs: list[Doc]) -> None:
    """`refresh` of every document not yet done, in BatchGetItem calls of 100 keys: one
    request per 100 documents per poll instead of one each (1,000 documents polled twice
    a second were 2,000 requests a second against the stack's own DynamoDB)."""
    pending = [d for d in docs if not d.done]
    now = time.monotonic()
    for start in range(0, len(pending), BATCH_GET_KEYS):
        group = {(d.document_id, d.processing_version): d for d in pending[start:start + BATCH_GET_KEYS]}
        found = _batch_get(ddb, table, list(group.values()), POLLED)
        finished = [d for key, d in group.items() if found.get(key, {}).get("status", {}).get("S") in TERMINAL]
        found.update(_batch_get(ddb, table, finished))
        for key, d in group.items():
            item = found.get(key)
            if item is None and now >= d.next_unread_check:
                # Not registered yet, or refused unread: that query at most every few seconds.
                d.next_unread_check = now + UNREAD_CHECK_SECONDS
                item = _unread_failure(ddb, table, d)
            _apply(d, item)


def _batch_get(ddb, table: str, docs: list[Doc], attributes: tuple[str, ...] = ()) -> dict[tuple[str, str], dict]:
    """The control items of `docs` (at most BATCH_GET_KEYS), by key; only `attributes` if given."""
    found: dict[tuple[str, str], dict] = {}
    if not docs:
        return found
    keys: dict = {"Keys": [_key(d) for d in docs], "ConsistentRead": True}
    if attributes:
        names = {f"#a{i}": a for i, a in enumerate(attributes)}  # `status` is a reserved word
        keys.update(ProjectionExpression=", ".join(names), ExpressionAttributeNames=names)
    request = {table: keys}
    while request:
        resp = ddb.batch_get_item(RequestItems=request)
        for item in resp.get("Responses", {}).get(table, []):
            found[(item["document_id"]["S"], item["processing_version"]["S"])] = item
        request = resp.get("UnprocessedKeys") or {}
    return found


def _key(doc: Doc) -> dict:
    return {"document_id": {"S": doc.document_id}, "processing_version": {"S": doc.processing_version}}


def _unread_failure(ddb, table: str, doc: Doc) -> dict | None:
    """Registration may have refused to read the upload (too large): its FAILED item is
    under an unread version, not the content's."""
    resp = ddb.query(TableName=table, KeyConditionExpression="document_id = :d",
                     ExpressionAttributeValues={":d": {"S": doc.document_id}})
    unread = identity.unread_version_prefix(identity.pipeline_version_of(doc.processing_version))
    items = [i for i in resp.get("Items", []) if i.get("status", {}).get("S") == "FAILED"
             and i["processing_version"]["S"].startswith(unread)]
    return items[0] if items else None


def _apply(doc: Doc, item: dict | None) -> None:
    if not item:
        return
    from docpipe_local.lookup import plain_items

    [doc.item] = plain_items([item])
    doc.status = doc.item.get("status", doc.status)
    doc.stage = doc.item.get("current_stage", "")
    if doc.done and doc.finished is None:
        doc.finished = time.monotonic()
