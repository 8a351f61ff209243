"""Embed stage: chunks -> enrichment -> embeddings -> vector index.
`python -m ray_jobs.embed --job s3://...`

Writes enriched/<doc>/<ver>/chunks.jsonl and embeddings/<doc>/<ver>/vectors.jsonl,
then loads the vectors: the new version's ids are upserted first and only then are the
document's other versions deleted, so a document is never missing from the index and
never doubled. Vector ids are deterministic, so a re-run upserts the same ids.
"""

from __future__ import annotations

import os
import time

from docpipe import identity
from docpipe.errors import VectorStoreUnavailable
from ray_jobs import jobio
from ray_jobs.runner import emit, main_exit, run


def batch_size() -> int:
    """Texts per embed call: the local model wants small batches; the OpenAI embedder
    splits under the API's limits itself, so it gets large ones (fewer requests)."""
    default = "1024" if os.environ.get("EMBEDDING_BACKEND") == "openai" else "64"
    return int(os.environ.get("EMBED_BATCH_SIZE") or default)
TEXT_IN_INDEX = 2000  # characters of chunk text kept as vector metadata (for citations)


def embed_document(job: dict, callback=None) -> dict:
    from ray_jobs import warm
    from ray_jobs.backends.base import VectorRecord

    reg = job["registration"]
    doc, ver, bucket = reg["document_id"], reg["processing_version"], reg["bucket"]
    chunks = jobio.read_jsonl(job["inputs"]["chunks_uri"])

    t0 = time.monotonic()
    enricher = warm.enricher()
    enriched = []
    batch_n = batch_size()
    for start in range(0, len(chunks), 64):  # enrichment batches stay small (Comprehend: 25)
        batch = chunks[start:start + 64]
        for chunk, extra in zip(batch, enricher.enrich([c["text"] for c in batch])):
            enriched.append({**chunk, **extra, "enrichment_backend": enricher.name})
    enriched_uri = jobio.write_jsonl(bucket, identity.artifact_key("enriched", doc, ver, "chunks.jsonl"), enriched)
    t_enrich = time.monotonic() - t0

    t1 = time.monotonic()
    embedder = warm.embedder()
    info = {"model": embedder.model, "dims": embedder.dims}
    vectors, tokens, cost, hits = [], 0, 0.0, 0
    for start in range(0, len(chunks), batch_n):
        result = embedder.embed([c["text"] for c in chunks[start:start + batch_n]])
        vectors += result.vectors
        tokens += result.tokens
        cost += result.cost_usd
        hits += result.cache_hits
        if callback:
            callback.heartbeat()  # long documents: prove we are alive between batches
    ids = [identity.vector_id(doc, ver, c["chunk_index"]) for c in chunks]
    embeddings_uri = jobio.write_jsonl(
        bucket, identity.artifact_key("embeddings", doc, ver, "vectors.jsonl"),
        ({"id": i, "chunk_index": c["chunk_index"], "embedding_model": info["model"], "dims": info["dims"],
          "vector": [round(float(x), 7) for x in v]} for i, c, v in zip(ids, chunks, vectors)))
    t_embed = time.monotonic() - t1

    t2 = time.monotonic()
    records = [VectorRecord(i, list(map(float, v)), {
        "document_id": doc, "processing_version": ver, "chunk_index": c["chunk_index"],
        "page_start": c["page_start"], "page_end": c["page_end"], "s3_key": reg["key"],
        "text": c["text"][:TEXT_IN_INDEX]}) for i, c, v in zip(ids, chunks, vectors)]
    try:
        sync = warm.replace_document_version(records, doc, ver)
    except VectorStoreUnavailable:
        raise
    except (ConnectionError, TimeoutError, OSError) as err:
        raise VectorStoreUnavailable(f"vector store: {err}") from err
    t_load = time.monotonic() - t2
    emit(message="embedded", document_id=doc, vectors=len(records), model=info["model"],
         embed_s=round(t_embed, 3), load_s=round(t_load, 3))
    return {
        "enriched_uri": enriched_uri,
        "embeddings_uri": embeddings_uri,
        "vectors": len(records),
        "vectors_removed": int(sync.get("deleted", 0)),
        "embedding_model": info["model"],
        "dims": info["dims"],
        "tokens": tokens,
        "cost_usd": round(cost, 8),
        "cache_hits": hits,
        "durations": {"enrich_s": round(t_enrich, 3), "embed_s": round(t_embed, 3), "load_s": round(t_load, 3)},
    }


def main(argv=None) -> int:
    return run("embed", embed_document, argv)


if __name__ == "__main__":
    main_exit(main())
