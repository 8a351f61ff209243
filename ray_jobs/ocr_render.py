"""Pages of an untrusted PDF -> PNG files, rendered in a limited child, never in the caller.

OCR needs a picture of every page without a text layer, and rendering runs the PDF's
content streams and image decoders (JBIG2, JPX, CCITT, Flate) on attacker-controlled
data: the corpus holds a JBIG2 decompression bomb (``bomb_giant.pdf``: 100000x100000
images) and fuzzed files. So rendering uses pdf_sandbox's child mechanism: a fresh
``python -c`` under ``RLIMIT_AS`` (PDF_MAX_MEMORY_MB) with a wall-clock deadline, its own
process group, results as JSON on a private pipe (never pickle), PNGs written to a
temporary directory the parent made for it.

The child writes one JSON line per page as it finishes, so when it dies on a page (out of
memory, out of time, a crash in pdfium) the pages before it stand, that page gets an
error, and a new child renders the rest. Every render is capped at ``MAX_SIDE_PX`` on the
longer side whatever the page size: a 200-inch page must not allocate gigabytes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from ray_jobs.pdf_parse import ERROR_MAX, is_enomem, short_error
from ray_jobs.pdf_sandbox import _MEMORY_MARKERS, _limit_resources, spawn_child

MAX_SIDE_PX = 4000  # longer side of a rendered page; Textract takes up to 10000 px a side
MIN_SCALE = 0.05  # below this a page is a poster of hundreds of inches: refuse, do not render a smudge


@dataclass
class Rendered:
    page_number: int  # 1-based
    png: str | None  # path of the PNG (None when the page failed)
    error: str | None
    width: int = 0
    height: int = 0
    no_time: bool = False  # not rendered because the time budget ran out (not the page's fault)


def render_scale(width_pt: float, height_pt: float, dpi: int, max_side_px: int = MAX_SIDE_PX) -> float:
    """pdfium's scale (pixels per point) for `dpi`, lowered so the longer side stays within
    `max_side_px`. Raises ValueError for a page without a usable size."""
    if not (math.isfinite(width_pt) and math.isfinite(height_pt)) or width_pt <= 0 or height_pt <= 0:
        raise ValueError(f"page size {width_pt}x{height_pt} pt is not usable")
    scale = dpi / 72.0
    longest = max(width_pt, height_pt)
    if longest * scale > max_side_px:
        scale = max_side_px / longest
    if scale < MIN_SCALE:
        raise ValueError(f"page of {width_pt:.0f}x{height_pt:.0f} pt is too large to render legibly")
    return scale


# ---------------------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------------------

def _render_one(doc: Any, number: int, dpi: int, max_side_px: int, out_dir: str) -> dict[str, Any]:
    page = doc[number - 1]
    try:
        width, height = page.get_size()
        scale = render_scale(float(width), float(height), dpi, max_side_px)
        # Grayscale: a third of the memory and PNG size of RGB, and OCR reads luminance anyway.
        bitmap = page.render(scale=scale, grayscale=True, may_draw_forms=True)
        try:
            image = bitmap.to_pil()
            png = os.path.join(out_dir, f"page-{number:06d}.png")
            image.save(png, format="PNG", compress_level=3)
            return {"page_number": number, "png": png, "error": None, "width": image.width, "height": image.height}
        finally:
            bitmap.close()
    finally:
        page.close()


def child_main() -> None:
    """Request JSON on stdin; one JSON line per page on a private dup of stdout (fd 1 is
    pointed at stderr so stray prints from C code cannot corrupt the results)."""
    result_fd = os.dup(1)
    os.dup2(2, 1)
    request = json.loads(sys.stdin.read())
    out = os.fdopen(result_fd, "w", encoding="utf-8")

    def emit(item: dict[str, Any]) -> None:
        out.write(json.dumps(item) + "\n")
        out.flush()  # a page written is a page kept if we die on the next one

    try:
        import warnings

        warnings.simplefilter("ignore")
        _limit_resources(request["max_memory_mb"], request["timeout_s"])
        import pypdfium2 as pdfium

        doc = pdfium.PdfDocument(request["path"], password=request["password"] or None)
        count = len(doc)
        for number in request["pages"]:
            if not 1 <= number <= count:
                emit({"page_number": number, "png": None, "error": f"page {number} not in the {count}-page document"})
                continue
            try:
                emit(_render_one(doc, number, request["dpi"], request["max_side_px"], request["out_dir"]))
            except MemoryError:
                emit({"page_number": number, "png": None, "error": "render: over the memory limit"})
            except Exception as exc:
                if is_enomem(exc):
                    emit({"page_number": number, "png": None, "error": "render: over the memory limit"})
                else:
                    emit({"page_number": number, "png": None, "error": short_error("render", exc)})
        doc.close()
    except MemoryError:
        emit({"fatal": "render: over the memory limit while opening the document"})
    except Exception as exc:  # the document itself does not open (it did for text extraction, so rare)
        emit({"fatal": short_error("render", exc)})
    out.close()


# ---------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------

CHILD_CODE = "from ray_jobs.ocr_render import child_main; child_main()"


def _death_reason(rc: int, stderr: str, timed_out: bool, timeout_s: float, max_memory_mb: int) -> str:
    if timed_out or rc == -signal.SIGXCPU:
        return f"render: took longer than {timeout_s:.0f} s"
    if rc == -signal.SIGKILL or any(marker in stderr for marker in _MEMORY_MARKERS) or rc == -signal.SIGABRT:
        # pdfium aborts silently when an allocation fails under RLIMIT_AS.
        return f"render: over the memory limit of {max_memory_mb} MB"
    last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return f"render: the renderer exited with {rc}: {last_line}"[:ERROR_MAX]


def _run_child(request: dict[str, Any], timeout_s: float) -> tuple[list[dict[str, Any]], str | None]:
    """One child over request["pages"]. -> (the page lines it wrote, why it died or None)."""
    request = {**request, "timeout_s": timeout_s}
    rc, out, err, timed_out = spawn_child(CHILD_CODE, request, timeout_s)  # keeps what it wrote before a time-out
    items: list[dict[str, Any]] = []
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            break  # a torn last line: it died while writing
        if isinstance(item, dict):
            items.append(item)
    clean = rc == 0 and not timed_out
    reason = None if clean else _death_reason(rc, err.decode("utf-8", "replace")[-2000:], timed_out,
                                              timeout_s, request["max_memory_mb"])
    return items, reason


def render_pages(path: str, pages: list[int], out_dir: str, *, dpi: int, password: str = "",
                 timeout_s: float, max_memory_mb: int, max_side_px: int = MAX_SIDE_PX) -> list[Rendered]:
    """Render `pages` (1-based) of the PDF at `path` to PNGs in `out_dir`, in limited
    children, within `timeout_s` in all. Returns one Rendered per page, in the given order;
    failed pages carry `error`. Never raises for what the document does."""
    deadline = time.monotonic() + timeout_s
    done: dict[int, Rendered] = {}
    todo = list(dict.fromkeys(pages))
    request = {"path": os.fspath(path), "password": password, "dpi": int(dpi), "max_side_px": int(max_side_px),
               "out_dir": os.fspath(out_dir), "max_memory_mb": int(max_memory_mb)}
    while todo:
        remaining = deadline - time.monotonic()
        if remaining <= 0.5:
            for number in todo:
                done[number] = Rendered(number, None, f"render: no time left of {timeout_s:.0f} s", no_time=True)
            break
        items, reason = _run_child({**request, "pages": todo}, remaining)
        fatal = next((i["fatal"] for i in items if "fatal" in i), None)
        for item in items:
            answered = item.get("page_number")
            if isinstance(answered, int) and answered in todo and answered not in done:
                done[answered] = Rendered(answered, item.get("png"), item.get("error"),
                                        int(item.get("width") or 0), int(item.get("height") or 0))
        todo = [n for n in todo if n not in done]
        if fatal is not None or (reason is None and todo):
            for number in todo:  # the document did not open, or the child skipped pages
                done[number] = Rendered(number, None, (fatal or "render: no result")[:ERROR_MAX])
            break
        if todo and reason is not None:
            # The child died on the first page it had not answered: that page fails, a new
            # child renders the rest (every round settles one page at least).
            done[todo[0]] = Rendered(todo[0], None, reason)
            todo = todo[1:]
    return [done[n] for n in dict.fromkeys(pages)]
