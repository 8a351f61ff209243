"""Extract stage: PDF -> pages.jsonl -> chunks.jsonl.  `python -m ray_jobs.extract --job s3://...`

Output sent with SendTaskSuccess (small: URIs and counts): pages_uri, chunks_uri,
pages, pages_with_text, pages_without_text, page_errors, chunks, extractor, durations.
A document where no page has text fails with PdfNoText; some pages without text make
the document PARTIAL (FinalizeDocument decides from pages_without_text).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from docpipe import identity
from docpipe.errors import PdfNoText
from ray_jobs import jobio
from ray_jobs.callback import TaskCallback
from ray_jobs.log import emit
from ray_jobs.runner import main_exit, run
from ray_jobs.settings import StageSettings

if TYPE_CHECKING:
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


def chunk(pages: list[dict[str, Any]], document_id: str, version: str,
          settings: StageSettings) -> list[dict[str, Any]]:
    """Pages -> chunks with the stage's settings (bench.bare runs this too)."""
    from ray_jobs.chunking import chunk_pages

    return chunk_pages(pages, document_id=document_id, processing_version=version,
                       max_tokens=settings.chunk_max_tokens, overlap_tokens=settings.chunk_overlap_tokens)


def extract_document(job: dict[str, Any], callback: TaskCallback | None = None) -> dict[str, Any]:
    reg = job["registration"]
    doc, ver, bucket = reg["document_id"], reg["processing_version"], reg["bucket"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docpipe-extract-") as tmp:
        path = os.path.join(tmp, "input.pdf")
        # The version registered (and hashed into `ver`), not whatever the key holds now;
        # a registration from before versions were recorded has none: the key as it is.
        jobio.download(bucket, reg["s3_key"], path, reg.get("s3_version_id") or "")
        settings = StageSettings.from_env()
        result = extract_pages(path, doc, ver, settings)
    t_extract = time.monotonic() - t0
    if callback:
        callback.heartbeat()
    if result.pages_with_text == 0:
        raise PdfNoText(f"none of the {result.page_count} pages has a text layer (scanned without OCR?)")
    pages_uri = jobio.write_jsonl(bucket, identity.artifact_key("extracted", doc, ver, "pages.jsonl"), result.pages)
    t1 = time.monotonic()
    chunks = chunk(result.pages, doc, ver, settings)
    chunks_uri = jobio.write_jsonl(bucket, identity.artifact_key("chunks", doc, ver, "chunks.jsonl"), chunks)
    t_chunk = time.monotonic() - t1
    emit(message="extracted", document_id=doc, pages=result.page_count, chunks=len(chunks),
         extractor=result.extractor, extract_s=round(t_extract, 3))
    return {
        "pages_uri": pages_uri,
        "chunks_uri": chunks_uri,
        "pages": result.page_count,
        "pages_with_text": result.pages_with_text,
        "pages_without_text": result.pages_without_text,
        "page_errors": result.page_errors,
        "chunks": len(chunks),
        "chunk_tokens": sum(c["token_count"] for c in chunks),
        "extractor": result.extractor,
        "durations": {"extract_s": round(t_extract, 3), "chunk_s": round(t_chunk, 3)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run("extract", extract_document, argv)


if __name__ == "__main__":
    main_exit(main())
