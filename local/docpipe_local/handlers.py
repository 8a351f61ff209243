"""Running a Lambda handler in-process, as the Lambda runtime would.

Used by the local stack's Lambda seam (Step Functions tasks) and by `docpipe invoke`
(the in-process equivalent of `sam local invoke`). The function's environment is applied
through a gate (_EnvGate) because Map/Parallel states and concurrent executions run tasks
in threads and os.environ is process-wide.
"""

from __future__ import annotations

import collections.abc
import contextlib
import importlib.util
import io
import json
import os
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

_modules: dict[tuple, object] = {}
_load_lock = threading.Lock()  # two first calls at once still import a handler once


@dataclass
class LambdaContext:
    function_name: str
    memory_limit_in_mb: int = 512
    timeout_s: float = 60.0
    region: str = "us-east-1"
    account: str = "123456789012"

    def __post_init__(self):
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}")
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _EnvGate:
    """Lets handlers run side by side, as Lambda runs them, while os.environ is shared.

    A call whose variables already hold its values runs at once (a reader); one that needs
    other values waits until no call runs, sets them and leaves them set (so the next call
    of any function with the same values is a reader again). With one template every
    function agrees on nearly every variable, so after the first calls all of them read.
    `restore()` puts back what was there before any function ran."""

    def __init__(self):
        self.cond = threading.Condition()
        self.readers = 0
        self.writers_waiting = 0
        self.original: dict[str, str | None] = {}

    def _holds(self, env: dict[str, str]) -> bool:
        return all(os.environ.get(k) == v for k, v in env.items())

    @contextlib.contextmanager
    def applied(self, env: dict[str, str]):
        env = {k: str(v) for k, v in env.items()}
        with self.cond:
            if not (self._holds(env) and not self.writers_waiting):
                self.writers_waiting += 1
                while self.readers:
                    self.cond.wait()
                self.writers_waiting -= 1
                for k, v in env.items():
                    self.original.setdefault(k, os.environ.get(k))
                    os.environ[k] = v
            self.readers += 1
        try:
            yield
        finally:
            with self.cond:
                self.readers -= 1
                self.cond.notify_all()

    def restore(self) -> None:
        with self.cond:
            while self.readers:
                self.cond.wait()
            for k, v in self.original.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self.original.clear()


_gate = _EnvGate()
applied_env = _gate.applied


class _ThreadStdout(io.TextIOBase):
    """sys.stdout that a thread can point at its own buffer: each call's logs are its
    own while calls run side by side (contextlib.redirect_stdout is process-wide)."""

    def __init__(self, real):
        self.real = real
        self.local = threading.local()

    def _target(self):
        return getattr(self.local, "buffer", None) or self.real

    def write(self, text):
        return self._target().write(text)

    def flush(self):
        self._target().flush()

    def isatty(self):
        return False

    @contextlib.contextmanager
    def capture(self, buffer):
        self.local.buffer = buffer
        try:
            yield
        finally:
            self.local.buffer = None


class _ThreadLocalDict(collections.abc.MutableMapping):
    """A dict per thread behind one object: what Powertools Metrics keeps at class level
    (one metric set per process, as one Lambda container runs one call at a time)."""

    def __init__(self):
        self.local = threading.local()

    def _d(self) -> dict:
        if not hasattr(self.local, "d"):
            self.local.d = {}
        return self.local.d

    def __getitem__(self, key):
        return self._d()[key]

    def __setitem__(self, key, value):
        self._d()[key] = value

    def __delitem__(self, key):
        del self._d()[key]

    def __iter__(self):
        return iter(list(self._d()))

    def __len__(self):
        return len(self._d())


def isolate_metrics() -> None:
    """Give each thread its own Powertools metric set, before any handler imports
    Metrics: handlers running side by side must not flush or clear each other's."""
    from aws_lambda_powertools.metrics.metrics import Metrics

    for name in ("_metrics", "_dimensions", "_metadata"):
        if not isinstance(getattr(Metrics, name), _ThreadLocalDict):
            setattr(Metrics, name, _ThreadLocalDict())


def _stdout() -> _ThreadStdout:
    if not isinstance(sys.stdout, _ThreadStdout):
        sys.stdout = _ThreadStdout(sys.stdout)
    return sys.stdout


def _load(code_dir: str, handler: str, env: dict[str, str]):
    """One module per (code, environment): a changed configuration is a cold start,
    as on Lambda, so module-level settings are read again."""
    module_name, _, func = handler.rpartition(".")
    key = (str(Path(code_dir).resolve()), module_name, hash(frozenset(env.items())))
    with _load_lock:
        return getattr(_import(key, code_dir, module_name), func)


def _import(key: tuple, code_dir: str, module_name: str):
    if key not in _modules:
        path = Path(code_dir) / (module_name.replace(".", "/") + ".py")
        if not path.exists():
            raise FileNotFoundError(f"handler module {path} not found")
        unique = f"docpipe_fn_{abs(hash(key))}_{module_name}"
        spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)  # module globals (Settings.from_env()) see the env
        _modules[key] = module
    return _modules[key]


def invoke(code_dir: str, handler: str, event: dict, env: dict[str, str],
           function_name: str, timeout_s: float = 60.0) -> tuple[dict | list | str | None, bool, str]:
    """Run the handler; returns (result or Lambda error object, errored, logs)."""
    logs = io.StringIO()
    context = LambdaContext(function_name, timeout_s=timeout_s)
    # The function's name reaches the handler through the context, as on Lambda; in the
    # shared environment it would make every call of another function a writer.
    lambda_env = {
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **env,
    }
    with applied_env(lambda_env), _stdout().capture(logs):
        try:
            fn = _load(code_dir, handler, lambda_env)
            # The handler's return value must be JSON, as it is on Lambda.
            result = json.loads(json.dumps(fn(event, context)))
            return result, False, logs.getvalue()
        except Exception as exc:
            return ({"errorMessage": str(exc), "errorType": type(exc).__name__,
                     "stackTrace": traceback.format_tb(exc.__traceback__)},
                    True, logs.getvalue())


def forget_modules() -> None:
    """Drop loaded handler modules so the next call re-reads env at import, and put the
    environment back as it was before any function ran."""
    for key in list(_modules):
        _modules.pop(key)
    _gate.restore()
