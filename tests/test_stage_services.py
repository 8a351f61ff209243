"""Stage services on the real local stack: moto server + a Ray head, documents handed to
a long-lived Ray job per stage through its SQS queue (docs/design.md, "Ray execution model").

The session stack runs with StageHeartbeatSeconds=60; the burst and killed-driver tests
deploy the template's minimum (10 s) for their documents, so a smaller burst queues them
for as many heartbeats as the issue's 200 uploads at 60 s did. Every test looks where a
user looks: executions and their history, control items, S3 artifacts, the vector index,
Ray's job list, the processes on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, corpus_file, history, wait_for_messages
from test_local_stack import clients, control_items, set_function_env

from docpipe import identity, rayjobs
from docpipe_local.stack import ray_jobs

sys.path.insert(0, str(REPO))
from bench.gen import document_bytes

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
TERMINAL = ("SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT")


def upload_all(state, docs: dict[str, bytes]) -> None:
    c = clients(state)
    bucket = state["outputs"]["DocumentBucketName"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: c["s3"].put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), docs.items()))


def executions_by_key(state, keys, timeout: float) -> dict[str, dict]:
    """key -> the execution its newest control item names (`execution_arn`: executions
    EventBridge starts have generated names), once every one is terminal."""
    c = clients(state)
    bucket = state["outputs"]["DocumentBucketName"]
    prefixes = {identity.document_id(bucket, k): k for k in keys}
    deadline = time.monotonic() + timeout
    while True:
        arns: dict[str, tuple[str, str]] = {}  # key -> (updated_at, execution_arn)
        for page in c["dynamodb"].get_paginator("scan").paginate(TableName=state["outputs"]["ControlTableName"]):
            for item in page["Items"]:
                key = prefixes.get(item["document_id"]["S"])
                if key and "execution_arn" in item:
                    mine = (item.get("updated_at", {}).get("S", ""), item["execution_arn"]["S"])
                    arns[key] = max(arns.get(key, mine), mine)
        pages = c["stepfunctions"].get_paginator("list_executions").paginate(
            stateMachineArn=state["outputs"]["IngestDocumentStateMachineArn"])
        by_arn = {e["executionArn"]: e for page in pages for e in page["executions"]}
        found = {key: by_arn[arn] for key, (_, arn) in arns.items() if arn in by_arn}
        if len(found) == len(prefixes) and all(e["status"] in TERMINAL for e in found.values()):
            return found
        if time.monotonic() > deadline:
            counts = Counter(e["status"] for e in found.values())
            raise AssertionError(f"after {timeout:.0f} s: {len(found)}/{len(prefixes)} executions, {dict(counts)}")
        time.sleep(2)


def processes(match) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if match(argv):
                found.append(int(proc.name))
    return found


def vectors_of(state, document_id: str) -> list[str]:
    os.environ["LANCEDB_URI"] = str(Path(state["home"]) / "vectors")
    from ray_jobs.backends.lancedb_store import LanceDBStore

    return LanceDBStore.from_env().list_ids(identity.vector_id_prefix(document_id))


def generated(prefix: str, n: int, pages: int = 2, seed: int = 0) -> dict[str, bytes]:
    return {f"input/{prefix}/doc-{i:04d}.pdf": document_bytes(seed + i, pages) for i in range(n)}


# The template's minimum StageHeartbeatSeconds: the tests that need documents queued past
# their heartbeat reach that with a few dozen documents instead of hundreds.
MIN_HEARTBEAT_SECONDS = "10"


def test_burst_of_48_small_uploads_all_complete(local_stack):
    """The issue's burst (200 uploads with HeartbeatSeconds=60: on the landed pipeline 20%
    ended StageTimeout, each waiting for a Ray job slot where nothing heartbeats), at a
    quarter of the size with a sixth of the heartbeat. The local stack gets 1-1.5 documents
    a second through both stages, so the last of 48 waits 35-45 s, 3.5-4.5 heartbeats of
    10 s, as the last of 200 waited ~3.5 heartbeats of 60 s. A design that leaves queued
    documents without a heartbeat times them out on every try of the Extract retry: this
    burst on a Ray job per document (STAGE_SERVICE_MAX_BYTES=0, the old design) ended with
    47 of 48 executions FAILED, every one timed out at least once. Only holding and
    heartbeating every queued document completes all 48."""
    restore = set_function_env(local_stack, "RegisterDocument", STAGE_HEARTBEAT_SECONDS=MIN_HEARTBEAT_SECONDS)
    try:
        docs = generated("burst", 48, seed=1000)
        upload_all(local_stack, docs)
        found = executions_by_key(local_stack, docs, timeout=600)
    finally:
        restore()
    assert Counter(e["status"] for e in found.values()) == {"SUCCEEDED": 48}
    items = [control_items(local_stack, k)[0] for k in docs]
    assert Counter(i["status"] for i in items) == {"COMPLETED": 48}
    assert {(i["extract_route"], i["embed_route"]) for i in items} == {("service", "service")}
    # One long-lived job per stage did all of it: no job per document in Ray's list.
    jobs = ray_jobs(local_stack)
    assert not [j for j in jobs if (j.get("metadata") or {}).get("docpipe") == rayjobs.KIND_DOCUMENT
                and "burst" in j["metadata"].get("document_id", "")]
    services = [j for j in jobs if (j.get("metadata") or {}).get("docpipe") == rayjobs.KIND_SERVICE]
    assert {j["metadata"]["stage"] for j in services if j["status"] == "RUNNING"} == {"extract", "embed"}


def test_killed_service_driver_loses_nothing(local_stack):
    """SIGKILL of the extract service's driver during a 20-document burst: its tokens go
    silent, each Extract state retries (States.HeartbeatTimeout; moto says States.Timeout),
    the next submission starts the next generation of the service, and every document
    completes with as many vectors as chunks (nothing indexed twice). The driver is killed
    as soon as it holds two or more documents of the burst; the template's minimum
    heartbeat (10 s) is how long their tokens stay silent."""
    restore = set_function_env(local_stack, "RegisterDocument", STAGE_HEARTBEAT_SECONDS=MIN_HEARTBEAT_SECONDS)
    try:
        docs = generated("killed-service", 20, seed=2000)
        upload_all(local_stack, docs)
        deadline = time.monotonic() + 60
        drivers = []
        while not drivers and time.monotonic() < deadline:
            drivers = processes(lambda a: "python" in Path(a[0]).name and a[1:3] == ["-m", "ray_jobs.service"]
                                and "extract" in a)
            time.sleep(0.2)
        assert drivers, "no extract service driver running"
        # Kill it while it holds part of the burst (messages received, not yet deleted): a
        # warm service answers 20 two-page documents within seconds.
        wait_for_messages(clients(local_stack), local_stack["outputs"]["ExtractQueueUrl"], 2,
                          timeout=max(1.0, deadline - time.monotonic()),
                          attribute="ApproximateNumberOfMessagesNotVisible")
        for pid in drivers:
            os.kill(pid, signal.SIGKILL)
        found = executions_by_key(local_stack, docs, timeout=600)
    finally:
        restore()
    assert Counter(e["status"] for e in found.values()) == {"SUCCEEDED": 20}
    c = clients(local_stack)
    retried = 0
    for key, e in found.items():
        events = history(c["stepfunctions"], e["executionArn"])
        scheduled = [ev for ev in events if ev["type"] == "TaskScheduled"
                     and '"stage": "extract"' in ev["taskScheduledEventDetails"]["parameters"]]
        timed_out = [ev for ev in events if ev["type"] == "TaskTimedOut"]
        if len(scheduled) > 1:
            retried += 1
            assert timed_out, f"{key}: retried without a timeout in its history"
        [item] = control_items(local_stack, key)
        assert item["status"] == "COMPLETED"
        assert len(vectors_of(local_stack, item["document_id"])) == int(item["chunks"]) == int(item["vectors"])
    assert retried >= 1, "the kill hit no document: nothing was held"
    generations = [j for j in ray_jobs(local_stack) if (j.get("metadata") or {}).get("docpipe") == rayjobs.KIND_SERVICE
                   and j["metadata"]["stage"] == "extract"]
    assert max(int(j["metadata"]["generation"]) for j in generations) >= 2


def test_killed_worker_process_is_retried_by_ray(local_stack):
    """SIGKILL of the Ray worker process running a document: Ray runs the task again
    on another worker process; the document completes."""
    key = "input/killed-worker/long.pdf"
    upload_all(local_stack, {key: document_bytes(3000, 150)})
    deadline = time.monotonic() + 60
    victims = []
    while not victims and time.monotonic() < deadline:
        # A Ray worker titles itself ray::<task> while it runs one, ray::IDLE otherwise.
        victims = processes(lambda a: a[0].startswith("ray::run_document"))
        time.sleep(0.05)
    assert victims, "no worker ever ran the document"
    os.kill(victims[0], signal.SIGKILL)
    found = executions_by_key(local_stack, [key], timeout=300)
    assert found[key]["status"] == "SUCCEEDED"
    [item] = control_items(local_stack, key)
    assert item["status"] == "COMPLETED" and int(item["pages"]) == 150
    events = history(clients(local_stack)["stepfunctions"], found[key]["executionArn"])
    assert not [e for e in events if e["type"] in ("TaskTimedOut", "TaskFailed")], "Ray retried it, not the state"


HOSTILE = {
    "pdf.js/test/pdfs/bomb_giant.pdf": ("COMPLETED", None),  # JBIG2 decompression bomb: text layer only
    "pdf.js/test/pdfs/Pages-tree-refs.pdf": ("PARTIAL", None),  # page-tree loop: its 2nd page has no text
    "pdf.js/test/pdfs/poppler-937-0-fuzzed.pdf": ("FAILED", "PdfMalformed"),
    "pdfplumber/tests/pdfs/password-example.pdf": ("FAILED", "PdfEncrypted"),
}


def test_hostile_files_fail_alone_among_good_ones(local_stack):
    """Hostile corpus files share the warm workers with good documents: each ends with
    its own outcome and the good ones complete."""
    docs = generated("mixed", 8, seed=4000)
    for rel in HOSTILE:
        docs[f"input/mixed/{Path(rel).name}"] = corpus_file(rel).read_bytes()
    upload_all(local_stack, docs)
    found = executions_by_key(local_stack, docs, timeout=300)
    for key in docs:
        [item] = control_items(local_stack, key)
        expected = next((v for rel, v in HOSTILE.items() if key.endswith(Path(rel).name)), ("COMPLETED", None))
        assert (item["status"], item.get("error_code")) == expected, (key, item)
        assert item["extract_route"] == "service"
        assert found[key]["status"] == ("FAILED" if expected[0] == "FAILED" else "SUCCEEDED")


def test_large_document_gets_its_own_job_with_the_same_outputs(local_stack):
    """Over StageServiceMaxBytes a document runs as a Ray job of its own (in Ray's job
    list); under it through the service. Both routes write the same bytes."""
    body = corpus_file("pdf.js/test/pdfs/tracemonkey.pdf").read_bytes()
    small, large = "input/routes/service.pdf", "input/routes/own-job.pdf"
    upload_all(local_stack, {small: body})
    executions_by_key(local_stack, [small], timeout=180)
    restore = set_function_env(local_stack, "SubmitRayJob", STAGE_SERVICE_MAX_BYTES=str(len(body) - 1))
    # Ray's job list is read while the document runs: the stack's PublishBacklog (every
    # minute) deletes finished jobs' records, so a read afterwards may find none.
    large_id = identity.document_id(local_stack["outputs"]["DocumentBucketName"], large)
    seen: dict[str, dict] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            for j in ray_jobs(local_stack):
                if (j.get("metadata") or {}).get("document_id") == large_id:
                    seen[j["submission_id"]] = j
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        upload_all(local_stack, {large: body})
        executions_by_key(local_stack, [large], timeout=180)
    finally:
        done.set()
        watcher.join(timeout=30)
        restore()
    [a], [b] = control_items(local_stack, small), control_items(local_stack, large)
    assert (a["status"], a["extract_route"], a["embed_route"]) == ("COMPLETED", "service", "service")
    assert (b["status"], b["extract_route"], b["embed_route"]) == ("COMPLETED", "job", "job")
    assert b["document_id"] == large_id
    own = {j["metadata"]["stage"] for j in seen.values()}
    assert own == {"extract", "embed"}
    assert a["processing_version"] == b["processing_version"]
    c = clients(local_stack)
    bucket = local_stack["outputs"]["DocumentBucketName"]
    for prefix, name in (("extracted", "pages.jsonl"), ("chunks", "chunks.jsonl"), ("enriched", "chunks.jsonl")):
        got = [c["s3"].get_object(Bucket=bucket, Key=identity.artifact_key(prefix, i["document_id"],
                                                                           i["processing_version"], name))["Body"].read()
               for i in (a, b)]
        # Identical but for the document id each route was given.
        assert got[0].replace(a["document_id"].encode(), b"DOC") == got[1].replace(b["document_id"].encode(), b"DOC"), prefix
    assert len(vectors_of(local_stack, a["document_id"])) == len(vectors_of(local_stack, b["document_id"])) == int(a["chunks"])


def test_stack_status_shows_services_and_queues(local_stack):
    from test_local_stack import run_cli

    out = run_cli("stack", "status")
    assert out.returncode == 0
    assert "stage services" in out.stdout and "extract" in out.stdout and "embed" in out.stdout
    assert "docpipe-service-" in out.stdout


def _embed_output(state, execution: dict) -> dict:
    """What the embed stage's service answered (SendTaskSuccess output) for one execution."""
    import json

    events = history(clients(state)["stepfunctions"], execution["executionArn"])
    outputs = [json.loads(ev["taskSucceededEventDetails"]["output"]) for ev in events
               if ev["type"] == "TaskSucceeded" and '"embedding_model"' in ev["taskSucceededEventDetails"]["output"]]
    assert len(outputs) == 1, f"{len(outputs)} embed answers in the history"
    return outputs[0]


def test_bench_restarts_the_services_so_no_workload_reuses_an_earlier_ones_embeddings(local_stack):
    """bench/run.py stops the stage services between workloads (bench.e2e.Clients.stop_services):
    the services that ran end, the next document starts a new generation of each, and text
    an earlier workload embedded is embedded again, not served from the old workers' cache."""
    from bench.e2e import Clients

    body = document_bytes(4242, 2)
    first, again = "input/bench-fresh/first.pdf", "input/bench-fresh/again.pdf"
    upload_all(local_stack, {first: body})
    executions_by_key(local_stack, [first], timeout=180)
    before = {j["submission_id"]: j["metadata"]["stage"] for j in ray_jobs(local_stack)
              if (j.get("metadata") or {}).get("docpipe") == rayjobs.KIND_SERVICE and j["status"] == "RUNNING"}
    assert sorted(before.values()) == ["embed", "extract"], before

    bench_clients = Clients(local_stack)
    stopped = bench_clients.stop_services()

    assert set(stopped) == set(before)
    assert {j["submission_id"]: j["status"] for j in ray_jobs(local_stack) if j["submission_id"] in before} \
        == dict.fromkeys(before, "STOPPED")
    # Each ended on its own after its last long poll came back (Ray's 3-s default grace
    # killed it inside the poll, and the poll kept the next message hidden for 600 s).
    for sid in before:
        log = bench_clients.ray(f"/api/jobs/{sid}/logs")["logs"]
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert [line.get("reason") for line in lines if line.get("message") == "stage service stopped"] \
            == ["SIGTERM"], log[-2000:]
    upload_all(local_stack, {again: body})  # the same text under another key: a new document
    found = executions_by_key(local_stack, [again], timeout=180)
    assert found[again]["status"] == "SUCCEEDED"
    output = _embed_output(local_stack, found[again])
    [item] = control_items(local_stack, again)
    assert output["cache_hits"] == 0 and output["vectors"] == int(item["chunks"]) > 0
    after = {j["submission_id"]: j["metadata"]["stage"] for j in ray_jobs(local_stack)
             if (j.get("metadata") or {}).get("docpipe") == rayjobs.KIND_SERVICE and j["status"] == "RUNNING"}
    assert sorted(after.values()) == ["embed", "extract"] and not set(after) & set(before)
