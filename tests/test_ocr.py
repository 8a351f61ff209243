"""OCR of pages without a text layer (ray_jobs.ocr, ray_jobs.ocr_render) on real scanned
files from the corpus, with the offline rapidocr engine (and tesseract when installed).

OCR costs seconds per page here: each scanned file is OCR'd once per module (fixture
`ocred`); the limit tests use a counting engine behind the same interface."""

from __future__ import annotations

import copy
import io
import json
import resource
import shutil
import time

import pytest
from conftest import corpus_file

from ray_jobs import ocr, warm
from ray_jobs.ocr import Line, OcrEngineMissing, OcrText, apply_ocr, assemble, engine_for
from ray_jobs.ocr_render import MAX_SIDE_PX, render_scale
from ray_jobs.pdf import extract_pdf
from ray_jobs.settings import StageSettings

LOREM = "unstructured/example-docs/pdf/loremipsum-flat.pdf"
TABLE = "unstructured/example-docs/pdf/single_table.pdf"
ROMNEY = "unstructured/label-party/holistic-src/M_Romney_1040_2011-p15-p16.pdf"
BOMB = "pdf.js/test/pdfs/bomb_giant.pdf"  # JBIG2 decompression bomb: 3 images of 100000x100000
UNOPENABLE = "qpdf/qpdf/qtest/qpdf/issue-99.pdf"  # fuzzed: pypdf reads a page, pdfium cannot open it
HUGE_PAGE = "pdf.js/test/pdfs/poppler-85140-0.pdf"  # a page 2^31 points tall

EXPECTED = {LOREM: [["Lorem ipsum dolor sit amet"]], TABLE: [["64,058", "Base 128"]],
            ROMNEY: [["Self-Employment Tax"], ["Foreign Tax Credit"]]}


def settings(**env: str) -> StageSettings:
    return StageSettings.from_env({"OCR_BACKEND": "local", "OCR_ENGINE": "rapidocr", "OCR_THREADS": "2", **env})


def rows_of(rel: str) -> tuple[str, list[dict]]:
    path = str(corpus_file(rel))
    return path, extract_pdf(path, document_id="d1", processing_version="v1#0123456789abcdef").pages


@pytest.fixture(scope="module")
def ocred():
    """Each scanned file extracted and OCR'd once: {file: (rows before, rows after, outcome, seconds)}."""
    out = {}
    for rel in EXPECTED:
        path, rows = rows_of(rel)
        before = copy.deepcopy(rows)
        began = time.process_time()
        outcome = apply_ocr(path, rows, settings())
        out[rel] = (before, rows, outcome, time.process_time() - began)
    return out


class CountingEngine:
    """Stands in for a slow engine where only apply_ocr's page handling is under test."""

    name = "rapidocr"

    def __init__(self, delay: float = 0.0):
        self.pngs: list[bytes] = []
        self.delay = delay

    def recognize(self, png: bytes) -> OcrText:
        self.pngs.append(png)
        time.sleep(self.delay)
        return OcrText(f"counted page {len(self.pngs)}", 0.9, 1)


@pytest.fixture
def counting(monkeypatch):
    def use(delay: float = 0.0) -> CountingEngine:
        engine = CountingEngine(delay)
        monkeypatch.setattr(ocr, "engine_for", lambda s: None if s.ocr_backend == "none" else engine)
        return engine
    return use


# --- real OCR -----------------------------------------------------------------------------


@pytest.mark.parametrize("rel", list(EXPECTED))
def test_scanned_pages_are_recovered_by_rapidocr(ocred, rel):
    before, rows, outcome, _ = ocred[rel]
    assert all(not r["has_text"] for r in before)  # scans: no text layer at all
    assert (outcome.backend, outcome.engine) == ("local", "rapidocr")
    assert outcome.pages_attempted == outcome.pages_recovered == len(rows)
    assert (outcome.page_errors, outcome.pages_over_limit, outcome.billable_pages, outcome.cost_usd) == (0, 0, 0, 0.0)
    assert outcome.note == f"rapidocr read {len(rows)} of {len(rows)} pages without a text layer"
    for row, phrases in zip(rows, EXPECTED[rel], strict=True):
        assert row["has_text"] and row["extractor"] == "ocr-rapidocr" and row["ocr_error"] is None
        assert row["ocr_confidence"] > 0.8 and row["char_count"] == len(row["text"]) > 100
        for phrase in phrases:
            assert phrase in row["text"]
    assert json.loads(json.dumps(outcome.summary()))["pages_recovered"] == len(rows)


def test_local_engine_never_touches_the_network(no_network):
    fresh = settings(OCR_MIN_CONFIDENCE="0.55")  # a configuration no earlier test built: created here
    assert all(key[1] != fresh.key() for key in warm._cache)
    path, rows = rows_of(TABLE)

    outcome = apply_ocr(path, rows, fresh)

    assert outcome.pages_recovered == 1 and "64,058" in rows[0]["text"]
    assert no_network == []


def test_hostile_files_give_page_errors_and_leave_the_parent_alone():
    s = settings()
    engine = engine_for(s)
    assert engine is not None
    blank = io.BytesIO()
    from PIL import Image

    # The largest page the renderer hands over (its 4,000 px cap): the engine's own peak on
    # a page that size is in the baseline, so what is measured is what rendering leaks.
    Image.new("L", (4000, 4000), 255).save(blank, format="PNG")
    engine.recognize(blank.getvalue())
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # The bomb has a text layer; pretend it has none so its page is rendered (in the child).
    bomb_path, bomb = rows_of(BOMB)
    bomb[0].update(has_text=False, text="", char_count=0)
    bomb_outcome = apply_ocr(bomb_path, bomb, s)
    assert bomb_outcome.pages_attempted == 1 and bomb[0]["ocr_error"] is None and "BOMB" in bomb[0]["text"].upper()

    path, rows = rows_of(UNOPENABLE)
    outcome = apply_ocr(path, rows, s)
    assert outcome.page_errors == 1 and rows[0]["ocr_error"].startswith("render: PdfiumError")
    assert rows[0]["extractor"] == "pypdf" and rows[0]["has_text"] is False

    path, rows = rows_of(HUGE_PAGE)
    assert rows[0]["has_text"] is False
    outcome = apply_ocr(path, rows, s)
    assert outcome.page_errors == 1 and "too large" in rows[0]["ocr_error"]

    # Rendering at 600 dpi under a 40 MB address-space limit: the child dies, the pages say so.
    path, rows = rows_of(ROMNEY)
    outcome = apply_ocr(path, rows, settings(OCR_DPI="600", PDF_MAX_MEMORY_MB="40"))
    assert outcome.page_errors == 2 and all("memory" in r["ocr_error"] for r in rows)

    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 150, f"the parent's peak memory grew by {grown_mb:.0f} MB"


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="no tesseract binary")
def test_tesseract_engine_reads_a_scan():
    path, rows = rows_of(TABLE)
    outcome = apply_ocr(path, rows, settings(OCR_ENGINE="tesseract"))
    assert outcome.engine == "tesseract" and outcome.pages_recovered == 1
    assert rows[0]["extractor"] == "ocr-tesseract" and "64,058" in rows[0]["text"]
    assert rows[0]["ocr_confidence"] > 0.5


def test_tesseract_without_its_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    path, rows = rows_of(TABLE)
    before = copy.deepcopy(rows)
    with pytest.raises(OcrEngineMissing, match="tesseract binary on PATH"):
        apply_ocr(path, rows, settings(OCR_ENGINE="tesseract", OCR_DPI="151"))
    assert rows == before


@pytest.mark.parametrize(("env", "variable"), [({"OCR_BACKEND": "azure"}, "OCR_BACKEND"),
                                               ({"OCR_ENGINE": "easyocr"}, "OCR_ENGINE")])
def test_unknown_backend_or_engine_names_the_variable(env, variable):
    with pytest.raises(ValueError, match=variable):
        engine_for(settings(**env))


# --- page handling (counting engine) -------------------------------------------------------


def test_backend_none_leaves_rows_untouched(counting):
    engine = counting()
    path, rows = rows_of(ROMNEY)
    before = copy.deepcopy(rows)
    outcome = apply_ocr(path, rows, settings(OCR_BACKEND="none"))
    assert rows == before and engine.pngs == []
    assert outcome.note == "OCR is off (OCR_BACKEND=none)" and outcome.pages_attempted == 0 and outcome.engine == ""


def test_max_pages_is_honoured(counting):
    engine = counting()
    path, rows = rows_of(ROMNEY)
    heartbeats: list[int] = []
    outcome = apply_ocr(path, rows, settings(OCR_MAX_PAGES="1"), heartbeat=lambda: heartbeats.append(1))
    assert len(engine.pngs) == 1 and engine.pngs[0].startswith(b"\x89PNG")
    assert (outcome.pages_attempted, outcome.pages_recovered, outcome.pages_over_limit) == (1, 1, 1)
    assert rows[0]["text"] == "counted page 1" and rows[0]["extractor"] == "ocr-rapidocr"
    assert "ocr_confidence" not in rows[1] and rows[1]["has_text"] is False
    assert "OCR_MAX_PAGES=1" in outcome.note and heartbeats


def test_timeout_leaves_the_rest_over_the_limit(counting):
    counting(delay=3.0)
    path, rows = rows_of(ROMNEY)
    outcome = apply_ocr(path, rows, settings(OCR_TIMEOUT_SECONDS="3"))
    assert outcome.pages_attempted <= 1 and outcome.pages_over_limit == 2 - outcome.pages_attempted >= 1
    assert "OCR_TIMEOUT_SECONDS" in outcome.note


def test_marks_without_words_do_not_count_as_text(counting, monkeypatch):
    # What rapidocr reads from corpus/py-pdf-sample-files/008-reportlab-inline-image (a
    # picture, no words): it must leave the page without text, not make it "recovered".
    monkeypatch.setattr(CountingEngine, "recognize", lambda self, png: OcrText("■ | W", 0.84, 2))
    counting()
    path, rows = rows_of(ROMNEY)
    outcome = apply_ocr(path, rows, settings())
    assert outcome.pages_recovered == 0 and all(not r["has_text"] for r in rows)
    assert [r["extractor"] for r in rows] == ["pdfium", "pdfium"]


def test_pages_with_text_are_not_ocrd(counting):
    engine = counting()
    path, rows = rows_of(BOMB)  # has a text layer
    outcome = apply_ocr(path, rows, settings())
    assert engine.pngs == [] and outcome.pages_attempted == 0 and "nothing to OCR" in outcome.note


def test_batches_give_the_sequential_result(counting):
    counting()
    path, _ = rows_of(ROMNEY)
    s, deadline = settings(), time.time() + 60
    sequential = ocr.ocr_pages(path, [1, 2], s, deadline_epoch=deadline)
    batches = ocr.ocr_batches([1, 2], cpus=2, threshold_pages=1)
    assert batches == [[1], [2]]
    parallel = ocr.merge_batches([ocr._batch_task(path, b, s, "", deadline)["pages"] for b in reversed(batches)])

    def strip(results):
        return [{k: v for k, v in r.items() if k not in ("seconds", "text")} for r in results]
    assert strip(parallel) == strip(sequential) and [r["page_number"] for r in parallel] == [1, 2]
    assert ocr.ocr_batches(list(range(1, 101)), cpus=2, threshold_pages=8) == [
        list(range(1, 26)), list(range(26, 51)), list(range(51, 76)), list(range(76, 101))]
    assert ocr.ocr_batches(list(range(1, 10)), cpus=8, threshold_pages=8) == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]


# --- pure helpers -----------------------------------------------------------------------


def test_assemble_reading_order_and_confidence():
    lines = [Line("right", 0.9, 500, 100, 600, 130), Line("second row", 0.8, 100, 150, 400, 180),
             Line("left", 0.7, 100, 105, 200, 128), Line("noise", 0.2, 100, 200, 150, 220)]
    out = assemble(lines, min_confidence=0.5)
    assert out.text == "left right\nsecond row" and out.lines == 3
    assert out.confidence == pytest.approx((0.9 * 5 + 0.8 * 10 + 0.7 * 4) / 19)
    assert assemble([Line("noise", 0.2, 0, 0, 1, 1)], 0.5) == OcrText("", 0.0, 0)


def test_render_is_capped_whatever_the_page_size():
    assert render_scale(612, 792, 150) == pytest.approx(150 / 72)
    scale = render_scale(200 * 72, 100 * 72, 150)  # a 200-inch page
    assert 200 * 72 * scale == pytest.approx(MAX_SIDE_PX)
    with pytest.raises(ValueError):
        render_scale(0, 792, 150)


def test_tesseract_tsv_lines():
    tsv = ("level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
           "4\t1\t1\t1\t1\t0\t10\t10\t200\t20\t-1\t\n"
           "5\t1\t1\t1\t1\t1\t10\t10\t50\t20\t96.5\tForeign\n"
           "5\t1\t1\t1\t1\t2\t70\t10\t30\t20\t90\tTax\n"
           "5\t1\t1\t1\t2\t1\t10\t40\t50\t20\t80\tCredit\n")
    lines = ocr.parse_tesseract_tsv(tsv)
    assert [(line.text, line.left, line.top, line.right) for line in lines] == [("Foreign Tax", 10, 10, 100),
                                                                               ("Credit", 10, 40, 60)]
    assert lines[0].confidence == pytest.approx((0.965 * 7 + 0.9 * 3) / 10)


def test_cli_help_and_json(capsys, counting):
    with pytest.raises(SystemExit) as exit_info:
        ocr.main(["--help"])
    assert exit_info.value.code == 0 and "--engine" in capsys.readouterr().out
    counting()
    assert ocr.main([str(corpus_file(ROMNEY)), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["outcome"]["pages_recovered"] == 2 and printed["pages"][1]["extractor"] == "ocr-rapidocr"
