"""Document identity, versions and every derived name (see docs/architecture.md).

- document_id: stable id of the S3 object path, never of its content.
- processing_version: pipeline version + content hash, e.g. ``v1-9f86d081884c7d65``.
  The first design's example used ``v1#...``; a ``#`` cannot appear in S3 URIs (it starts a
  URL fragment), execution names or submission ids, so the separator is ``-``.
- vector id: ``<document_id>#<processing_version>#<chunk_index>``.
- vector metadata ``text``: the chunk's first ``TEXT_IN_INDEX`` characters (citations).
"""

from __future__ import annotations

import hashlib
import re

PIPELINE_VERSION = "v1"
TEXT_IN_INDEX = 2000  # characters of chunk text in a vector's metadata (Pinecone's 40 KB limit)
NAME_MAX = 80  # Step Functions execution names; Ray accepts longer ids.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")

# S3 prefixes of docs/design.md; the only place they are spelled.
INPUT_PREFIX = "input/"
PREFIXES = {
    "extracted": "extracted",
    "chunks": "chunks",
    "enriched": "enriched",
    "embeddings": "embeddings",
    "errors": "errors",
    "jobs": "jobs",
}


def document_id(bucket: str, key: str) -> str:
    return hashlib.sha256(f"s3://{bucket}/{key}".encode()).hexdigest()[:32]


def processing_version(sha256_hex: str, pipeline_version: str = PIPELINE_VERSION) -> str:
    return f"{pipeline_version}-{sha256_hex[:16]}"


def pipeline_version_of(version: str) -> str:
    """The pipeline version a processing (or unread) version was made under."""
    return version.rpartition("-")[0]


def unread_version(etag: str, pipeline_version: str = PIPELINE_VERSION) -> str:
    """Version for an object we refused to read (too large): named by its ETag."""
    clean = re.sub(r"[^0-9a-fA-F]", "", etag or "")[:16] or "0"
    return f"{unread_version_prefix(pipeline_version)}{clean}"


def unread_version_prefix(pipeline_version: str = PIPELINE_VERSION) -> str:
    """What every unread_version of ``pipeline_version`` starts with."""
    return f"{pipeline_version}-etag"


def vector_id(doc_id: str, version: str, chunk_index: int) -> str:
    return f"{doc_id}#{version}#{chunk_index}"


def parse_vector_id(vector_id: str) -> tuple[str, str, int]:
    """(document_id, processing_version, chunk_index) of an id made by ``vector_id``;
    ValueError for anything else."""
    parts = vector_id.split("#")
    if len(parts) != 3 or not all(parts) or not parts[2].isdigit():
        raise ValueError(f"not a vector id: {vector_id!r}")
    return parts[0], parts[1], int(parts[2])


def vector_id_prefix(doc_id: str, version: str | None = None) -> str:
    return f"{doc_id}#{version}#" if version else f"{doc_id}#"


def safe_name(*parts: object, max_len: int = NAME_MAX) -> str:
    """Join parts into a name restricted to [A-Za-z0-9_.:-], hashed down if too long."""
    name = _UNSAFE.sub("_", "-".join(str(p) for p in parts if p != "" and p is not None))
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: max_len - 13]}-{digest}"


def submission_id(stage: str, doc_id: str, version: str, execution_name: str, retry: int = 0) -> str:
    """Deterministic Ray submission id: the same stage attempt of the same execution
    always gets the same id, so a re-delivered submit is recognised as 'already exists'."""
    run = hashlib.sha256(execution_name.encode()).hexdigest()[:8]
    return safe_name(stage, doc_id, version, run, f"r{retry}", max_len=120)




def artifact_key(prefix: str, doc_id: str, version: str, filename: str) -> str:
    return f"{PREFIXES[prefix]}/{doc_id}/{version}/{filename}"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key
