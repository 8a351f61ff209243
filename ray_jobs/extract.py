"""Extract stage: document -> pages.jsonl -> chunks.jsonl.  `python -m ray_jobs.extract --job s3://...`

By the registration's `document_type` (docpipe.doctypes): a PDF through the PDF extractor,
then OCR (ray_jobs.ocr, OCR_BACKEND) for its pages without a text layer; DOCX, HTML,
Markdown and text through ray_jobs.formats, one "page" per section with its heading path
as `locator`.

Output sent with SendTaskSuccess (small: URIs and counts): document_type, pages_uri,
chunks_uri, pages, pages_with_text, pages_without_text, page_errors, chunks, extractor,
ocr (what OCR did: pages, engine, cost), durations.
A PDF where no page has text even after OCR fails with PdfNoText (the message says what
OCR did); another type without text fails with EmptyDocument. Some pages without text
make the document PARTIAL (FinalizeDocument decides from pages_without_text).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from docpipe import doctypes, identity
from docpipe.errors import EmptyDocument, PdfNoText
from ray_jobs import jobio
from ray_jobs.callback import TaskCallback
from ray_jobs.log import emit
from ray_jobs.runner import main_exit, run
from ray_jobs.settings import StageSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from ray_jobs.ocr import OcrOutcome, S3Source
    from ray_jobs.pdf import ExtractResult


def extract_pages(path: str, document_id: str, version: str, settings: StageSettings) -> ExtractResult:
    """The PDF at `path` as pages, with the stage's settings (bench.bare runs this too)."""
    from ray_jobs.pdf import extract_pdf

    # The parse runs in a time- and memory-limited child of this driver; Ray is only
    # started (in extract_pdf) for a document long enough to split into page ranges. A Ray
    # task per parse cost ~1.7 CPU-s per document (ray.init + a worker process) for
    # nothing the job slot does not already bound.
    return extract_pdf(path, document_id=document_id, processing_version=version,
                       backend=settings.pdf_backend, timeout_s=settings.pdf_timeout_seconds,
                       max_memory_mb=settings.pdf_max_memory_mb,
                       parallel_threshold_pages=settings.pdf_parallel_threshold_pages)


def extract_any(path: str, document_type: str, document_id: str, version: str, settings: StageSettings, *,
                source: S3Source | None = None,
                heartbeat: Callable[[], None] | None = None) -> tuple[ExtractResult, OcrOutcome | None]:
    """The file at `path` as pages, by its type: a PDF with OCR of its pages without
    text, another type through ray_jobs.formats (bench.bare runs this too)."""
    if document_type != "pdf":
        from ray_jobs.formats import extract_file

        return extract_file(path, document_type, document_id=document_id, processing_version=version), None
    from ray_jobs.ocr import apply_ocr

    result = extract_pages(path, document_id, version, settings)
    if heartbeat:
        heartbeat()
    outcome = apply_ocr(path, result.pages, settings, source=source, heartbeat=heartbeat)
    result.recount()
    return result, outcome


def no_text_error(result: ExtractResult, document_type: str, outcome: OcrOutcome | None) -> Exception:
    """Why a document without any text fails, in words a user can act on."""
    if document_type != "pdf":
        return EmptyDocument(f"the {document_type} file has no text to index "
                             f"({result.page_count} sections, all empty)")
    pages = f"none of the {result.page_count} pages has a text layer"
    if outcome is None or outcome.backend == "none":
        return PdfNoText(f"{pages}, and OCR is off (OCR_BACKEND=none): a scan is indexed only with OCR")
    if outcome.pages_over_limit and not outcome.pages_attempted:
        return PdfNoText(f"{pages}, and OCR stopped before any page ({outcome.note})")
    return PdfNoText(f"{pages}, and OCR ({outcome.engine}) found no text either: {outcome.note}")


def chunk(pages: list[dict[str, Any]], document_id: str, version: str,
          settings: StageSettings) -> list[dict[str, Any]]:
    """Pages -> chunks with the stage's settings (bench.bare runs this too)."""
    from ray_jobs.chunking import chunk_pages
    from ray_jobs.tokens import chunk_tokenizer

    return chunk_pages(pages, document_id=document_id, processing_version=version,
                       max_tokens=settings.chunk_max_tokens, overlap_tokens=settings.chunk_overlap_tokens,
                       page_breaks=settings.chunk_page_breaks, tokenizer=chunk_tokenizer(settings))


def extract_document(job: dict[str, Any], callback: TaskCallback | None = None) -> dict[str, Any]:
    reg = job["registration"]
    doc, ver, bucket = reg["document_id"], reg["processing_version"], reg["bucket"]
    t0 = time.monotonic()
    # A registration from before types were recorded is a PDF: only PDFs were registered.
    doc_type = reg.get("document_type") or "pdf"
    with tempfile.TemporaryDirectory(prefix="docpipe-extract-") as tmp:
        path = os.path.join(tmp, "input" + doctypes.extension_of(reg["s3_key"]))
        # The version registered (and hashed into `ver`), not whatever the key holds now;
        # a registration from before versions were recorded has none: the key as it is.
        version_id = reg.get("s3_version_id") or ""
        jobio.download(bucket, reg["s3_key"], path, version_id)
        settings = StageSettings.from_env()
        from ray_jobs.ocr import S3Source

        result, ocr = extract_any(path, doc_type, doc, ver, settings,
                                  source=S3Source(bucket, reg["s3_key"], version_id),
                                  heartbeat=callback.heartbeat if callback else None)
    t_extract = time.monotonic() - t0
    if callback:
        callback.heartbeat()
    if result.pages_with_text == 0:
        raise no_text_error(result, doc_type, ocr)
    pages_uri = jobio.write_jsonl(bucket, identity.artifact_key("extracted", doc, ver, "pages.jsonl"), result.pages)
    t1 = time.monotonic()
    chunks = chunk(result.pages, doc, ver, settings)
    chunks_uri = jobio.write_jsonl(bucket, identity.artifact_key("chunks", doc, ver, "chunks.jsonl"), chunks)
    t_chunk = time.monotonic() - t1
    ocr_summary = ocr.summary() if ocr else None
    emit(message="extracted", document_id=doc, document_type=doc_type, pages=result.page_count,
         chunks=len(chunks), extractor=result.extractor, extract_s=round(t_extract, 3), ocr=ocr_summary)
    return {
        "document_type": doc_type,
        "pages_uri": pages_uri,
        "chunks_uri": chunks_uri,
        "pages": result.page_count,
        "pages_with_text": result.pages_with_text,
        "pages_without_text": result.pages_without_text,
        "page_errors": result.page_errors,
        "chunks": len(chunks),
        "chunk_tokens": sum(c["token_count"] for c in chunks),
        "extractor": result.extractor,
        "ocr": ocr_summary,
        "durations": {"extract_s": round(t_extract, 3), "chunk_s": round(t_chunk, 3)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run("extract", extract_document, argv)


if __name__ == "__main__":
    main_exit(main())
