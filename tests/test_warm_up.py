"""A stage service warms each worker process before its first document
(ray_jobs.warm.warm_up): afterwards that process's model, enricher, vector store and parse
zygote are the ones its documents use, not loaded again."""

from __future__ import annotations

import os

import pytest

from ray_jobs import pdf_sandbox, warm


def test_embed_warm_up_loads_what_the_documents_then_reuse(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LANCEDB_URI", str(tmp_path / "vectors"))
    assert warm.warm_up("embed") == os.getpid()
    embedder, enricher, store = warm.embedder(), warm.enricher(), warm.vector_store()
    warm.warm_up("embed")  # a second warm-up (or a document) finds the same objects
    assert (warm.embedder(), warm.enricher(), warm.vector_store()) == (embedder, enricher, store)
    assert len(embedder.embed(["a first document's chunk"]).vectors[0]) == 384


def test_extract_warm_up_starts_the_parse_zygote(monkeypatch):
    monkeypatch.setenv("PDF_CHILD_START", "zygote")
    warm.warm_up("extract")
    zygote = pdf_sandbox._zygote["proc"]
    assert zygote.poll() is None  # running, before any document
    warm.warm_up("extract")
    assert pdf_sandbox._zygote["proc"] is zygote


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        warm.warm_up("load")
