"""bench.peer, the LangChain script the benchmark compares docpipe with: it ingests a real
corpus PDF into LanceDB with HuggingFaceEmbeddings on torch, and its guard replaces a
worker that a file sends over a limit and goes on with the next file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, corpus_file

sys.path.insert(0, str(REPO))
from bench import peer

FOUR_PAGES = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
TWO_PAGES = "pdfplumber/tests/pdfs/2023-06-20-PV.pdf"

# CI installs requirements/dev.txt only; the peer's packages are requirements/bench.txt.
_MISSING = [m for m in ("torch", "langchain_huggingface", "sentence_transformers", "langchain_community")
            if importlib.util.find_spec(m) is None]
needs_peer = pytest.mark.skipif(
    bool(_MISSING), reason=f"the peer needs requirements/bench.txt ({', '.join(_MISSING)} not installed)")


def _vectors(lancedb_dir) -> list[dict]:
    """The rows the script wrote, without each worker's warm-up row."""
    import lancedb

    rows = lancedb.connect(str(lancedb_dir)).open_table("peer").to_arrow().to_pylist()
    return [r for r in rows if r["metadata"]["source"] != "warm-up"]


@needs_peer
def test_the_script_embeds_a_corpus_pdf_with_torch_into_lancedb(tmp_path):
    pdf = corpus_file(FOUR_PAGES)
    out, db = tmp_path / "out.json", tmp_path / "lancedb"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_OFFLINE", None)  # the script sets it itself, before transformers is imported
    subprocess.run([sys.executable, "-m", "bench.peer", "--out", str(out), "--lancedb", str(db), str(pdf)],
                   cwd=REPO, env=env, check=True, timeout=300)

    [w] = json.loads(out.read_text()).values()
    assert (w["embedder"], w["chunk_size"], w["chunk_overlap"], w["restarts"]) == ("torch", 1000, 150, 0)
    assert w["torch_threads"] >= 1
    [doc] = w["docs"]
    assert (doc["status"], doc["pages"]) == ("COMPLETED", 4)
    assert set(doc["durations"]) == {"load", "split", "embed", "store"}

    rows = _vectors(db)
    assert len(rows) == doc["chunks"] > 4  # ~15,700 characters in chunks of at most 1000
    assert all(len(r["text"]) <= 1000 for r in rows)
    assert {r["metadata"]["page"] for r in rows} == {0, 1, 2, 3}
    vectors = np.array([r["vector"] for r in rows], dtype=np.float32)
    assert vectors.shape[1] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # normalize_embeddings=True

    # all-MiniLM-L6-v2 indeed: docpipe's float32 numpy runtime matches sentence-transformers.
    from ray_jobs.backends.local_embedder import LocalEmbedder

    ref = np.array(LocalEmbedder(runtime="numpy").load().embed([r["text"] for r in rows[:3]]).vectors)
    assert np.min(np.sum(ref * vectors[:3], axis=1)) > 0.999


@needs_peer
def test_the_guard_replaces_a_worker_over_a_limit_and_goes_on(tmp_path):
    four, two = str(corpus_file(FOUR_PAGES)), str(corpus_file(TWO_PAGES))
    db = tmp_path / "lancedb"
    sup = peer.Supervisor(str(db), "docpipe")
    sup.start()
    try:
        assert sup.info["embedder"] == "docpipe"
        first_pid = sup.proc.pid

        sup.load_memory_mb = -1e9  # any size is over this limit
        row, restart_s = sup.ingest(four)
        assert (row["status"], row["error_code"], row["file"]) == ("FAILED", "MemoryLimit", "pdflatex-4-pages.pdf")
        assert restart_s > 0 and sup.proc.pid != first_pid

        sup.load_memory_mb, sup.load_timeout = peer.LOAD_MEMORY_MB, 0.0  # no time at all for the load
        row, _ = sup.ingest(four)
        assert (row["status"], row["error_code"]) == ("FAILED", "Timeout")

        sup.load_timeout = peer.LOAD_TIMEOUT_S
        row, restart_s = sup.ingest(two)
        assert (row["status"], row["pages"], restart_s) == ("COMPLETED", 2, 0.0)
        assert sup.restarts == 2
    finally:
        sup.stop()
    # Only the file that completed wrote vectors (besides each worker's warm-up row).
    rows = _vectors(db)
    assert len(rows) == row["chunks"]
    assert {os.path.basename(r["metadata"]["source"]) for r in rows} == {"2023-06-20-PV.pdf"}
