"""Document types: which uploads docpipe processes, and how each is read.

RegisterDocument routes by the key's extension (S3 keys are what users name and see; a
Content-Type is whatever the uploading tool guessed). A key of no supported type is
recorded SKIPPED with the reason `UnsupportedType`, naming the types that are.
The extract stage reads `pdf` with the PDF extractor (and OCR for pages without text)
and the others with ray_jobs.formats.
"""

from __future__ import annotations

import posixpath

# extension -> document type; the type is what the control item and pages.jsonl record.
EXTENSIONS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}
DOCUMENT_TYPES = ("pdf", "docx", "html", "markdown", "text")


def extension_of(key: str) -> str:
    """The key's extension, lower case, with its dot ("" when it has none)."""
    return posixpath.splitext(posixpath.basename(key))[1].lower()


def document_type(key: str) -> str | None:
    """The type docpipe reads `key` as, or None when it does not process it."""
    return EXTENSIONS.get(extension_of(key))


def unsupported_reason(key: str) -> str:
    """What a SKIPPED item's message says about a key of no supported type."""
    ext = extension_of(key) or "no extension"
    return f"{ext} is not a supported type (supported: {', '.join(sorted(EXTENSIONS))})"
