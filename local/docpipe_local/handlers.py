"""Running a Lambda handler in-process, as the Lambda runtime would.

Used by the local stack's Lambda seam (Step Functions tasks) and by `docpipe invoke`
(the in-process equivalent of `sam local invoke`). The function's environment is applied
for the duration of the call under a lock, because Map/Parallel states run tasks in
threads and os.environ is process-wide.
"""

from __future__ import annotations

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

ENV_LOCK = threading.RLock()
_modules: dict[tuple, object] = {}


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


@contextlib.contextmanager
def applied_env(env: dict[str, str]):
    with ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: str(v) for k, v in env.items()})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _load(code_dir: str, handler: str, env: dict[str, str]):
    """One module per (code, environment): a changed configuration is a cold start,
    as on Lambda, so module-level settings are read again."""
    module_name, _, func = handler.rpartition(".")
    key = (str(Path(code_dir).resolve()), module_name, hash(frozenset(env.items())))
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
    return getattr(_modules[key], func)


def invoke(code_dir: str, handler: str, event: dict, env: dict[str, str],
           function_name: str, timeout_s: float = 60.0) -> tuple[dict | list | str | None, bool, str]:
    """Run the handler; returns (result or Lambda error object, errored, logs)."""
    logs = io.StringIO()
    context = LambdaContext(function_name, timeout_s=timeout_s)
    lambda_env = {
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **env,
    }
    with applied_env(lambda_env), contextlib.redirect_stdout(logs):
        try:
            fn = _load(code_dir, handler, lambda_env)
            # The handler's return value must be JSON, as it is on Lambda.
            result = json.loads(json.dumps(fn(event, context)))
            return result, False, logs.getvalue()
        except Exception as exc:  # noqa: BLE001 - reported to the caller as Lambda does
            return ({"errorMessage": str(exc), "errorType": type(exc).__name__,
                     "stackTrace": traceback.format_tb(exc.__traceback__)},
                    True, logs.getvalue())


def forget_modules() -> None:
    """Drop loaded handler modules so the next call re-reads env at import."""
    for key in list(_modules):
        _modules.pop(key)
