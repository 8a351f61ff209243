"""Every AWS call the code makes is allowed by the role that makes it.

moto enforces no IAM, so a missing grant shows only in AWS (a 403 at the first upload).
Here the real code runs on moto while every botocore call is recorded (service,
operation, resource), and each call is checked against the statements of the role
that runs it in AWS: the Lambda roles of template.yaml (after the real SAM transform,
as the local stack creates them) and the Ray head's role in infra/ray-cluster.yaml,
which runs the stage services' drivers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import botocore.client
import pytest

from cfn_yaml import load as load_cfn
from conftest import EVENTS, REPO, corpus_file
from docpipe_local.invoke import invoke_function, load_event
from ray_jobs.service import StageService, run_document

# Operation -> IAM action, where the names differ (Service Authorization Reference).
ACTION_OF = {
    ("s3", "HeadObject"): "s3:GetObject", ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage", ("sqs", "SendMessageBatch"): "sqs:SendMessage",
}
PREFIX = {"stepfunctions": "states", "cloudwatch": "cloudwatch", "secretsmanager": "secretsmanager"}


class Recorder:
    """Every botocore API call made by threads this recorder follows."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []
        self.include = lambda thread: True

    @contextlib.contextmanager
    def installed(self):
        original = botocore.client.BaseClient._make_api_call
        recorder = self

        def recording(client, operation_name, api_params):
            if recorder.include(threading.current_thread()):
                recorder.calls.append((client.meta.service_model.service_name, operation_name, dict(api_params)))
            return original(client, operation_name, api_params)

        botocore.client.BaseClient._make_api_call = recording
        try:
            yield self
        finally:
            botocore.client.BaseClient._make_api_call = original


def action(service: str, operation: str) -> str:
    return ACTION_OF.get((service, operation), f"{PREFIX.get(service, service)}:{operation}")


def resource(stack, service: str, params: dict) -> str:
    region, account = stack.region, stack.account
    if service == "s3":
        if "Key" in params:
            return f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"
        return f"arn:aws:s3:::{params['Bucket']}"
    if service == "sqs":
        return f"arn:aws:sqs:{region}:{account}:{params['QueueUrl'].rsplit('/', 1)[-1]}"
    if service == "dynamodb":
        table = f"arn:aws:dynamodb:{region}:{account}:table/{params['TableName']}"
        return f"{table}/index/{params['IndexName']}" if params.get("IndexName") else table
    if service == "secretsmanager":
        return params["SecretId"]
    return "*"  # task tokens and metrics: no resource-level permissions


def allowed(statements: list[dict], act: str, res: str) -> bool:
    for s in statements:
        if s.get("Effect") != "Allow":
            continue
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s.get("Resource", [])
        resources = resources if isinstance(resources, list) else [resources]
        if any(fnmatch.fnmatchcase(act, a) for a in actions) and \
                any(r == "*" or fnmatch.fnmatchcase(res, r) for r in resources):
            return True
    return False


def lambda_statements(stack, function: str) -> list[dict]:
    role = stack.properties(f"{function}FunctionRole")
    out = []
    for pol in role.get("Policies", []):
        stmts = pol["PolicyDocument"]["Statement"]
        out += stmts if isinstance(stmts, list) else [stmts]
    return out


def head_statements(stack) -> list[dict]:
    """The head role's statements, with the nested stack's parameters as the parent
    passes them for this stack."""
    cfn = load_cfn(REPO / "infra" / "ray-cluster.yaml")
    params = {"ExtractQueueArn": stack.arn("ExtractQueue"), "EmbedQueueArn": stack.arn("EmbedQueue"),
              "DocumentBucketName": stack.physical_name("DocumentBucket"), "AWS::Partition": "aws"}

    def resolve(v):
        if isinstance(v, dict) and "Ref" in v:
            return params[v["Ref"]]
        if isinstance(v, dict) and "Fn::Sub" in v:
            text = v["Fn::Sub"]
            for k, val in params.items():
                text = text.replace("${" + k + "}", val)
            return text
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    out = []
    for pol in cfn["Resources"]["HeadTaskRole"]["Properties"]["Policies"]:
        for s in pol["PolicyDocument"]["Statement"]:
            out.append({**s, "Resource": resolve(s["Resource"])})
    return out


def denied(stack, calls, statements) -> list[str]:
    return sorted({f"{action(svc, op)} on {resource(stack, svc, p)}" for svc, op, p in calls
                   if not allowed(statements, action(svc, op), resource(stack, svc, p))})


@pytest.fixture
def registered(local_aws):
    from docpipe_local import eventbridge

    stack, clients, head = local_aws
    eventbridge.set_delivery(False)
    ev = load_event(EVENTS / "register_document.json")
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=ev["detail"]["object"]["key"],
                             Body=corpus_file("py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf").read_bytes())
    reg, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored, reg
    yield stack, clients, head, reg
    eventbridge.set_delivery(True)


def test_submit_ray_job_calls_are_granted(registered):
    stack, clients, head, reg = registered
    head.run_jobs = False
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    rec = Recorder()
    with rec.installed():
        for i, env in enumerate(({}, {"STAGE_SERVICE_MAX_BYTES": "0"})):  # both routes
            _, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": i}, extra_env=env)
            assert not errored
        head.fail_next = 1  # the service cannot be started: the job file is removed again
        from docpipe import rayjobs
        rayjobs._ensured.clear()
        head.status = {k: "FAILED" for k in head.status}
        _, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": 5})
        assert errored
    ops = {(s, o) for s, o, _ in rec.calls}
    assert {("sqs", "SendMessage"), ("s3", "PutObject"), ("s3", "DeleteObject"), ("dynamodb", "UpdateItem")} <= ops
    assert denied(stack, rec.calls, lambda_statements(stack, "SubmitRayJob")) == []


def test_publish_backlog_calls_are_granted(registered):
    stack, clients, head, reg = registered
    rec = Recorder()
    with rec.installed():
        _, errored, _ = invoke_function(stack, "PublishBacklog", {})
        assert not errored
    ops = {(s, o) for s, o, _ in rec.calls}
    assert ("sqs", "GetQueueAttributes") in ops and ("dynamodb", "Query") in ops
    assert denied(stack, rec.calls, lambda_statements(stack, "PublishBacklog")) == []


def test_stage_service_driver_calls_are_granted_to_the_head(registered):
    """The driver runs on the head; its documents' tasks run on workers (not recorded)."""
    stack, clients, head, reg = registered
    head.run_jobs = False
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    for retry in (0, 1):  # two documents in the extract queue
        _, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": retry})
        assert not errored
    workers = ThreadPoolExecutor(2, thread_name_prefix="ray-worker")

    def submit(stage, job):  # the first runs, the second stays queued in "Ray"
        if job["submission_id"].endswith("-r0"):
            return workers.submit(run_document, stage, job)
        return workers.submit(threading.Event().wait, 30)

    rec = Recorder()
    # The driver: this thread (receive, collect) and its answer/heartbeat pool ("sfn").
    driver = threading.current_thread()
    rec.include = lambda t: t is driver or t.name.startswith("sfn")
    with rec.installed():
        service = StageService("extract", stack.outputs["ExtractQueueUrl"], idle_seconds=1, submit=submit,
                               wait=lambda fs, t: list(wait(fs, t, return_when=FIRST_COMPLETED).done),
                               get=lambda f: f.result(), cancel=lambda f: f.cancel())
        while service.counts["received"] < 2:
            service.receive_once(1)
        while len(service.held) > 1:
            service.collect(timeout=1)
        # The sample event's token is no real one: the answer is refused and dropped...
        assert service.counts["late"] == 1, service.counts
        # ...and so is the held one's at its heartbeat (visibility extended first).
        for held in service.held.values():
            held.next_beat = held.visible_at = 0
        service.beat_due()
        assert service.counts["dropped"] == 1, service.counts
        # A re-delivered message whose job file is gone: read (404), then deleted.
        follow, rec.include = rec.include, lambda t: False  # the test's own call
        clients["sqs"].send_message(QueueUrl=stack.outputs["ExtractQueueUrl"], MessageBody=json.dumps(
            {"job_uri": f"s3://{stack.outputs['DocumentBucketName']}/jobs/gone.json", "submission_id": "gone"}))
        rec.include = follow
        service.receive_once(1)
    ops = {(s, o) for s, o, _ in rec.calls}
    assert {("sqs", "ReceiveMessage"), ("sqs", "DeleteMessage"), ("sqs", "ChangeMessageVisibilityBatch"),
            ("stepfunctions", "SendTaskHeartbeat"), ("stepfunctions", "SendTaskSuccess"),
            ("s3", "GetObject"), ("s3", "DeleteObject")} <= ops, ops
    assert denied(stack, rec.calls, head_statements(stack)) == []
