"""What every stage entry point shares: read the job, heartbeat, answer once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from docpipe.errors import DocpipeError, StageFailed
from ray_jobs import jobio
from ray_jobs.callback import TaskCallback
from ray_jobs.log import emit, setup_process


def run(stage: str, work: Callable[[dict[str, Any], TaskCallback], dict[str, Any]],
        argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m ray_jobs.{stage}",
                                 description=f"docpipe {stage} stage as a Ray job (task-token protocol).")
    ap.add_argument("--job", required=True, help="s3:// URI of the job file written by SubmitRayJob")
    args = ap.parse_args(argv)
    setup_process()
    job = jobio.read_json(args.job)
    callback = TaskCallback(job["task_token"], stage).start()
    reg = job["registration"]
    emit(message="stage started", stage=stage, document_id=reg["document_id"],
         processing_version=reg["processing_version"], submission_id=job.get("submission_id"))
    try:
        output = work(job, callback)
    except DocpipeError as err:
        emit(message="stage failed", stage=stage, error=err.code, cause=str(err))
        callback.failure(err.code, str(err) or err.code)
        return 1
    except Exception as err:  # any crash still answers the task token
        emit(message="stage crashed", stage=stage, error=type(err).__name__, cause=str(err))
        callback.failure(StageFailed.__name__, f"{type(err).__name__}: {err}"[:1000])
        return 1
    finally:
        callback.stop()
    callback.success(output)
    emit(message="stage succeeded", stage=stage, **{k: v for k, v in output.items() if not isinstance(v, dict)})
    try:
        jobio.delete(args.job)  # it held the task token; nothing needs it any more
    except Exception:  # the bucket lifecycle removes it after a day anyway
        pass
    return 0


def main_exit(code: int) -> None:
    sys.stdout.flush()
    sys.exit(code)
