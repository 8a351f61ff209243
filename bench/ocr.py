"""`python -m bench.ocr` (also `make bench-ocr`): OCR of pages without a text layer, on
../shared/corpus. Markdown tables on stdout, progress on stderr, raw figures in
bench/results/<UTC stamp>-ocr.json. See docs/formats-and-ocr.md and docs/performance.md.

1. Speed and cost per engine. The pages: every page without a text layer (text-layer pass
   below) of the corpus files. Each local engine (rapidocr; tesseract when its binary is on
   PATH) reads them with OCR_THREADS=1 as ray_jobs.ocr.ocr_pages does: pages rendered in
   limited children, RENDER_BATCH at a time, at OCR_DPI, then `engine.recognize`. CPU per
   page = its share of the render child's CPU + the CPU of recognize (this process's
   process_time, plus the children's for tesseract's binary), both from getrusage deltas.
   pages/s per core = pages / CPU seconds. Cost per OCR page: local = CPU s per page x
   docpipe.costs.vcpu_second_usd() (a Fargate vCPU with its memory share); Textract =
   docpipe.costs.TEXTRACT_PER_PAGE (list price; no call is made). Quality: the share of
   phrases read off the rendered pages of three reference scans found in each engine's text.
2. Corpus outcomes (`--corpus`, default): every file of MANIFEST.tsv through
   ray_jobs.extract.extract_any with OCR_BACKEND=none (the text-layer pass) and with
   OCR_BACKEND=local (rapidocr), classified as the extract stage and FinalizeDocument would:
   COMPLETED, PARTIAL (some pages without text) or FAILED <code>. The .fuzz inputs are read
   as PDFs (uploaded under their own name RegisterDocument records them SKIPPED,
   UnsupportedType). Then issue #14's target: a file whose text any engine can recover (a
   page with >= 3 alphanumeric characters in words of 2+ characters, from the text layer,
   rapidocr or tesseract) ends COMPLETED or PARTIAL with that text in its chunks; every
   other file FAILED with a code and a message. Exit code 1 when the target is missed.

Every step runs in one warm worker process (engines loaded once); a step that outlives
--file-timeout is killed with every process under it (the corpus holds a decompression
bomb and page-tree loops) and the file is reported FAILED BenchTimeout. The text-layer
pass is cached in bench/results/.cache/ (keyed by the corpus files and the extraction code).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import descendants
from bench.run import CORPUS_DIR, REPO

HERE = Path(__file__).resolve().parent
ENGINES = ("rapidocr", "tesseract")
# Phrases read off the 150 dpi renders of the reference scans (checked by eye against the
# page images, not taken from either engine): found = in the engine's text of the file,
# case and whitespace aside.
REFERENCE_SCANS: dict[str, tuple[str, ...]] = {
    "unstructured/example-docs/pdf/loremipsum-flat.pdf": (
        "Lorem ipsum dolor sit amet", "consectetur adipiscing elit", "Morbi efficitur", "tristique lobortis",
        "Proin non diam", "fringilla laoreet", "lacus sed pharetra", "malesuada mauris pulvinar",
        "ullamcorper sodales", "elementum lacus posuere", "scelerisque massa", "euismod consequat",
        "habitasse platea", "faucibus consequat", "Phasellus ornare quis diam"),
    "unstructured/example-docs/pdf/single_table.pdf": (
        "Processing", "total chunks", "mean chunks per document", "tables mean", "Base 128", "Base 256",
        "Base 512", "Chipper", "64,058", "32,051", "16,046", "20,843", "800.73", "400.64", "260.57", "96.20 (57.53)"),
    "unstructured/label-party/holistic-src/M_Romney_1040_2011-p15-p16.pdf": (
        "Self-Employment Tax", "WILLARD M ROMNEY", "Short Schedule SE", "wages or tips in 2011",
        "railroad retirement", "Uncollected Social", "Net farm profit", "Conservation Reserve", "416,258",
        "23,179", "Foreign Tax Credit", "ANN D ROMNEY", "Passive category income", "VARIOUS COUNTRIES",
        "18,215,457", "Home mortgage interest", "83,853"),
}
MIN_REAL_CHARS = 3  # a page "has real text" with this many alphanumerics in words of 2+ characters
_WORD = re.compile(r"[^\W_]{2,}")
EXCERPT = 160  # characters of a page's text kept in the JSON and the tables


# ---------------------------------------------------------------------------------------
# Pure parts (tests/test_bench_ocr.py)
# ---------------------------------------------------------------------------------------


def real_chars(text: str) -> int:
    """Alphanumeric characters in words of two or more: "Lorem ipsum" 10, ". | ' -" 0."""
    return sum(len(word) for word in _WORD.findall(text))


def outcome(result: Any, ocr: Any, error: BaseException | None) -> dict[str, Any]:
    """What docpipe records for a PDF: the extract stage's failure (its code and message,
    as ray_jobs.runner answers it), or FinalizeDocument's status."""
    from docpipe.errors import DocpipeError, error_code_of
    from ray_jobs.extract import no_text_error

    if error is None and result.pages_with_text == 0:
        error = no_text_error(result, "pdf", ocr)
    if error is None:
        return {"status": "PARTIAL" if result.pages_without_text else "COMPLETED", "code": None, "message": ""}
    if isinstance(error, DocpipeError):
        return {"status": "FAILED", "code": error.code, "message": str(error) or error.code}
    return {"status": "FAILED", "code": error_code_of(error), "message": f"{type(error).__name__}: {error}"[:1000]}


def label(o: dict[str, Any]) -> str:
    return f"FAILED {o['code']}" if o["status"] == "FAILED" else o["status"]


def quality(text: str, phrases: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Share of `phrases` in `text`, ignoring case and runs of whitespace."""
    flat = " ".join(text.lower().split())
    missing = [p for p in phrases if " ".join(p.lower().split()) not in flat]
    found = len(phrases) - len(missing)
    return {"found": found, "of": len(phrases), "fraction": round(found / len(phrases), 3) if phrases else None,
            "missing": missing}


def engine_summary(rows: list[dict[str, Any]], vcpu_second_usd: float) -> dict[str, Any]:
    """Per-page measurements of one engine -> speed per core and cost per OCR page."""
    from bench.e2e import pct

    ok = [r for r in rows if not r.get("error")]
    read = [r for r in ok if r["has_text"]]
    cpu = [r["cpu_s"] for r in ok]
    wall = [r["wall_s"] for r in ok]
    total_cpu = sum(cpu)
    per_page = total_cpu / len(ok) if ok else None
    per_text_page = sum(r["cpu_s"] for r in read) / len(read) if read else None

    def r4(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    return {
        "pages": len(rows), "pages_measured": len(ok), "page_errors": len(rows) - len(ok),
        "pages_read": len(read), "chars": sum(r["chars"] for r in ok),
        "mean_confidence": round(sum(r["confidence"] for r in read) / len(read), 3) if read else None,
        "cpu_s": round(total_cpu, 3), "wall_s": round(sum(wall), 3),
        "pages_per_s_per_core": round(len(ok) / total_cpu, 4) if total_cpu else None,
        "cpu_s_per_page": r4(per_page), "cpu_s_per_page_read": r4(per_text_page),
        "cpu_s_p50": r4(pct(cpu, 50)), "cpu_s_p95": r4(pct(cpu, 95)),
        "wall_s_p50": r4(pct(wall, 50)), "wall_s_p95": r4(pct(wall, 95)),
        "usd_per_page": None if per_page is None else per_page * vcpu_second_usd,
        "usd_per_1000_pages": None if per_page is None else 1000 * per_page * vcpu_second_usd,
        "usd_per_page_read": None if per_text_page is None else per_text_page * vcpu_second_usd,
    }


def textract_summary(price_per_page: float) -> dict[str, Any]:
    return {"usd_per_page": price_per_page, "usd_per_1000_pages": 1000 * price_per_page,
            "basis": "list price of DetectDocumentText (docpipe.costs.TEXTRACT_PER_PAGE); no call is made"}


def target_check(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue #14's target over the corpus records (see the module docstring). A record:
    {"after": outcome + "real_pages", "ocr_pages_unsearchable", "text_layer_real": bool,
     "engines_real": {engine: [pages with real text]}, "tesseract_pages": {page: excerpt}}."""
    recoverable, not_recoverable, not_indexed, unsearchable, unexplained, tesseract_only, noise = \
        [], [], [], [], [], [], []
    for rel, f in files.items():
        after = f["after"]
        engines_real = f.get("engines_real") or {}
        any_real = f["text_layer_real"] or any(engines_real.values())
        indexed = after["status"] != "FAILED"
        (recoverable if any_real else not_recoverable).append(rel)
        if after["status"] == "FAILED" and (not after.get("message") or after["code"] in ("BenchTimeout", "WorkerCrashed")):
            unexplained.append(rel)
        if any_real and not indexed:
            not_indexed.append(rel)
        if indexed and f.get("ocr_pages_unsearchable"):
            unsearchable.append(rel)
        if indexed and not any_real and not after.get("real_pages"):
            noise.append(rel)  # docpipe indexes what it counts as text (>= 3 characters), but no word
        docpipe_real = indexed and bool(after.get("real_pages"))
        if engines_real.get("tesseract") and not docpipe_real:
            pages = engines_real["tesseract"]
            tesseract_only.append({"file": rel, "pages": pages,
                                   "tesseract_read": {p: (f.get("tesseract_pages") or {}).get(p, "") for p in pages}})
    return {"recoverable": recoverable, "not_recoverable": not_recoverable, "not_indexed": not_indexed,
            "ocr_text_not_searchable": unsearchable, "failed_without_reason": unexplained,
            "tesseract_only": tesseract_only, "indexed_without_words": noise,
            "met": not (not_indexed or unsearchable or unexplained or tesseract_only)}


# ---------------------------------------------------------------------------------------
# Steps (run in the worker process)
# ---------------------------------------------------------------------------------------


def _children_cpu() -> float:
    from ray_jobs.pdf_sandbox import children_cpu_seconds

    return children_cpu_seconds()  # the render children forked by the zygote included


def _settings(env: dict[str, str]) -> Any:
    from ray_jobs.settings import StageSettings

    return StageSettings.from_env({**os.environ, **env})


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) >= 3}


def step_extract(rel: str, env: dict[str, str]) -> dict[str, Any]:
    """One corpus file through extract_any with `env`'s settings, classified; with OCR on,
    also chunked, to check the OCR'd text reaches the chunks."""
    from ray_jobs.extract import chunk, extract_any

    settings = _settings(env)
    began = time.monotonic()
    try:
        result, ocr = extract_any(str(CORPUS_DIR / rel), "pdf", "bench-ocr", "v1#bench", settings)
    except Exception as exc:
        return {**outcome(None, None, exc), "seconds": round(time.monotonic() - began, 3)}
    out = outcome(result, ocr, None)
    out.update(seconds=round(time.monotonic() - began, 3), page_count=result.page_count,
               pages_with_text=result.pages_with_text, pages_without_text=result.pages_without_text,
               page_errors=result.page_errors, extractor=result.extractor, stats=result.stats,
               ocr=ocr.summary() if ocr and ocr.backend != "none" else None)
    real = {row["page_number"]: real_chars(row["text"]) for row in result.pages}
    out["real_pages"] = sum(1 for n in real.values() if n >= MIN_REAL_CHARS)
    out["no_text_pages"] = [row["page_number"] for row in result.pages if not row["has_text"]]
    out["ocr_pages"] = [{"page": row["page_number"], "extractor": row["extractor"], "has_text": row["has_text"],
                         "real_chars": real[row["page_number"]], "confidence": row.get("ocr_confidence"),
                         "error": row.get("ocr_error"), "text": row["text"][:EXCERPT]}
                        for row in result.pages if "ocr_confidence" in row]
    if out["status"] != "FAILED" and out["ocr_pages"]:
        chunks = chunk(result.pages, "bench-ocr", "v1#bench", settings)
        out["chunks"] = len(chunks)
        unsearchable = []
        for row in result.pages:
            if not str(row["extractor"]).startswith("ocr-"):
                continue
            n = row["page_number"]
            words = _words(row["text"])
            seen = set().union(*(_words(c["text"]) for c in chunks if c["page_start"] <= n <= c["page_end"]))
            if words and len(words & seen) < 0.95 * len(words):
                unsearchable.append(n)
        out["ocr_pages_unsearchable"] = unsearchable
    return out


def _warm_png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (480, 80), 255)
    ImageDraw.Draw(image).text((10, 25), "Warm up the engine 2026", fill=0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def step_speed(rel: str, pages: list[int], engine: str, env: dict[str, str]) -> dict[str, Any]:
    """OCR `pages` of one file with `engine` on one thread, measuring each page."""
    from ray_jobs.ocr import RENDER_BATCH, OcrPageError, engine_for
    from ray_jobs.ocr_render import render_pages
    from ray_jobs.pdf_text import has_text, normalise_text

    settings = replace(_settings(env), ocr_backend="local", ocr_engine=engine, ocr_threads=1)
    began = time.monotonic()
    eng = engine_for(settings)  # made once per worker and configuration, like a warm Ray worker's
    assert eng is not None
    eng.recognize(_warm_png())
    warmup_s = time.monotonic() - began
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ocr-") as tmp:
        for start in range(0, len(pages), RENDER_BATCH):
            batch = pages[start:start + RENDER_BATCH]
            c0, w0 = _children_cpu(), time.monotonic()
            rendered = render_pages(str(CORPUS_DIR / rel), batch, tmp, dpi=settings.ocr_dpi,
                                    timeout_s=settings.pdf_timeout_seconds, max_memory_mb=settings.pdf_max_memory_mb)
            render_cpu = (_children_cpu() - c0) / len(batch)
            render_wall = (time.monotonic() - w0) / len(batch)
            for page in rendered:
                if page.error or page.png is None:
                    rows.append({"page": page.page_number, "error": page.error or "render failed"})
                    continue
                png = Path(page.png).read_bytes()
                os.remove(page.png)
                p0, c0, w0 = time.process_time(), _children_cpu(), time.monotonic()
                try:
                    ocr = eng.recognize(png)
                except OcrPageError as exc:
                    rows.append({"page": page.page_number, "error": str(exc)})
                    continue
                cpu = time.process_time() - p0 + _children_cpu() - c0
                text = normalise_text(ocr.text)
                rows.append({"page": page.page_number, "error": None, "width": page.width, "height": page.height,
                             "render_cpu_s": round(render_cpu, 4), "recognize_cpu_s": round(cpu, 4),
                             "cpu_s": round(render_cpu + cpu, 4),
                             "wall_s": round(render_wall + time.monotonic() - w0, 4),
                             "chars": len(text), "has_text": has_text(text), "real_chars": real_chars(text),
                             "confidence": round(ocr.confidence, 4), "lines": ocr.lines, "text": text})
    return {"warmup_s": round(warmup_s, 3), "pages": rows}


STEPS = {"extract": step_extract, "speed": step_speed}


def _serve(conn: Any) -> None:
    """The worker's loop: (step, kwargs) in, a dict out; None ends it."""
    os.environ["DOCPIPE_NO_RAY"] = "1"  # page ranges and OCR batches stay in this process's children
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        step, kwargs = message
        try:
            answer = STEPS[step](**kwargs)
        except Exception as exc:
            answer = {"bench_error": f"{type(exc).__name__}: {exc}"[:1000]}
        conn.send(answer)


# ---------------------------------------------------------------------------------------
# The worker, guarded by a timeout per step
# ---------------------------------------------------------------------------------------


class Worker:
    """One spawned interpreter running the steps with warm engines. A step past its timeout
    (or a crash) kills the worker and every process under it (the PDF children run in their
    own sessions); the next step starts a fresh worker."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        from multiprocessing import get_context

        ctx = get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="bench-ocr-worker")
        self.proc.start()
        child.close()

    def call(self, step: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((step, kwargs))
        try:
            if self.conn.poll(timeout):
                return dict(self.conn.recv())
            failure = {"bench_timeout": timeout}
        except (EOFError, OSError):
            self.proc.join(5)
            failure = {"bench_crash": self.proc.exitcode}
        self._kill()
        return failure

    def _kill(self) -> None:
        if self.proc.exitcode is None:  # still ours: a reaped pid may belong to someone else by now
            os.kill(self.proc.pid, signal.SIGSTOP)  # it starts no child while we list and kill them
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.join(10)
        self.conn.close()
        self.proc = self.conn = None

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self._kill()


def guarded_outcome(answer: dict[str, Any]) -> dict[str, Any]:
    """A step's answer, or the failure the guard saw, as an outcome record."""
    if "bench_timeout" in answer:
        return {"status": "FAILED", "code": "BenchTimeout",
                "message": f"no answer within --file-timeout {answer['bench_timeout']:g} s: killed"}
    if "bench_crash" in answer:
        return {"status": "FAILED", "code": "WorkerCrashed", "message": f"the worker died (exit {answer['bench_crash']})"}
    if "bench_error" in answer:
        return {"status": "FAILED", "code": "BenchError", "message": answer["bench_error"]}
    return answer


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def manifest() -> list[str]:
    lines = (CORPUS_DIR / "MANIFEST.tsv").read_text().splitlines()
    return [line.split("\t")[0] for line in lines[1:] if line.strip()]


def _cache_key(files: list[str]) -> str:
    """The corpus files and the extraction code: a change to either re-runs the text-layer pass."""
    h = hashlib.sha256()
    for rel in files:
        st = (CORPUS_DIR / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for src in [*sorted((REPO / "ray_jobs").glob("pdf*.py")), REPO / "ray_jobs" / "extract.py", HERE / "ocr.py"]:
        h.update(src.read_bytes())
    h.update(json.dumps({k: v for k, v in os.environ.items() if k.startswith("PDF_")}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[item]}", style="dim"), console=Console(stderr=True),
                    refresh_per_second=2)


def text_layer_pass(files: list[str], worker: Worker, progress: Any, timeout: float, cache_dir: Path | None,
                    ) -> tuple[dict[str, dict[str, Any]], bool]:
    """OCR_BACKEND=none over `files` (cached). -> ({file: outcome}, from cache)."""
    cache = cache_dir / f"ocr-text-layer-{_cache_key(files)}.json" if cache_dir else None
    if cache and cache.exists():
        return json.loads(cache.read_text()), True
    task = progress.add_task("text layer (OCR_BACKEND=none)", total=len(files), item="")
    out = {}
    for rel in files:
        progress.update(task, item=rel)
        out[rel] = guarded_outcome(worker.call("extract", timeout, rel=rel, env={"OCR_BACKEND": "none"}))
        progress.advance(task)
    progress.update(task, item="")
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(out))
    return out, False


def speed_pass(engine: str, pages: dict[str, list[int]], worker: Worker, progress: Any,
               timeout: float) -> dict[str, Any]:
    task = progress.add_task(f"OCR speed: {engine}", total=sum(map(len, pages.values())), item="")
    per_file: dict[str, Any] = {}
    warmups = []
    for rel, numbers in pages.items():
        progress.update(task, item=rel)
        answer = worker.call("speed", timeout, rel=rel, pages=numbers, engine=engine, env={})
        if "pages" in answer:
            warmups.append(answer["warmup_s"])
            per_file[rel] = answer["pages"]
        else:
            why = guarded_outcome(answer)["message"]
            per_file[rel] = [{"page": n, "error": why} for n in numbers]
        progress.advance(task, len(numbers))
    progress.update(task, item="")
    return {"warmup_s_first": warmups[0] if warmups else None, "files": per_file}


def corpus_pass(files: list[str], worker: Worker, progress: Any, timeout: float) -> dict[str, dict[str, Any]]:
    task = progress.add_task("corpus (OCR_BACKEND=local)", total=len(files), item="")
    out = {}
    for rel in files:
        progress.update(task, item=rel)
        out[rel] = guarded_outcome(worker.call("extract", timeout, rel=rel,
                                               env={"OCR_BACKEND": "local", "OCR_ENGINE": "rapidocr"}))
        progress.advance(task)
    progress.update(task, item="")
    return out


def corpus_records(before: dict[str, Any], after: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    """Per file: both outcomes and what each engine could read (for target_check)."""
    records = {}
    for rel, b in before.items():
        a = after[rel]
        engines_real: dict[str, list[int]] = {}
        tesseract_pages: dict[int, str] = {}
        for engine, s in speed.items():
            rows = s["files"].get(rel) or []
            engines_real[engine] = [r["page"] for r in rows if not r.get("error") and r["real_chars"] >= MIN_REAL_CHARS]
            if engine == "tesseract":
                tesseract_pages = {r["page"]: r["text"][:EXCERPT] for r in rows if not r.get("error")}
        records[rel] = {"before": b, "after": a, "text_layer_real": bool(b.get("real_pages")),
                        "engines_real": engines_real, "tesseract_pages": tesseract_pages,
                        "ocr_pages_unsearchable": a.get("ocr_pages_unsearchable") or []}
    return records


def _tool_versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    for pkg in ("rapidocr", "onnxruntime", "pypdfium2", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    exe = shutil.which("tesseract")
    if exe:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
        out["tesseract"] = ((proc.stdout or proc.stderr).splitlines() or [""])[0]
    else:
        out["tesseract"] = None
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import machine
    from docpipe import costs
    from ray_jobs.settings import StageSettings

    started = datetime.now(UTC)
    t0 = time.monotonic()
    settings = StageSettings.from_env()
    engines = [e for e in args.engines if e == "rapidocr" or shutil.which("tesseract")]
    result: dict[str, Any] = {
        "kind": "ocr",
        "meta": {"started": started.isoformat(timespec="seconds"), "machine": machine(), "tools": _tool_versions(),
                 "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "ocr_dpi": settings.ocr_dpi, "ocr_min_confidence": settings.ocr_min_confidence,
                 "vcpu_second_usd": costs.vcpu_second_usd(), "prices_as_of": costs.PRICES_AS_OF,
                 "engines_not_installed": [e for e in args.engines if e not in engines]},
    }
    timings: dict[str, float] = {}
    files = manifest()
    worker = Worker()
    try:
        with _progress() as progress:
            t = time.monotonic()
            text_layer, cached = text_layer_pass(files, worker, progress, args.file_timeout,
                                                 None if args.no_cache else args.out / ".cache")
            timings["text_layer_s"] = round(time.monotonic() - t, 1)
            result["meta"]["text_layer_cached"] = cached
            pages = {rel: o["no_text_pages"] for rel, o in text_layer.items() if o.get("no_text_pages")}
            if args.max_pages:
                kept: dict[str, list[int]] = {}
                budget = args.max_pages
                for rel, numbers in pages.items():
                    if budget > 0:
                        kept[rel] = numbers[:budget]
                        budget -= len(kept[rel])
                pages = kept
            result["ocr_pages"] = pages
            speed: dict[str, Any] = {}
            for engine in engines:
                t = time.monotonic()
                speed[engine] = speed_pass(engine, pages, worker, progress, args.file_timeout)
                timings[f"speed_{engine}_s"] = round(time.monotonic() - t, 1)
            result["speed"] = speed
            result["engines"] = {e: engine_summary([r for rows in s["files"].values() for r in rows],
                                                   costs.vcpu_second_usd()) for e, s in speed.items()}
            result["engines"]["textract"] = textract_summary(costs.TEXTRACT_PER_PAGE)
            result["quality"] = {
                rel: {e: quality("\n".join(r.get("text", "") for r in s["files"].get(rel, [])), phrases)
                      for e, s in speed.items()}
                for rel, phrases in REFERENCE_SCANS.items() if any(rel in s["files"] for s in speed.values())}
            if args.corpus:
                subset = [rel for rel in files if rel in pages] if args.quick else files
                t = time.monotonic()
                after = corpus_pass(subset, worker, progress, args.file_timeout)
                timings["corpus_ocr_s"] = round(time.monotonic() - t, 1)
                records = corpus_records({rel: text_layer[rel] for rel in subset}, after, speed)
                result["corpus"] = {"files": records, "scope": "quick (files with pages without text)" if args.quick
                                    else "every file of MANIFEST.tsv",
                                    "counts": {"none": dict(Counter(label(r["before"]) for r in records.values())),
                                               "local": dict(Counter(label(r["after"]) for r in records.values()))},
                                    "changed": [rel for rel, r in records.items()
                                                if label(r["before"]) != label(r["after"])],
                                    "target": target_check(records)}
    finally:
        worker.close()
    timings["total_s"] = round(time.monotonic() - t0, 1)
    result["meta"]["timings"] = timings
    result["meta"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return result


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]], align: str = "") -> str:
    """GitHub markdown; `align` has one letter per column, l or r (default: the first
    column left, the others right)."""
    def cell(v: Any) -> str:
        return "–" if v is None or v == "" else str(v).replace("|", "\\|").replace("\n", " ")

    align = align or "l" + "r" * (len(headers) - 1)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _num(v: float | None, digits: int = 2) -> str | None:
    return None if v is None else f"{v:,.{digits}f}"


def _usd(v: float | None) -> str | None:
    if v is None:
        return None
    return f"${v:.7f}".rstrip("0") if v < 0.001 else f"${v:.4f}".rstrip("0").rstrip(".")


def _short(rel: str) -> str:
    return rel.rsplit("/", 1)[-1]


def markdown(r: dict[str, Any]) -> str:
    m = r["meta"]
    engines = r["engines"]
    n_pages = sum(map(len, r["ocr_pages"].values()))
    parts = [f"**OCR speed and cost per engine** — {n_pages} pages without a text layer from "
             f"{len(r['ocr_pages'])} corpus files, OCR_THREADS=1, OCR_DPI={m['ocr_dpi']}, "
             f"OCR_MIN_CONFIDENCE={m['ocr_min_confidence']}\n"]
    rows = []
    for engine in ENGINES:
        if engine in m["engines_not_installed"]:
            rows.append([engine, "not installed", *[None] * 11])
            continue
        e = engines.get(engine)
        if not e:
            continue
        q = [x[engine] for x in r.get("quality", {}).values() if engine in x]
        qual = f"{sum(x['found'] for x in q)}/{sum(x['of'] for x in q)}" if q else None
        failed = f" (+{e['page_errors']} not rendered)" if e["page_errors"] else ""
        rows.append([engine, f"{e['pages_measured']}{failed}", e["pages_read"], f"{e['chars']:,}",
                     _num(e["mean_confidence"], 3), _num(e["cpu_s_per_page"]), _num(e["cpu_s_per_page_read"]),
                     _num(e["pages_per_s_per_core"], 3), f"{_num(e['cpu_s_p50'])} / {_num(e['cpu_s_p95'])}",
                     f"{_num(e['wall_s_p50'])} / {_num(e['wall_s_p95'])}", _usd(e["usd_per_page"]),
                     _usd(e["usd_per_1000_pages"]), qual])
    t = engines["textract"]
    rows.append(["textract", "list price, not called", None, None, None, None, None, None, None, None,
                 _usd(t["usd_per_page"]), _usd(t["usd_per_1000_pages"]), None])
    parts.append(_table(["engine", "pages", "read", "chars", "mean conf", "CPU s/page", "CPU s/page read",
                         "pages/s per core", "CPU s p50 / p95", "wall s p50 / p95", "$ per OCR page",
                         "$ per 1,000 pages", "phrases found (3 scans)"], rows))
    parts.append(f"\nCPU = render child's share + recognize (getrusage), one thread; local $ = CPU s x "
                 f"${m['vcpu_second_usd']:.8f} per Fargate vCPU-second with its memory share "
                 f"({m['prices_as_of']}); \"read\" = pages with text after OCR; \"CPU s/page read\" = on those pages. "
                 f"Engines warm (model load excluded). {m['machine']['cores']} cores {m['machine']['cpu']}, "
                 f"load average {' '.join(m['machine']['loadavg_at_start'])} -> {' '.join(m['loadavg_at_end'])}.\n")
    if r.get("quality"):
        present = [e for e in ENGINES if e in engines]
        rows = []
        for rel, q in r["quality"].items():
            rows.append([_short(rel), *[f"{q[e]['found']}/{q[e]['of']} ({q[e]['fraction']:.0%})" if e in q else None
                                        for e in present],
                         "; ".join(f"{e}: {', '.join(q[e]['missing'])}" for e in present if e in q and q[e]["missing"])])
        parts.append("**OCR quality on the reference scans** (expected phrases found in the engine's text)\n")
        parts.append(_table(["scan", *present, "missed"], rows, "l" + "r" * len(present) + "l") + "\n")
    c = r.get("corpus")
    if c:
        labels = sorted(set(c["counts"]["none"]) | set(c["counts"]["local"]),
                        key=lambda x: ({"COMPLETED": 0, "PARTIAL": 1}.get(x, 2), x))
        parts.append(f"**Corpus outcomes** ({c['scope']}, {len(c['files'])} files; .fuzz inputs read as PDF)\n")
        parts.append(_table(["outcome", "OCR_BACKEND=none", "OCR_BACKEND=local (rapidocr)"],
                            [[x, c["counts"]["none"].get(x, 0), c["counts"]["local"].get(x, 0)] for x in labels]
                            + [["total", len(c["files"]), len(c["files"])]]) + "\n")
        rows = []
        for rel in c["changed"]:
            f = c["files"][rel]
            a = f["after"]
            ocr = a.get("ocr") or {}
            words = " ".join(" ".join(p["text"].split()) for p in a.get("ocr_pages", []) if p["has_text"])[:80]
            rows.append([_short(rel), a.get("page_count"), label(f["before"]), label(a),
                         f"{ocr.get('pages_recovered', 0)}/{ocr.get('pages_attempted', 0)}", words])
        parts.append("**Files whose outcome changed with OCR**\n")
        parts.append(_table(["file", "pages", "OCR off", "OCR on (rapidocr)", "pages read", "first words read"], rows,
                            "lrllrl") + "\n")
        rows = []
        for rel, f in c["files"].items():
            a = f["after"]
            if a["status"] == "PARTIAL":
                why = "; ".join(f"p{p['page']}: " + (p["error"] or (f"read {p['text']!r}" if p["text"] else "nothing read"))
                                for p in a.get("ocr_pages", []) if not p["has_text"])
                rows.append([_short(rel), a["page_count"], a["pages_without_text"], why[:160]])
        parts.append("**PARTIAL with OCR on** (pages still without text: what OCR saw)\n")
        parts.append(_table(["file", "pages", "without text", "OCR on those pages"], rows, "lrrl") + "\n")
        rows = [[_short(rel), label(f["after"]), f["after"]["message"][:140]] for rel, f in c["files"].items()
                if f["after"]["status"] == "FAILED"]
        parts.append("**Files that still fail with OCR on** (code and message as recorded)\n")
        parts.append(_table(["file", "outcome", "message"], rows, "lll") + "\n")
        tc = c["target"]
        unsearchable = ", ".join(map(_short, tc["ocr_text_not_searchable"]))
        lines = [f"- recoverable by some engine: {len(tc['recoverable'])} files; all COMPLETED/PARTIAL: "
                 f"{'yes' if not tc['not_indexed'] else 'NO: ' + ', '.join(map(_short, tc['not_indexed']))}",
                 f"- OCR'd text in the chunks: {'NO: ' + unsearchable if unsearchable else 'yes'}",
                 f"- not recoverable: {len(tc['not_recoverable'])} files; failures without a code and message: "
                 f"{', '.join(map(_short, tc['failed_without_reason'])) or 'none'}",
                 f"- recoverable by tesseract but not by docpipe's default (rapidocr): "
                 f"{'none' if not tc['tesseract_only'] else ''}"]
        lines += [f"  - {_short(x['file'])}: " + "; ".join(f"p{p}: {t!r}" for p, t in x["tesseract_read"].items())
                  for x in tc["tesseract_only"]]
        if tc["indexed_without_words"]:
            lines.append("- indexed although no page has a word (text layer of symbols or fragments): "
                         + ", ".join(map(_short, tc["indexed_without_words"])))
        lines.append(f"- **target {'met' if tc['met'] else 'MISSED'}**")
        parts.append("**Issue #14 target** — every file whose text any engine can recover ends COMPLETED or PARTIAL "
                     "with that text searchable; every other file fails with a code and a message\n")
        parts.append("\n".join(lines) + "\n")
    parts.append("timings: " + ", ".join(f"{k} {v}" for k, v in m["timings"].items()))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ocr",
        description="OCR benchmark on ../shared/corpus: speed per core, cost per OCR page and quality of each "
                    "local engine (rapidocr; tesseract when installed) against Textract's list price, and every "
                    "corpus file's outcome with OCR off and on, checked against issue #14's target. Markdown on "
                    "stdout, progress on stderr, raw figures in bench/results/<UTC stamp>-ocr.json. Exit code 1 "
                    "when the target is missed or the run cannot start.",
        epilog="default: ~4-8 minutes on 2 cores; --quick: ~3-6. OCR settings come from the environment as in "
               "the extract stage, e.g. OCR_DPI=300 python -m bench.ocr --no-corpus --label dpi300.")
    ap.add_argument("--corpus", action=argparse.BooleanOptionalAction, default=True,
                    help="run every corpus file with OCR off and on (default: on)")
    ap.add_argument("--quick", action="store_true", help="corpus part only over the files with pages without text")
    ap.add_argument("--engines", default=",".join(ENGINES), type=lambda s: [e.strip() for e in s.split(",") if e.strip()],
                    metavar="LIST", help="local engines to measure (default: rapidocr,tesseract; tesseract only "
                                         "when its binary is on PATH)")
    ap.add_argument("--max-pages", type=int, default=0, metavar="N",
                    help="measure at most N pages per engine (default 0: every page without text)")
    ap.add_argument("--file-timeout", type=float, default=600.0, metavar="S",
                    help="seconds one file may take in any step before it is killed (default 600)")
    ap.add_argument("--no-cache", action="store_true", help="run the text-layer pass even when cached")
    ap.add_argument("--out", type=Path, default=HERE / "results", metavar="DIR",
                    help="where the JSON goes (default bench/results/)")
    ap.add_argument("--label", default="", help="name of this run (added to the JSON file name)")
    args = ap.parse_args(argv)
    unknown = set(args.engines) - set(ENGINES)
    if unknown or "rapidocr" not in args.engines:
        ap.error(f"--engines: rapidocr and optionally tesseract (got {','.join(args.engines)})")
    if args.max_pages < 0 or args.file_timeout <= 0:
        ap.error("--max-pages must be >= 0 and --file-timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import importlib.util

    if not (CORPUS_DIR / "MANIFEST.tsv").exists():
        print(f"error: the corpus is not at {CORPUS_DIR} (../shared/corpus beside the checkout)", file=sys.stderr)
        return 1
    if importlib.util.find_spec("rapidocr") is None:
        print("error: rapidocr is not installed (requirements/dev.txt)", file=sys.stderr)
        return 1
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(result["meta"]["started"]).strftime("%Y%m%dT%H%M%SZ")
    label_ = re.sub(r"[^A-Za-z0-9_.=-]", "_", args.label)
    path = args.out / f"{stamp}{'-' + label_ if label_ else ''}-ocr.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(markdown(result))
    print(f"\nraw figures: {path}")
    target = (result.get("corpus") or {}).get("target")
    return 0 if target is None or target["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
