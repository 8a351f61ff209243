"""From what a user types to a document and its execution: one place for the CLI and
the console.

A document is named by its document_id (32 hex digits), its S3 key (`input/...`, or
`s3://bucket/input/...`), its key below the prefix (`reports/2023/q1.pdf`) or a local
file's name or path. `docpipe ingest reports/` keys `reports/2023/q1.pdf` as
`input/reports/2023/q1.pdf`, so a path is tried with each of its tails under the prefix,
longest first; the first candidate with a control item wins. Every listing here is read
to its last page: a table or an account has more than one page soon.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from docpipe import identity

PREFIX = "input/"  # where uploads start executions (the EventBridge rule's prefix)
# The stack outputs naming the state machines whose executions users look up, by kind.
STATE_MACHINES = {"ingest": "IngestDocumentStateMachineArn", "backfill": "BackfillStateMachineArn"}


class AmbiguousDocument(LookupError):
    """A bare file name that several uploaded keys end with."""

    def __init__(self, target: str, keys: list[str]):
        super().__init__(f"{target!r} names {len(keys)} documents: {', '.join(sorted(keys))}; "
                         "give more of its path (or the S3 key)")
        self.keys = keys


def plain_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DynamoDB items (wire format) as plain dicts."""
    from boto3.dynamodb.types import TypeDeserializer

    from docpipe.records import plain

    de = TypeDeserializer()
    return [plain({k: de.deserialize(v) for k, v in i.items()}) for i in items]


def _items_of(ddb, table: str, document_id: str) -> list[dict[str, Any]]:
    pages = ddb.get_paginator("query").paginate(
        TableName=table, KeyConditionExpression="document_id = :d",
        ExpressionAttributeValues={":d": {"S": document_id}}, ConsistentRead=True)
    return plain_items([i for page in pages for i in page.get("Items", [])])


def control_items(ddb, table: str, document_id: str) -> list[dict[str, Any]]:
    """Every version's control item of `document_id`, as plain dicts."""
    return _items_of(ddb, table, document_id)


def audit_items(ddb, table: str, document_id: str) -> list[dict[str, Any]]:
    """The audit trail of `document_id`, oldest first, as plain dicts."""
    return _items_of(ddb, table, document_id)


def all_control_items(ddb, table: str) -> list[dict[str, Any]]:
    """The whole control table (every document's versions), as plain dicts."""
    pages = ddb.get_paginator("scan").paginate(TableName=table)
    return plain_items([i for page in pages for i in page.get("Items", [])])


def _has_items(ddb, table: str, document_id: str) -> bool:
    return bool(ddb.query(TableName=table, KeyConditionExpression="document_id = :d", Limit=1,
                          ExpressionAttributeValues={":d": {"S": document_id}}).get("Items"))


def _is_document_id(target: str) -> bool:
    return len(target) == 32 and all(c in "0123456789abcdef" for c in target)


def candidate_keys(target: str) -> list[str]:
    """The S3 keys `target` may mean, most specific first."""
    text = target.replace("\\", "/")
    if text.startswith("s3://"):
        text = text.removeprefix("s3://").partition("/")[2]
    if text.startswith(PREFIX):
        return [text]
    relative = not text.startswith(("/", "./", "../")) and text[1:2] != ":"  # not C:/...
    keys = [PREFIX + text] if relative else []
    # A local path: each tail of it (the absolute path when it exists, so `./x.pdf` and
    # `../reports/q1.pdf` have their folders' names too).
    local = Path(target)
    parts = local.resolve().parts if local.exists() else PurePosixPath(text).parts
    parts = tuple(p for p in parts if p not in ("/", ".", "..") and not p.endswith((":\\", ":")))
    for n in range(len(parts), 0, -1):
        key = PREFIX + "/".join(parts[-n:])
        if key not in keys:
            keys.append(key)
    return keys


def _by_file_name(ddb, table: str, name: str) -> list[tuple[str, str]]:
    """(document_id, s3_key) of every document whose key ends with /name."""
    pages = ddb.get_paginator("scan").paginate(
        TableName=table, ProjectionExpression="document_id, s3_key",
        FilterExpression="contains(s3_key, :n)", ExpressionAttributeValues={":n": {"S": name}})
    found = {(i["document_id"]["S"], i["s3_key"]["S"]) for page in pages for i in page.get("Items", [])}
    return sorted(f for f in found if f[1].rsplit("/", 1)[-1] == name)


def document_id_for(target: str, state: dict[str, Any], ddb) -> str:
    """The document_id `target` names: the first candidate that has a control item. A
    bare file name that no key matches directly is looked up among every key (a folder
    ingest keeps the folders); several such documents raise AmbiguousDocument. Without
    any match, the old rule: the file's base name under the prefix."""
    if _is_document_id(target):
        return target
    bucket, table = state["outputs"]["DocumentBucketName"], state["outputs"]["ControlTableName"]
    keys = candidate_keys(target)
    for key in keys:
        doc = identity.document_id(bucket, key)
        if _has_items(ddb, table, doc):
            return doc
    text = target.replace("\\", "/")
    parts = PurePosixPath(text).parts
    # Only a bare name may mean a key in a folder: a path or key that matched nothing
    # must not find another folder's file of the same name.
    matches = dict(_by_file_name(ddb, table, parts[0])) if len(parts) == 1 else {}
    if len(matches) == 1:
        return next(iter(matches))
    if len(matches) > 1:
        raise AmbiguousDocument(target, list(matches.values()))
    return identity.document_id(bucket, keys[-1])


def state_machines(outputs: dict[str, Any]) -> dict[str, str]:
    """kind ("ingest" | "backfill") -> state machine ARN, for those the stack has."""
    return {kind: outputs[out] for kind, out in STATE_MACHINES.items() if outputs.get(out)}


def list_executions(sfn, state_machine_arn: str):
    """Every execution of one state machine (all pages), newest first."""
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn):
        yield from page["executions"]


def execution_arn_for(target: str, state: dict[str, Any], sfn, ddb) -> str | None:
    """The execution `target` names: an execution ARN as is; an execution name of the
    ingest or backfill state machine; else the latest execution recorded on the
    document's control items (EventBridge names the executions it starts itself)."""
    if target.startswith("arn:aws:states:"):
        return target
    outputs = state["outputs"]
    for sm_arn in state_machines(outputs).values():
        for e in list_executions(sfn, sm_arn):
            if e["name"] == target:
                return str(e["executionArn"])
    doc = document_id_for(target, state, ddb)
    runs = [(i.get("updated_at", ""), i["execution_arn"])
            for i in control_items(ddb, outputs["ControlTableName"], doc) if i.get("execution_arn")]
    return max(runs)[1] if runs else None
