"""bench.ocr without running OCR over the corpus: how outcomes are classified, the speed
and cost arithmetic, the target check, the tables, the CLI, the per-file guard, and one
real OCR measurement of one small corpus page."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO, corpus_file

from docpipe import costs, errors
from ray_jobs.ocr import OcrOutcome
from ray_jobs.pdf import ExtractResult

sys.path.insert(0, str(REPO))
from bench import ocr as bench_ocr

TABLE_SCAN = "unstructured/example-docs/pdf/single_table.pdf"


def _result(*has_text: bool) -> ExtractResult:
    rows = [{"page_number": i + 1, "text": "words here" if t else "", "has_text": t, "extractor": "pdfium"}
            for i, t in enumerate(has_text)]
    with_text = sum(has_text)
    return ExtractResult(pages=rows, page_count=len(rows), pages_with_text=with_text,
                         pages_without_text=len(rows) - with_text, page_errors=0, extractor="pdfium", seconds=0.1)


def _ocr(backend: str, attempted: int = 0, recovered: int = 0) -> OcrOutcome:
    engine = "" if backend == "none" else "rapidocr"
    return OcrOutcome(backend, engine, attempted, recovered, 0, 0, 0, 0.0, 1.0,
                      f"rapidocr read {recovered} of {attempted} pages without a text layer")


def test_outcomes_are_classified_as_the_pipeline_records_them():
    assert bench_ocr.outcome(_result(True, True), _ocr("local"), None)["status"] == "COMPLETED"
    partial = bench_ocr.outcome(_result(True, False), _ocr("local", 1, 0), None)
    assert (partial["status"], bench_ocr.label(partial)) == ("PARTIAL", "PARTIAL")

    off = bench_ocr.outcome(_result(False, False), _ocr("none"), None)
    assert bench_ocr.label(off) == "FAILED PdfNoText"
    assert "OCR_BACKEND=none" in off["message"]
    nothing_read = bench_ocr.outcome(_result(False), _ocr("local", 1, 0), None)
    assert bench_ocr.label(nothing_read) == "FAILED PdfNoText"
    assert "rapidocr" in nothing_read["message"]

    locked = bench_ocr.outcome(None, None, errors.PdfEncrypted("needs a password"))
    assert (bench_ocr.label(locked), locked["message"]) == ("FAILED PdfEncrypted", "needs a password")
    crash = bench_ocr.outcome(None, None, RuntimeError("boom"))
    assert (bench_ocr.label(crash), crash["message"]) == ("FAILED StageFailed", "RuntimeError: boom")


def test_speed_and_cost_arithmetic():
    rows = [{"page": 1, "error": None, "cpu_s": 1.0, "wall_s": 2.0, "chars": 0, "has_text": False, "confidence": 0.0},
            {"page": 2, "error": None, "cpu_s": 2.0, "wall_s": 3.0, "chars": 100, "has_text": True, "confidence": 0.9},
            {"page": 3, "error": None, "cpu_s": 3.0, "wall_s": 4.0, "chars": 300, "has_text": True, "confidence": 0.7},
            {"page": 4, "error": "render: over the memory limit of 2048 MB"}]
    price = 0.00002
    s = bench_ocr.engine_summary(rows, price)
    assert (s["pages"], s["pages_measured"], s["page_errors"], s["pages_read"], s["chars"]) == (4, 3, 1, 2, 400)
    assert s["pages_per_s_per_core"] == 0.5  # 3 pages in 6 CPU seconds
    assert s["cpu_s_per_page"] == 2.0
    assert s["cpu_s_per_page_read"] == 2.5
    assert (s["cpu_s_p50"], s["cpu_s_p95"]) == (2.0, 2.9)
    assert (s["wall_s_p50"], s["wall_s_p95"]) == (3.0, 3.9)
    assert s["mean_confidence"] == 0.8
    assert s["usd_per_page"] == pytest.approx(2.0 * price)
    assert s["usd_per_1000_pages"] == pytest.approx(2000 * price)
    assert s["usd_per_page_read"] == pytest.approx(2.5 * price)

    t = bench_ocr.textract_summary(costs.TEXTRACT_PER_PAGE)
    assert t["usd_per_page"] == 0.0015
    assert t["usd_per_1000_pages"] == pytest.approx(1.5)
    # A local vCPU-second is the Fargate vCPU price plus its 4 GB share of memory, per second.
    assert costs.vcpu_second_usd() == pytest.approx((0.04048 + 4 * 0.004445) / 3600)


def test_real_words_and_phrase_quality():
    assert bench_ocr.real_chars("Lorem ipsum, 2011") == 14
    assert bench_ocr.real_chars(". | ' - a b") == 0
    q = bench_ocr.quality("LOREM  ipsum\ndolor sit", ["lorem ipsum dolor", "amet"])
    assert (q["found"], q["of"], q["fraction"], q["missing"]) == (1, 2, 0.5, ["amet"])


def _record(before: str, after: dict, text_layer: bool = False, rapid=(), tess=(), **extra):
    return {"before": {"status": before, "code": None}, "after": after, "text_layer_real": text_layer,
            "engines_real": {"rapidocr": list(rapid), "tesseract": list(tess)},
            "tesseract_pages": dict.fromkeys(tess, "Total due 42"), **extra}


def test_target_check():
    ok = {"status": "PARTIAL", "code": None, "message": "", "real_pages": 1}
    no_text = {"status": "FAILED", "code": "PdfNoText", "message": "none of the 1 pages has a text layer, ..."}
    met = bench_ocr.target_check({
        "scan.pdf": _record("FAILED", ok, rapid=[1], tess=[1]),
        "blank.pdf": _record("FAILED", no_text),
        "text.pdf": _record("COMPLETED", {**ok, "status": "COMPLETED"}, text_layer=True),
    })
    assert met["met"]
    assert sorted(met["recoverable"]) == ["scan.pdf", "text.pdf"]
    assert met["not_recoverable"] == ["blank.pdf"]

    missed = bench_ocr.target_check({
        "faint.pdf": _record("FAILED", no_text, tess=[2]),  # only tesseract reads it
        "hang.pdf": _record("FAILED", bench_ocr.guarded_outcome({"bench_timeout": 5.0})),
        "lost.pdf": _record("FAILED", ok, rapid=[1], ocr_pages_unsearchable=[1]),
    })
    assert not missed["met"]
    assert missed["not_indexed"] == ["faint.pdf"]
    assert missed["tesseract_only"] == [{"file": "faint.pdf", "pages": [2], "tesseract_read": {2: "Total due 42"}}]
    assert missed["failed_without_reason"] == ["hang.pdf"]
    assert missed["ocr_text_not_searchable"] == ["lost.pdf"]


def test_markdown_names_missing_engines_and_textract_price():
    r = {"meta": {"ocr_dpi": 150, "ocr_min_confidence": 0.5, "engines_not_installed": ["tesseract"],
                  "vcpu_second_usd": costs.vcpu_second_usd(), "prices_as_of": costs.PRICES_AS_OF,
                  "machine": {"cores": 2, "cpu": "test", "loadavg_at_start": ["0", "0", "0"]},
                  "loadavg_at_end": ["0", "0", "0"], "timings": {"total_s": 1.0}},
         "ocr_pages": {TABLE_SCAN: [1]},
         "engines": {"rapidocr": bench_ocr.engine_summary(
             [{"page": 1, "error": None, "cpu_s": 4.0, "wall_s": 5.0, "chars": 10, "has_text": True, "confidence": 0.9}],
             costs.vcpu_second_usd()), "textract": bench_ocr.textract_summary(costs.TEXTRACT_PER_PAGE)},
         "quality": {}}
    lines = bench_ocr.markdown(r).splitlines()
    assert any(line.startswith("| tesseract | not installed |") for line in lines)
    assert any(line.startswith("| textract |") and "$0.0015" in line and "$1.5" in line for line in lines)
    rapid = next(line for line in lines if line.startswith("| rapidocr |"))
    assert "| 0.250 |" in rapid  # pages per second per core at 4 CPU s a page


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_ocr.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m bench.ocr")
    assert "--quick" in out and "--no-corpus" in out
    with pytest.raises(SystemExit) as exit_info:
        bench_ocr.parse(["--engines", "textract"])
    assert exit_info.value.code == 2


def test_guard_kills_a_step_past_its_timeout_and_the_next_step_runs():
    corpus_file(TABLE_SCAN)
    worker = bench_ocr.Worker()
    try:
        answer = worker.call("extract", 0.05, rel=TABLE_SCAN, env={"OCR_BACKEND": "none"})
        assert bench_ocr.label(bench_ocr.guarded_outcome(answer)) == "FAILED BenchTimeout"
        assert worker.proc is None  # killed, with whatever it had started
        again = worker.call("extract", 120, rel=TABLE_SCAN, env={"OCR_BACKEND": "none"})
        assert bench_ocr.label(again) == "FAILED PdfNoText"
        assert again["no_text_pages"] == [1]
    finally:
        worker.close()


def test_one_page_is_measured_and_read(monkeypatch):
    corpus_file(TABLE_SCAN)
    monkeypatch.setenv("DOCPIPE_NO_RAY", "1")
    answer = bench_ocr.step_speed(TABLE_SCAN, [1], "rapidocr", {})
    (row,) = answer["pages"]
    assert row["error"] is None and row["has_text"]
    assert row["cpu_s"] == pytest.approx(row["render_cpu_s"] + row["recognize_cpu_s"], abs=1e-3)
    assert row["render_cpu_s"] > 0 and row["recognize_cpu_s"] > 0  # the render child's CPU is counted too
    q = bench_ocr.quality(row["text"], bench_ocr.REFERENCE_SCANS[TABLE_SCAN])
    assert q["fraction"] >= 0.8, q["missing"]
