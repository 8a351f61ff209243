"""Large documents: page ranges extracted in parallel as Ray tasks.

Used only when ``ray_active()``; ray is imported lazily, so plain extraction never imports
it. Each range again runs in a limited child (``pdf_sandbox``) with the same per-page
decisions, so the result is identical to the sequential path.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from docpipe import errors
from ray_jobs.pdf_parse import RawPage
from ray_jobs.pdf_sandbox import extract_in_child

_REMOTE: Any = None  # the ray.remote wrapper of _range_task, made on first use


def _range_task(path: str, backend: str, password: str, first: int, last: int, deadline_epoch: float,
                max_memory_mb: int) -> dict[str, Any]:
    """Runs in a Ray worker. The deadline is absolute (epoch seconds) so a range that
    waited in the queue gets only the time left. Returns errors as data: a raised error
    would reach the driver wrapped in RayTaskError."""
    try:
        out = extract_in_child(path, backend, password, first, last, None,
                               deadline_epoch - time.time(), max_memory_mb)
        return {"ok": True, "pages": out["pages"]}
    except errors.DocpipeError as exc:
        return {"ok": False, "code": exc.code, "message": str(exc)}


def _remote_range_task() -> Any:
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(num_cpus=1, max_retries=1)(_range_task)
    return _REMOTE


def ray_active() -> bool:
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
    ranges: list[tuple[int, int]] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def range_count(count: int, cpus: int, threshold_pages: int) -> int:
    """How many ranges `count` pages are split into: ~2 per CPU balances uneven pages; no
    range smaller than half the threshold (each pays for a task and child interpreters)."""
    min_size = max(1, threshold_pages // 2)
    return max(2, min(2 * max(1, cpus), count // min_size))


def cluster_cpus() -> int:
    """The CPUs of the Ray cluster, connecting to it first if this process has not."""
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]  # unannotated in ray
    return int(resources.get("CPU", 1)) or 1


def extract_parallel(path: str, backend: str, password: str, page_count: int, deadline: float,
                     max_memory_mb: int, parallel_threshold_pages: int) -> tuple[list[RawPage], int]:
    import ray

    ranges = page_ranges(page_count, range_count(page_count, cluster_cpus(), parallel_threshold_pages))
    task = _remote_range_task()
    remaining = deadline - time.monotonic()
    deadline_epoch = time.time() + remaining
    refs: list[Any] = [task.remote(path, backend, password, a, b, deadline_epoch, max_memory_mb) for a, b in ranges]
    order = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, list[RawPage]] = {}  # range index -> its pages
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
            results[order[done[0]]] = res["pages"]
    finally:
        for ref in pending:
            ray.cancel(ref)  # not force: the task then kills its child process group
    pages = [page for i in range(len(ranges)) for page in results[i]]
    return pages, len(ranges)

