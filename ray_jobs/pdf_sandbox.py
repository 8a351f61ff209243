"""The sandbox: every PDF parse runs in a fresh child interpreter, never in the caller.

Uploads are untrusted and the corpus holds fuzzed files, page-tree loops and decompression
bombs, so ``run_child`` starts ``python -c CHILD_CODE`` (which runs ``child_main``, the
parse of ``pdf_parse``) with

- ``RLIMIT_AS`` = ``max_memory_mb`` (plus ``RLIMIT_CPU`` as a backstop if we die and
  orphan it, and no core dumps),
- a wall-clock deadline after which the parent kills the child's process group,
- results returned as JSON on a private pipe (JSON, not pickle: a child that a hostile
  file subverted must not be able to run code in the parent).

How a child ends maps to docpipe.errors: over the memory limit (MemoryError, ENOMEM, or
pdfium's abort on allocation failure) -> TooLarge; over the time limit -> PdfTimeout; a
password we do not have -> PdfEncrypted; an unreadable document -> PdfMalformed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from docpipe import errors
from ray_jobs.pdf_parse import ERROR_MAX, ChildError, Parsed, extract_pages, is_enomem, short_error

_STDERR_TAIL = 2000  # characters of a dead child's stderr kept for the message


# ---------------------------------------------------------------------------------------
# Child side: parse under the limits, answer on a private pipe
# ---------------------------------------------------------------------------------------

def _limit_resources(max_memory_mb: int, timeout_s: float) -> None:
    import resource

    limit = int(max_memory_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Backstop if the parent dies and cannot kill us: SIGXCPU, then SIGKILL at the hard limit.
    cpu = math.ceil(timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child_main() -> None:
    """Entry point of the child: request JSON on stdin, result JSON on a private dup of
    stdout; fd 1 itself is pointed at stderr so stray prints from C code or libraries
    cannot corrupt the result."""
    result_fd = os.dup(1)
    os.dup2(2, 1)
    request = json.loads(sys.stdin.read())
    result: dict[str, Any]
    try:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.getLogger("pypdf").setLevel(logging.ERROR)  # thousands of lines on broken files
        _limit_resources(request["max_memory_mb"], request["timeout_s"])
        out = extract_pages(request["path"], request["backend"], request["password"],
                            request["first"], request["last"], request["probe_threshold"])
        result = {"ok": True, **out}
    except MemoryError:
        result = {"ok": False, "code": "TooLarge", "message": "over the memory limit while parsing"}
    except ChildError as exc:
        result = {"ok": False, "code": exc.code, "message": exc.message}
    except Exception as exc:
        if is_enomem(exc):
            result = {"ok": False, "code": "TooLarge", "message": short_error("child", exc)}
        else:
            result = {"ok": False, "code": "PdfMalformed", "message": short_error("child", exc)}
    data = json.dumps(result).encode("utf-8")
    with os.fdopen(result_fd, "wb") as out_file:
        out_file.write(data)


# ---------------------------------------------------------------------------------------
# Parent side: run one child, classify how it ended
# ---------------------------------------------------------------------------------------

CHILD_CODE = "from ray_jobs.pdf_sandbox import child_main; child_main()"
_MEMORY_MARKERS = ("MemoryError", "bad_alloc", "out of memory", "Out of memory",
                   "Cannot allocate memory", "failed to map segment")
_HEAP_CORRUPTION = ("corrupted", "double free", "free(): invalid", "stack smashing")


class ChildCrashed(Exception):
    """The child died without a result, for a reason other than memory or time."""


def _child_env() -> dict[str, str]:
    # The child must import ray_jobs and docpipe however this process found them
    # (editable install, Ray working_dir, PYTHONPATH).
    import docpipe

    roots = [str(Path(__file__).resolve().parents[1]), str(Path(docpipe.__file__).resolve().parents[1])]
    env = dict(os.environ)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + ([old] if old else [])))
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def spawn_child(code: str, request: dict[str, Any], timeout_s: float) -> tuple[int, bytes, bytes, bool]:
    """Run ``python -c code`` (a child_main that limits itself) with `request` as JSON on
    stdin, in its own process group, for at most `timeout_s` seconds. Returns (returncode,
    stdout, stderr, timed out); on time-out the group is killed and what the child wrote
    before is kept. The parse and the OCR renderer (ray_jobs.ocr_render) both run so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_child_env(), start_new_session=True,  # own process group: killpg on timeout
    )
    timed_out = False
    try:
        out, err = proc.communicate(json.dumps(request).encode("utf-8"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, err = proc.communicate()
    except BaseException:
        _kill_group(proc)  # KeyboardInterrupt, SIGTERM handler exceptions: no orphans
        proc.communicate()
        raise
    return proc.returncode, out, err, timed_out


def run_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one limited child. Returns its result dict (ok or a coded error);
    raises PdfTimeout, TooLarge or ChildCrashed."""
    if timeout_s <= 0:
        raise errors.PdfTimeout(f"no time left to parse {request['path']}")
    request = {**request, "timeout_s": timeout_s}
    rc, out, err, timed_out = spawn_child(CHILD_CODE, request, timeout_s)
    if timed_out:
        raise errors.PdfTimeout(f"parsing took longer than {timeout_s:.0f} s")
    stderr = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
    if out:
        try:
            result: dict[str, Any] = json.loads(out)
            return result
        except ValueError:
            pass  # truncated: it died while writing; classified below
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
    raise ChildCrashed(f"parser exited with {rc}: {last_line}"[:ERROR_MAX])


_ERROR_CLASSES: dict[str, type[errors.DocpipeError]] = {"PdfEncrypted": errors.PdfEncrypted, "PdfMalformed": errors.PdfMalformed,
                  "TooLarge": errors.TooLarge}


def extract_in_child(path: str, backend: str, password: str, first: int, last: int | None,
                     probe_threshold: int | None, timeout_s: float, max_memory_mb: int) -> Parsed:
    """One range in a limited child; in auto mode a crashed pdfium child is retried with
    pypdf in a new child within the same deadline. Raises the named errors."""
    deadline = time.monotonic() + timeout_s
    request = {"path": path, "backend": backend, "password": password, "first": first, "last": last,
               "probe_threshold": probe_threshold, "max_memory_mb": max_memory_mb}
    try:
        result = run_child(request, timeout_s)
    except ChildCrashed as exc:
        if backend != "auto":
            raise errors.PdfMalformed(f"pypdf crashed: {exc}") from None
        try:
            result = run_child({**request, "backend": "pypdf"}, deadline - time.monotonic())
        except ChildCrashed as exc2:
            raise errors.PdfMalformed(f"pdfium and pypdf crashed: {exc}; {exc2}") from None
    if not result.get("ok"):
        raise _ERROR_CLASSES.get(result.get("code", ""), errors.PdfMalformed)(result.get("message", ""))
    return cast(Parsed, result)

