"""PDF -> pages (the rows of ``extracted/<doc>/<ver>/pages.jsonl``).

``extract_pdf`` never parses a PDF in the calling process. Uploads are untrusted and the
corpus holds fuzzed files, page-tree loops and decompression bombs, so every parse runs
in a fresh child interpreter (``python -c "...pdf._child_main()"``) with

- ``RLIMIT_AS`` = ``max_memory_mb`` (plus ``RLIMIT_CPU`` as a backstop if we die and
  orphan it, and no core dumps),
- a wall-clock deadline after which the parent kills the child's process group,
- results returned as JSON on a private pipe (JSON, not pickle: a child that a hostile
  file subverted must not be able to run code in the parent).

Backends:
- ``auto``: pypdfium2 first (~20x faster than pypdf on the corpus). If pdfium cannot open
  the document (or sees no pages, or crashes), pypdf reads the whole document. If one page
  fails in pdfium or yields no text, that page alone is retried with pypdf.
- ``pypdf``: pypdf only.

Outcomes (the error classes are docpipe.errors):
- zero-byte file -> EmptyDocument (checked before any child starts);
- a password we do not have -> PdfEncrypted (an empty user password is tried and works);
- neither library can open it, it has no pages, or every page failed -> PdfMalformed;
- over the memory limit (MemoryError, ENOMEM, or pdfium's abort on allocation failure)
  -> TooLarge;
- over the time limit -> PdfTimeout;
- a document without a text layer is *not* an error here: the result says
  ``pages_with_text == 0`` and the stage decides (PdfNoText).

Large documents (``page_count > parallel_threshold_pages``) are split into page ranges
extracted as Ray tasks when ``ray.is_initialized()``; each range again runs in a limited
child. The result is identical to the sequential path (same per-page decisions).

CLI for debugging: ``python -m ray_jobs.pdf FILE [--backend auto|pypdf] [--json]``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from docpipe import errors

BACKENDS = ("auto", "pypdf")
MIN_TEXT_CHARS = 3  # non-space characters for a page to count as having text
_ERROR_MAX = 300  # characters kept of a per-page error message
_STDERR_TAIL = 2000  # characters of a dead child's stderr kept for the message


# ---------------------------------------------------------------------------------------
# Text normalisation (pure)
# ---------------------------------------------------------------------------------------

# A soft hyphen (U+00AD) or pdfium's marker for a line-end hyphen (U+FFFE, which pdfium
# emits *instead of* the line break) ends a syllable: drop it and one following line break.
_SOFT_HYPHEN_BREAK = re.compile(r"[\u00ad\ufffe]+(?:[ \t]*\n(?![ \t]*\n)[ \t]*)?")
# A word hyphenated across a line end: "infor-\nmation". Joined only when the next line
# starts in lower case, so "Just-in-\nTime" or "-\n2" keep their hyphen.
_HYPHEN_BREAK = re.compile(r"([^\W\d_])-[ \t]*\n[ \t]*([^\W\d_])")
_SPACES = re.compile(r" {2,}")
_TRAILING = re.compile(r"[ \t]+\n")
_NEWLINES = re.compile(r"\n{3,}")


def _control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for cp in list(range(0x00, 0x20)) + list(range(0x7F, 0xA0)):
        table[cp] = None
    # Vertical separators become line breaks rather than gluing lines together.
    for cp in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029):
        table[cp] = "\n"
    table[0x09] = "\t"
    table[0x0A] = "\n"
    # Invisible marks that only break words for search: zero-width space, word joiner,
    # BOM, noncharacters. ZWJ/ZWNJ stay: Arabic and Indic scripts need them.
    for cp in (0x00AD, 0x200B, 0x2060, 0xFEFF, 0xFFFE, 0xFFFF):
        table[cp] = None
    return table


_CONTROL = _control_table()


def normalise_text(s: str) -> str:
    """Normalise one page's text: line ends to \n, NFKC (ligatures), hyphenation undone,
    soft hyphens and control characters dropped, runs of spaces collapsed, trailing spaces
    and blank-line runs trimmed. Idempotent. Chunk offsets refer to this text."""
    if not s:
        return ""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = unicodedata.normalize("NFKC", s)  # ligatures (ﬁ -> fi), full-width forms, NBSP
    s = _SOFT_HYPHEN_BREAK.sub("", s)
    s = s.translate(_CONTROL)
    s = _HYPHEN_BREAK.sub(lambda m: m.group(1) + m.group(2) if m.group(2).islower() else m.group(0), s)
    s = _SPACES.sub(" ", s)
    s = _TRAILING.sub("\n", s)
    s = _NEWLINES.sub("\n\n", s)
    return s.strip()


def has_text(text: str, min_chars: int = MIN_TEXT_CHARS) -> bool:
    n = 0
    for ch in text:
        if not ch.isspace():
            n += 1
            if n >= min_chars:
                return True
    return False


# ---------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------


@dataclass
class ExtractResult:
    pages: list[dict]  # pages.jsonl rows, in page order
    page_count: int
    pages_with_text: int
    pages_without_text: int
    page_errors: int  # pages that failed while others succeeded (their `error` is set)
    extractor: str  # "pdfium" | "pypdf": the extractor of most pages
    seconds: float  # wall clock of the whole extraction
    ranges: int = 1  # page ranges extracted (> 1 only on the parallel Ray path)
    stats: dict = field(default_factory=dict)  # pages per extractor

    def summary(self) -> dict:
        return {
            "page_count": self.page_count,
            "pages_with_text": self.pages_with_text,
            "pages_without_text": self.pages_without_text,
            "page_errors": self.page_errors,
            "extractor": self.extractor,
            "seconds": round(self.seconds, 3),
            "ranges": self.ranges,
            "stats": dict(self.stats),
        }


# ---------------------------------------------------------------------------------------
# Parsing (runs inside the limited child; importable for unit tests)
# ---------------------------------------------------------------------------------------


class _ChildError(Exception):
    """An outcome the child reports by code (PdfEncrypted, PdfMalformed, TooLarge)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _short(lib: str, exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{lib}: {type(exc).__name__}: {text}"[:_ERROR_MAX]


def _is_enomem(exc: BaseException) -> bool:
    # Under RLIMIT_AS, dlopen fails with "failed to map segment" (an OSError from ctypes,
    # an ImportError from an extension module) and mmap with ENOMEM.
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return isinstance(exc, (OSError, ImportError)) and any(
        marker in str(exc) for marker in ("failed to map segment", "Cannot allocate memory"))


def _raise_if_memory(exc: BaseException) -> None:
    """Out of memory must end the document as TooLarge, not look like a broken file
    that the other library might read."""
    if _is_enomem(exc):
        raise MemoryError(str(exc)) from exc


def _pdfium_page_text(doc, index: int) -> str:
    page = doc[index]
    try:
        textpage = page.get_textpage()
        try:
            return textpage.get_text_range()
        finally:
            textpage.close()
    finally:
        page.close()


def _pypdf_page_text(reader, index: int) -> str:
    # Plain mode: layout mode loses text on rotated pages (NOTES.md).
    return reader.pages[index].extract_text() or ""


def _open_pdfium(path: str, password: str):
    """-> (document, page_count). Raises _ChildError or the library's exception."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        doc = pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise _ChildError("PdfEncrypted", _short("pdfium", exc)) from exc
        raise
    return doc, len(doc)


def _open_pypdf(path: str, password: str):
    """-> (reader, page_count). Raises _ChildError or the library's exception."""
    import pypdf

    reader = pypdf.PdfReader(path)
    if reader.is_encrypted:
        try:
            ok = reader.decrypt(password)
        except Exception as exc:  # unsupported algorithm, broken /Encrypt dictionary
            raise _ChildError("PdfEncrypted", _short("pypdf", exc)) from exc
        if ok == pypdf.PasswordType.NOT_DECRYPTED:
            raise _ChildError("PdfEncrypted", "pypdf: the document needs a password")
    try:
        count = len(reader.pages)  # walks the page tree; raises on loops
    except pypdf.errors.FileNotDecryptedError as exc:
        raise _ChildError("PdfEncrypted", _short("pypdf", exc)) from exc
    return reader, count


class _LazyPypdf:
    """pypdf opened on first need (auto mode's per-page fallback); a failure to open is
    remembered so every fallback page does not pay for it again."""

    def __init__(self, path: str, password: str):
        self.path, self.password = path, password
        self.reader = None
        self.count = 0
        self.error: str | None = None

    def page(self, index: int) -> tuple[str | None, str | None]:
        """-> (raw text, None) or (None, error message)."""
        if self.reader is None and self.error is None:
            try:
                self.reader, self.count = _open_pypdf(self.path, self.password)
            except MemoryError:
                raise
            except _ChildError as exc:
                self.error = f"pypdf: {exc.message}"[:_ERROR_MAX]
            except Exception as exc:
                _raise_if_memory(exc)
                self.error = _short("pypdf", exc)
        if self.error is not None:
            return None, self.error
        if index >= self.count:
            return None, f"pypdf: page {index + 1} not in its {self.count}-page tree"
        try:
            return _pypdf_page_text(self.reader, index), None
        except MemoryError:
            raise
        except Exception as exc:
            return None, _short("pypdf", exc)


def _page(number: int, text: str, extractor: str, error: str | None) -> dict:
    return {"page_number": number, "text": text, "extractor": extractor, "error": error}


def _extract_pages(path: str, backend: str = "auto", password: str = "", first: int = 0,
                   last: int | None = None, probe_threshold: int | None = None) -> dict:
    """Parse pages [first, last) (0-based, last=None: to the end) in this process.

    Returns {"page_count", "backend", "pages": [{page_number, text, extractor, error}]}
    with normalised text; with ``probe_threshold`` set and more pages than that, returns
    early with ``"pages": None`` so the caller can split the work. Raises _ChildError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    doc = None
    count = 0
    used = "pypdf"
    reasons: list[str] = []
    encrypted = False
    if backend == "auto":
        try:
            doc, count = _open_pdfium(path, password)
            used = "pdfium"
            if count == 0:  # pypdf sometimes finds pages in a tree pdfium rejects
                reasons.append("pdfium: no pages")
                doc.close()
                doc, used = None, "pypdf"
        except MemoryError:
            raise
        except _ChildError as exc:
            encrypted = True
            reasons.append(exc.message)
        except Exception as exc:
            _raise_if_memory(exc)
            reasons.append(_short("pdfium", exc))

    reader = None
    if doc is None:
        try:
            reader, count = _open_pypdf(path, password)
        except MemoryError:
            raise
        except _ChildError as exc:
            raise _ChildError(exc.code, "; ".join(reasons + [exc.message])) from exc
        except Exception as exc:
            _raise_if_memory(exc)
            code = "PdfEncrypted" if encrypted else "PdfMalformed"
            raise _ChildError(code, "; ".join(reasons + [_short("pypdf", exc)])) from exc
        if count == 0:
            raise _ChildError("PdfMalformed", "; ".join(reasons + ["pypdf: no pages"]))

    if probe_threshold is not None and count > probe_threshold:
        return {"page_count": count, "backend": used, "pages": None}

    stop = count if last is None else min(last, count)
    pages: list[dict] = []
    if used == "pypdf":
        for i in range(first, stop):
            try:
                pages.append(_page(i + 1, normalise_text(_pypdf_page_text(reader, i)), "pypdf", None))
            except MemoryError:
                raise
            except Exception as exc:
                pages.append(_page(i + 1, "", "pypdf", _short("pypdf", exc)))
        return {"page_count": count, "backend": used, "pages": pages}

    fallback = _LazyPypdf(path, password)
    for i in range(first, stop):
        text, error = "", None
        try:
            text = normalise_text(_pdfium_page_text(doc, i))
        except MemoryError:
            raise
        except Exception as exc:
            error = _short("pdfium", exc)
        if error is None and has_text(text):
            pages.append(_page(i + 1, text, "pdfium", None))
            continue
        # Per-page fallback: pdfium failed this page or found no text on it.
        alt, alt_error = fallback.page(i)
        if alt is not None:
            alt = normalise_text(alt)
            if has_text(alt) or error is not None:
                pages.append(_page(i + 1, alt, "pypdf", None))
                continue
        if error is not None:  # both failed: a per-page error, the other pages stand
            pages.append(_page(i + 1, "", "pdfium", f"{error}; {alt_error}"[:_ERROR_MAX]))
        else:  # pdfium read the page fine; it just has no text layer
            pages.append(_page(i + 1, text, "pdfium", None))
    doc.close()
    return {"page_count": count, "backend": used, "pages": pages}


def _limit_resources(max_memory_mb: int, timeout_s: float) -> None:
    import resource

    limit = int(max_memory_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Backstop if the parent dies and cannot kill us: SIGXCPU, then SIGKILL at the hard limit.
    cpu = int(math.ceil(timeout_s)) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child_main() -> None:
    """Entry point of the child: request JSON on stdin, result JSON on a private dup of
    stdout; fd 1 itself is pointed at stderr so stray prints from C code or libraries
    cannot corrupt the result."""
    result_fd = os.dup(1)
    os.dup2(2, 1)
    request = json.loads(sys.stdin.read())
    try:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.getLogger("pypdf").setLevel(logging.ERROR)  # thousands of lines on broken files
        _limit_resources(request["max_memory_mb"], request["timeout_s"])
        out = _extract_pages(request["path"], request["backend"], request["password"],
                             request["first"], request["last"], request["probe_threshold"])
        result = {"ok": True, **out}
    except MemoryError:
        result = {"ok": False, "code": "TooLarge", "message": "over the memory limit while parsing"}
    except _ChildError as exc:
        result = {"ok": False, "code": exc.code, "message": exc.message}
    except Exception as exc:
        if _is_enomem(exc):
            result = {"ok": False, "code": "TooLarge", "message": _short("child", exc)}
        else:
            result = {"ok": False, "code": "PdfMalformed", "message": _short("child", exc)}
    data = json.dumps(result).encode("utf-8")
    with os.fdopen(result_fd, "wb") as out_file:
        out_file.write(data)


# ---------------------------------------------------------------------------------------
# Parent side: run one child, classify how it ended
# ---------------------------------------------------------------------------------------

_CHILD_CODE = "from ray_jobs.pdf import _child_main; _child_main()"
_MEMORY_MARKERS = ("MemoryError", "bad_alloc", "out of memory", "Out of memory",
                   "Cannot allocate memory", "failed to map segment")
_HEAP_CORRUPTION = ("corrupted", "double free", "free(): invalid", "stack smashing")


class _ChildCrashed(Exception):
    """The child died without a result, for a reason other than memory or time."""


def _child_env() -> dict:
    # The child must import ray_jobs and docpipe however this process found them
    # (editable install, Ray working_dir, PYTHONPATH).
    import docpipe

    roots = [str(Path(__file__).resolve().parents[1]), str(Path(docpipe.__file__).resolve().parents[1])]
    env = dict(os.environ)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + ([old] if old else [])))
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _run_child(request: dict, timeout_s: float) -> dict:
    """Run one limited child. Returns its result dict (ok or a coded error);
    raises PdfTimeout, TooLarge or _ChildCrashed."""
    if timeout_s <= 0:
        raise errors.PdfTimeout(f"no time left to parse {request['path']}")
    request = {**request, "timeout_s": timeout_s}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_CODE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_child_env(), start_new_session=True,  # own process group: killpg on timeout
    )
    try:
        out, err = proc.communicate(json.dumps(request).encode("utf-8"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise errors.PdfTimeout(f"parsing took longer than {timeout_s:.0f} s") from None
    except BaseException:
        _kill_group(proc)  # KeyboardInterrupt, SIGTERM handler exceptions: no orphans
        proc.communicate()
        raise
    stderr = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
    if out:
        try:
            return json.loads(out)
        except ValueError:
            pass  # truncated: it died while writing; classified below
    rc = proc.returncode
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in stderr:
        # SIGXCPU: our CPU backstop; SIGKILL (not from us): the CPU hard limit or the
        # kernel's OOM killer. Both mean the document is too expensive.
        if rc == -signal.SIGXCPU:
            raise errors.PdfTimeout(f"parsing used more than {timeout_s:.0f} s of CPU")
        raise errors.TooLarge("the parser was killed (out of memory)")
    if any(marker in stderr for marker in _MEMORY_MARKERS):
        raise errors.TooLarge(f"over the memory limit of {request['max_memory_mb']} MB")
    if rc == -signal.SIGABRT and not any(marker in stderr for marker in _HEAP_CORRUPTION):
        # pdfium aborts silently when an allocation fails under RLIMIT_AS.
        raise errors.TooLarge(f"over the memory limit of {request['max_memory_mb']} MB (parser aborted)")
    last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    raise _ChildCrashed(f"parser exited with {rc}: {last_line}"[:_ERROR_MAX])


_ERROR_CLASSES = {"PdfEncrypted": errors.PdfEncrypted, "PdfMalformed": errors.PdfMalformed,
                  "TooLarge": errors.TooLarge}


def _extract_in_child(path: str, backend: str, password: str, first: int, last: int | None,
                      probe_threshold: int | None, timeout_s: float, max_memory_mb: int) -> dict:
    """One range in a limited child; in auto mode a crashed pdfium child is retried with
    pypdf in a new child within the same deadline. Raises the named errors."""
    deadline = time.monotonic() + timeout_s
    request = {"path": path, "backend": backend, "password": password, "first": first, "last": last,
               "probe_threshold": probe_threshold, "max_memory_mb": max_memory_mb}
    try:
        result = _run_child(request, timeout_s)
    except _ChildCrashed as exc:
        if backend != "auto":
            raise errors.PdfMalformed(f"pypdf crashed: {exc}") from None
        try:
            result = _run_child({**request, "backend": "pypdf"}, deadline - time.monotonic())
        except _ChildCrashed as exc2:
            raise errors.PdfMalformed(f"pdfium and pypdf crashed: {exc}; {exc2}") from None
    if not result.get("ok"):
        raise _ERROR_CLASSES.get(result.get("code"), errors.PdfMalformed)(result.get("message", ""))
    return result


# ---------------------------------------------------------------------------------------
# Ray: page ranges in parallel (lazy import; plain extraction never imports ray)
# ---------------------------------------------------------------------------------------

_REMOTE = None


def _range_task(path, backend, password, first, last, deadline_epoch, max_memory_mb) -> dict:
    """Runs in a Ray worker. The deadline is absolute (epoch seconds) so a range that
    waited in the queue gets only the time left. Returns errors as data: a raised error
    would reach the driver wrapped in RayTaskError."""
    try:
        out = _extract_in_child(path, backend, password, first, last, None,
                                deadline_epoch - time.time(), max_memory_mb)
        return {"ok": True, "pages": out["pages"]}
    except errors.DocpipeError as exc:
        return {"ok": False, "code": exc.code, "message": str(exc)}


def _remote_range_task():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(num_cpus=1, max_retries=1)(_range_task)
    return _REMOTE


def _ray_active() -> bool:
    if os.environ.get("DOCPIPE_NO_RAY") != "1" and (os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS")):
        # Inside a Ray job: connect only when a document is large enough to split
        # (`ray.init` costs a driver ~0.7 CPU-s, measured by `make bench`).
        return True
    if "ray" not in sys.modules:  # never import ray just to find out it is not running
        return False
    try:
        return bool(sys.modules["ray"].is_initialized())
    except Exception:
        return False


def page_ranges(page_count: int, parts: int) -> list[tuple[int, int]]:
    """Split [0, page_count) into `parts` contiguous, near-equal [first, last) ranges."""
    parts = max(1, min(parts, page_count))
    size, extra = divmod(page_count, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def _extract_parallel(path: str, backend: str, password: str, page_count: int, deadline: float,
                      max_memory_mb: int, parallel_threshold_pages: int) -> tuple[list[dict], int]:
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
    # ~2 ranges per CPU balances uneven pages; no range smaller than half the threshold
    # (each range pays for a child interpreter and a document open).
    min_size = max(1, parallel_threshold_pages // 2)
    parts = max(2, min(2 * cpus, page_count // min_size))
    ranges = page_ranges(page_count, parts)
    task = _remote_range_task()
    remaining = deadline - time.monotonic()
    deadline_epoch = time.time() + remaining
    refs = [task.remote(path, backend, password, a, b, deadline_epoch, max_memory_mb) for a, b in ranges]
    order = {ref: i for i, ref in enumerate(refs)}
    results: list[dict | None] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            # The children kill themselves at the deadline; the slack covers task start-up.
            wait_s = max(1.0, deadline - time.monotonic() + 30)
            done, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
            if not done:
                raise errors.PdfTimeout(f"page ranges did not finish within {remaining:.0f} s")
            res = ray.get(done[0])
            if not res["ok"]:  # one range failed: the document failed, stop the others
                raise getattr(errors, res["code"], errors.PdfMalformed)(res["message"])
            results[order[done[0]]] = res
    finally:
        for ref in pending:
            ray.cancel(ref)  # not force: the task then kills its child process group
    pages: list[dict] = []
    for res in results:
        pages.extend(res["pages"])
    return pages, len(ranges)


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def extract_pdf(path: str, *, document_id: str, processing_version: str, backend: str = "auto",
                timeout_s: float = 120, max_memory_mb: int = 1536, password: str = "",
                parallel_threshold_pages: int = 64) -> ExtractResult:
    """Extract normalised text per page of the PDF at `path` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if timeout_s <= 0 or max_memory_mb <= 0:
        raise ValueError("timeout_s and max_memory_mb must be positive")
    started = time.monotonic()
    deadline = started + timeout_s
    path = os.fspath(path)
    if os.path.getsize(path) == 0:  # FileNotFoundError for a missing path is the caller's bug
        raise errors.EmptyDocument(f"{path} has zero bytes")

    parallel = _ray_active()
    first = _extract_in_child(path, backend, password, 0, None,
                              parallel_threshold_pages if parallel else None,
                              timeout_s, max_memory_mb)
    ranges = 1
    if first["pages"] is None:  # the probe found a large document and Ray is up
        # Ranges reuse the backend the probe settled on (pdfium, or pypdf for the whole
        # document), so every page gets exactly the sequential path's decision.
        range_backend = "auto" if first["backend"] == "pdfium" else "pypdf"
        raw_pages, ranges = _extract_parallel(path, range_backend, password, first["page_count"],
                                              deadline, max_memory_mb, parallel_threshold_pages)
    else:
        raw_pages = first["pages"]

    page_count = first["page_count"]
    if len(raw_pages) != page_count or [p["page_number"] for p in raw_pages] != list(range(1, page_count + 1)):
        raise errors.PdfMalformed(f"page tree changed between reads ({page_count} pages, got {len(raw_pages)})")
    failed = [p for p in raw_pages if p["error"]]
    if failed and len(failed) == page_count:
        raise errors.PdfMalformed(f"no page could be read: {failed[0]['error']}")

    rows = []
    for p in raw_pages:
        rows.append({
            "document_id": document_id,
            "processing_version": processing_version,
            "page_number": p["page_number"],
            "text": p["text"],
            "char_count": len(p["text"]),
            "has_text": has_text(p["text"]),
            "extractor": p["extractor"],
            "error": p["error"],
        })
    with_text = sum(1 for r in rows if r["has_text"])
    stats = Counter(r["extractor"] for r in rows)
    main = max(("pdfium", "pypdf"), key=lambda name: (stats.get(name, 0), name == "pdfium"))
    return ExtractResult(
        pages=rows,
        page_count=page_count,
        pages_with_text=with_text,
        pages_without_text=page_count - with_text,
        page_errors=len(failed),
        extractor=main,
        seconds=time.monotonic() - started,
        ranges=ranges,
        stats=dict(sorted(stats.items())),
    )


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import hashlib

    from docpipe import identity

    parser = argparse.ArgumentParser(
        prog="python -m ray_jobs.pdf",
        description="Extract one PDF into pages (as the extract stage does) and print a per-page summary.")
    parser.add_argument("file", help="path of the PDF")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--json", action="store_true", help="print the pages.jsonl rows and a summary as JSON")
    parser.add_argument("--timeout", type=float, default=120, help="seconds (default 120)")
    parser.add_argument("--max-memory-mb", type=int, default=1536, help="address-space limit of the parser (default 1536)")
    parser.add_argument("--password", default="", help="user password (default: the empty one)")
    args = parser.parse_args(argv)

    try:
        with open(args.file, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        result = extract_pdf(
            args.file,
            document_id=identity.document_id("local", os.path.abspath(args.file)),
            processing_version=identity.processing_version(digest),
            backend=args.backend, timeout_s=args.timeout, max_memory_mb=args.max_memory_mb,
            password=args.password)
    except (errors.DocpipeError, OSError) as exc:
        code = errors.error_code_of(exc) if isinstance(exc, errors.DocpipeError) else type(exc).__name__
        print(f"error: {code}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1

    if args.json:
        json.dump({"summary": result.summary(), "pages": result.pages}, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    for row in result.pages:
        preview = row["text"][:60].replace("\n", " ")
        flag = "text" if row["has_text"] else "----"
        line = f"page {row['page_number']:>5}  {flag}  {row['char_count']:>7} chars  {row['extractor']:<6}  {preview}"
        if row["error"]:
            line += f"  ERROR {row['error']}"
        print(line)
    s = result.summary()
    print(f"{s['page_count']} pages, {s['pages_with_text']} with text, {s['pages_without_text']} without, "
          f"{s['page_errors']} errors; extractor {s['extractor']} {s['stats']}; {s['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
