"""`docpipe invoke`: the in-process equivalent of `sam local invoke`.

Same inputs as `sam local invoke -e events/<x>.json [--env-vars env.json] <Function>`:
the function's environment comes from template.yaml (resolved like the local stack
does), overridden by the env-vars file (`{"<LogicalId>": {...}, "Parameters": {...}}`,
SAM's format). Against the running local stack by default, so the handler talks to
its tables and bucket.
"""

from __future__ import annotations

import json
from pathlib import Path

from docpipe_local import handlers, template


def function_ids(stack: template.Stack) -> list[str]:
    return stack.of_type("AWS::Lambda::Function")


def resolve_function(stack: template.Stack, name: str) -> str:
    ids = function_ids(stack)
    for lid in ids:
        if name in (lid, stack.physical_name(lid)) or f"{name}Function" == lid:
            return lid
    raise KeyError(f"no function {name!r} in template.yaml; functions: {', '.join(ids)}")


def function_env(stack: template.Stack, logical_id: str, env_vars: dict | None = None) -> dict[str, str]:
    env = {k: str(v) for k, v in stack.properties(logical_id).get("Environment", {})
           .get("Variables", {}).items()}
    env_vars = env_vars or {}
    env.update({k: str(v) for k, v in env_vars.get("Parameters", {}).items()})
    env.update({k: str(v) for k, v in env_vars.get(logical_id, {}).items()})
    return env


def invoke_function(stack: template.Stack, name: str, event: dict, env_vars: dict | None = None,
                    extra_env: dict | None = None):
    lid = resolve_function(stack, name)
    props = stack.properties(lid)
    env = {**function_env(stack, lid, env_vars), **(extra_env or {})}
    return handlers.invoke(str(stack.code_dirs[lid]), props["Handler"], event, env,
                           stack.physical_name(lid), timeout_s=float(props.get("Timeout", 60)))


def load_event(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
