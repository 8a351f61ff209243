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

from docpipe import identity
from docpipe.errors import PdfNoText
from ray_jobs import jobio
from ray_jobs.runner import emit, main_exit, ray_available, run


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def extract_document(job: dict, callback=None) -> dict:
    from ray_jobs.chunking import chunk_pages
    from ray_jobs.pdf import extract_pdf

    reg = job["registration"]
    doc, ver, bucket = reg["document_id"], reg["processing_version"], reg["bucket"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docpipe-extract-") as tmp:
        path = os.path.join(tmp, "input.pdf")
        jobio.download(bucket, reg["key"], path)
        kwargs = dict(document_id=doc, processing_version=ver,
                      backend=os.environ.get("PDF_BACKEND", "auto"),
                      timeout_s=float(os.environ.get("PDF_TIMEOUT_SECONDS", "300")),
                      max_memory_mb=_int_env("PDF_MAX_MEMORY_MB", 2048),
                      parallel_threshold_pages=_int_env("PDF_PARALLEL_THRESHOLD_PAGES", 200))
        if ray_available():
            # The parse is a Ray task holding one CPU: Ray queues it when the node is
            # busy, while this driver is already running and heartbeating. (A job that
            # waits in Ray's job queue instead cannot heartbeat, and would time out.)
            import ray

            with open(path, "rb") as f:
                data = f.read()
            task = ray.remote(num_cpus=1, max_retries=0)(_extract_bytes).remote(data, kwargs)
            try:
                result = ray.get(task)
            except ray.exceptions.RayTaskError as err:
                # Re-raise PdfEncrypted & co. as themselves, not wrapped by Ray.
                if isinstance(getattr(err, "cause", None), Exception):
                    raise err.cause from None
                raise
        else:
            result = extract_pdf(path, **kwargs)
    t_extract = time.monotonic() - t0
    if callback:
        callback.heartbeat()
    if result.pages_with_text == 0:
        raise PdfNoText(f"none of the {result.page_count} pages has a text layer (scanned without OCR?)")
    pages_uri = jobio.write_jsonl(bucket, identity.artifact_key("extracted", doc, ver, "pages.jsonl"), result.pages)
    t1 = time.monotonic()
    chunks = chunk_pages(result.pages, document_id=doc, processing_version=ver,
                         max_tokens=_int_env("CHUNK_MAX_TOKENS", 400),
                         overlap_tokens=_int_env("CHUNK_OVERLAP_TOKENS", 50))
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


def _extract_bytes(data: bytes, kwargs: dict):
    """Runs on any node: the bytes travel through the object store, not a shared disk."""
    from ray_jobs.pdf import extract_pdf

    with tempfile.TemporaryDirectory(prefix="docpipe-parse-") as tmp:
        path = os.path.join(tmp, "input.pdf")
        with open(path, "wb") as f:
            f.write(data)
        return extract_pdf(path, **kwargs)


def main(argv=None) -> int:
    return run("extract", extract_document, argv)


if __name__ == "__main__":
    main_exit(main())
