"""Embed stage: chunks -> enrichment -> embeddings -> vector index.
`python -m ray_jobs.embed --job s3://...`

Writes enriched/<doc>/<ver>/chunks.jsonl and embeddings/<doc>/<ver>/vectors.jsonl,
then loads the same vectors (float32, the precision of every index) into the index:
the new version's ids are upserted first and only then are the
document's other versions deleted, so a document is never missing from the index and
never doubled. Vector ids are deterministic, so a re-run upserts the same ids.
A vector's metadata carries the chunk's place (pages, section, char_start/char_end in the
document text) and its enrichment as filterable lists (`enrichment_metadata`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from docpipe import identity
from docpipe.errors import VectorStoreUnavailable
from ray_jobs import jobio
from ray_jobs.callback import TaskCallback
from ray_jobs.log import emit
from ray_jobs.runner import main_exit, run

if TYPE_CHECKING:
    from ray_jobs.backends.base import VectorRecord

ENRICH_BATCH = 64  # texts per enrich call: small (Comprehend takes 25 per request)
# Enrichment kept in a vector's metadata (Pinecone's 40 KB per vector leaves room for them).
MAX_ENTITIES = 32
MAX_KEY_PHRASES = 16


def batch_size() -> int:
    """Texts per embed call: the local model wants small batches; the OpenAI embedder
    splits under the API's limits itself, so it gets large ones (fewer requests)."""
    from ray_jobs.settings import StageSettings

    return StageSettings.from_env().texts_per_embed_call()


def as_float32(vector: Sequence[float]) -> list[float]:
    """The vector as the index keeps it: every value rounded to float32 (as Python floats,
    which hold a float32 exactly), so vectors.jsonl and the index hold the same numbers."""
    import numpy as np

    return cast(list[float], np.asarray(vector, dtype=np.float32).tolist())


def enrichment_metadata(row: dict[str, Any]) -> dict[str, list[str]]:
    """A chunk's enrichment as filterable index metadata: `entity_types` (unique, sorted),
    `entities` (unique texts, first seen first, at most MAX_ENTITIES) and `key_phrases`
    (unique, at most MAX_KEY_PHRASES, as ray_jobs.search.key_phrase keeps them so
    `--where phrase=` ignores case). An empty list is left out: Pinecone stores no nulls,
    and a missing field filters the same as an empty one."""
    from ray_jobs.search import key_phrase

    entities = [e for e in row.get("entities") or [] if isinstance(e, dict)]
    out = {
        "entity_types": sorted({str(e["type"]) for e in entities if e.get("type")}),
        "entities": _unique(str(e["text"]) for e in entities if e.get("text"))[:MAX_ENTITIES],
        "key_phrases": _unique(key_phrase(str(p)) for p in row.get("key_phrases") or [])[:MAX_KEY_PHRASES],
    }
    return {k: v for k, v in out.items() if v}


def vector_records(ids: Sequence[str], rows: Sequence[dict[str, Any]], vectors: Sequence[list[float]], *,
                   document_id: str, processing_version: str, s3_key: str) -> list[VectorRecord]:
    """The index's records of a document version: each enriched chunk row (chunks.jsonl
    fields plus its enrichment) with its id and vector, and the metadata of
    docs/architecture.md ("Vector metadata")."""
    from ray_jobs.backends.base import VectorRecord

    return [VectorRecord(i, v, {
        "document_id": document_id, "processing_version": processing_version, "chunk_index": r["chunk_index"],
        "page_start": r["page_start"], "page_end": r["page_end"], "s3_key": s3_key,
        # Only a section has one (DOCX/HTML/Markdown/text); Pinecone stores no nulls.
        **({"locator": r["locator"]} if r.get("locator") else {}),
        **{k: r[k] for k in ("char_start", "char_end") if r.get(k) is not None},
        **enrichment_metadata(r),
        "text": r["text"][:identity.TEXT_IN_INDEX]}) for i, r, v in zip(ids, rows, vectors, strict=True)]


def _unique(values: Iterable[str]) -> list[str]:
    return [v for v in dict.fromkeys(values) if v.strip()]


def embed_document(job: dict[str, Any], callback: TaskCallback | None = None) -> dict[str, Any]:
    from ray_jobs import warm

    registration = job["registration"]
    document_id, version = registration["document_id"], registration["processing_version"]
    bucket = registration["bucket"]
    chunks = jobio.read_jsonl(job["inputs"]["chunks_uri"])

    t0 = time.monotonic()
    enricher = warm.enricher()
    enriched = []
    for start in range(0, len(chunks), ENRICH_BATCH):
        batch = chunks[start:start + ENRICH_BATCH]
        for chunk, extra in zip(batch, enricher.enrich([c["text"] for c in batch]), strict=True):
            enriched.append({**chunk, **extra, "enrichment_backend": enricher.name})
    enriched_uri = jobio.write_jsonl(
        bucket, identity.artifact_key("enriched", document_id, version, "chunks.jsonl"), enriched)
    t_enrich = time.monotonic() - t0

    t1 = time.monotonic()
    embedder = warm.embedder()
    texts_per_call = batch_size()
    vectors: list[list[float]] = []
    tokens, cost, cache_hits = 0, 0.0, 0
    for start in range(0, len(chunks), texts_per_call):
        result = embedder.embed([c["text"] for c in chunks[start:start + texts_per_call]])
        vectors += [as_float32(v) for v in result.vectors]
        tokens += result.tokens
        cost += result.cost_usd
        cache_hits += result.cache_hits
        if callback:
            callback.heartbeat()  # long documents: prove we are alive between batches
    ids = [identity.vector_id(document_id, version, c["chunk_index"]) for c in chunks]
    embeddings_uri = jobio.write_jsonl(
        bucket, identity.artifact_key("embeddings", document_id, version, "vectors.jsonl"),
        ({"id": i, "chunk_index": c["chunk_index"], "embedding_model": embedder.model, "dims": embedder.dims,
          "vector": v} for i, c, v in zip(ids, chunks, vectors, strict=True)))
    t_embed = time.monotonic() - t1

    t2 = time.monotonic()
    records = vector_records(ids, enriched, vectors, document_id=document_id, processing_version=version,
                             s3_key=registration["s3_key"])
    try:
        sync = warm.replace_document_version(records, document_id, version)
    except VectorStoreUnavailable:
        raise
    except (ConnectionError, TimeoutError, OSError) as err:
        raise VectorStoreUnavailable(f"vector store: {err}") from err
    t_load = time.monotonic() - t2
    emit(message="embedded", document_id=document_id, vectors=len(records), model=embedder.model,
         embed_s=round(t_embed, 3), load_s=round(t_load, 3))
    return {
        "enriched_uri": enriched_uri,
        "embeddings_uri": embeddings_uri,
        "vectors": len(records),
        "vectors_removed": int(sync.get("deleted", 0)),
        "embedding_model": embedder.model,
        "dims": embedder.dims,
        "tokens": tokens,
        "cost_usd": round(cost, 8),
        "cache_hits": cache_hits,
        "durations": {"enrich_s": round(t_enrich, 3), "embed_s": round(t_embed, 3), "load_s": round(t_load, 3)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run("embed", embed_document, argv)


if __name__ == "__main__":
    main_exit(main())
