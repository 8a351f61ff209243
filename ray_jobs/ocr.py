"""OCR of pages without a text layer, behind one interface (docs/formats-and-ocr.md).

``apply_ocr`` takes the pages.jsonl rows ``ray_jobs.pdf.extract_pdf`` produced and OCRs
those whose ``has_text`` is false (page errors included), in page order, up to
OCR_MAX_PAGES and within OCR_TIMEOUT_SECONDS. Backends (OCR_BACKEND):

- ``none``: nothing happens; the outcome says OCR is off.
- ``local``: an offline engine in the Ray image (OCR_ENGINE): ``rapidocr`` (rapidocr 3.x,
  PP-OCRv6 small ONNX models shipped inside the wheel, onnxruntime; nothing downloads) or
  ``tesseract`` (the Debian binary, optional: an engine error says when it is missing).
- ``textract``: Amazon Textract (``ray_jobs.ocr_textract``): the asynchronous API on the
  uploaded PDF in S3 when no page has text, else one synchronous call per rendered page.

Every page image comes from ``ray_jobs.ocr_render``: rendered in a time- and memory-limited
child, never in this process (uploads are untrusted). Recognition of our own PNG runs
here. With Ray up and more than OCR_PARALLEL_THRESHOLD_PAGES pages to OCR, the pages are
split into batches run as Ray tasks (``_ocr_parallel``); each batch runs ``ocr_pages``, the
sequential path, so the result is the same.

Each OCR'd row gets ``ocr_confidence`` (0..1, character-weighted over the kept lines) and
``ocr_error`` (None, or why its render or recognition failed). A row whose OCR recovered
text (``pdf_text.has_text``) gets that text (normalised), ``char_count``, ``has_text`` and
``extractor = "ocr-<engine>"``; otherwise its text and extractor stay. Its extraction
``error`` is left as it was (what the text layer said).

CLI: ``python -m ray_jobs.ocr FILE.pdf [--engine rapidocr|tesseract] [--dpi N] [--json]``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from docpipe import errors
from ray_jobs.ocr_render import MAX_SIDE_PX, render_pages
from ray_jobs.pdf_parallel import cluster_cpus, page_ranges, range_count, ray_active
from ray_jobs.pdf_parse import ERROR_MAX, short_error
from ray_jobs.pdf_text import has_text, normalise_text
from ray_jobs.settings import StageSettings

OCR_BACKENDS = ("none", "local", "textract")
LOCAL_ENGINES = ("rapidocr", "tesseract")
RENDER_BATCH = 8  # pages per render child: its start-up (~0.1 s) is small next to OCR (~3-10 s a page)


class OcrPageError(Exception):
    """One page could not be recognised (bad image, the service refused it); the others go on."""


class OcrEngineMissing(RuntimeError):
    """The configured engine is not installed here (e.g. no tesseract binary on PATH)."""


@dataclass
class OcrText:
    """One page's OCR result."""

    text: str  # rows top to bottom, boxes on one row joined by a space, "\n" between rows
    confidence: float  # 0..1, character-weighted mean over the kept lines; 0.0 when nothing kept
    lines: int


class OcrEngine(Protocol):
    name: str  # "rapidocr" | "tesseract" | "textract"; pages record extractor f"ocr-{name}"

    def recognize(self, png: bytes) -> OcrText: ...


@dataclass
class S3Source:
    """Where the upload is, for Textract's asynchronous API."""

    bucket: str
    key: str
    version_id: str = ""


@dataclass
class OcrOutcome:
    backend: str  # none | local | textract
    engine: str  # rapidocr | tesseract | textract | "" when off
    pages_attempted: int  # pages handed to the engine, pages whose render failed included
    pages_recovered: int  # of those, pages that now have text
    pages_over_limit: int  # pages without text not OCR'd because of OCR_MAX_PAGES or OCR_TIMEOUT_SECONDS
    page_errors: int  # pages whose render or OCR failed (their row's "ocr_error" says why)
    billable_pages: int  # pages Textract bills (0 locally)
    cost_usd: float  # billable_pages * TEXTRACT_PRICE_PER_PAGE
    seconds: float
    note: str  # one human sentence for messages

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


# ---------------------------------------------------------------------------------------
# Lines -> page text (shared by every engine)
# ---------------------------------------------------------------------------------------


@dataclass
class Line:
    text: str
    confidence: float  # 0..1
    left: float  # box in any unit, consistent within a page (pixels, or Textract's ratios)
    top: float
    right: float
    bottom: float


def assemble(lines: list[Line], min_confidence: float) -> OcrText:
    """Drop lines below `min_confidence` (and empty ones), then lay the rest out in reading
    order: sorted by top; a line whose vertical centre falls within the current row's first
    box joins that row; boxes of a row are joined left to right by a space."""
    kept = [line for line in lines if line.text.strip() and line.confidence >= min_confidence]
    rows: list[list[Line]] = []
    for line in sorted(kept, key=lambda item: (item.top, item.left)):
        centre = (line.top + line.bottom) / 2
        if rows and rows[-1][0].top <= centre <= rows[-1][0].bottom:
            rows[-1].append(line)
        else:
            rows.append([line])
    text = "\n".join(" ".join(item.text.strip() for item in sorted(row, key=lambda item: item.left)) for row in rows)
    chars = sum(len(line.text.strip()) for line in kept)
    confidence = sum(line.confidence * len(line.text.strip()) for line in kept) / chars if chars else 0.0
    return OcrText(text=text, confidence=confidence, lines=len(kept))


def _decode_png(png: bytes) -> Any:
    """Our PNG -> an RGB ndarray, refusing images larger than any render we make (the
    engines take bytes from callers too)."""
    import numpy as np
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(png))
        width, height = image.size
        if width * height > (2 * MAX_SIDE_PX) ** 2:
            raise OcrPageError(f"image of {width}x{height} px is larger than OCR accepts")
        return np.asarray(image.convert("RGB"))
    except OcrPageError:
        raise
    except Exception as exc:
        raise OcrPageError(short_error("image", exc)) from exc


# ---------------------------------------------------------------------------------------
# Local engines
# ---------------------------------------------------------------------------------------


def ocr_threads(settings: StageSettings) -> int:
    """OCR_THREADS; 0 = Ray's OMP_NUM_THREADS for this worker (1 when unset)."""
    if settings.ocr_threads > 0:
        return settings.ocr_threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        return 1


class RapidOcrEngine:
    """rapidocr 3.x with its bundled PP-OCRv6 small det/rec models on onnxruntime."""

    name = "rapidocr"

    def __init__(self, threads: int, min_confidence: float):
        from rapidocr import RapidOCR

        self.min_confidence = min_confidence
        self._lock = threading.Lock()  # the pipeline keeps per-call state on the object
        self._engine = RapidOCR(params={
            "Global.log_level": "error",
            "Global.text_score": 0.0,  # OCR_MIN_CONFIDENCE is applied in one place: assemble()
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })

    def recognize(self, png: bytes) -> OcrText:
        image = _decode_png(png)
        try:
            with self._lock:
                result = self._engine(image)
        except Exception as exc:
            raise OcrPageError(short_error("rapidocr", exc)) from exc
        txts = getattr(result, "txts", None) or ()
        scores = getattr(result, "scores", None) or ()
        boxes = getattr(result, "boxes", None)
        lines: list[Line] = []
        if boxes is not None:
            for text, score, box in zip(txts, scores, boxes, strict=False):
                xs = [float(point[0]) for point in box]
                ys = [float(point[1]) for point in box]
                lines.append(Line(str(text), float(score), min(xs), min(ys), max(xs), max(ys)))
        return assemble(lines, self.min_confidence)


class TesseractEngine:
    """The tesseract binary (optional; Debian's tesseract-ocr), read as TSV."""

    name = "tesseract"

    def __init__(self, threads: int, min_confidence: float, timeout_s: float = 300.0, language: str = "eng"):
        exe = shutil.which("tesseract")
        if exe is None:
            raise OcrEngineMissing("OCR_ENGINE=tesseract needs the tesseract binary on PATH "
                                   "(apt-get install tesseract-ocr), or set OCR_ENGINE=rapidocr")
        self.exe = exe
        self.min_confidence = min_confidence
        self.timeout_s = timeout_s
        self.language = language
        self.env = {**os.environ, "OMP_THREAD_LIMIT": str(threads)}

    def recognize(self, png: bytes) -> OcrText:
        try:
            proc = subprocess.run([self.exe, "stdin", "stdout", "-l", self.language, "--psm", "3", "tsv"],
                                  input=png, capture_output=True, timeout=self.timeout_s, env=self.env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OcrPageError(f"tesseract: took longer than {self.timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise OcrPageError(f"tesseract exited with {proc.returncode}: {tail[0]}"[:ERROR_MAX])
        return assemble(parse_tesseract_tsv(proc.stdout.decode("utf-8", "replace")), self.min_confidence)


def parse_tesseract_tsv(tsv: str) -> list[Line]:
    """Tesseract's TSV (level 5 = words, conf 0..100, -1 for non-words) -> one Line per
    (block, paragraph, line), its confidence the character-weighted mean of its words."""
    words: dict[tuple[str, str, str, str], list[tuple[str, float, int, int, int, int]]] = {}
    for raw in tsv.splitlines()[1:]:
        cols = raw.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        text = cols[11].strip()
        try:
            conf = float(cols[10])
            left, top, width, height = (int(c) for c in cols[6:10])
        except ValueError:
            continue
        if not text or conf < 0:
            continue
        words.setdefault((cols[1], cols[2], cols[3], cols[4]), []).append((text, conf / 100.0, left, top, width, height))
    lines: list[Line] = []
    for items in words.values():
        chars = sum(len(w[0]) for w in items)
        lines.append(Line(
            text=" ".join(w[0] for w in items),
            confidence=sum(w[1] * len(w[0]) for w in items) / chars,
            left=min(w[2] for w in items), top=min(w[3] for w in items),
            right=max(w[2] + w[4] for w in items), bottom=max(w[3] + w[5] for w in items)))
    return lines


# ---------------------------------------------------------------------------------------
# Engine per process (ray_jobs.warm keeps it)
# ---------------------------------------------------------------------------------------


def check_settings(settings: StageSettings) -> None:
    """ValueError naming the variable for an unknown OCR_BACKEND or OCR_ENGINE."""
    if settings.ocr_backend not in OCR_BACKENDS:
        raise ValueError(f"OCR_BACKEND={settings.ocr_backend!r}: expected one of {', '.join(OCR_BACKENDS)}")
    if settings.ocr_backend == "local" and settings.ocr_engine not in LOCAL_ENGINES:
        raise ValueError(f"OCR_ENGINE={settings.ocr_engine!r}: expected one of {', '.join(LOCAL_ENGINES)}")


def make_engine(settings: StageSettings) -> OcrEngine:
    """A new engine for `settings`; engine_for keeps one per process (ray_jobs.warm)."""
    if settings.ocr_backend == "textract":
        from ray_jobs.ocr_textract import TextractEngine

        return TextractEngine(settings)
    threads = ocr_threads(settings)
    if settings.ocr_engine == "tesseract":
        return TesseractEngine(threads, settings.ocr_min_confidence, timeout_s=min(settings.ocr_timeout_seconds, 600.0))
    return RapidOcrEngine(threads, settings.ocr_min_confidence)


def engine_for(settings: StageSettings) -> OcrEngine | None:
    """The process's engine for `settings` (None for OCR_BACKEND=none), made once per
    configuration (and per docpipe.aws client generation, for Textract's client)."""
    from ray_jobs import warm

    check_settings(settings)
    if settings.ocr_backend == "none":
        return None
    return warm.ocr_engine(settings)


# ---------------------------------------------------------------------------------------
# Pages -> results (the sequential path; each Ray batch runs it too)
# ---------------------------------------------------------------------------------------


def _page_result(number: int, ocr: OcrText | None, error: str | None, seconds: float, billable: int = 0) -> dict[str, Any]:
    return {"page_number": number, "text": ocr.text if ocr else "", "confidence": ocr.confidence if ocr else 0.0,
            "lines": ocr.lines if ocr else 0, "error": error, "seconds": round(seconds, 3), "billable": billable}


def ocr_pages(path: str, numbers: list[int], settings: StageSettings, *, password: str = "",
              deadline_epoch: float, heartbeat: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Render (in limited children, RENDER_BATCH pages each) and recognise `numbers`, in
    order, until `deadline_epoch` (time.time()). Returns one JSON-able result per page
    handed to the engine or failed; pages the deadline left out are absent. Raises
    OcrThrottled (Textract) and configuration errors; page failures are results."""
    engine = engine_for(settings)
    if engine is None:
        return []
    billed = 1 if engine.name == "textract" else 0  # each successful DetectDocumentText bills one page
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="docpipe-ocr-") as tmp:
        for start in range(0, len(numbers), RENDER_BATCH):
            remaining = deadline_epoch - time.time()
            if remaining <= 0:
                break
            batch = numbers[start:start + RENDER_BATCH]
            began = time.monotonic()
            rendered = render_pages(path, batch, tmp, dpi=settings.ocr_dpi, password=password,
                                    timeout_s=min(remaining, settings.pdf_timeout_seconds),
                                    max_memory_mb=settings.pdf_max_memory_mb)
            render_share = (time.monotonic() - began) / max(1, len(batch))
            for page in rendered:
                if time.time() >= deadline_epoch or page.no_time:
                    return results  # over OCR_TIMEOUT_SECONDS: the rest count as over the limit
                if heartbeat is not None:
                    heartbeat()
                if page.error or page.png is None:
                    results.append(_page_result(page.page_number, None, page.error or "render failed", render_share))
                    continue
                with open(page.png, "rb") as fh:
                    png = fh.read()
                os.remove(page.png)
                began = time.monotonic()
                try:
                    ocr = engine.recognize(png)
                except OcrPageError as exc:
                    results.append(_page_result(page.page_number, None, str(exc)[:ERROR_MAX],
                                                render_share + time.monotonic() - began))
                    continue
                results.append(_page_result(page.page_number, ocr, None, render_share + time.monotonic() - began, billed))
    return results


# ---------------------------------------------------------------------------------------
# Large scans: batches as Ray tasks
# ---------------------------------------------------------------------------------------

_REMOTE: Any = None  # the ray.remote wrapper of _batch_task, made on first use


def ocr_batches(numbers: list[int], cpus: int, threshold_pages: int) -> list[list[int]]:
    """Split the pages to OCR into contiguous batches, as large PDFs are split into page
    ranges (pdf_parallel.range_count)."""
    if not numbers:
        return []
    return [numbers[a:b] for a, b in page_ranges(len(numbers), range_count(len(numbers), cpus, threshold_pages))]


def _batch_task(path: str, numbers: list[int], settings: StageSettings, password: str,
                deadline_epoch: float) -> dict[str, Any]:
    """Runs in a Ray worker (engine warm per worker process). Errors come back as data:
    a raised error would reach the driver wrapped in RayTaskError."""
    try:
        return {"ok": True, "pages": ocr_pages(path, numbers, settings, password=password, deadline_epoch=deadline_epoch)}
    except errors.DocpipeError as exc:
        return {"ok": False, "code": exc.code, "message": str(exc)}
    except Exception as exc:
        return {"ok": False, "code": "StageFailed", "message": short_error("ocr", exc)}


def _remote_batch_task() -> Any:
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(num_cpus=1, max_retries=1)(_batch_task)
    return _REMOTE


def merge_batches(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Batch results -> one list in page order (what the sequential path returns)."""
    return sorted((page for batch in batches for page in batch), key=lambda page: int(page["page_number"]))


def _ocr_parallel(path: str, numbers: list[int], settings: StageSettings, password: str, deadline_epoch: float,
                  heartbeat: Callable[[], None] | None) -> list[dict[str, Any]]:
    import ray

    batches = ocr_batches(numbers, cluster_cpus(), settings.ocr_parallel_threshold_pages)
    task = _remote_batch_task().options(resources=settings.task_resources or None)
    refs: list[Any] = [task.remote(path, batch, settings, password, deadline_epoch) for batch in batches]
    order = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, list[dict[str, Any]]] = {}
    pending = list(refs)
    try:
        while pending:
            if heartbeat is not None:
                heartbeat()
            if time.time() > deadline_epoch + 60:  # the tasks stop at the deadline; the slack covers start-up
                break  # what did not come back counts as over the time limit
            done, pending = ray.wait(pending, num_returns=1, timeout=10.0)
            for ref in done:
                res = ray.get(ref)
                if not res["ok"]:  # throttled or broken: the document fails as the sequential path would
                    raise getattr(errors, res["code"], errors.StageFailed)(res["message"])
                results[order[ref]] = res["pages"]
    finally:
        for ref in pending:
            ray.cancel(ref)
    return merge_batches([results[i] for i in sorted(results)])


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


# OCR of a picture without words reads marks as characters ("■ | W" from a photo): a page
# counts as recovered only with this many letters or digits, so such a page stays without
# text instead of making a document COMPLETED with noise.
MIN_OCR_ALNUM = 3


def _has_words(text: str) -> bool:
    return sum(1 for ch in text if ch.isalnum()) >= MIN_OCR_ALNUM


def _apply(rows_by_page: dict[int, dict[str, Any]], results: list[dict[str, Any]], engine: str) -> tuple[int, int]:
    """Write results into their rows. -> (recovered, errors)."""
    recovered = failed = 0
    for res in results:
        row = rows_by_page[int(res["page_number"])]
        row["ocr_confidence"] = round(float(res["confidence"]), 3)
        row["ocr_error"] = res["error"]
        if res["error"]:
            failed += 1
            continue
        text = normalise_text(str(res["text"]))
        if has_text(text) and _has_words(text):
            recovered += 1
            row.update(text=text, char_count=len(text), has_text=True, extractor=f"ocr-{engine}")
    return recovered, failed


def apply_ocr(path: str, rows: list[dict[str, Any]], settings: StageSettings, *,
              source: S3Source | None = None, password: str = "",
              heartbeat: Callable[[], None] | None = None) -> OcrOutcome:
    """OCR the rows without text (see the module docstring); updates them in place.
    Raises ValueError for a bad OCR_* setting, OcrEngineMissing, and OcrThrottled when
    Textract keeps throttling; what a page does is recorded on its row."""
    return _run_ocr(path, rows, settings, source, password, heartbeat)[0]


def _run_ocr(path: str, rows: list[dict[str, Any]], settings: StageSettings, source: S3Source | None, password: str,
             heartbeat: Callable[[], None] | None) -> tuple[OcrOutcome, list[dict[str, Any]]]:
    """apply_ocr, also returning the per-page results (seconds included, for the CLI)."""
    started = time.monotonic()
    deadline_epoch = time.time() + settings.ocr_timeout_seconds
    check_settings(settings)
    backend = settings.ocr_backend
    if backend == "none":
        return OcrOutcome("none", "", 0, 0, 0, 0, 0, 0.0, time.monotonic() - started, "OCR is off (OCR_BACKEND=none)"), []
    engine_name = "textract" if backend == "textract" else settings.ocr_engine
    rows_by_page = {int(row["page_number"]): row for row in rows}
    candidates = sorted(n for n, row in rows_by_page.items() if not row["has_text"])
    if not candidates:
        return OcrOutcome(backend, engine_name, 0, 0, 0, 0, 0, 0.0, time.monotonic() - started,
                          "every page has a text layer: nothing to OCR"), []
    selected = candidates[:max(0, settings.ocr_max_pages)]
    engine_for(settings)  # a missing binary or bad setting fails here, before any work

    results: list[dict[str, Any]] = []
    billable = 0
    notes: list[str] = []
    todo = selected
    if backend == "textract":
        from ray_jobs import ocr_textract

        if source is not None and ocr_textract.use_async(len(rows), len(candidates), len(selected), settings):
            job = ocr_textract.detect_document(source, settings, deadline_epoch=deadline_epoch, page_count=len(rows),
                                               heartbeat=heartbeat)
            billable += job.billable_pages
            results = [_page_result(n, job.pages[n], None, 0.0) for n in selected if n in job.pages]
            if job.note:
                notes.append(job.note)
            todo = [] if job.timed_out else [n for n in selected if n not in job.pages]
    if todo:
        if ray_active() and len(todo) > settings.ocr_parallel_threshold_pages:
            page_results = _ocr_parallel(path, todo, settings, password, deadline_epoch, heartbeat)
        else:
            page_results = ocr_pages(path, todo, settings, password=password, deadline_epoch=deadline_epoch,
                                     heartbeat=heartbeat)
        billable += sum(int(res["billable"]) for res in page_results)
        results = sorted([*results, *page_results], key=lambda res: int(res["page_number"]))

    recovered, failed = _apply(rows_by_page, results, engine_name)
    attempted = len(results)
    over_max = len(candidates) - len(selected)
    over_time = len(selected) - attempted
    sentence = f"{engine_name} read {recovered} of {attempted} pages without a text layer"
    if failed:
        # The first failure's reason itself: a failed document has no pages.jsonl to look in.
        first = next(res for res in results if res["error"])
        sentence += f"; {failed} failed (page {first['page_number']}: {first['error']})"
    if over_max:
        sentence += f"; {over_max} more over OCR_MAX_PAGES={settings.ocr_max_pages}"
    if over_time:
        sentence += f"; {over_time} not reached within OCR_TIMEOUT_SECONDS={settings.ocr_timeout_seconds:g}"
    note = "; ".join([sentence, *notes])
    return OcrOutcome(
        backend=backend, engine=engine_name, pages_attempted=attempted, pages_recovered=recovered,
        pages_over_limit=over_max + over_time, page_errors=failed, billable_pages=billable,
        cost_usd=billable * settings.textract_price_per_page if backend == "textract" else 0.0,
        seconds=time.monotonic() - started, note=note), results


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from ray_jobs.pdf import extract_pdf, print_error

    parser = argparse.ArgumentParser(
        prog="python -m ray_jobs.ocr",
        description="Extract one PDF as the extract stage does, OCR its pages without a text layer with a local "
                    "engine, and print per page: characters, confidence, seconds and the first words.")
    parser.add_argument("file", help="path of the PDF")
    parser.add_argument("--engine", choices=LOCAL_ENGINES, default=None, help="local engine (default: OCR_ENGINE or rapidocr)")
    parser.add_argument("--dpi", type=int, default=None, help="render resolution (default: OCR_DPI or 300)")
    parser.add_argument("--all-pages", action="store_true", help="OCR every page, also those with a text layer")
    parser.add_argument("--json", action="store_true", help="print the rows and the outcome as JSON")
    args = parser.parse_args(argv)

    settings = replace(StageSettings.from_env(), ocr_backend="local")
    if args.engine:
        settings = replace(settings, ocr_engine=args.engine)
    if args.dpi:
        settings = replace(settings, ocr_dpi=args.dpi)
    try:
        result = extract_pdf(args.file, document_id="cli", processing_version="cli", timeout_s=settings.pdf_timeout_seconds,
                             max_memory_mb=settings.pdf_max_memory_mb)
        rows = result.pages
        if args.all_pages:
            for row in rows:
                row["has_text"] = False
        before = {row["page_number"]: row["has_text"] for row in rows}
        outcome, results = _run_ocr(args.file, rows, settings, None, "", None)
        timings = {int(res["page_number"]): float(res["seconds"]) for res in results}
    except (errors.DocpipeError, OSError, ValueError, OcrEngineMissing) as exc:
        return print_error(exc)
    if args.json:
        json.dump({"outcome": outcome.summary(), "pages": rows}, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    for row in rows:
        number = row["page_number"]
        if before[number]:
            status = "text layer"
        elif "ocr_confidence" not in row:
            status = "not OCR'd"
        else:
            status = f"conf {row['ocr_confidence']:.3f}  {timings.get(number, 0.0):6.2f} s"
        words = " ".join(row["text"].split()[:8])
        line = f"page {number:>5}  {row['char_count']:>7} chars  {row['extractor']:<14} {status:<22} {words}"
        if row.get("ocr_error"):
            line += f"  ERROR {row['ocr_error']}"
        print(line)
    print(outcome.note + f" ({outcome.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
