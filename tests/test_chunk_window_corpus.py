"""No chunk of any corpus document exceeds the embedding model's window (issue #12).

Every document of ../shared/corpus that docpipe reads (PDFs, with OCR off, as the extract
stage reads them, and the Markdown/text files) is extracted once, then chunked by the
extract stage's own `chunk` with the default settings, and each chunk is measured by the
model's tokenizer as the embedder reads it:
- local all-MiniLM-L6-v2: [CLS] + chunk + [SEP] within max_seq_length (256), so the
  embedder truncates nothing;
- EMBEDDING_BACKEND=openai with CHUNK_MAX_TOKENS=8191: within 8191 cl100k_base tokens.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CORPUS

from docpipe import doctypes, errors
from ray_jobs.chunking import document_text
from ray_jobs.extract import chunk, extract_any
from ray_jobs.settings import StageSettings
from ray_jobs.tokens import count_tokens

pytestmark = pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason=f"corpus not found at {CORPUS}")


def _extract(path: Path) -> tuple[str, list[dict] | None]:
    rel = str(path.relative_to(CORPUS))
    settings = StageSettings.from_env({"OCR_BACKEND": "none"})
    try:
        result, _ = extract_any(str(path), doctypes.document_type(path.name) or "pdf", "doc", "v1", settings)
    except errors.DocpipeError:  # encrypted, malformed, empty: the corpus has a few on purpose
        return rel, None
    return rel, result.pages


@pytest.fixture(scope="module")
def corpus_pages() -> dict[str, list[dict]]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and doctypes.document_type(p.name))
    # Each PDF parses in a child process of its own: two threads keep both cores busy.
    with ThreadPoolExecutor(2) as pool:
        extracted = dict(pool.map(_extract, files))
    docs = {rel: pages for rel, pages in extracted.items() if pages and document_text(pages).strip()}
    assert sum(rel.endswith(".pdf") for rel in docs) >= 60, sorted(extracted)
    return docs


def _model_dir() -> Path:
    from ray_jobs.backends.local_embedder import default_model_dir

    return default_model_dir()


def test_no_corpus_chunk_is_truncated_by_the_local_model(corpus_pages):
    from tokenizers import Tokenizer

    # The embedder's tokenizer, special tokens included, without its truncation.
    tok = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    max_seq_length = json.loads((_model_dir() / "sentence_bert_config.json").read_text())["max_seq_length"]
    settings = StageSettings.from_env({})
    assert settings.embedding_backend == "local"
    total, longest = 0, 0
    for rel, pages in corpus_pages.items():
        chunks = chunk(pages, "doc", "v1", settings)
        assert chunks, rel
        lengths = [len(e.ids) for e in tok.encode_batch_fast([c["text"] for c in chunks])]
        over = [(c["chunk_index"], n) for c, n in zip(chunks, lengths, strict=True) if n > max_seq_length]
        assert not over, f"{rel}: chunks over {max_seq_length} tokens with [CLS]/[SEP]: {over[:5]}"
        # token_count is the model's count without the two special tokens.
        assert [c["token_count"] + 2 for c in chunks] == lengths, rel
        total += len(chunks)
        longest = max(longest, *lengths)
    assert total > 2000
    assert longest == max_seq_length  # chunks use the window, not a fraction of it


def test_no_corpus_chunk_exceeds_the_openai_window(corpus_pages):
    settings = StageSettings.from_env({"EMBEDDING_BACKEND": "openai", "CHUNK_MAX_TOKENS": "8191"})
    total = 0
    for rel, pages in corpus_pages.items():
        chunks = chunk(pages, "doc", "v1", settings)
        counts = [count_tokens(c["text"]) for c in chunks]
        assert max(counts) <= 8191, rel
        assert [c["token_count"] for c in chunks] == counts, rel
        total += len(chunks)
    # Long documents do get windows of thousands of tokens, not small chunks.
    assert total < 400
