"""The chunks nearest to a text: the one search behind `docpipe query` (the local index)
and the Query function (the deployed index, ray_jobs/query_function.py).

The text is embedded by the configured embedder and looked up in the configured vector
store (EMBEDDING_BACKEND, VECTOR_STORE_BACKEND and their settings, ray_jobs/backends), so a
query is embedded by the same model the embed stage used. Both come from `ray_jobs.warm`:
a warm process (a Lambda container between invocations) loads the model and opens the
index once.

A hit is ``{"id", "score", **metadata}``: the vector id, the cosine similarity and the
chunk's metadata of docs/architecture.md (document_id, processing_version, chunk_index,
page_start, page_end, s3_key, locator, text). `where_in_document` and `citation` say
where a hit is the same way everywhere (CLI, console).
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_TOP_K = 5
# A text file's locator (ray_jobs.formats.text_sections): "line 7", "lines 1–40 (part 2)".
_LINES = re.compile(r"lines? \d")
MAX_TOP_K = 100
MAX_TEXT_CHARS = 10_000
# Metadata both stores can filter on (equality or a list of values); `text` is not one.
FILTER_FIELDS = ("document_id", "processing_version", "chunk_index", "page_start", "page_end", "s3_key")
INTEGER_FIELDS = ("chunk_index", "page_start", "page_end")


class BadQuery(ValueError):
    """The request itself is wrong (the caller can fix it): empty text, top_k out of range,
    an unknown filter field."""


def search(text: object, top_k: object = DEFAULT_TOP_K, filter: object = None) -> list[dict[str, Any]]:
    """The `top_k` hits nearest to `text`, best first, optionally restricted by `filter`
    ({field: value} or {field: [values]}; see FILTER_FIELDS)."""
    from ray_jobs import warm

    text, top_k, where = check(text, top_k, filter)
    vector = warm.embedder().embed([text]).vectors[0]
    matches = warm.vector_store().query([float(v) for v in vector], top_k=top_k, filter=where)
    return [{"id": m.id, "score": float(m.score), **_integers(m.metadata)} for m in matches]


def where_in_document(hit: dict[str, Any]) -> str:
    """"section Setup › Install" for a DOCX/HTML/Markdown hit (its locator), a text file's
    "line 7" / "lines 1–40" as they are, "page 3" or "pages 3–4" for a PDF's; "" when the
    hit says neither."""
    if hit.get("locator"):
        locator = str(hit["locator"])
        return locator if _LINES.match(locator) else f"section {locator}"
    start, end = hit.get("page_start"), hit.get("page_end")
    if start is None:
        return ""
    return f"page {start}" if end in (None, start) else f"pages {start}–{end}"


def citation(hit: dict[str, Any]) -> str:
    """The document and the place in it: "input/report.pdf, pages 3–4"."""
    where = where_in_document(hit)
    return f"{hit.get('s3_key', '')}, {where}" if where else str(hit.get("s3_key", ""))


def _integers(metadata: dict[str, Any]) -> dict[str, Any]:
    # Pinecone keeps every number as a float: page 3 comes back as 3.0.
    return {k: int(v) if k in INTEGER_FIELDS and isinstance(v, float) and v.is_integer() else v
            for k, v in metadata.items()}


def check(text: Any, top_k: Any, filter: Any) -> tuple[str, int, dict[str, Any] | None]:
    """The request's values, validated; the filter in the operator form both stores
    accept ({"$eq": v} / {"$in": [...]}: Pinecone reads a bare list as no filter at all)."""
    if not isinstance(text, str) or not text.strip():
        raise BadQuery("text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise BadQuery(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise BadQuery(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
    if filter in (None, {}):
        return text, top_k, None
    if not isinstance(filter, dict):
        raise BadQuery("filter must be an object of {field: value or [values]}")
    where = {}
    for field, value in filter.items():
        if field not in FILTER_FIELDS:
            raise BadQuery(f"cannot filter on {field!r}; fields: {', '.join(FILTER_FIELDS)}")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise BadQuery(f"filter on {field!r}: a string or integer, or a non-empty list of them")
        where[field] = {"$in": values} if isinstance(value, list) else {"$eq": value}
    return text, top_k, where
