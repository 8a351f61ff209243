"""ray_jobs.chunking: bounds, offsets, page spans, overlap, determinism, validation."""

from __future__ import annotations

import hashlib
from itertools import pairwise
from pathlib import Path

import pytest

from ray_jobs.chunking import chunk_pages, document_text
from ray_jobs.tokens import count_tokens

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

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
    for max_tokens, overlap in [(400, 50), (100, 20), (30, 5), (8, 0)]:
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


def test_chunk_spanning_a_page_break_names_both_pages():
    pages = [page(1, "Alpha sentence one. Alpha sentence two."), page(2, "Beta sentence one.")]
    [only] = chunks_of(pages, max_tokens=400, overlap_tokens=0)
    assert (only["page_start"], only["page_end"]) == (1, 2)
    assert only["text"] == "Alpha sentence one. Alpha sentence two.\n\nBeta sentence one."


def test_empty_pages_keep_offsets_and_page_numbers_consistent():
    pages = [page(1, "First page text here."), page(2, ""), page(3, "x"), page(4, "Fourth page text.")]
    doc = document_text(pages)
    assert doc == "First page text here.\n\n\n\nx\n\nFourth page text."
    chunks = chunks_of(pages, max_tokens=5, overlap_tokens=0)
    assert_valid(pages, chunks, 5)
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


def test_consecutive_chunks_overlap_by_about_overlap_tokens(three_pages):
    chunks = chunks_of(three_pages, max_tokens=120, overlap_tokens=30)
    doc = document_text(three_pages)
    for prev, nxt in pairwise(chunks):
        assert nxt["char_start"] < prev["char_end"]  # they share text
        shared = doc[nxt["char_start"]:prev["char_end"]].strip()
        assert 0 < count_tokens(shared) <= 30 + 2  # whole sentences within the budget
    assert chunks[1]["char_start"] > chunks[0]["char_start"]


def test_zero_overlap_gives_disjoint_chunks(three_pages):
    chunks = chunks_of(three_pages, max_tokens=120, overlap_tokens=0)
    assert all(nxt["char_start"] >= prev["char_end"] for prev, nxt in pairwise(chunks))


def test_chunks_prefer_to_end_at_sentence_ends(three_pages):
    chunks = chunks_of(three_pages, max_tokens=120, overlap_tokens=20)
    assert all(c["text"].endswith(".") for c in chunks)


def test_token_counts_match_tokens_count_tokens(three_pages):
    for c in chunks_of(three_pages):
        assert c["token_count"] == count_tokens(c["text"])


def test_long_text_without_breaks_is_split_into_words_then_token_windows():
    words = " ".join(f"word{i}" for i in range(600))
    blob = "x" * 5000  # one "word" far over the limit: token windows
    cjk = "数据处理管道" * 400  # no spaces, no sentence ends
    pages = [page(1, words), page(2, blob), page(3, cjk)]
    chunks = chunks_of(pages, max_tokens=50, overlap_tokens=10)
    assert_valid(pages, chunks, 50)
    assert {c["page_start"] for c in chunks} == {1, 2, 3}


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
    chunks = chunks_of(res.pages, max_tokens=400, overlap_tokens=50)
    assert_valid(res.pages, chunks, 400)
    assert chunks[0]["page_start"] == 1 and chunks[-1]["page_end"] == 14
    assert len(chunks) > 20
    # Every page's text is covered by a chunk that names that page.
    for p in res.pages:
        assert any(c["page_start"] <= p["page_number"] <= c["page_end"] for c in chunks)


def test_sections_are_chunked_apart_and_each_chunk_names_its_section():
    pages = [{"page_number": 1, "text": "Setup\n\nInstall the agent first.", "locator": "Guide › Setup"},
             {"page_number": 2, "text": "Usage\n\nRun the agent daily.", "locator": "Guide › Usage"}]
    # Both sections would fit in one 400-token chunk; they still get one each.
    chunks = chunk_pages(pages, document_id="doc1", processing_version="v1-test")
    assert [(c["text"], c["locator"], c["page_start"], c["page_end"]) for c in chunks] == [
        ("Setup\n\nInstall the agent first.", "Guide › Setup", 1, 1),
        ("Usage\n\nRun the agent daily.", "Guide › Usage", 2, 2)]
    assert_valid(pages, chunks, 400)
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
