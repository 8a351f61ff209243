"""ray_jobs.pdf on real files of ../shared/corpus (never copied into the repo), plus
unit tests of text normalisation and of the per-page fallback logic.

What each hostile file ends as was measured with pypdf 7.1.0 / pypdfium2 5.15.2; the
assertions pin those outcomes so a library upgrade that changes them is noticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from docpipe import errors
from ray_jobs import pdf_parse, pdf_sandbox
from ray_jobs.pdf import ExtractResult, extract_pdf, has_text, normalise_text, page_ranges

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(),
                                  reason=f"test corpus not found at {CORPUS} (../shared/corpus beside the checkout)")

ROW_KEYS = {"document_id", "processing_version", "page_number", "text", "char_count", "has_text",
            "extractor", "error"}


def corpus_file(rel: str) -> str:
    path = CORPUS / rel
    if not path.exists():
        pytest.skip(f"{rel} missing from the corpus")
    return str(path)


def extract(rel: str, **kw) -> ExtractResult:
    return extract_pdf(corpus_file(rel), document_id="doc1", processing_version="v1-test", **kw)


def assert_consistent(res: ExtractResult) -> None:
    assert res.page_count == len(res.pages)
    assert [r["page_number"] for r in res.pages] == list(range(1, res.page_count + 1))
    assert res.pages_with_text + res.pages_without_text == res.page_count
    assert res.page_errors == sum(1 for r in res.pages if r["error"])
    for row in res.pages:
        assert set(row) == ROW_KEYS
        assert row["document_id"] == "doc1" and row["processing_version"] == "v1-test"
        assert row["char_count"] == len(row["text"])
        assert row["has_text"] == has_text(row["text"])
        assert row["extractor"] in ("pdfium", "pypdf")
        assert row["text"] == normalise_text(row["text"])


# --- normalise_text / has_text ----------------------------------------------------------


def test_normalise_replaces_ligatures_with_letters():
    assert normalise_text("e\ufb03cient \ufb01le \ufb02ow") == "efficient file flow"


def test_normalise_joins_word_hyphenated_across_line_end():
    assert normalise_text("infor-\nmation retrieval") == "information retrieval"
    assert normalise_text("infor- \r\n  mation") == "information"


def test_normalise_keeps_hyphen_before_capitalised_or_numeric_next_line():
    assert normalise_text("Just-in-\nTime") == "Just-in-\nTime"
    assert normalise_text("pages 10-\n12") == "pages 10-\n12"


def test_normalise_removes_soft_hyphens_and_pdfium_line_end_hyphen_marker():
    assert normalise_text("infor\u00admation") == "information"
    assert normalise_text("infor\u00ad\nmation") == "information"
    assert normalise_text("com\ufffepile") == "compile"  # pdfium's marker for a broken word


def test_normalise_reads_pdfiums_u0002_line_end_hyphen_like_a_hyphen_and_break():
    # Seen in ../shared/corpus multi-column.pdf: "ef\ufffeficient", "Lucene\ufffeBM25" (U+0002
    # from get_text_bounded). Dropping every marker made "LuceneBM25", which a keyword
    # search for BM25 cannot find.
    assert normalise_text("relies on ef\x02ficient passage") == "relies on efficient passage"
    assert normalise_text("a strong Lucene\x02BM25 system, top\x0220") == "a strong Lucene-BM25 system, top-20"
    assert normalise_text("ends\x02") == "ends"
    assert normalise_text("a Lucene\ufffeBM25 run, ef\ufffeficient") == "a Lucene-BM25 run, efficient"


def test_normalise_removes_control_characters_but_keeps_newline_and_tab():
    assert normalise_text("a\x00b\x07c\td\ne\x1b") == "abc\td\ne"
    assert normalise_text("zero\u200bwidth\ufeff") == "zerowidth"


def test_normalise_turns_vertical_separators_into_line_breaks():
    assert normalise_text("one\x0ctwo\u2028three") == "one\ntwo\nthree"


def test_normalise_collapses_spaces_and_strips_trailing_spaces_per_line():
    assert normalise_text("a    b  \nc \t\n d") == "a b\nc\n d"


def test_normalise_converts_crlf_and_cr_to_newline():
    assert normalise_text("a\r\nb\rc") == "a\nb\nc"


def test_normalise_keeps_at_most_two_consecutive_newlines():
    assert normalise_text("a\n\n\n\n\nb\n \n \n\nc") == "a\n\nb\n\nc"


def test_normalise_applies_nfkc_to_compatibility_forms():
    assert normalise_text("ＡＢＣ\u00a0１２３") == "ABC 123"  # full-width, no-break space


def test_normalise_strips_the_page_and_handles_empty_input():
    assert normalise_text("  \n\n text \n\n ") == "text"
    assert normalise_text("") == ""
    assert normalise_text(" \n\t ") == ""


def test_normalise_is_idempotent():
    samples = ["infor-\nmation \ufb01le\r\n\r\n\r\n  x  ", "a\u00ad\nb \ufffe c\x0c d", "Just-in-\nTime  \n\n\n"]
    for s in samples:
        once = normalise_text(s)
        assert normalise_text(once) == once


def test_normalise_keeps_non_latin_scripts_and_joiners():
    assert normalise_text("中文文本 العربية") == "中文文本 العربية"
    assert normalise_text("می\u200cخواهم") == "می\u200cخواهم"  # ZWNJ is meaningful in Persian


def test_has_text_needs_three_non_space_characters():
    assert not has_text("")
    assert not has_text(" a \n b ")
    assert has_text("a b c")
    assert has_text("abc")


# --- per-page fallback logic (in-process, monkeypatched extractors) --------------------

FOUR_PAGES = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"


@needs_corpus
def test_page_that_pdfium_fails_is_retried_with_pypdf(monkeypatch):
    real = pdf_parse._pdfium_page_text

    def flaky(doc, index):
        if index == 1:
            raise RuntimeError("simulated pdfium page failure")
        return real(doc, index)

    monkeypatch.setattr(pdf_parse, "_pdfium_page_text", flaky)
    out = pdf_parse.extract_pages(corpus_file(FOUR_PAGES), "auto")
    extractors = [p["extractor"] for p in out["pages"]]
    assert extractors == ["pdfium", "pypdf", "pdfium", "pdfium"]
    assert out["pages"][1]["error"] is None and has_text(out["pages"][1]["text"])


@needs_corpus
def test_page_without_text_in_pdfium_is_retried_with_pypdf(monkeypatch):
    real = pdf_parse._pdfium_page_text
    monkeypatch.setattr(pdf_parse, "_pdfium_page_text", lambda doc, i: "" if i == 2 else real(doc, i))
    out = pdf_parse.extract_pages(corpus_file(FOUR_PAGES), "auto")
    assert out["pages"][2]["extractor"] == "pypdf" and has_text(out["pages"][2]["text"])


@needs_corpus
def test_page_failing_in_both_libraries_gets_an_error_and_others_stand(monkeypatch):
    def broken(doc, index):
        raise RuntimeError("simulated pdfium failure")

    def broken_pypdf(reader, index):
        raise ValueError("simulated pypdf failure")

    real = pdf_parse._pdfium_page_text
    monkeypatch.setattr(pdf_parse, "_pdfium_page_text", lambda d, i: broken(d, i) if i == 0 else real(d, i))
    monkeypatch.setattr(pdf_parse, "_pypdf_page_text", broken_pypdf)
    out = pdf_parse.extract_pages(corpus_file(FOUR_PAGES), "auto")
    first = out["pages"][0]
    assert first["text"] == "" and "simulated pdfium failure" in first["error"]
    assert "simulated pypdf failure" in first["error"]
    assert all(p["error"] is None and has_text(p["text"]) for p in out["pages"][1:])


@needs_corpus
def test_empty_pdfium_page_keeps_pdfium_result_when_pypdf_also_finds_nothing(monkeypatch):
    monkeypatch.setattr(pdf_parse, "_pdfium_page_text", lambda doc, i: "")
    monkeypatch.setattr(pdf_parse, "_pypdf_page_text", lambda reader, i: "  ")
    out = pdf_parse.extract_pages(corpus_file(FOUR_PAGES), "auto")
    assert [(p["extractor"], p["text"], p["error"]) for p in out["pages"]] == [("pdfium", "", None)] * 4


# --- how a dying or hanging child is classified (the child's code is swapped) -----------

REQUEST = {"path": "unused.pdf", "backend": "auto", "password": "", "first": 0, "last": None,
           "probe_threshold": None, "max_memory_mb": 256}


def test_child_that_hangs_is_killed_and_raises_pdf_timeout(monkeypatch):
    monkeypatch.setattr(pdf_sandbox, "CHILD_CODE", "import time; time.sleep(600)")
    with pytest.raises(errors.PdfTimeout):
        pdf_sandbox.run_child(REQUEST, timeout_s=1)


def test_child_that_segfaults_is_reported_as_a_crash(monkeypatch):
    monkeypatch.setattr(pdf_sandbox, "CHILD_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(pdf_sandbox.ChildCrashed):
        pdf_sandbox.run_child(REQUEST, timeout_s=30)


def test_child_that_aborts_silently_counts_as_out_of_memory(monkeypatch):
    # pdfium's reaction to a failed allocation under RLIMIT_AS is a bare abort().
    monkeypatch.setattr(pdf_sandbox, "CHILD_CODE", "import os; os.abort()")
    with pytest.raises(errors.TooLarge):
        pdf_sandbox.run_child(REQUEST, timeout_s=30)


def test_child_dying_with_memory_error_raises_too_large(monkeypatch):
    monkeypatch.setattr(pdf_sandbox, "CHILD_CODE", "raise MemoryError")
    with pytest.raises(errors.TooLarge):
        pdf_sandbox.run_child(REQUEST, timeout_s=30)


def test_crashed_pdfium_child_is_retried_with_pypdf(monkeypatch):
    calls = []

    def fake_run_child(request, timeout_s):
        calls.append(request["backend"])
        if request["backend"] == "auto":
            raise pdf_sandbox.ChildCrashed("parser exited with -11")
        return {"ok": True, "page_count": 1, "backend": "pypdf",
                "pages": [{"page_number": 1, "text": "rescued", "extractor": "pypdf", "error": None}]}

    monkeypatch.setattr(pdf_sandbox, "run_child", fake_run_child)
    out = pdf_sandbox.extract_in_child("x.pdf", "auto", "", 0, None, None, 30, 256)
    assert calls == ["auto", "pypdf"] and out["pages"][0]["text"] == "rescued"


def test_crash_in_both_libraries_raises_pdf_malformed(monkeypatch):
    def crash(request, timeout_s):
        raise pdf_sandbox.ChildCrashed("parser exited with -11")

    monkeypatch.setattr(pdf_sandbox, "run_child", crash)
    with pytest.raises(errors.PdfMalformed):
        pdf_sandbox.extract_in_child("x.pdf", "auto", "", 0, None, None, 30, 256)


def test_page_ranges_cover_every_page_once_in_order():
    assert page_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert page_ranges(619, 4)[-1][1] == 619
    assert page_ranges(2, 8) == [(0, 1), (1, 2)]


# --- real corpus files --------------------------------------------------------------------


@needs_corpus
def test_multi_page_document_extracts_every_page_with_text():
    res = extract("pdfplumber/tests/pdfs/issue-71-duplicate-chars-2.pdf")  # 20-page textbook chapter
    assert_consistent(res)
    assert res.page_count == 20
    assert res.pages_with_text == 20 and res.page_errors == 0
    assert res.extractor == "pdfium" and res.stats == {"pdfium": 20}
    assert res.ranges == 1 and res.seconds > 0


@needs_corpus
def test_two_column_paper_extracts_both_columns_with_ligatures_resolved():
    res = extract("pdf.js/test/pdfs/tracemonkey.pdf")  # PLDI'09, 14 pages, two columns
    assert_consistent(res)
    assert res.page_count == 14 and res.pages_with_text == 14
    first = res.pages[0]["text"]
    assert "Trace-based Just-in-Time Type Specialization" in first
    assert "Abstract" in first and "Introduction" in first  # left column
    assert "compile" in first  # "com\ufffepile" across a line end, joined
    assert not any(ch in r["text"] for r in res.pages for ch in "\ufb01\ufb02\ufffe\u00ad\r")


@needs_corpus
@pytest.mark.parametrize("rel,pages", [
    ("unstructured/example-docs/pdf/loremipsum-flat.pdf", 1),
    ("unstructured/label-party/holistic-src/M_Romney_1040_2011-p15-p16.pdf", 2),
])
def test_scanned_document_without_text_layer_returns_pages_without_text(rel, pages):
    res = extract(rel)  # PdfNoText is the stage's decision, not the extractor's
    assert_consistent(res)
    assert res.page_count == pages
    assert res.pages_with_text == 0 and res.page_errors == 0


@needs_corpus
def test_encrypted_file_with_empty_user_password_opens():
    res = extract("unstructured/example-docs/pdf/copy-protected.pdf")
    assert_consistent(res)
    assert res.page_count == 2 and res.pages_with_text == 2


@needs_corpus
@pytest.mark.parametrize("rel", [
    "unstructured/example-docs/pdf/password.pdf",
    "pdfplumber/tests/pdfs/password-example.pdf",
    "qpdf/qpdf/qtest/qpdf/bad-encryption-length.pdf",
])
def test_password_protected_file_raises_pdf_encrypted(rel):
    with pytest.raises(errors.PdfEncrypted):
        extract(rel)


@needs_corpus
def test_password_protected_file_raises_pdf_encrypted_with_pypdf_backend():
    with pytest.raises(errors.PdfEncrypted):
        extract("unstructured/example-docs/pdf/password.pdf", backend="pypdf")


@needs_corpus
@pytest.mark.parametrize("rel", [
    "qpdf/qpdf/qtest/qpdf/issue-141a.pdf",  # 82-byte fuzz file: neither library opens it
    "qpdf/fuzz/qpdf_extra/5109284021272576.fuzz",
    "py-pdf-sample-files/017-unreadable-meta-data/unreadablemetadata.pdf",
    "pdf.js/test/pdfs/poppler-395-0-fuzzed.pdf",  # pdfium cannot open; pypdf opens, its only page fails
    "pdf.js/test/pdfs/poppler-937-0-fuzzed.pdf",  # pdfium opens, its only page fails; pypdf cannot open
])
def test_unreadable_fuzzed_file_raises_pdf_malformed(rel):
    with pytest.raises(errors.PdfMalformed):
        extract(rel)


@needs_corpus
def test_fuzzed_file_pdfium_reads_gives_a_result_without_text():
    # pypdf cannot read its trailer; pdfium opens it and finds one empty page.
    res = extract("pdf.js/test/pdfs/PDFBOX-3148-2-fuzzed.pdf")
    assert_consistent(res)
    assert (res.page_count, res.pages_with_text, res.page_errors) == (1, 0, 0)


@needs_corpus
def test_document_pdfium_cannot_open_falls_back_to_pypdf_for_the_whole_document():
    res = extract("qpdf/qpdf/qtest/qpdf/issue-99.pdf")
    assert_consistent(res)
    assert res.page_count == 1 and res.extractor == "pypdf" and res.stats == {"pypdf": 1}


@needs_corpus
def test_zero_byte_file_raises_empty_document():
    with pytest.raises(errors.EmptyDocument):
        extract("pdfplumber/tests/pdfs/empty.pdf")


@needs_corpus
def test_page_tree_loop_ends_with_a_partial_result_and_a_page_error():
    # pdfium lists 2 pages and fails the looping one; the per-page retry with pypdf fails
    # too (it detects the cycle), so that page carries both errors.
    res = extract("pdf.js/test/pdfs/Pages-tree-refs.pdf")
    assert_consistent(res)
    assert res.page_count == 2 and res.pages_with_text == 1 and res.page_errors == 1
    assert "Pages loop" in res.pages[0]["text"]
    error = res.pages[1]["error"]
    assert error.startswith("pdfium:") and "pypdf:" in error and "cyclic" in error


@needs_corpus
def test_xref_loop_file_ends_with_all_pages():
    res = extract("qpdf/qpdf/qtest/qpdf/append-xref-loop.pdf")
    assert res.page_count == 30 and res.page_errors == 0


@needs_corpus
def test_jbig2_bomb_pdfium_reads_text_without_decoding_the_image():
    # Text extraction never decodes the 100000x100000 JBIG2 images, so pdfium returns
    # the page's text layer quickly inside its memory limit.
    res = extract("pdf.js/test/pdfs/bomb_giant.pdf")
    assert_consistent(res)
    assert res.page_count == 1 and "GIANT JBIG2 BOMB" in res.pages[0]["text"]


@needs_corpus
def test_jbig2_bomb_with_pypdf_ends_in_a_named_error_without_harming_the_caller():
    # pypdf needs the jbig2dec binary for these streams: without it the only page fails
    # (PdfMalformed); with it the decompression hits the memory limit (TooLarge).
    with pytest.raises((errors.PdfMalformed, errors.TooLarge, errors.PdfTimeout)):
        extract("pdf.js/test/pdfs/bomb_giant.pdf", backend="pypdf", max_memory_mb=512)


@needs_corpus
def test_parser_over_its_memory_limit_raises_too_large():
    # 32 MB of address space is less than the interpreter plus pdfium need, so the child
    # fails wherever it first allocates: that must map to TooLarge, never crash us.
    with pytest.raises(errors.TooLarge):
        extract("pdf.js/test/pdfs/tracemonkey.pdf", max_memory_mb=32)


@needs_corpus
def test_parser_over_its_time_limit_is_killed_and_raises_pdf_timeout():
    # pypdf needs ~14 s of CPU for this 619-page file; the child is killed at the deadline.
    with pytest.raises(errors.PdfTimeout):
        extract("unstructured/example-docs/pdf/DA-619p.pdf", backend="pypdf", timeout_s=1.5)


@needs_corpus
def test_pypdf_only_backend_extracts_every_page_with_pypdf():
    res = extract("pdf.js/test/pdfs/tracemonkey.pdf", backend="pypdf")
    assert_consistent(res)
    assert res.page_count == 14 and res.pages_with_text == 14
    assert res.extractor == "pypdf" and res.stats == {"pypdf": 14}


@needs_corpus
def test_non_latin_text_survives_extraction():
    res = extract("pdfplumber/tests/pdfs/issue-336-example.pdf")  # Chinese standard
    assert res.pages_with_text == 1
    assert sum(1 for ch in res.pages[0]["text"] if "\u4e00" <= ch <= "\u9fff") > 100


@needs_corpus
def test_extraction_is_deterministic():
    a = extract("unstructured/example-docs/pdf/reliance.pdf")
    b = extract("unstructured/example-docs/pdf/reliance.pdf")
    assert a.pages == b.pages


def test_unknown_backend_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        extract_pdf(str(tmp_path / "x.pdf"), document_id="d", processing_version="v", backend="pymupdf")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        extract_pdf(str(tmp_path / "absent.pdf"), document_id="d", processing_version="v")


def test_five_byte_pdf_header_raises_pdf_malformed(tmp_path):
    path = tmp_path / "five.pdf"  # generated here: the corpus has no 5-byte file
    path.write_bytes(b"%PDF-")
    with pytest.raises(errors.PdfMalformed):
        extract_pdf(str(path), document_id="d", processing_version="v")


# --- CLI --------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_jobs.pdf", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_help_exits_zero():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--backend" in proc.stdout


@needs_corpus
def test_cli_json_prints_pages_and_summary():
    proc = run_cli(corpus_file(FOUR_PAGES), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["summary"]["page_count"] == 4 and len(out["pages"]) == 4
    assert set(out["pages"][0]) == ROW_KEYS


@needs_corpus
def test_cli_failure_exits_one_with_a_line_naming_the_error_code():
    proc = run_cli(corpus_file("unstructured/example-docs/pdf/password.pdf"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: PdfEncrypted:")


# --- parallel extraction with a real Ray (keep last: Ray stays up until module end) -------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.ray
@needs_corpus
def test_parallel_ray_extraction_equals_sequential_on_many_page_file(ray_cluster):
    rel = "unstructured/example-docs/pdf/pdf2image-memory-error-test-400p.pdf"  # 400 pages
    sequential = extract(rel, parallel_threshold_pages=10**9)  # never split
    parallel = extract(rel)  # default threshold: 64 pages
    assert sequential.ranges == 1 and parallel.ranges > 1
    assert parallel.pages == sequential.pages
    assert parallel.page_count == 400 and parallel.summary() | {"seconds": 0, "ranges": 0} == \
        sequential.summary() | {"seconds": 0, "ranges": 0}


@pytest.mark.ray
@needs_corpus
def test_parallel_ray_extraction_with_pypdf_backend_equals_sequential(ray_cluster):
    rel = "pdfplumber/tests/pdfs/chelsea_pdta.pdf"  # 65 pages
    sequential = extract(rel, backend="pypdf", parallel_threshold_pages=10**9)
    parallel = extract(rel, backend="pypdf", parallel_threshold_pages=16)
    assert parallel.ranges > 1 and parallel.pages == sequential.pages


@pytest.mark.ray
@needs_corpus
def test_errors_keep_their_names_when_ray_is_running(ray_cluster):
    with pytest.raises(errors.PdfEncrypted):  # raised by the probe, before any split
        extract("unstructured/example-docs/pdf/password.pdf", parallel_threshold_pages=0)
    # The probe opens the 619 pages quickly; the pypdf ranges need ~14 s of CPU in all,
    # so the range children are killed and their Ray tasks report PdfTimeout as data.
    with pytest.raises(errors.PdfTimeout):
        extract("unstructured/example-docs/pdf/DA-619p.pdf", backend="pypdf", timeout_s=3)
