"""What the console shows and does, read from the local stack: the domain side of
`docpipe console`, usable (and tested) without Flask.

Executions come from Step Functions (every page of `list_executions` of the ingest and
backfill state machines); each one's file from the control table (`execution_arn` ->
`s3_key`), else from the execution's input (the S3 "Object Created" event, or the
backfill's `prefix`), cached by ARN because an execution's input never changes.
Task tokens are redacted from everything shown: a token lets whoever holds it answer for
a state.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from botocore.exceptions import ClientError

from docpipe import identity
from docpipe_local import lookup
from docpipe_local.graph import build_graph, read_execution, render_svg
from docpipe_local.graph.text import fmt_duration

STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
PAGE_SIZE = 50
LOG_LINES = 200
REDACTED = "«redacted»"
TOKEN_KEY = re.compile(r"task_?token", re.IGNORECASE)
RAY_TIMEOUT_S = 3
EPOCH = datetime.min.replace(tzinfo=UTC)
# Ray job metadata `docpipe` of our jobs (docpipe.rayjobs.KIND_SERVICE / KIND_DOCUMENT).
RAY_KINDS = ("stage-service", "stage-job")
_NOT_FOUND_CODES = {"ExecutionDoesNotExist", "InvalidArn", "StateMachineDoesNotExist", "ResourceNotFoundException"}

ClientFactory = Callable[[str], Any]


class NotFound(Exception):
    """An execution or document the stack does not know (404)."""


class Conflict(Exception):
    """An action the document's state does not allow (409)."""


# --------------------------------------------------------------------------- values


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def pretty(text: str | None, limit: int = 20_000) -> str:
    """A state's input/output for reading: indented JSON when it is JSON."""
    if text is None:
        return ""
    data = _json(text)
    out = json.dumps(data, indent=2, ensure_ascii=False) if data is not None or text.strip() == "null" else text
    return out if len(out) <= limit else out[:limit] + f"\n… ({len(out) - limit} more characters)"


def file_of_input(input_text: str | None) -> tuple[str, str]:
    """(bucket, key) an execution works on, from its input: the S3 "Object Created"
    event's object key, or a backfill's prefix (bucket "")."""
    data = _json(input_text)
    if not isinstance(data, dict):
        return "", ""
    detail = data.get("detail")
    if isinstance(detail, dict):
        obj, bucket = detail.get("object") or {}, detail.get("bucket") or {}
        if isinstance(obj, dict) and isinstance(obj.get("key"), str):
            return str(bucket.get("name", "")) if isinstance(bucket, dict) else "", obj["key"]
    if isinstance(data.get("prefix"), str):
        return "", data["prefix"]
    return "", ""


def since(start: datetime | None, stop: datetime | None) -> float | None:
    """Seconds from start to stop, or to now for a run still going."""
    if start is None:
        return None
    end = stop or datetime.now(UTC)
    return max(0.0, (end - start).total_seconds())


def fmt_time(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""


# --------------------------------------------------------------------------- redaction


def _token_values(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if TOKEN_KEY.search(str(k)) and isinstance(v, str) and v:
                found.add(v)
            else:
                _token_values(v, found)
    elif isinstance(value, list):
        for v in value:
            _token_values(v, found)
    elif isinstance(value, str) and value[:1] in ("{", "["):  # JSON inside a string (a Cause)
        _token_values(_json(value), found)


def _redact_value(value: Any, tokens: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if TOKEN_KEY.search(str(k)) else _redact_value(v, tokens) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, tokens) for v in value]
    if isinstance(value, str):
        return redact_text(value, tokens)
    return value


def redact_text(text: str, tokens: set[str]) -> str:
    """`text` with every token in it replaced; JSON text with every token-named key too."""
    data = _json(text)
    if isinstance(data, (dict, list)):
        return json.dumps(_redact_value(data, tokens), ensure_ascii=False)
    for tok in tokens:
        if tok in text:
            text = text.replace(tok, REDACTED)
    return text


def history_tokens(events: list[dict]) -> set[str]:
    """Every value under a key like task_token / TaskToken in the history's details."""
    tokens: set[str] = set()
    for ev in events:
        for key, det in ev.items():
            if key.endswith("EventDetails") and isinstance(det, dict):
                for v in det.values():
                    _token_values(_json(v), tokens)
    return tokens


def redact_history(events: list[dict], tokens: set[str]) -> list[dict]:
    """The history with task tokens removed from every detail string (inputs, outputs,
    parameters, causes): under a key like task_token / TaskToken, and wherever one of
    `tokens` appears again (inside a Payload, a message)."""
    out = []
    for ev in events:
        ev = dict(ev)
        for key, det in list(ev.items()):
            if key.endswith("EventDetails") and isinstance(det, dict):
                ev[key] = {k: redact_text(v, tokens) if isinstance(v, str) else v for k, v in det.items()}
        out.append(ev)
    return out


def task_parameters(events: list[dict], states: set[str]) -> dict[str, str]:
    """State name -> the parameters of its last scheduled task (TaskScheduled), for the
    top-level `states`; a task inside a Parallel/Map counts for its container."""
    out: dict[str, str] = {}
    current = None
    for ev in sorted(events, key=lambda e: e.get("id", 0)):
        entered = ev.get("stateEnteredEventDetails")
        if isinstance(entered, dict) and entered.get("name") in states:
            current = entered["name"]
        scheduled = ev.get("taskScheduledEventDetails")
        if current and isinstance(scheduled, dict) and isinstance(scheduled.get("parameters"), str):
            out[current] = scheduled["parameters"]
    return out


# --------------------------------------------------------------------------- search


def snippet(hit: dict, limit: int = 400) -> str:
    """The hit's matched sentence (ray_jobs.search.matched_sentence) for reading: one
    line, at most `limit` characters."""
    match = hit.get("match") or {}
    text = " ".join(str(match.get("sentence") or hit.get("text") or "").split())
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def citation(hit: dict) -> str:
    """Document, pages or section, and the matched sentence's character span."""
    from ray_jobs.search import citation as hit_citation

    return hit_citation(hit, chars=True)


# --------------------------------------------------------------------------- the stack


@dataclass
class ExecutionRow:
    arn: str
    name: str
    status: str
    machine: str  # "ingest" | "backfill"
    started_at: datetime | None
    stopped_at: datetime | None
    key: str = ""
    document_id: str = ""

    @property
    def started(self) -> str:
        return fmt_time(self.started_at)

    @property
    def duration(self) -> str:
        return fmt_duration(since(self.started_at, self.stopped_at))

    def to_json(self) -> dict[str, Any]:
        return {"arn": self.arn, "name": self.name, "status": self.status, "machine": self.machine,
                "started": self.started, "duration": self.duration, "file": self.key,
                "document_id": self.document_id}


@dataclass
class StateRow:
    name: str
    type: str
    outcome: str
    duration: str
    attempts: int
    retries: int
    error: str
    cause: str
    input: str
    output: str
    parameters: str = ""  # what the task was called with (its last attempt), e.g. the Lambda payload


@dataclass
class Console:
    """Reads and actions of the console against one local stack (`state`)."""

    state: dict
    client: ClientFactory
    _clients: dict[str, Any] = field(default_factory=dict)
    _inputs: dict[str, str] = field(default_factory=dict)  # execution ARN -> input (never changes)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def outputs(self) -> dict:
        return self.state.get("outputs") or {}

    @property
    def bucket(self) -> str:
        return str(self.outputs.get("DocumentBucketName", ""))

    def aws(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self.client(service)
            return self._clients[service]

    # ------------------------------------------------------------------ executions

    def all_executions(self) -> list[ExecutionRow]:
        """Every execution of both state machines, newest first, with the file when the
        control table knows it."""
        sfn = self.aws("stepfunctions")
        rows = []
        for kind, sm_arn in lookup.state_machines(self.outputs).items():
            for e in lookup.list_executions(sfn, sm_arn):
                rows.append(ExecutionRow(e["executionArn"], e["name"], e["status"], kind,
                                         e.get("startDate"), e.get("stopDate")))
        known = self._control_files()
        for row in rows:
            if row.arn in known:
                row.key, row.document_id = known[row.arn]
        rows.sort(key=lambda r: r.started_at or EPOCH, reverse=True)
        return rows

    def _control_files(self) -> dict[str, tuple[str, str]]:
        """execution ARN -> (s3_key, document_id) of every control item (all pages)."""
        table = self.outputs.get("ControlTableName")
        if not table:
            return {}
        out = {}
        pages = self.aws("dynamodb").get_paginator("scan").paginate(
            TableName=table, ProjectionExpression="execution_arn, s3_key, document_id")
        for page in pages:
            for item in page.get("Items", []):
                arn = item.get("execution_arn", {}).get("S")
                if arn:
                    out[arn] = (item.get("s3_key", {}).get("S", ""), item.get("document_id", {}).get("S", ""))
        return out

    def execution_input(self, arn: str) -> str:
        with self._lock:
            cached = self._inputs.get(arn)
        if cached is None:
            cached = self.aws("stepfunctions").describe_execution(executionArn=arn).get("input") or ""
            with self._lock:
                self._inputs[arn] = cached
        return cached

    def _fill_files(self, rows: list[ExecutionRow]) -> None:
        """The file of rows the control table does not name, from their inputs."""
        for row in rows:
            if row.key:
                continue
            bucket, row.key = file_of_input(self.execution_input(row.arn))
            if row.machine == "ingest" and row.key:
                row.document_id = identity.document_id(bucket or self.bucket, row.key)

    def executions(self, status: str | None = None, q: str | None = None, page: int = 1) -> dict[str, Any]:
        """One page of executions (newest first) matching `status` and `q` (a substring of
        the file key or the execution name), and the counts per status over all."""
        rows = self.all_executions()
        counts = dict.fromkeys(STATUSES, 0)
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        if status:
            rows = [r for r in rows if r.status == status]
        if q:
            self._fill_files(rows)  # inputs are cached: each execution is read once
            needle = q.lower()
            rows = [r for r in rows if needle in r.key.lower() or needle in r.name.lower()]
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page = min(max(1, page), pages)
        shown = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        self._fill_files(shown)
        return {"rows": shown, "counts": counts, "total": len(rows), "page": page, "pages": pages}

    def execution(self, arn: str) -> dict[str, Any]:
        """One execution: its graph (SVG), a row per state (redacted input/output), its file."""
        sfn = self.aws("stepfunctions")
        try:
            desc, definition, events = read_execution(sfn, arn)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                raise NotFound(f"no execution {arn}") from err
            raise
        name = desc.get("name") or arn.rsplit(":", 1)[-1]
        tokens = history_tokens(events)
        events = redact_history(events, tokens)
        graph = build_graph(definition, events, execution_name=name, execution_arn=arn)
        # States in the order they ran; those not run after them, in the definition's order.
        runs = sorted(graph.states.values(), key=lambda r: (r.entered_at is None, r.entered_at or EPOCH))
        params = task_parameters(events, set(graph.states))
        states = [StateRow(r.name, r.type, r.outcome, fmt_duration(r.duration_s), r.attempts, r.retries,
                           r.error or "", r.cause or "", pretty(r.input), pretty(r.output),
                           pretty(params.get(r.name))) for r in runs]
        with self._lock:
            self._inputs[arn] = desc.get("input") or ""
        bucket, key = file_of_input(desc.get("input"))
        machine = next((k for k, v in lookup.state_machines(self.outputs).items() if v == desc.get("stateMachineArn")), "")
        doc = identity.document_id(bucket or self.bucket, key) if key and machine != "backfill" else ""
        start, stop = desc.get("startDate"), desc.get("stopDate")
        return {
            "arn": arn, "name": name, "status": desc["status"], "machine": machine,
            "started": fmt_time(start), "duration": fmt_duration(since(start, stop)),
            "key": key, "document_id": doc,
            "svg": render_svg(graph), "states": states,
            "input": pretty(redact_text(desc.get("input") or "", tokens)) if desc.get("input") else "",
            "output": pretty(redact_text(desc["output"], tokens)) if desc.get("output") else "",
            "error": desc.get("error") or "", "cause": redact_text(desc.get("cause") or "", tokens),
        }

    # ------------------------------------------------------------------ documents

    def control_items(self, document_id: str) -> list[dict]:
        """Every processing version of the document, latest first."""
        items = lookup.control_items(self.aws("dynamodb"), self.outputs["ControlTableName"], document_id)
        return sorted(items, key=lambda i: str(i.get("updated_at") or i.get("created_at") or ""), reverse=True)

    def document(self, document_id: str) -> dict[str, Any]:
        control = self.control_items(document_id)
        executions = [r for r in self.all_executions() if r.machine == "ingest"]
        self._fill_files(executions)
        mine = [r for r in executions if r.document_id == document_id]
        if not control and not mine:
            raise NotFound(f"no document {document_id} (no control item, no execution)")
        audit = (lookup.audit_items(self.aws("dynamodb"), self.outputs["AuditTableName"], document_id)
                 if self.outputs.get("AuditTableName") else [])
        latest = control[0] if control else {}
        failed = next((i for i in control if i.get("status") == "FAILED"), None)
        key = latest.get("s3_key") or (mine[0].key if mine else "")
        return {
            "document_id": document_id, "key": key, "status": latest.get("status", "UNKNOWN"),
            "control": control, "control_columns": _columns(control), "audit": audit,
            "error_report": self.error_report(document_id, failed) if failed else None,
            "counts": {k: latest.get(k) for k in ("pages", "chunks", "vectors")},
            "executions": mine,
            "can_run_again": latest.get("status") == "FAILED",
        }

    def error_report(self, document_id: str, item: dict) -> str | None:
        """errors/<document_id>/<version>/error.json of a FAILED version, pretty; None if absent."""
        uri = item.get("error_report") or item.get("report_uri")
        try:
            bucket, key = identity.parse_s3_uri(uri) if uri else ("", "")
        except ValueError:
            bucket, key = "", ""
        if not key:
            bucket = item.get("bucket") or self.bucket
            key = identity.artifact_key("errors", document_id, item["processing_version"], "error.json")
        try:
            body = self.aws("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode(errors="replace")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied"):
                return None
            raise
        return pretty(body)

    def run_again(self, document_id: str) -> str:
        """Start IngestDocument again with the input of the document's latest execution;
        the new execution's ARN. Only for a FAILED document: RegisterDocument takes the
        FAILED version over itself (and audits it)."""
        control = self.control_items(document_id)
        if not control:
            raise NotFound(f"no document {document_id} in the control table")
        latest = control[0]
        if latest.get("status") != "FAILED":
            raise Conflict(f"document {document_id} is {latest.get('status')}, not FAILED: "
                           "only a failed document can be run again")
        arn = latest.get("execution_arn")
        if not arn:
            raise Conflict(f"document {document_id} names no execution to take the input from")
        name = f"run-again-{document_id[:12]}-{int(time.time() * 1000)}"
        started = self.aws("stepfunctions").start_execution(
            stateMachineArn=self.outputs["IngestDocumentStateMachineArn"], name=name,
            input=self.execution_input(arn))
        return str(started["executionArn"])

    # ------------------------------------------------------------------ Ray logs

    def ray_log_lines(self, document_id: str) -> tuple[list[str], str]:
        """(the last LOG_LINES lines of docpipe's Ray jobs that mention the document, a
        message when Ray could not be read)."""
        url = self.state.get("ray_url")
        if not url:
            return [], "no Ray head in the stack state"
        try:
            token = (Path(self.state["home"]) / "ray_token").read_text().strip()
        except (KeyError, OSError) as err:
            return [], f"no Ray token ({err})"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            r = requests.get(f"{url}/api/jobs/", headers=headers, timeout=RAY_TIMEOUT_S)
            r.raise_for_status()
            jobs = [j for j in r.json() if (j.get("metadata") or {}).get("docpipe") in RAY_KINDS]
        except (requests.RequestException, ValueError) as err:
            return [], f"Ray at {url} did not answer: {err}"
        jobs.sort(key=lambda j: j.get("start_time") or 0)
        lines: list[str] = []
        unread = 0
        for job in jobs:
            meta = job.get("metadata") or {}
            if meta.get("docpipe") == "stage-job" and meta.get("document_id") not in (None, document_id):
                continue  # another document's own job
            try:
                r = requests.get(f"{url}/api/jobs/{job['submission_id']}/logs", headers=headers, timeout=RAY_TIMEOUT_S)
                r.raise_for_status()
                logs = r.json().get("logs") or ""
            except (requests.RequestException, ValueError, KeyError):
                unread += 1
                continue
            lines += [line for line in logs.splitlines() if document_id in line]
        note = f"{unread} of {len(jobs)} Ray job logs could not be read" if unread else ""
        return lines[-LOG_LINES:], note

    # ------------------------------------------------------------------ search

    def search(self, text: Any, top_k: Any = 5) -> list[dict[str, Any]]:
        """Hits from the local index with a citation and the matched sentence;
        ray_jobs.search.BadQuery for a request the user can fix."""
        import os

        from docpipe_local import paths
        from docpipe_local.cli import search as search_index  # `docpipe query`'s local search
        from ray_jobs.search import check

        check(text, top_k, None)  # a bad request says so before any index is opened
        uri = os.environ.get("LANCEDB_URI") or str(paths.vectors_dir())  # where search_index reads
        if "://" not in uri and not Path(uri).exists():
            raise NotFound("no vector index yet: ingest documents first (`docpipe ingest PATH`)")

        hits = search_index(text, top_k)  # the default mode (QUERY_MODE), as `docpipe query`'s
        return [{**h, "citation": citation(h), "snippet": snippet(h)} for h in hits]


def _columns(items: list[dict]) -> list[str]:
    """Columns of the control table: the keys first, then every attribute any item has."""
    first = ["processing_version", "status", "current_stage", "s3_key", "error_code", "error_message",
             "pages", "chunks", "vectors", "attempt", "created_at", "updated_at", "execution_arn"]
    seen = {k for i in items for k in i}
    return [c for c in first if c in seen] + sorted(seen - set(first) - {"document_id"})
