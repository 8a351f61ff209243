"""End to end through the local stack: upload -> EventBridge -> Step Functions ->
Lambdas -> Ray jobs -> terminal status, with a per-document timeline.

One stack per bench run (private DOCPIPE_HOME, free ports), batches measured one after
the other on it. Per document we join four sources of timestamps, all from this
machine's clock:

- the bench: when its PutObject started (latency starts there);
- the execution history (moto, ms): states entered/exited, Lambda start/end, the
  waitForTaskToken task's Submitted (SubmitRayJob returned) and Succeeded (the job
  called SendTaskSuccess), ExecutionSucceeded (latency ends there);
- the Ray Jobs API: job start/end times;
- the job driver's own log lines ("stage started" / "stage succeeded", epoch seconds),
  which split Ray's job start-up from the stage's work;

plus the control item's `durations` (the stage compute each job measured itself).
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from bench.procs import Sampler, head_memory_mb, own_cpu_s
from docpipe.rayjobs import KIND_SERVICE
from docpipe_local.executions import execution_history

STAGES = ("extract", "embed")
COMPUTE_KEYS = {"extract": ("extract_s", "chunk_s"), "embed": ("enrich_s", "embed_s", "load_s")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_stack(home: Path, job_slots: int = 8, env: dict | None = None, parameters: dict | None = None,
                echo=lambda *_: None, num_cpus: int = 2):
    """Start the local stack in `home` on free ports with `env` applied to it (the Ray
    head passes its environment to every job); stop exactly it afterwards."""
    saved = {k: os.environ.get(k) for k in ["DOCPIPE_HOME", *(env or {})]}
    os.environ["DOCPIPE_HOME"] = str(home)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    from docpipe_local import stack

    t0 = time.monotonic()
    state = stack.start(moto_port=free_port(), ray_port=free_port(), gcs_port=free_port(),
                        parameters=parameters or {}, job_slots=job_slots, num_cpus=num_cpus, echo=echo)
    state["start_s"] = round(time.monotonic() - t0, 2)
    try:
        yield state
    finally:
        t1 = time.monotonic()
        stack.stop(echo=echo)
        state["stop_s"] = round(time.monotonic() - t1, 2)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------- clients
class Clients:
    def __init__(self, state: dict):
        from docpipe_local import stack

        self.state = state
        self.s3 = stack.client("s3", state)
        self.ddb = stack.client("dynamodb", state)
        self.sfn = stack.client("stepfunctions", state)
        self.bucket = state["outputs"]["DocumentBucketName"]
        self.table = state["outputs"]["ControlTableName"]
        self.audit_table = state["outputs"]["AuditTableName"]
        self.sm_arn = state["outputs"]["IngestDocumentStateMachineArn"]
        self.ray_url = state["ray_url"]
        self.ray_token = (Path(state["home"]) / "ray_token").read_text()

    def ray(self, path: str):
        import requests

        r = requests.get(f"{self.ray_url}{path}", timeout=30,
                         headers={"Authorization": f"Bearer {self.ray_token}"})
        r.raise_for_status()
        return r.json()

    def stop_services(self, timeout: float = 60.0) -> list[str]:
        """Stop every running stage service (Ray Jobs API) and wait until each has ended;
        returns their submission ids. The next document starts the next generation, in
        new worker processes: nothing warm (model, embedding cache) survives."""
        import requests

        from docpipe import rayjobs

        headers = {"Authorization": f"Bearer {self.ray_token}"}
        running = [j["submission_id"] for j in rayjobs.services(self.ray("/api/jobs/"))
                   if j.get("status") not in rayjobs.TERMINAL]
        for sid in running:
            requests.post(f"{self.ray_url}/api/jobs/{sid}/stop", headers=headers, timeout=30).raise_for_status()
        deadline = time.monotonic() + timeout
        while running and time.monotonic() < deadline:
            if all(self.ray(f"/api/jobs/{sid}").get("status") in rayjobs.TERMINAL for sid in running):
                break
            time.sleep(0.5)
        else:
            if running:
                raise TimeoutError(f"stage services still running after {timeout:.0f} s: {running}")
        # A warm Lambda trusts the service it saw last for rayjobs.ENSURE_TTL_S: past it,
        # SubmitRayJob finds the service ended and starts the next generation at once.
        time.sleep(rayjobs.ENSURE_TTL_S + 0.5)
        return running

    def executions(self) -> list[dict]:
        out = []
        for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=self.sm_arn):
            out += page["executions"]
        return out

    def history(self, arn: str) -> list[dict]:
        return execution_history(self.sfn, arn)

    def audit_count(self, document_id: str) -> int:
        resp = self.ddb.query(TableName=self.audit_table, KeyConditionExpression="document_id = :d",
                              ExpressionAttributeValues={":d": {"S": document_id}}, Select="COUNT")
        return int(resp["Count"])


# ---------------------------------------------------------------------------- history
def parse_history(events: list[dict]) -> dict:
    """Timestamps (epoch s) and counts of one execution."""
    ts = lambda e: e["timestamp"].timestamp()  # noqa: E731
    out: dict = {"states": {}, "lambdas": [], "tasks": {}, "transitions": 0, "retries": 0,
                 "lambda_invocations": 0, "status": None}
    current = None
    scheduled_in_state: dict[str, int] = {}
    lambda_started = None
    for e in events:
        t, kind = ts(e), e["type"]
        if kind == "ExecutionStarted":
            out["start"] = t
        elif kind in ("ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted", "ExecutionTimedOut"):
            out["end"] = t
            out["status"] = kind.removeprefix("Execution").upper()
        elif kind.endswith("StateEntered"):
            current = e["stateEnteredEventDetails"]["name"]
            out["transitions"] += 1
            out["states"].setdefault(current, {})["entered"] = t
        elif kind.endswith("StateExited"):
            name = e["stateExitedEventDetails"]["name"]
            out["states"].setdefault(name, {})["exited"] = t
        elif kind == "LambdaFunctionScheduled":
            out["lambda_invocations"] += 1
            scheduled_in_state[current] = scheduled_in_state.get(current, 0) + 1
        elif kind == "LambdaFunctionStarted":
            lambda_started = t
        elif kind in ("LambdaFunctionSucceeded", "LambdaFunctionFailed", "LambdaFunctionTimedOut"):
            if lambda_started is not None:
                out["lambdas"].append({"state": current, "s": t - lambda_started})
            lambda_started = None
        elif kind == "TaskScheduled":
            # lambda:invoke.waitForTaskToken: the Lambda is SubmitRayJob.
            out["lambda_invocations"] += 1
            scheduled_in_state[current] = scheduled_in_state.get(current, 0) + 1
            out["tasks"].setdefault(current, {})["scheduled"] = t
        elif kind == "TaskSubmitted":
            task = out["tasks"].setdefault(current, {})
            task["submitted"] = t
            if "scheduled" in task:
                out["lambdas"].append({"state": f"{current} (SubmitRayJob)", "s": t - task["scheduled"]})
        elif kind in ("TaskSucceeded", "TaskFailed", "TaskTimedOut"):
            out["tasks"].setdefault(current, {})["done"] = t
            out["tasks"][current]["outcome"] = kind
            if kind == "TaskSucceeded":
                try:
                    out["tasks"][current]["output"] = json.loads(e["taskSucceededEventDetails"]["output"])
                except (KeyError, ValueError):
                    pass
    # A Retry re-runs a Task state without a new StateEntered: AWS bills it as a transition.
    out["retries"] = sum(max(0, n - 1) for n in scheduled_in_state.values())
    out["transitions"] += out["retries"]
    return out


def job_log_times(logs: str) -> dict:
    out = {}
    for line in logs.splitlines():
        if line.startswith("{") and '"message"' in line:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("message") in ("stage started", "stage succeeded", "stage failed", "stage crashed"):
                # ray_jobs.log's Powertools timestamp, e.g. "2026-12-01 16:54:42,123+0000"
                when = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z")
                out[row["message"].replace(" ", "_")] = when.timestamp()
    return out


# ---------------------------------------------------------------------------- a batch
def pct(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def run_batch(c: Clients, files: list, label: str, timeout: float = 1800.0,
              prefix: str = "input/", follow: str = "executions", echo=lambda *_: None) -> dict:
    """Upload `files` (paths: keys by base name; or docpipe_local.ingest.Source: the keys
    `docpipe ingest` gives them), follow them to a terminal status and measure everything.

    follow="executions": poll the state machine's executions, once a second, or once per
    200 documents' worth of seconds for larger sets: each poll lists every execution
    through the moto server, whose CPU is the machine's (~0.1 CPU s per poll of 1,000
    executions: polled each second, ~0.02-0.03 CPU s per document of a 1,000-document
    run). The wall and latencies come from the executions' own stop times, not from
    when a poll saw them.
    follow="ingest": what `docpipe ingest` does (docpipe_local.cli.run_ingest): uploads
    largest first, a HEAD (already_there) before each, then the unfinished documents'
    control items read every 0.5 s (BatchGetItem, 100 a call) until all are terminal;
    the executions are matched afterwards for the timelines. The CLI's live table is all that is left out."""
    from docpipe_local import ingest

    if follow not in ("executions", "ingest"):
        raise ValueError(f"follow={follow!r}")
    docs = ingest.plan(list(files), c.bucket, prefix)
    by_key = {d.key: d for d in docs}
    # Executions started by EventBridge have generated names (as in AWS): each is mapped to
    # its document once, by the object key in its input.
    doc_of: dict[str, ingest.Doc | None] = {}
    head_before = head_memory_mb(c.state["ray_temp_dir"])
    sampler = Sampler([c.state["moto_pid"], c.state["ray_pid"]], markers=(c.state["ray_temp_dir"],)).start()
    bench_cpu0 = own_cpu_s()
    uploaded_at: dict[str, float] = {}
    ends: dict[str, dict] = {}
    t_first = time.time()
    for d in ingest.upload_order(docs) if follow == "ingest" else docs:
        uploaded_at[d.document_id] = time.time()
        if follow == "executions" or not ingest.already_there(c.s3, c.bucket, d):
            ingest.upload(c.s3, c.bucket, d)
    deadline = time.monotonic() + timeout

    def match_executions() -> None:
        for e in c.executions():
            if e["status"] == "RUNNING":
                continue
            if e["executionArn"] not in doc_of:
                event = json.loads(c.sfn.describe_execution(executionArn=e["executionArn"])["input"])
                doc_of[e["executionArn"]] = by_key.get(event.get("detail", {}).get("object", {}).get("key"))
            d = doc_of[e["executionArn"]]
            if d is None or d.document_id in ends:
                continue
            if e["startDate"].timestamp() < uploaded_at[d.document_id] - 1:
                continue  # an execution of an earlier upload of the same key
            ends[d.document_id] = e

    reported = -1
    if follow == "ingest":
        while not all(d.done for d in docs) and time.monotonic() < deadline:
            ingest.refresh_all(c.ddb, c.table, docs)
            done = sum(d.done for d in docs)
            if done != reported:
                echo(f"  {label}: {done}/{len(docs)} done")
                reported = done
            time.sleep(0.5)
        # A control item turns terminal just before its execution ends.
        settle = min(deadline, time.monotonic() + 60)
        while len(ends) < len(docs) and time.monotonic() < settle:
            match_executions()
            if len(ends) < len(docs):
                time.sleep(1.0)
    poll_s = max(1.0, len(docs) / 200)
    while follow == "executions" and len(ends) < len(docs) and time.monotonic() < deadline:
        time.sleep(poll_s)
        match_executions()
        if len(ends) != reported:
            echo(f"  {label}: {len(ends)}/{len(docs)} done")
            reported = len(ends)
    procs = sampler.stop()
    # The head must not grow with the number of documents (one job per document did:
    # a supervisor and a record each). PublishBacklog reaps finished records each minute.
    procs["ray_head_rss_mb"] = {"before": head_before, "after": head_memory_mb(c.state["ray_temp_dir"])}
    procs["bench_cpu_s"] = round(own_cpu_s() - bench_cpu0, 2)
    procs["foreign_cpu_s"] = round(max(0.0, procs["machine_busy_s"] - procs["cpu_s"] - procs["bench_cpu_s"]), 2)
    timed_out = len(ends) < len(docs)

    per_doc = []
    jobs: dict[str, tuple[dict, dict]] = {}  # submission id -> (job, log times): _job
    for d in docs:
        ingest.refresh(c.ddb, c.table, d)
        e = ends.get(d.document_id)
        row = {"file": d.path.name, "document_id": d.document_id, "status": d.status,
               "pages": int(d.item.get("pages", 0) or 0), "chunks": int(d.item.get("chunks", 0) or 0),
               "vectors": int(d.item.get("vectors", 0) or 0), "bytes": d.path.stat().st_size,
               "durations": {k: float(v) for k, v in (d.item.get("durations") or {}).items()},
               "error_code": d.item.get("error_code"),
               "error_message": str(d.item.get("error_message") or "")[:500] or None}
        if e is not None:
            row.update(_timeline(c, d, e, uploaded_at[d.document_id], jobs))
        if d.status in ("COMPLETED", "PARTIAL"):
            row.update(_artifacts(c, d.item))
        per_doc.append(row)
    cpu = services_task_cpu(c, {d.document_id for d in docs})
    for row in per_doc:
        if row["document_id"] in cpu:
            row["task_cpu_s"] = cpu[row["document_id"]]
    return summarise(label, per_doc, t_first, procs, timed_out)


def _artifacts(c: Clients, item: dict) -> dict:
    """Bytes the document left in S3 (its four JSONL artifacts) and the characters of
    its chunk texts (vector metadata size for the Pinecone estimate)."""
    from docpipe.identity import parse_s3_uri

    total, chars = 0, 0
    for name, uri in (item.get("artifacts") or {}).items():
        bucket, key = parse_s3_uri(uri)
        try:
            if name == "chunks_uri":
                body = c.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                total += len(body)
                chars = sum(len(json.loads(line)["text"]) for line in body.splitlines() if line.strip())
            else:
                total += int(c.s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception:
            pass
    return {"artifact_bytes": total, "chunk_chars": chars}


def _job(c: Clients, sid: str, jobs: dict) -> tuple[dict, dict]:
    """A document's own Ray job and the stage start/end its log names, read once per
    submission id. A stage service holds many documents: its log has every document's
    lines and no per-document stage start, and its start and end are the service's, so
    neither is read (reading its whole log once per document grew with the documents
    squared: 5 minutes of collection after the full corpus)."""
    if sid not in jobs:
        try:
            job = c.ray(f"/api/jobs/{sid}")
            if (job.get("metadata") or {}).get("docpipe") == KIND_SERVICE:
                jobs[sid] = ({}, {})
            else:
                jobs[sid] = (job, job_log_times(c.ray(f"/api/jobs/{sid}/logs").get("logs", "")))
        except Exception:
            jobs[sid] = ({}, {})
    return jobs[sid]


def task_cpu(logs: str, document_ids: set[str]) -> dict[str, dict[str, float]]:
    """Per document and stage, the CPU seconds of its Ray task (`task_cpu_s` of the
    service's "document answered" lines: ray_jobs.service.run_document's process_time),
    for the documents in `document_ids`."""
    out: dict[str, dict[str, float]] = {}
    for line in logs.splitlines():
        if line.startswith("{") and '"document answered"' in line:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("document_id") in document_ids and row.get("ok") and row.get("task_cpu_s") is not None:
                out.setdefault(row["document_id"], {})[row["stage"]] = float(row["task_cpu_s"])
    return out


def services_task_cpu(c: Clients, document_ids: set[str]) -> dict[str, dict[str, float]]:
    """task_cpu over every stage service's log, each read once (a document's own Ray job
    reports no task CPU: its driver is the whole job)."""
    from docpipe import rayjobs

    out: dict[str, dict[str, float]] = {}
    for job in rayjobs.services(c.ray("/api/jobs/")):
        try:
            logs = c.ray(f"/api/jobs/{job['submission_id']}/logs").get("logs", "")
        except Exception:
            continue
        for doc, stages in task_cpu(logs, document_ids).items():
            out.setdefault(doc, {}).update(stages)
    return out


def _timeline(c: Clients, d, execution: dict, t_upload: float, jobs: dict) -> dict:
    h = parse_history(c.history(execution["executionArn"]))
    end = execution["stopDate"].timestamp()
    out = {"latency_s": end - t_upload, "execution_status": execution["status"],
           "transitions": h["transitions"], "retries": h["retries"],
           "lambda_invocations": h["lambda_invocations"],
           "lambda_s": [round(x["s"], 4) for x in h["lambdas"]],
           "audit_items": c.audit_count(d.document_id), "end": end}
    parts = {"ingress": h.get("start", end) - t_upload}
    st = h["states"]
    for name, key in (("RegisterDocument", "register"), ("FinalizeDocument", "finalize")):
        if "entered" in st.get(name, {}) and "exited" in st[name]:
            parts[key] = st[name]["exited"] - st[name]["entered"]
    out["chunk_tokens"] = 0
    for stage, state_name in (("extract", "Extract"), ("embed", "Embed")):
        task = h["tasks"].get(state_name, {})
        if not task:
            continue
        output = task.get("output") or {}
        if stage == "extract":
            out["chunk_tokens"] = int(output.get("chunk_tokens", 0))
        compute = sum(float((output.get("durations") or {}).get(k, 0.0)) for k in COMPUTE_KEYS[stage])
        sid = d.item.get(f"{stage}_submission_id")
        job, logs = _job(c, sid, jobs) if sid else ({}, {})
        submitted, done = task.get("submitted"), task.get("done")
        if submitted and task.get("scheduled"):
            parts[f"{stage}_submit"] = submitted - task["scheduled"]
        started = logs.get("stage_started")
        if submitted and done:
            if started:
                parts[f"{stage}_ray_startup"] = max(0.0, started - submitted)
                parts[f"{stage}_driver_other"] = max(0.0, done - started - compute)
            else:
                parts[f"{stage}_driver_other"] = max(0.0, done - submitted - compute)
            parts[f"{stage}_compute"] = compute
        if job.get("start_time") and job.get("end_time"):
            out[f"{stage}_job_s"] = (job["end_time"] - job["start_time"]) / 1000
            if done:
                out[f"{stage}_job_teardown_s"] = max(0.0, job["end_time"] / 1000 - done)
    known = sum(parts.values())
    parts["stepfunctions_other"] = max(0.0, out["latency_s"] - known)
    out["parts"] = {k: round(v, 4) for k, v in parts.items()}
    return out


def summarise(label: str, per_doc: list[dict], t_first: float, procs: dict, timed_out: bool) -> dict:
    done = [r for r in per_doc if "latency_s" in r]
    ok = [r for r in done if r["status"] in ("COMPLETED", "PARTIAL")]
    wall = (max(r["end"] for r in done) - t_first) if done else float("nan")
    lat = [r["latency_s"] for r in done]
    pages = sum(r["pages"] for r in ok)
    chunks = sum(r["chunks"] for r in ok)
    stage_sum: dict[str, float] = {}
    for r in ok:
        for k, v in r["durations"].items():
            stage_sum[k.removesuffix("_s")] = stage_sum.get(k.removesuffix("_s"), 0.0) + v
    compute_total = sum(stage_sum.values())
    parts_median = {}
    if ok:
        keys = sorted({k for r in ok for k in r.get("parts", {})})
        parts_median = {k: round(statistics.median(r["parts"].get(k, 0.0) for r in ok), 3) for k in keys}
    overhead_per_doc = [r["latency_s"] - sum(r["durations"].values()) for r in ok]
    return {
        "label": label,
        "documents": len(per_doc),
        "completed": len(ok),
        "failed": [(r["file"], r["status"], r["error_code"], r.get("error_message")) for r in per_doc if r not in ok],
        "timed_out": timed_out,
        "pages": pages,
        "chunks": chunks,
        "chunk_tokens": sum(r.get("chunk_tokens", 0) for r in ok),
        "wall_s": round(wall, 3),
        "docs_per_min": round(len(ok) / wall * 60, 3) if ok else 0.0,
        "pages_per_s": round(pages / wall, 3) if ok else 0.0,
        "chunks_per_s": round(chunks / wall, 3) if ok else 0.0,
        "latency_p50_s": round(pct(lat, 50), 3) if lat else None,
        "latency_p95_s": round(pct(lat, 95), 3) if lat else None,
        "latency_max_s": round(max(lat), 3) if lat else None,
        "stage_compute_s": {k: round(v, 3) for k, v in stage_sum.items()},
        "stage_compute_total_s": round(compute_total, 3),
        # The definition: batch wall time minus the stage compute it contains.
        # Negative would mean stages overlapped on the two cores more than they waited.
        "orchestration_overhead_s": round(wall - compute_total, 3),
        "orchestration_overhead_share": round(1 - compute_total / wall, 4) if wall and wall > 0 else None,
        "overhead_per_doc_p50_s": round(pct(overhead_per_doc, 50), 3) if overhead_per_doc else None,
        "latency_parts_median_s": parts_median,
        "transitions_per_doc": round(statistics.mean(r["transitions"] for r in ok), 2) if ok else None,
        "lambda_invocations_per_doc": round(statistics.mean(r["lambda_invocations"] for r in ok), 2) if ok else None,
        "lambda_s_per_doc": round(statistics.mean(sum(r["lambda_s"]) for r in ok), 4) if ok else None,
        # Lambda bills each invocation's duration rounded up to the millisecond.
        "lambda_ms_billed_per_doc": round(statistics.mean(
            sum(math.ceil(s * 1000) for s in r["lambda_s"]) for r in ok), 1) if ok else None,
        "audit_items_per_doc": round(statistics.mean(r["audit_items"] for r in ok), 2) if ok else None,
        "job_teardown_s_median": round(statistics.median(
            [r.get(f"{s}_job_teardown_s", 0.0) for r in ok for s in STAGES]), 3) if ok else None,
        "procs": procs,
        "per_doc": per_doc,
    }
