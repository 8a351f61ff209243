"""`docpipe invoke`: the in-process equivalent of `sam local invoke`.

Same inputs as `sam local invoke -e events/<x>.json [--env-vars env.json] <Function>`:
the function's environment comes from template.yaml (resolved like the local stack
does), overridden by the env-vars file (`{"<LogicalId>": {...}, "Parameters": {...}}`,
SAM's format). Against the running local stack by default, so the handler talks to
its tables and bucket.

The sample events (events/*.json) name what `make demo` loads. Two values exist only
once the demo ran: the S3 version id of each upload, and the execution that processed a
document (FinalizeDocument's retry check compares it). `fill_event` takes both from the
running stack; `docpipe invoke` applies it, `docpipe events` writes the filled files
for `sam local invoke`.
"""

from __future__ import annotations

import json
from pathlib import Path

from docpipe_local import handlers, paths, template

EVENTS = paths.REPO / "events"


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


# ------------------------------------------------------------------ env-vars file
def env_vars(stack: template.Stack) -> dict:
    """SAM's env-vars format for `stack`: every function's variables as the stack
    resolves them (tables, bucket, queues, secret ARNs, Ray URL, AWS_ENDPOINT_URL), and in
    "Parameters" the region and dummy credentials for all functions. sam local invoke
    applies only variables the template declares, so it takes region and credentials
    from its own flags and shell instead (see README, "Try one function")."""
    out: dict = {"Parameters": {"AWS_REGION": stack.region, "AWS_DEFAULT_REGION": stack.region,
                                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}}
    for lid in function_ids(stack):
        out[lid] = function_env(stack, lid)
    return out


def write_env_vars(state: dict) -> Path:
    """The running stack's env-vars file, in its home."""
    stack = template.load("docpipe", state.get("parameters") or {})
    path = paths.env_vars_file()
    path.write_text(json.dumps(env_vars(stack), indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------ sample events
def _s3_details(event: dict) -> list[dict]:
    """The S3 'Object Created' details an event carries (itself, or in its state)."""
    found = [d for d in (event.get("detail"), (event.get("state") or {}).get("detail")) if isinstance(d, dict)]
    return [d for d in found if "bucket" in d and "object" in d]


def fill_event(event: dict, outputs: dict, s3, ddb) -> dict:
    """`event` with what only the running stack knows (the rest of a sample event is
    fixed by samples/): each named upload's version id, and for a state at the end of an
    execution (FinalizeDocument, RecordFailure) the execution that processed that version.
    Anything the stack does not hold is left as it is."""
    from botocore.exceptions import ClientError

    out = json.loads(json.dumps(event))
    for detail in _s3_details(out):
        try:
            head = s3.head_object(Bucket=detail["bucket"]["name"], Key=detail["object"]["key"])
        except ClientError:
            continue
        if head.get("VersionId") and head["VersionId"] != "null":
            detail["object"]["version-id"] = head["VersionId"]
    reg = (out.get("state") or {}).get("registration")
    if reg and "execution_arn" in out:
        item = ddb.get_item(TableName=outputs["ControlTableName"], Key={
            "document_id": {"S": reg["document_id"]},
            "processing_version": {"S": reg["processing_version"]}}).get("Item") or {}
        if "execution_arn" in item:
            out["execution_arn"] = item["execution_arn"]["S"]
    return out


def write_events(outputs: dict, s3, ddb, source: Path = EVENTS, target: Path | None = None) -> list[Path]:
    """events/*.json filled in for the running stack, written to its home."""
    target = target or paths.events_dir()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(source.glob("*.json")):
        dst = target / src.name
        dst.write_text(json.dumps(fill_event(load_event(src), outputs, s3, ddb), indent=2) + "\n")
        written.append(dst)
    return written
