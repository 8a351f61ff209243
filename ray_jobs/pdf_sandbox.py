"""The sandbox: every PDF parse runs in a child process of its own, never in the caller.

Uploads are untrusted and the corpus holds fuzzed files, page-tree loops and decompression
bombs, so ``run_child`` runs ``CHILD_CODE`` (``child_main``, the parse of ``pdf_parse``) in
a new child, forked from this process's zygote (a process that imported the parsers and
never opens a document) or, with PDF_CHILD_START=exec, started as ``python -c``, with

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
import threading
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
    before is kept. The parse and the OCR renderer (ray_jobs.ocr_render) both run so.

    PDF_CHILD_START=zygote (default): the child is forked from a zygote process that has
    already imported the parsers (started once per process, never given a document
    itself): ~0.02 CPU-s instead of the ~0.14 a new interpreter and its imports cost per
    document. `exec` starts a new interpreter each time (also the fallback when another
    thread is using the zygote or the zygote failed)."""
    from ray_jobs.settings import StageSettings

    if StageSettings.from_env().pdf_child_start == "zygote":
        result = _zygote_child(code, request, timeout_s)
        if result is not None:
            return result
    return _exec_child(code, request, timeout_s)


def _exec_child(code: str, request: dict[str, Any], timeout_s: float) -> tuple[int, bytes, bytes, bool]:
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


# The zygote: a process that imported the parsers once and forks a child per request.
# It never opens a document itself; each child is as alone with its document as a new
# interpreter would be (own session, own limits set by child_main, fds 0-2 only).
ZYGOTE_PRELOAD = ("ray_jobs.pdf_parse", "ray_jobs.ocr_render", "pypdfium2", "pypdf")
ZYGOTE_CODE = "from ray_jobs.pdf_sandbox import zygote_main; zygote_main({fd})"
_MSG_MAX = 1 << 20  # a request: a path, a few options, a list of page numbers
_zygote_lock = threading.Lock()
_zygote: dict[str, Any] = {}


def zygote_main(sock_fd: int) -> None:
    """The zygote's loop: per request (JSON + the child's stdout and stderr fds), fork a
    child, answer its pid, wait for it, answer its exit code. Ends when its parent does."""
    import importlib
    import socket

    for name in ZYGOTE_PRELOAD:
        importlib.import_module(name)
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, _MSG_MAX, 2)
        except OSError:
            return
        if not msg:
            return  # the parent is gone
        job = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _forked_child(job["code"], job["request"].encode("utf-8"), fds[0], fds[1])
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        _, status, usage = os.wait4(pid, 0)
        sock.send(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status),
                              "cpu_s": usage.ru_utime + usage.ru_stime}).encode())


def _forked_child(code: str, request: bytes, stdout_fd: int, stderr_fd: int) -> None:
    """The child, fresh from the zygote's fork: what `python -c code` with `request` on
    stdin would be (own session, fds 0-2), then `code`. Never returns."""
    import io
    import traceback

    status = 1
    try:
        os.setsid()  # own process group, as start_new_session=True: killpg on timeout
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.close(stdout_fd)
        os.close(stderr_fd)
        r, w = os.pipe()
        os.write(w, request)  # far below a pipe's 64 KB buffer
        os.close(w)
        os.dup2(r, 0)
        os.close(r)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "rb", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "wb", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "wb", closefd=False), write_through=True)
        try:
            exec(compile(code, "<child>", "exec"), {"__name__": "__main__"})
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()  # as `python -c` does: the parent reads the reason in it
            status = 1
    finally:
        os._exit(status)  # never back into the zygote's loop


def _zygote_socket() -> Any:
    """This process's zygote (started on first use, again if it died)."""
    import socket

    proc = _zygote.get("proc")
    if proc is not None and _zygote.get("owner") != os.getpid():
        _zygote.clear()  # we are a fork of the process that started it: not ours to use
        proc = None
    if proc is not None and proc.poll() is None:
        return _zygote["sock"]
    _stop_zygote()  # dead: its socket goes with it
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = _child_env()
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE_CODE.format(fd=theirs.fileno())],
                            stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=env,
                            start_new_session=True)
    theirs.close()
    _zygote.update(proc=proc, sock=ours, owner=os.getpid())
    return ours


def children_cpu_seconds() -> float:
    """CPU seconds of every parse/render child this process has run and seen end: those it
    started itself (getrusage) and those its zygote forked for it (which getrusage cannot
    see: they are the zygote's children)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + float(_zygote.get("children_cpu_s", 0.0))


def start_zygote() -> None:
    """Start this process's zygote now (a warm-up), not at the first document."""
    from ray_jobs.settings import StageSettings

    if StageSettings.from_env().pdf_child_start == "zygote":
        with _zygote_lock:
            _zygote_socket()


def _zygote_child(code: str, request: dict[str, Any], timeout_s: float) -> tuple[int, bytes, bytes, bool] | None:
    """`_exec_child`'s result from a zygote's child; None when the zygote is busy (another
    thread of this process is using it) or cannot be used."""
    import selectors
    import socket

    if not _zygote_lock.acquire(blocking=False):
        return None
    try:
        sock = _zygote_socket()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            socket.send_fds(sock, [json.dumps({"code": code, "request": json.dumps(request)}).encode()],
                            [out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        sock.settimeout(30.0)  # the fork itself: milliseconds
        pid = int(json.loads(sock.recv(_MSG_MAX))["pid"])
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        timed_out = False
        deadline = time.monotonic() + timeout_s
        try:
            with selectors.DefaultSelector() as sel:
                for fd in chunks:
                    sel.register(fd, selectors.EVENT_READ)
                while sel.get_map():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        timed_out = True
                        _kill_pid_group(pid)
                        break
                    for key, _ in sel.select(remaining):
                        data = os.read(key.fd, 65536)
                        if data:
                            chunks[key.fd].append(data)
                        else:
                            sel.unregister(key.fd)
        except BaseException:
            _kill_pid_group(pid)  # KeyboardInterrupt, SIGTERM handler exceptions: no orphans
            raise
        finally:
            for fd in chunks:
                os.close(fd)
        sock.settimeout(None)  # a killed child is reaped at once; a finished one already was
        end = json.loads(sock.recv(_MSG_MAX))
        rc = int(end["rc"])
        _zygote["children_cpu_s"] = _zygote.get("children_cpu_s", 0.0) + float(end.get("cpu_s", 0.0))
        return rc, b"".join(chunks[out_r]), b"".join(chunks[err_r]), timed_out
    except (OSError, ValueError, KeyError):
        # The zygote died or answered nonsense: stop it; this request runs the old way.
        _stop_zygote()
        return None
    finally:
        _zygote_lock.release()


def _stop_zygote() -> None:
    """Kill this process's zygote, if any, and close its socket (the next request starts
    a new one); the CPU count of the children it ran stays."""
    proc, sock = _zygote.pop("proc", None), _zygote.pop("sock", None)
    if proc is not None and proc.poll() is None:
        _kill_group(proc)
        proc.wait()
    if sock is not None:
        sock.close()


def _kill_pid_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:  # killed before its setsid(): its group is still the zygote's
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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

