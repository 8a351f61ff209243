"""The Ray job side of the task-token protocol (docs/design.md, "Ray job protocol").

Heartbeats while the stage works; exactly one SendTaskSuccess or SendTaskFailure at
the end; SIGTERM (ray job stop, scale-in) sends SendTaskFailure(JobInterrupted) before
the job dies. A SIGKILL sends nothing: the state's HeartbeatSeconds catches that.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from botocore.exceptions import ClientError

from docpipe import aws
from docpipe.errors import JobInterrupted
from ray_jobs.log import emit_error, emit_warning
from ray_jobs.settings import StageSettings

MAX_CAUSE = 32000  # SendTaskFailure's cause limit is 32,768 characters
# The execution no longer waits for this token (timed out, retried under a new one, stopped).
GONE_CODES = ("TaskTimedOut", "InvalidToken", "TaskDoesNotExist")


def _heartbeat_interval() -> float:
    try:
        return StageSettings.from_env().heartbeat_interval_seconds
    except ValueError:
        # A malformed setting must not keep the token from being answered: the stage's
        # own read of the settings fails it with the variable named (StageFailed).
        return StageSettings.heartbeat_interval_seconds


class TaskCallback:
    def __init__(self, task_token: str, stage: str, interval_s: float | None = None, client: Any = None):
        self.token = task_token
        self.stage = stage
        self.interval_s = interval_s or _heartbeat_interval()
        self.sfn = client or aws.client("stepfunctions")
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._sent = False
        self._thread: threading.Thread | None = None
        self.heartbeats = 0

    # --- heartbeats ------------------------------------------------------------------
    def start(self) -> TaskCallback:
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:
            pass  # not the main thread (tests): no signal handler
        return self

    def heartbeat(self) -> None:
        try:
            self.sfn.send_task_heartbeat(taskToken=self.token)
            self.heartbeats += 1
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if code in GONE_CODES:
                # The execution gave up on us: stop working, nobody will read the result.
                emit_error("task no longer waiting; abandoning job", stage=self.stage, code=code)
                os._exit(3)
            emit_warning("heartbeat failed", stage=self.stage, code=code)

    def _beat(self) -> None:
        while not self._done.wait(self.interval_s):
            self.heartbeat()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.failure(JobInterrupted.__name__, f"{self.stage} job received SIGTERM before finishing")
        os._exit(143)

    # --- the one final answer --------------------------------------------------------
    def _send_once(self, fn: Callable[..., object], **kwargs: str) -> bool:
        with self._lock:
            if self._sent:
                return False
            self._sent = True
            self._done.set()
        try:
            fn(taskToken=self.token, **kwargs)
        except ClientError as err:
            emit_error("callback rejected", stage=self.stage, code=err.response["Error"]["Code"])
        return True

    def success(self, output: dict[str, Any]) -> bool:
        return self._send_once(self.sfn.send_task_success, output=json.dumps(output, default=str))

    def failure(self, error: str, cause: str) -> bool:
        return self._send_once(self.sfn.send_task_failure, error=error[:256], cause=cause[:MAX_CAUSE])

    def stop(self) -> None:
        self._done.set()
