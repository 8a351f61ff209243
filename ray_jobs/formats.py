"""DOCX, HTML, Markdown and plain text -> sections (the rows of ``extracted/<doc>/<ver>/pages.jsonl``).

A non-PDF document has no pages; its "pages" are *sections*, in document order,
numbered 1..N in ``page_number``, so chunking, citations and the rest of the pipeline
work unchanged. Each row has the PDF rows' keys plus ``locator``, the section's place in
the document a user can look up:

- DOCX, HTML, Markdown: a section is the content under one heading of level 1-3 (deeper
  headings stay inside as lines). Its text starts with the heading line, so the
  heading's words are searchable. ``locator`` is the heading path, levels joined by
  " › " ("Installation › Requirements"); the text before the first heading has the
  document's title as locator (HTML <title>, DOCX "Title" paragraph) or "". A DOCX
  Title paragraph also heads every path ("Travel policy › Hotels"): it is the visible
  top of the outline, where an HTML <title> is metadata that usually repeats the h1.
- Plain text: sections of up to TEXT_SECTION_CHARS at blank lines (at line ends when a
  paragraph is longer), ``locator`` "lines 12–40" of the file.
- A section longer than SECTION_MAX_CHARS is split at paragraph breaks (else line ends,
  else spaces) into parts; the second part's locator ends in " (part 2)", and so on.

Readers: formats_docx, formats_html, formats_markdown (module docstrings say what each
keeps and drops). Text goes through pdf_text.normalise_text, as PDF pages' does.

Outcomes (docpipe.errors): a zero-byte file -> EmptyDocument; a file the reader cannot
read -> DocumentMalformed (which type, and why); more than `max_chars` of text, or a DOCX
that unpacks too large -> TooLarge. Any other exception of a parser becomes
DocumentMalformed with its type and message. A document without text is not an error
here: the result says ``pages_with_text == 0`` (one empty section when there is nothing
at all) and the stage decides.

CLI for debugging: ``python -m ray_jobs.formats FILE [--type docx|html|markdown|text] [--json]``.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from docpipe import doctypes, errors
from ray_jobs.formats_common import Parsed, decode_bytes
from ray_jobs.pdf import ExtractResult
from ray_jobs.pdf_text import has_text, normalise_text

SECTION_MAX_CHARS = 8_000
TEXT_SECTION_CHARS = 4_000
LOCATOR_SEPARATOR = " › "
LOCATOR_PART_CHARS = 120  # a heading longer than this is cut in the locator (not in the text)
# Bytes per allowed character of text before a markup file is refused unread (at least
# RAW_MIN_BYTES): web pages are mostly markup, but not a thousand times over.
RAW_BYTES_PER_CHAR = 10
RAW_MIN_BYTES = 64 * 1024 * 1024

LABELS = {"docx": "DOCX", "html": "HTML", "markdown": "Markdown", "text": "text"}
FORMAT_TYPES = tuple(t for t in doctypes.DOCUMENT_TYPES if t != "pdf")


def _read_docx(data: bytes) -> Parsed:
    from ray_jobs.formats_docx import read_docx

    return read_docx(data)


def _read_html(data: bytes) -> Parsed:
    from ray_jobs.formats_html import read_html

    return read_html(data)


def _read_markdown(data: bytes) -> Parsed:
    from ray_jobs.formats_markdown import read_markdown

    return read_markdown(data)


_READERS: dict[str, Callable[[bytes], Parsed]] = {"docx": _read_docx, "html": _read_html, "markdown": _read_markdown}


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def extract_file(path: str, document_type: str, *, document_id: str, processing_version: str,
                 max_chars: int = 20_000_000) -> ExtractResult:
    """Extract the sections of the DOCX/HTML/Markdown/text file at `path` (see the module docstring)."""
    if document_type not in FORMAT_TYPES:
        raise ValueError(f"document_type={document_type!r}: expected one of {FORMAT_TYPES} "
                         "(a PDF goes through ray_jobs.pdf.extract_pdf)")
    if max_chars <= 0:
        raise ValueError("max_chars must be positive")
    started = time.monotonic()
    label = LABELS[document_type]
    path = os.fspath(path)
    size = os.path.getsize(path)  # FileNotFoundError for a missing path is the caller's bug
    if size == 0:
        raise errors.EmptyDocument(f"the {label} file has zero bytes")
    max_bytes = max(RAW_MIN_BYTES, RAW_BYTES_PER_CHAR * max_chars)
    if document_type != "docx" and size > max_bytes:
        raise errors.TooLarge(f"the {label} file has {size / 2**20:.0f} MB, over the limit of {max_bytes / 2**20:.0f} MB")
    with open(path, "rb") as fh:
        data = fh.read()

    try:
        if document_type == "text":
            sections = text_sections(decode_bytes(data)[0])
        else:
            sections = split_long(heading_sections(_READERS[document_type](data)))
    except errors.DocpipeError:
        raise
    except MemoryError as exc:
        raise errors.TooLarge(f"the {label} file needs more memory to read than this worker has") from exc
    except Exception as exc:  # a parser's own error: the user needs to know the file is unreadable
        raise errors.DocumentMalformed(f"the {label} file could not be read: {type(exc).__name__}: {exc}") from exc

    total = sum(len(text) for _, text in sections)
    if total > max_chars:
        raise errors.TooLarge(f"the {label} file has {total} characters of text, over the limit of {max_chars}")
    if not sections:
        sections = [("", "")]
    rows: list[dict[str, Any]] = []
    for number, (locator, text) in enumerate(sections, start=1):
        rows.append({
            "document_id": document_id,
            "processing_version": processing_version,
            "page_number": number,
            "text": text,
            "char_count": len(text),
            "has_text": has_text(text),
            "extractor": document_type,
            "error": None,
            "locator": locator,
        })
    return ExtractResult.of_rows(rows, page_errors=0, seconds=time.monotonic() - started)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _locator_part(heading: str) -> str:
    heading = " ".join(normalise_text(heading).split())
    if len(heading) > LOCATOR_PART_CHARS:
        heading = heading[:LOCATOR_PART_CHARS - 1].rstrip() + "…"
    return heading


def heading_sections(parsed: Parsed) -> list[tuple[str, str]]:
    """(locator, normalised text) per heading of level 1-3; the text before the first
    heading, when there is any, is a section of its own."""
    sections: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    locator = _locator_part(parsed.title)
    root = [locator] if parsed.title_heads_paths and locator else []
    parts: list[str] = []
    started = False  # a heading's section is kept even when only the heading has text

    def close() -> None:
        text = normalise_text("\n\n".join(parts))
        if text or started:
            sections.append((locator, text))

    for block in parsed.blocks:
        if block.level <= 0:
            parts.append(block.text)
            continue
        close()
        path = [p for p in path if p[0] < block.level] + [(block.level, _locator_part(block.text))]
        locator = LOCATOR_SEPARATOR.join(root + [name for _, name in path])
        parts = [block.text]
        started = True
    close()
    return sections


def split_long(sections: list[tuple[str, str]], limit: int = SECTION_MAX_CHARS) -> list[tuple[str, str]]:
    """Sections over `limit` characters as parts; the second part's locator gets " (part 2)"."""
    out: list[tuple[str, str]] = []
    for locator, text in sections:
        for i, part in enumerate(split_text(text, limit)):
            out.append((locator if i == 0 else f"{locator} (part {i + 1})".lstrip(), part))
    return out


_CUTS = (re.compile(r"\n[^\S\n]*\n\s*"), re.compile(r"\n\s*"), re.compile(r"\s+"))


def split_text(text: str, limit: int) -> list[str]:
    """`text` in consecutive parts of at most `limit` characters, each as long as it can
    be, cut at paragraph breaks, else line ends, else spaces, else anywhere."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, limit, 0):
        if current and len(current) + len(piece) > limit:
            parts.append(current)
            current = ""
        current += piece
    parts.append(current)
    return [p for p in (normalise_text(p) for p in parts) if p]


def _pieces(text: str, limit: int, level: int) -> list[str]:
    """`text` tiled into pieces of at most `limit` characters; separators stay with the piece before."""
    if len(text) <= limit:
        return [text]
    if level == len(_CUTS):
        return [text[i:i + limit] for i in range(0, len(text), limit)]
    out: list[str] = []
    pos = 0
    for m in _CUTS[level].finditer(text):
        if pos < m.end() < len(text):
            out.extend(_pieces(text[pos:m.end()], limit, level + 1))
            pos = m.end()
    out.extend(_pieces(text[pos:], limit, level + 1))
    return out


def text_sections(text: str, limit: int = TEXT_SECTION_CHARS) -> list[tuple[str, str]]:
    """Plain text as ("lines a–b", text) sections of about `limit` characters, cut at
    blank lines, or at line ends inside a longer paragraph; a single longer line is cut
    into parts."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # Runs of non-blank lines: (first line index, last line index), each at most `limit`
    # characters unless a single line is longer.
    runs: list[tuple[int, int]] = []
    start, size = -1, 0
    for i, line in enumerate(lines):
        if not line.strip():
            if start >= 0:
                runs.append((start, i - 1))
                start = -1
            continue
        if start >= 0 and size + len(line) + 1 > limit:
            runs.append((start, i - 1))
            start = -1
        if start < 0:
            start, size = i, 0
        size += len(line) + 1
    if start >= 0:
        runs.append((start, len(lines) - 1))

    sections: list[tuple[str, str]] = []
    first = last = -1
    size = 0

    def close() -> None:
        if first < 0:
            return
        body = normalise_text("\n".join(lines[first:last + 1]))
        where = f"line {first + 1}" if first == last else f"lines {first + 1}–{last + 1}"
        sections.extend(split_long([(where, body)], limit) if body else [])

    for a, b in runs:
        run_size = sum(len(line) + 1 for line in lines[a:b + 1])
        if first >= 0 and size + run_size + 1 > limit:
            close()
            first = -1
        if first < 0:
            first, size = a, 0
        last = b
        size += run_size + 1
    close()
    return sections


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ray_jobs.formats",
        description="Extract one DOCX, HTML, Markdown or text file into sections (as the extract stage does) "
                    "and print a per-section summary.")
    parser.add_argument("file", help="path of the file")
    parser.add_argument("--type", choices=FORMAT_TYPES, default=None,
                        help="document type (default: from the file's extension)")
    parser.add_argument("--json", action="store_true", help="print the pages.jsonl rows and a summary as JSON")
    parser.add_argument("--max-chars", type=int, default=20_000_000, help="limit of text characters (default 20000000)")
    args = parser.parse_args(argv)

    doc_type = args.type or doctypes.document_type(args.file)
    if doc_type not in FORMAT_TYPES:
        parser.error(f"cannot tell the type of {args.file} from its extension "
                     f"({doctypes.extension_of(args.file) or 'none'}): pass --type")
    from ray_jobs.pdf import file_identity, print_error, print_json

    try:
        document_id, version = file_identity(args.file)
        result = extract_file(args.file, doc_type, document_id=document_id, processing_version=version,
                              max_chars=args.max_chars)
    except (errors.DocpipeError, OSError) as exc:
        return print_error(exc)

    if args.json:
        return print_json(result)
    for row in result.pages:
        preview = " ".join(row["text"][:120].split())[:60]
        locator = row["locator"] if len(row["locator"]) <= 60 else row["locator"][:59] + "…"
        print(f"section {row['page_number']:>5}  {row['char_count']:>7} chars  {locator:<60}  {preview}")
    s = result.summary()
    print(f"{s['page_count']} sections, {s['pages_with_text']} with text, {s['pages_without_text']} without; "
          f"extractor {s['extractor']}; {s['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
