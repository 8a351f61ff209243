"""Every error name the state machines retry or catch is really raised.

The names come from every `ErrorEquals` (Retry and Catch) of statemachine/*.asl.json.
Each one is provoked for real on moto's Step Functions engine (the real ASL, the real
handlers behind the Lambda seam, the real Ray-stage code behind FakeRayHead, as in
test_ingest_workflow): a crafted input or a failing dependency makes our code (or, for
the AWS service names, the service) fail, and the name must come back as the `error`
of a failed or timed-out task in the execution history. A name added to an ErrorEquals
without a provocation here fails its test: a Retry for an error nothing raises is dead
configuration. Only the names AWS raises inside Step Functions itself, which moto's
engine cannot produce, are listed (with the reason) in NOT_ON_MOTO.

Speed: moto's Retry waits and botocore's backoff are set to zero; which error a
failure surfaces as does not depend on them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import corpus_file, executions_for, history, local_aws_stack
from fakes import FakeHTTPServer
from fakes.openai_server import FakeOpenAIServer
from fakes.pinecone_server import FakePineconeServer
from test_asl import all_states

REPO = Path(__file__).resolve().parents[1]
GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
OPENAI = {"EmbeddingBackend": "openai", "OpenAIKeySecretArn": "docpipe/openai"}
OPENAI_SECRET = {"docpipe/openai": "sk-test"}


def asl_error_names() -> list[str]:
    names: set[str] = set()
    for path in sorted((REPO / "statemachine").glob("*.asl.json")):
        for _, state in all_states(json.loads(path.read_text())):
            for rule in state.get("Retry", []) + state.get("Catch", []):
                names.update(rule["ErrorEquals"])
    return sorted(names - {"States.ALL"})  # a wildcard, not an error anything raises


# Raised by Step Functions' own service clients on AWS; moto's engine names a service's
# error `<Service>.<the API's error code>`, and these are not error codes of any API.
NOT_ON_MOTO = {
    "States.HeartbeatTimeout": "moto's engine reports a missed heartbeat as States.Timeout "
                               "(provoked in the States.Timeout case); AWS raises this name",
    "Lambda.AWSLambdaException": "AWS's generic Lambda service error inside Step Functions; no Lambda API error code",
    "Lambda.SdkClientException": "a client-side failure of Step Functions' Lambda client on AWS; no API error code",
    "StepFunctions.SdkClientException": "a client-side failure of Step Functions' own client on AWS; no API error code",
    # AWS docs (bp-lambda-serviceexception): "Unhandled errors in Lambda are reported as
    # Lambda.Unknown ... out-of-memory errors and function timeouts". moto runs our handlers
    # in-process; they cannot time out or be killed for memory. FinalizeDocument's retry of
    # it is proven by tests/test_finalize_retry.py (a retry after a partial commit).
    "Lambda.Unknown": "Lambda's report of a function that timed out or ran out of memory; moto's in-process handlers cannot",
    # moto's engine raises it (StepFunctions.<code>Exception) when StartExecution refuses, but
    # it runs a distributed Map's children without exposing them: no ListExecutions by map
    # run, no child history, and the child's Catch (Backfill) swallows the error.
    "StepFunctions.ExecutionLimitExceededException": "raised inside a distributed Map child, whose history moto does not expose",
}

World = tuple  # (stack, clients, head) as local_aws_stack yields it
Provocation = Callable[[contextlib.ExitStack, pytest.MonkeyPatch], tuple[World, str]]
PROVOKE: dict[str, Provocation] = {}


def provokes(*names: str):
    def register(fn: Provocation) -> Provocation:
        for name in names:
            PROVOKE[name] = fn
        return fn
    return register


def task_failures(events: list[dict]) -> list[tuple[str, str]]:
    """(error, cause) of every failed or timed-out task, Lambda function or service call."""
    out = []
    for e in events:
        if e["type"] == "ExecutionFailed" or not e["type"].endswith(("Failed", "TimedOut")):
            continue
        details = next((v for k, v in e.items() if k.endswith("EventDetails")), {})
        if "error" in details:
            out.append((details["error"], details.get("cause", "")[:300]))
    return out


def upload(world: World, key: str, body: bytes, nth: int = 1) -> str:
    """Upload under input/ (EventBridge starts the execution); the new execution's ARN."""
    stack, clients, _ = world
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=key, Body=body)
    execs = executions_for(clients["stepfunctions"], stack.outputs["IngestDocumentStateMachineArn"], nth)
    return sorted(execs, key=lambda e: e["startDate"])[-1]["executionArn"]


def pdf() -> bytes:
    return corpus_file(GOOD).read_bytes()


def world(stack: contextlib.ExitStack, parameters: dict | None = None, secrets: dict | None = None) -> World:
    return stack.enter_context(local_aws_stack(parameters, secrets))


# --- our own names: the handlers and the Ray-stage code raise them ------------------------
@provokes("StoreThrottled")
def control_table_throttled(stack, monkeypatch):
    """DynamoDB throttles every write to the control table: RegisterDocument's put."""
    from moto.core.exceptions import JsonRESTError
    from moto.dynamodb.models import DynamoDBBackend

    w = world(stack)
    control, put = w[0].outputs["ControlTableName"], DynamoDBBackend.put_item

    def throttled(self, table_name, *args, **kwargs):
        if table_name == control:
            raise JsonRESTError("ProvisionedThroughputExceededException", "Rate of requests exceeds the allowed throughput.")
        return put(self, table_name, *args, **kwargs)

    monkeypatch.setattr(DynamoDBBackend, "put_item", throttled)
    return w, upload(w, "input/throttled.pdf", pdf())


@provokes("RayHeadUnavailable")
def ray_head_answers_503(stack, monkeypatch):
    w = world(stack)
    w[2].fail_next = 1  # the Ray Jobs API answers 503 to the first submission
    return w, upload(w, "input/head-down.pdf", pdf())


@provokes("JobInterrupted")
def stage_service_sigterm_while_holding(stack, monkeypatch):
    """The extract service holds the document (its work is still running) when it is told
    to stop (FakeRayHead's SIGTERM stand-in): it answers the token with JobInterrupted."""
    import ray_jobs.service as service

    w = world(stack)
    started, release = threading.Event(), threading.Event()
    stack.callback(release.set)  # before the world's teardown joins the service's pool

    def held_work(job, callback):
        started.set()
        release.wait(60)
        raise RuntimeError("released after the test")

    monkeypatch.setattr(service, "stage_work", lambda stage: held_work)
    arn = upload(w, "input/interrupted.pdf", pdf())
    assert started.wait(60), "the extract service never started the document"
    w[2].stop_services.set()
    return w, arn


@provokes("EmbeddingRateLimited")
def openai_answers_429(stack, monkeypatch):
    monkeypatch.setenv("OPENAI_MAX_ATTEMPTS", "2")
    openai = stack.enter_context(FakeOpenAIServer(api_key="sk-test"))
    openai.fail_next(10_000, 429, retry_after_ms=0)
    w = world(stack, {**OPENAI, "OpenAIBaseUrl": openai.base_url}, OPENAI_SECRET)
    return w, upload(w, "input/rate-limited.pdf", pdf())


class FakeComprehend(FakeHTTPServer):
    """Comprehend's JSON protocol, throttling every call."""

    def handle(self, method, path, query, body, headers):
        return 400, {}, {"__type": "ThrottlingException", "message": "Rate exceeded"}


@provokes("EnrichmentThrottled")
def comprehend_throttles(stack, monkeypatch):
    comprehend = stack.enter_context(FakeComprehend())
    monkeypatch.setenv("AWS_ENDPOINT_URL_COMPREHEND", comprehend.url)
    monkeypatch.setenv("COMPREHEND_MAX_ATTEMPTS", "2")
    w = world(stack, {"EnrichmentBackend": "comprehend"})
    return w, upload(w, "input/comprehend-throttled.pdf", pdf())


@provokes("OcrThrottled")
def textract_throttles(stack, monkeypatch):
    """OcrBackend=textract and Textract throttles every call: the scanned page's
    DetectDocumentText runs out of the client's attempts."""
    from fakes.textract import FakeTextract

    from docpipe import aws

    textract = stack.enter_context(FakeTextract())
    textract.throttle_next("DetectDocumentText", 1000)
    monkeypatch.setenv("AWS_ENDPOINT_URL_TEXTRACT", textract.url)
    monkeypatch.setenv("TEXTRACT_MAX_ATTEMPTS", "2")
    aws.reset_clients()
    w = world(stack, {"OcrBackend": "textract"})
    return w, upload(w, "input/textract-throttled.pdf",
                     corpus_file("unstructured/example-docs/pdf/loremipsum-flat.pdf").read_bytes())


@provokes("VectorStoreUnavailable")
def pinecone_refuses_upserts(stack, monkeypatch):
    monkeypatch.setenv("PINECONE_MAX_ATTEMPTS", "1")
    openai = stack.enter_context(FakeOpenAIServer(api_key="sk-test"))
    pinecone = stack.enter_context(FakePineconeServer(api_key="pc-test"))
    pinecone.fail_upserts_after(0, 503)
    w = world(stack, {**OPENAI, "OpenAIBaseUrl": openai.base_url, "VectorStoreBackend": "pinecone",
                      "PineconeKeySecretArn": "docpipe/pinecone", "PineconeIndexHost": pinecone.url},
              {**OPENAI_SECRET, "docpipe/pinecone": "pc-test"})
    return w, upload(w, "input/store-down.pdf", pdf())


# --- names the engine or an AWS service raises --------------------------------------------
@provokes("States.Timeout")
def nobody_heartbeats(stack, monkeypatch):
    """The stage service never starts (its Ray job stays PENDING): no heartbeat comes."""
    w = world(stack, {"StageHeartbeatSeconds": "10"})
    w[2].run_jobs = False
    return w, upload(w, "input/silent.pdf", pdf())


def lambda_service_error(code: str, status: int) -> Provocation:
    def provoke(stack, monkeypatch):
        """The Lambda service refuses to invoke SubmitRayJob (the Extract task's call)."""
        from moto.awslambda.models import LambdaBackend
        from moto.core.exceptions import JsonRESTError

        invoke = LambdaBackend.invoke

        class Refused(JsonRESTError):
            code = status

        def refusing(self, function_name, *args, **kwargs):
            if "SubmitRayJob" in function_name:
                raise Refused(code, "refused by the test")
            return invoke(self, function_name, *args, **kwargs)

        monkeypatch.setattr(LambdaBackend, "invoke", refusing)
        w = world(stack)
        return w, upload(w, f"input/lambda-{code}.pdf", pdf())
    return provoke


provokes("Lambda.TooManyRequestsException")(lambda_service_error("TooManyRequestsException", 429))
provokes("Lambda.ServiceException")(lambda_service_error("ServiceException", 500))


def sns_error(code: str) -> Provocation:
    def provoke(stack, monkeypatch):
        """A zero-byte upload fails at registration; the alert's sns:publish then fails."""
        from moto.sns.exceptions import SNSException
        from moto.sns.models import SNSBackend

        def refusing(self, *args, **kwargs):
            raise SNSException(code, "refused by the test")

        monkeypatch.setattr(SNSBackend, "publish", refusing)
        w = world(stack)
        return w, upload(w, f"input/sns-{code}.pdf", b"")
    return provoke


provokes("SNS.ThrottledException")(sns_error("Throttled"))
provokes("SNS.InternalErrorException")(sns_error("InternalError"))


# --- the test ------------------------------------------------------------------------------
@pytest.fixture
def fast_waits(monkeypatch):
    import botocore.retries.standard as standard
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)


@contextlib.contextmanager
def provoked(name: str, monkeypatch) -> Iterator[tuple[World, str]]:
    with contextlib.ExitStack() as stack:
        yield PROVOKE[name](stack, monkeypatch)


def failures_until(sfn, arn: str, name: str, timeout: float = 90) -> list[tuple[str, str]]:
    """Task failures in the history once `name` is among them or the execution ended;
    a still running execution is stopped (its Retry would go on)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = task_failures(history(sfn, arn))
        running = sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"
        if name in {error for error, _ in seen} or not running or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if running:
        sfn.stop_execution(executionArn=arn)
    return seen


@pytest.mark.parametrize("name", asl_error_names())
def test_every_error_name_in_the_state_machines_is_really_raised(name, aws_env, fast_waits, monkeypatch):
    if name in NOT_ON_MOTO:
        pytest.skip(NOT_ON_MOTO[name])
    assert name in PROVOKE, (f"{name} is in an ErrorEquals of statemachine/, but nothing provokes it here: "
                             "make the code that raises it fail in a case above, or drop the dead entry")
    with provoked(name, monkeypatch) as ((_, clients, _), arn):
        seen = failures_until(clients["stepfunctions"], arn, name)
    assert name in {error for error, _ in seen}, f"{name} never surfaced as a task's error; the history had {seen}"

