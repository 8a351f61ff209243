"""PDF -> pages (the rows of ``extracted/<doc>/<ver>/pages.jsonl``).

``extract_pdf`` never parses a PDF in the calling process: every parse runs in a time- and
memory-limited child interpreter (``pdf_sandbox``), which reads the document with pypdfium2
and/or pypdf (``pdf_parse``, backends ``auto`` and ``pypdf``) and normalises each page's
text (``pdf_text``).

Outcomes (the error classes are docpipe.errors):
- zero-byte file -> EmptyDocument (checked before any child starts);
- a password we do not have -> PdfEncrypted (an empty user password is tried and works);
- neither library can open it, it has no pages, or every page failed -> PdfMalformed;
- over the memory limit (MemoryError, ENOMEM, or pdfium's abort on allocation failure)
  -> TooLarge;
- over the time limit -> PdfTimeout;
- a document without a text layer is *not* an error here: the result says
  ``pages_with_text == 0`` and the stage decides (PdfNoText).

Large documents (``page_count > parallel_threshold_pages``) are split into page ranges
extracted as Ray tasks when Ray is active (``pdf_parallel``); each range again runs in a
limited child. The result is identical to the sequential path (same per-page decisions).

CLI for debugging: ``python -m ray_jobs.pdf FILE [--backend auto|pypdf] [--json]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from docpipe import errors
from ray_jobs.pdf_parallel import extract_parallel, page_ranges, ray_active
from ray_jobs.pdf_parse import BACKENDS, RawPage
from ray_jobs.pdf_sandbox import extract_in_child
from ray_jobs.pdf_text import MIN_TEXT_CHARS, has_text, normalise_text

__all__ = [
    "BACKENDS",
    "MIN_TEXT_CHARS",
    "ExtractResult",
    "extract_pdf",
    "has_text",
    "main",
    "normalise_text",
    "page_ranges",
]


@dataclass
class ExtractResult:
    pages: list[dict[str, Any]]  # pages.jsonl rows, in page order
    page_count: int
    pages_with_text: int
    pages_without_text: int
    page_errors: int  # pages that failed while others succeeded (their `error` is set)
    extractor: str  # "pdfium" | "pypdf" | "ocr-<engine>" | a format's: the extractor of most pages
    seconds: float  # wall clock of the whole extraction
    ranges: int = 1  # page ranges extracted (> 1 only on the parallel Ray path)
    stats: dict[str, int] = field(default_factory=dict)  # pages per extractor

    @classmethod
    def of_rows(cls, rows: list[dict[str, Any]], *, page_errors: int, seconds: float, ranges: int = 1) -> ExtractResult:
        """The result of these rows, its counts and extractor taken from them."""
        result = cls(pages=rows, page_count=len(rows), pages_with_text=0, pages_without_text=0,
                     page_errors=page_errors, extractor="", seconds=seconds, ranges=ranges)
        result.recount()
        return result

    def recount(self) -> None:
        """Counts and extractor again from the rows, after OCR filled some of them."""
        self.pages_with_text = sum(1 for r in self.pages if r["has_text"])
        self.pages_without_text = self.page_count - self.pages_with_text
        self.stats = dict(sorted(Counter(r["extractor"] for r in self.pages).items()))
        self.extractor = main_extractor(self.stats)

    def summary(self) -> dict[str, Any]:
        return {
            "page_count": self.page_count,
            "pages_with_text": self.pages_with_text,
            "pages_without_text": self.pages_without_text,
            "page_errors": self.page_errors,
            "extractor": self.extractor,
            "seconds": round(self.seconds, 3),
            "ranges": self.ranges,
            "stats": dict(self.stats),
        }


def main_extractor(stats: dict[str, int]) -> str:
    """The extractor of most pages ("pdfium" on a tie with pypdf; OCR engines count too)."""
    if not stats:
        return "pdfium"
    return max(sorted(stats), key=lambda name: (stats[name], name == "pdfium"))


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def extract_pdf(path: str, *, document_id: str, processing_version: str, backend: str = "auto",
                timeout_s: float = 120, max_memory_mb: int = 1536, password: str = "",
                parallel_threshold_pages: int = 64) -> ExtractResult:
    """Extract normalised text per page of the PDF at `path` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if timeout_s <= 0 or max_memory_mb <= 0:
        raise ValueError("timeout_s and max_memory_mb must be positive")
    started = time.monotonic()
    deadline = started + timeout_s
    path = os.fspath(path)
    if os.path.getsize(path) == 0:  # FileNotFoundError for a missing path is the caller's bug
        raise errors.EmptyDocument(f"{path} has zero bytes")

    parallel = ray_active()
    first = extract_in_child(path, backend, password, 0, None,
                             parallel_threshold_pages if parallel else None,
                             timeout_s, max_memory_mb)
    ranges = 1
    raw_pages: list[RawPage]
    if first["pages"] is None:  # the probe found a large document and Ray is up
        # Ranges reuse the backend the probe settled on (pdfium, or pypdf for the whole
        # document), so every page gets exactly the sequential path's decision.
        range_backend = "auto" if first["backend"] == "pdfium" else "pypdf"
        raw_pages, ranges = extract_parallel(path, range_backend, password, first["page_count"],
                                             deadline, max_memory_mb, parallel_threshold_pages)
    else:
        raw_pages = first["pages"]

    page_count = first["page_count"]
    if len(raw_pages) != page_count or [p["page_number"] for p in raw_pages] != list(range(1, page_count + 1)):
        raise errors.PdfMalformed(f"page tree changed between reads ({page_count} pages, got {len(raw_pages)})")
    failed = [p for p in raw_pages if p["error"]]
    if failed and len(failed) == page_count:
        raise errors.PdfMalformed(f"no page could be read: {failed[0]['error']}")

    rows: list[dict[str, Any]] = []
    for p in raw_pages:
        rows.append({
            "document_id": document_id,
            "processing_version": processing_version,
            "page_number": p["page_number"],
            "text": p["text"],
            "char_count": len(p["text"]),
            "has_text": has_text(p["text"]),
            "extractor": p["extractor"],
            "error": p["error"],
        })
    return ExtractResult.of_rows(rows, page_errors=len(failed), seconds=time.monotonic() - started, ranges=ranges)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def file_identity(path: str) -> tuple[str, str]:
    """(document_id, processing_version) of a local file, as the debugging CLIs name it."""
    import hashlib

    from docpipe import identity

    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return identity.document_id("local", os.path.abspath(path)), identity.processing_version(digest)


def print_error(exc: BaseException) -> int:
    """A debugging CLI's failure: the error code and message on stderr; exit status 1."""
    code = errors.error_code_of(exc) if isinstance(exc, errors.DocpipeError) else type(exc).__name__
    print(f"error: {code}: {exc}".replace("\n", " "), file=sys.stderr)
    return 1


def print_json(result: ExtractResult) -> int:
    """The pages.jsonl rows and the summary as JSON on stdout."""
    json.dump({"summary": result.summary(), "pages": result.pages}, sys.stdout, ensure_ascii=False, indent=1)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ray_jobs.pdf",
        description="Extract one PDF into pages (as the extract stage does) and print a per-page summary.")
    parser.add_argument("file", help="path of the PDF")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--json", action="store_true", help="print the pages.jsonl rows and a summary as JSON")
    parser.add_argument("--timeout", type=float, default=120, help="seconds (default 120)")
    parser.add_argument("--max-memory-mb", type=int, default=1536, help="address-space limit of the parser (default 1536)")
    parser.add_argument("--password", default="", help="user password (default: the empty one)")
    args = parser.parse_args(argv)

    try:
        document_id, version = file_identity(args.file)
        result = extract_pdf(args.file, document_id=document_id, processing_version=version,
                             backend=args.backend, timeout_s=args.timeout, max_memory_mb=args.max_memory_mb,
                             password=args.password)
    except (errors.DocpipeError, OSError) as exc:
        return print_error(exc)

    if args.json:
        return print_json(result)
    for row in result.pages:
        preview = row["text"][:60].replace("\n", " ")
        flag = "text" if row["has_text"] else "----"
        line = f"page {row['page_number']:>5}  {flag}  {row['char_count']:>7} chars  {row['extractor']:<6}  {preview}"
        if row["error"]:
            line += f"  ERROR {row['error']}"
        print(line)
    s = result.summary()
    print(f"{s['page_count']} pages, {s['pages_with_text']} with text, {s['pages_without_text']} without, "
          f"{s['page_errors']} errors; extractor {s['extractor']} {s['stats']}; {s['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
