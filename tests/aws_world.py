"""One moto stack, the real code driven through every path worth proving, everything recorded.

Shared by tests/test_iam_covers_calls.py (IAM) and tests/test_aws_rules.py (metrics vs
alarms) through the session fixture `world`, so the stack is built and the pipeline run
once (moto enforces neither IAM nor alarms; the checks read what was recorded here):
- every botocore call with the component that made it (a Lambda function, the Ray head's
  stage-service driver, a Ray worker's stage code), its parameters and its outcome;
- the EMF records every handler printed;
- the execution histories of both state machines.

Attribution: the Lambda seam and `docpipe invoke` both go through `handlers.invoke`,
stage code runs in `ray_jobs.service.run_document` (a worker's Ray task) or a document's
own job entry point, and the driver is `StageService`; each is wrapped to tag its thread,
and threads started by a tagged thread inherit the tag. Untagged calls (the test's own,
moto's engine) are not recorded.

DOCPIPE_CHECK_TREE=<dir> takes template.yaml, infra/, statemachine/ and functions/ from
another checkout (e.g. `git archive HEAD | tar -x -C /tmp/old`) to show the checks fail on
old code; the layer and ray_jobs stay this tree's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.client
import pytest
from botocore.exceptions import ClientError
from conftest import EVENTS, REPO, corpus_file, executions_for, history, local_aws_stack, wait_for_execution

TREE = Path(os.environ.get("DOCPIPE_CHECK_TREE") or REPO)
GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
ENCRYPTED = "pdfplumber/tests/pdfs/password-example.pdf"
SCAN_TWO_PAGES = "unstructured/label-party/holistic-src/M_Romney_1040_2011-p15-p16.pdf"
SCAN_ONE_PAGE = "unstructured/example-docs/pdf/single_table.pdf"
WORKER, HEAD = "RayWorker", "RayHead"

_local = threading.local()


def component() -> str | None:
    return getattr(_local, "component", None) or getattr(threading.current_thread(), "_docpipe_component", None)


@contextlib.contextmanager
def as_component(name: str | None):
    before = getattr(_local, "component", None)
    _local.component = name
    try:
        yield
    finally:
        _local.component = before


@dataclass
class Call:
    component: str
    service: str
    operation: str
    params: dict
    outcome: str  # "ok" or the error code


@dataclass
class World:
    stack: object
    clients: dict
    head: object
    calls: list[Call] = field(default_factory=list)
    emf: list[tuple[str, dict]] = field(default_factory=list)  # (function, EMF record)
    histories: dict[str, list[list[dict]]] = field(default_factory=dict)  # state machine id -> histories
    textract: Any = None  # the FakeTextract the workers' OCR calls reach

    def of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.component == name]


@contextlib.contextmanager
def _recording(world: World, logical_ids: dict[str, str]):
    from aws_lambda_powertools.utilities import parameters

    from docpipe import rayjobs
    from docpipe_local import handlers
    from ray_jobs import service

    orig_call = botocore.client.BaseClient._make_api_call
    orig_invoke = handlers.invoke
    orig_run_document = service.run_document
    orig_service_run = service.StageService.run
    orig_start = threading.Thread.start

    def make_api_call(client, operation, params):
        who = component()
        if who is None:
            return orig_call(client, operation, params)
        call = Call(who, client.meta.service_model.service_name, operation, dict(params), "ok")
        world.calls.append(call)
        try:
            return orig_call(client, operation, params)
        except ClientError as err:
            call.outcome = err.response.get("Error", {}).get("Code", "") or "error"
            raise

    def invoke(code_dir, handler, event, env, function_name, timeout_s=60.0):
        name = logical_ids.get(function_name, function_name)
        # Each call a fresh container: the layer is imported once in this process, so a
        # secret or service cached by one function would hide another's calls.
        parameters.clear_caches()
        rayjobs._ensured.clear()
        with as_component(name):
            result = orig_invoke(code_dir, handler, event, env, function_name, timeout_s=timeout_s)
        for line in result[2].splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "_aws" in record:
                    world.emf.append((name, record))
        return result

    def run_document(stage, job):
        with as_component(WORKER):
            return orig_run_document(stage, job)

    def service_run(self, *a, **kw):
        with as_component(HEAD):
            return orig_service_run(self, *a, **kw)

    def start(self):
        self._docpipe_component = component()
        return orig_start(self)

    botocore.client.BaseClient._make_api_call = make_api_call
    handlers.invoke = invoke
    service.run_document = run_document
    service.StageService.run = service_run
    threading.Thread.start = start
    try:
        yield
    finally:
        botocore.client.BaseClient._make_api_call = orig_call
        handlers.invoke = orig_invoke
        service.run_document = orig_run_document
        service.StageService.run = orig_service_run
        threading.Thread.start = orig_start


def _run_upload(world: World, key: str, body: bytes, nth: int) -> None:
    s3, sfn = world.clients["s3"], world.clients["stepfunctions"]
    s3.put_object(Bucket=world.stack.outputs["DocumentBucketName"], Key=key, Body=body)
    arn = world.stack.outputs["IngestDocumentStateMachineArn"]
    newest = sorted(executions_for(sfn, arn, nth), key=lambda e: e["startDate"])[-1]
    wait_for_execution(sfn, newest["executionArn"])
    world.histories.setdefault("IngestDocumentStateMachine", []).append(history(sfn, newest["executionArn"]))


def _pipeline(world: World) -> None:
    """Uploads through EventBridge -> IngestDocument -> Lambdas and stage services."""
    good = corpus_file(GOOD).read_bytes()
    _run_upload(world, "input/world/good.pdf", good, 1)  # PROCESS ... COMPLETED
    _run_upload(world, "input/world/encrypted.pdf", corpus_file(ENCRYPTED).read_bytes(), 2)  # FAILED, alert
    _run_upload(world, "input/world/good.pdf", good, 3)  # same bytes: DUPLICATE
    # Scans read by Textract (OcrBackend=textract, its wire-level fake): a two-page scan as
    # one asynchronous job on the upload in S3, a one-page scan with a synchronous call.
    world.textract.script_job({1: ["Self-Employment Tax"], 2: ["Foreign Tax Credit"]})
    world.textract.answer_sync(["Processing total chunks", "Base 128 64,058"])
    _run_upload(world, "input/world/scan-two-pages.pdf", corpus_file(SCAN_TWO_PAGES).read_bytes(), 4)
    _run_upload(world, "input/world/scan-one-page.pdf", corpus_file(SCAN_ONE_PAGE).read_bytes(), 5)
    # A document too large for the stage services: its own Ray job per stage, on a worker.
    lam, fn = world.clients["lambda"], world.stack.physical_name("SubmitRayJobFunction")
    env = lam.get_function_configuration(FunctionName=fn)["Environment"]["Variables"]
    lam.update_function_configuration(FunctionName=fn, Environment={"Variables": {**env, "STAGE_SERVICE_MAX_BYTES": "0"}})
    try:
        _run_upload(world, "input/world/own-job.pdf", good, 6)
    finally:
        lam.update_function_configuration(FunctionName=fn, Environment={"Variables": env})


def _tag_own_jobs(head) -> None:
    """A document's own job runs on a worker; a stage service's driver on the head
    (StageService.run tags itself)."""
    run = head._run

    def tagged(body):
        own = not body["entrypoint"].startswith("python -m ray_jobs.service")
        with as_component(WORKER if own else None):
            return run(body)

    head._run = tagged


def _backfill(world: World) -> None:
    from docpipe_local import eventbridge

    stack, sfn = world.stack, world.clients["stepfunctions"]
    eventbridge.set_delivery(False)
    try:  # a key RegisterDocument skips: the children stay cheap
        world.clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key="input/old/readme.txt",
                                       Body=b"not a pdf")
    finally:
        eventbridge.set_delivery(True)
    arn = sfn.start_execution(stateMachineArn=stack.outputs["BackfillStateMachineArn"], name="world",
                              input=json.dumps({"prefix": "input/old/", "max_concurrency": 2}))["executionArn"]
    desc = wait_for_execution(sfn, arn, timeout=120)
    assert desc["status"] == "SUCCEEDED", desc
    world.histories["BackfillStateMachine"] = [history(sfn, arn)]
    # The IngestDocument executions its children started (.sync:2 waited for them).
    seen = {h[0]["executionStartedEventDetails"]["input"] for h in world.histories["IngestDocumentStateMachine"]}
    for e in sfn.list_executions(stateMachineArn=stack.outputs["IngestDocumentStateMachineArn"])["executions"]:
        h = history(sfn, e["executionArn"])
        if h[0]["executionStartedEventDetails"]["input"] not in seen:
            world.histories["IngestDocumentStateMachine"].append(h)


def _stop_services(head) -> None:
    head.stop_services.set()
    for t in head.threads:
        t.join(timeout=30)
    head.run_jobs = False


def _direct(world: World) -> None:
    """Paths an upload does not take on moto: objects gone before they are read (404),
    a submission the head refuses, PublishBacklog, and the
    stage-service driver's answers refused and a job file already removed."""
    from docpipe import rayjobs
    from docpipe_local import eventbridge
    from docpipe_local.invoke import invoke_function, load_event
    from ray_jobs import service

    stack, clients, head = world.stack, world.clients, world.head
    bucket = stack.outputs["DocumentBucketName"]

    # The upload is deleted before RegisterDocument runs: S3 must answer 404.
    gone = load_event(EVENTS / "register_document.json")
    gone["detail"]["bucket"]["name"] = bucket
    gone["detail"]["object"]["key"] = "input/world/gone.pdf"
    _, errored, _ = invoke_function(stack, "RegisterDocument", gone)
    assert errored
    # ...and RecordFailure then identifies it from the event (404 again, nothing to copy).
    state = {k: v for k, v in gone.items() if k != "execution_arn"}
    state["error"] = {"Error": "DocumentNotFound", "Cause": "deleted before processing"}
    _, errored, _ = invoke_function(stack, "RecordFailure", {"state": state, "execution_arn": "arn:x"})
    assert not errored

    # SubmitRayJob: both routes, and a service the head cannot start (job file removed).
    eventbridge.set_delivery(False)
    ev = load_event(EVENTS / "register_document.json")
    clients["s3"].put_object(Bucket=bucket, Key=ev["detail"]["object"]["key"], Body=corpus_file(GOOD).read_bytes())
    eventbridge.set_delivery(True)
    reg, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored, reg
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    for i, env in enumerate(({}, {"STAGE_SERVICE_MAX_BYTES": "0"})):
        _, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": i}, extra_env=env)
        assert not errored
    head.fail_next = 1
    rayjobs._ensured.clear()
    head.status = dict.fromkeys(head.status, "FAILED")
    _, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": 5})
    assert errored

    # A document's own job whose upload is gone: read (404), then SendTaskFailure from the
    # worker (moto refuses the sample token; the call is made all the same).
    from ray_jobs import extract

    job = {"task_token": event["task_token"], "submission_id": "world-gone", "inputs": {},
           "registration": {**reg, "s3_key": "input/world/gone-before-extract.pdf"}}
    clients["s3"].put_object(Bucket=bucket, Key="jobs/world-gone.json", Body=json.dumps(job).encode())
    with as_component(WORKER):
        assert extract.main(["--job", f"s3://{bucket}/jobs/world-gone.json"]) == 1

    # PublishBacklog with a queue that is not empty: it starts a service and cleans up.
    _, errored, _ = invoke_function(stack, "PublishBacklog", {})
    assert not errored

    # The driver on the head (its documents' tasks on workers): two documents queued.
    sqs = clients["sqs"]
    sqs.purge_queue(QueueUrl=stack.outputs["ExtractQueueUrl"])
    for retry in (10, 11):
        _, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": retry})
        assert not errored
    workers = ThreadPoolExecutor(2, thread_name_prefix="ray-worker")

    def submit(stage, job):  # the first runs, the second stays queued in "Ray"
        if job["submission_id"].endswith("-r10"):
            return workers.submit(service.run_document, stage, job)
        return workers.submit(threading.Event().wait, 30)

    with as_component(HEAD):
        svc = service.StageService("extract", stack.outputs["ExtractQueueUrl"], idle_seconds=1, submit=submit,
                                   wait=lambda fs, t: list(wait(fs, t, return_when=FIRST_COMPLETED).done),
                                   get=lambda f: f.result(), cancel=lambda f: f.cancel())
        while svc.counts["received"] < 2:
            svc.receive_once(1)
        while len(svc.held) > 1:
            svc.collect(timeout=1)
        assert svc.counts["late"] == 1, svc.counts  # the sample token is refused and dropped...
        for held in svc.held.values():  # ...and so is the held one's at its heartbeat
            held.next_beat = held.visible_at = 0
        svc.beat_due()
        assert svc.counts["dropped"] == 1, svc.counts
        with as_component(None):  # a re-delivered message whose job file is gone (the test's call)
            sqs.send_message(QueueUrl=stack.outputs["ExtractQueueUrl"], MessageBody=json.dumps(
                {"job_uri": f"s3://{bucket}/jobs/gone.json", "submission_id": "gone"}))
        svc.receive_once(1)  # read (404), then deleted
    workers.shutdown(wait=False, cancel_futures=True)


def _load_from(tree: Path):
    from docpipe_local import template

    original = template.load
    return original if tree == REPO else functools.partial(original, template_path=tree / "template.yaml")


_shared: dict[str, World] = {}


@pytest.fixture(scope="session")
def world(request):
    """Imported by several test modules (each gets its own fixture definition): the first
    one builds the world, the others share it; it is torn down at the session's end."""
    if "world" not in _shared:
        stack = contextlib.ExitStack()
        _shared["world"] = stack.enter_context(_build_world())

        def close():
            _shared.clear()
            stack.close()

        request.addfinalizer(close)
    return _shared["world"]


@contextlib.contextmanager
def _build_world():
    from docpipe import aws
    from docpipe_local import template

    mp = pytest.MonkeyPatch()
    lancedb = Path(os.environ.get("TMPDIR", "/tmp")) / f"docpipe-world-{os.getpid()}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                 "LANCEDB_URI": str(lancedb), "DOCPIPE_NO_RAY": "1",
                 "DOCPIPE_HEARTBEAT_INTERVAL": "1", "STAGE_SERVICE_RECEIVE_WAIT_SECONDS": "1"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    mp.delenv("AWS_PROFILE", raising=False)
    mp.setattr(template, "load", _load_from(TREE))
    aws.reset_clients()
    from fakes.textract import FakeTextract

    textract = FakeTextract().start()
    try:
        # The S3 embedding cache on (as EmbeddingBackend=openai turns it on): the workers'
        # grant on embedding-cache/ is then proven by the calls the stages make; the same
        # for Textract (OcrBackend=textract) and its read of the upload.
        mp.setenv("AWS_ENDPOINT_URL_TEXTRACT", textract.url)
        mp.setenv("TEXTRACT_POLL_SECONDS", "0.2")
        aws.reset_clients()
        with local_aws_stack(parameters={"EmbeddingCache": "s3", "OcrBackend": "textract"}) as (stack, clients, head):
            w = World(stack, clients, head, textract=textract)
            ids = {stack.physical_name(lid): lid.removesuffix("Function")
                   for lid in stack.of_type("AWS::Lambda::Function")}
            _tag_own_jobs(head)
            with _recording(w, ids):
                _pipeline(w)
                _backfill(w)
                _stop_services(head)
                _direct(w)
    finally:
        textract.stop()
        mp.undo()
        aws.reset_clients()
        shutil.rmtree(lancedb, ignore_errors=True)
    # What the tests read is recorded by now: moto and the environment are left before the
    # other modules run (a session-long mock_aws would share its state with their stacks).
    yield w
