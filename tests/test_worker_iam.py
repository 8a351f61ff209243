"""The Ray workers' role (infra/ray-cluster.yaml WorkerTaskRole + its Worker* policies) is
exactly what the stage code calls: every AWS call of an extract and an embed run (as a
large document's own job, with the S3 embedding cache on) is granted, and every grant is
called. moto enforces no IAM; the calls are recorded as in tests/test_iam_covers_calls.py.
"""

from __future__ import annotations

import json

import pytest
from botocore.awsrequest import AWSResponse

import botocore.client
import contextlib
import fnmatch
import threading

from cfn_yaml import load as load_cfn
from conftest import EVENTS, REPO, corpus_file

import ray_jobs.runner as runner
from ray_jobs.callback import TaskCallback

ACTION_OF = {("s3", "HeadObject"): "s3:GetObject", ("s3", "ListObjectsV2"): "s3:ListBucket"}


class Recorder:
    """Every botocore API call made while installed: (service, operation, params)."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    @contextlib.contextmanager
    def installed(self):
        original = botocore.client.BaseClient._make_api_call
        lock = threading.Lock()

        def recording(client, operation_name, api_params):
            with lock:
                self.calls.append((client.meta.service_model.service_name, operation_name, dict(api_params)))
            return original(client, operation_name, api_params)

        botocore.client.BaseClient._make_api_call = recording
        try:
            yield self
        finally:
            botocore.client.BaseClient._make_api_call = original


def action(service: str, operation: str) -> str:
    prefix = {"stepfunctions": "states"}.get(service, service)
    return ACTION_OF.get((service, operation), f"{prefix}:{operation}")


def resource(service: str, params: dict) -> str:
    if service == "s3":
        return f"arn:aws:s3:::{params['Bucket']}" + (f"/{params['Key']}" if "Key" in params else "")
    return "*"  # task tokens: no resource-level permissions


def allowed(statements: list[dict], act: str, res: str) -> bool:
    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        if s.get("Effect") == "Allow" and any(fnmatch.fnmatchcase(act, a) for a in actions) and \
                any(r == "*" or fnmatch.fnmatchcase(res, r) for r in resources):
            return True
    return False


@pytest.fixture
def registered(local_aws):
    """One upload, registered by the real RegisterDocument (its registration is the job's)."""
    from docpipe_local import eventbridge
    from docpipe_local.invoke import invoke_function, load_event

    stack, clients, head = local_aws
    eventbridge.set_delivery(False)
    ev = load_event(EVENTS / "register_document.json")
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=ev["detail"]["object"]["key"],
                             Body=corpus_file("py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf").read_bytes())
    reg, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored, reg
    yield stack, clients, head, reg
    eventbridge.set_delivery(True)

# Grants no stage run can show, with the test that covers each.
NOT_CALLED_HERE = {
    "s3:ListBucket": "implicit: S3 answers a missing key 404 (not 403) only with it",
    "ecs:UpdateTaskProtection": "made by the ECS agent for ray_jobs/node_guard.py (tests/test_node_guard.py)",
}


def worker_statements(template: dict, params: dict) -> list[dict]:
    """The worker's statements whose policy exists for `params`, with Refs and Subs resolved."""
    from test_ray_cluster_template import condition_true

    def resolve(v):
        if isinstance(v, dict) and "Ref" in v:
            return params[v["Ref"]]
        if isinstance(v, dict) and "Fn::Sub" in v:
            text = v["Fn::Sub"]
            for k, val in params.items():
                text = text.replace("${" + k + "}", str(val))
            return text
        if isinstance(v, dict) and "Fn::GetAtt" in v:
            return f"arn:aws:{v['Fn::GetAtt'][0]}"
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    docs = [pol["PolicyDocument"] for pol in template["Resources"]["WorkerTaskRole"]["Properties"]["Policies"]]
    for lid, res in template["Resources"].items():
        if res["Type"] == "AWS::IAM::Policy" and res["Properties"]["Roles"] == [{"Ref": "WorkerTaskRole"}]:
            if "Condition" not in res or condition_true(template, {"Condition": res["Condition"]}, params):
                docs.append(res["Properties"]["PolicyDocument"])
    return [{**s, "Resource": resolve(s["Resource"])} for d in docs for s in d["Statement"]]


@pytest.fixture
def answered_sfn(monkeypatch):
    """Step Functions answers every call of the jobs' TaskCallback with 200 (the sample
    token is no real one; moto would answer InvalidToken and the callback would exit)."""
    import boto3

    sfn = boto3.client("stepfunctions")
    sfn.meta.events.register("before-call", lambda **kw: (AWSResponse("https://states", 200, {}, None), {}))
    monkeypatch.setattr(runner, "TaskCallback", lambda token, stage: TaskCallback(token, stage, client=sfn))
    return sfn


def test_worker_role_is_exactly_what_the_stages_call(registered, answered_sfn, monkeypatch):
    stack, clients, head, reg = registered
    bucket = stack.outputs["DocumentBucketName"]
    s3 = clients["s3"]
    for k, v in {"EMBEDDING_BACKEND": "local", "VECTOR_STORE_BACKEND": "lancedb", "ENRICHMENT_BACKEND": "local",
                 "EMBEDDING_CACHE": "s3", "DOCUMENT_BUCKET": bucket}.items():
        monkeypatch.setenv(k, v)

    def job_file(name: str, job: dict) -> str:
        s3.put_object(Bucket=bucket, Key=f"jobs/{name}.json", Body=json.dumps(job).encode())
        return f"s3://{bucket}/jobs/{name}.json"

    base = {"task_token": "AQCEAAAAKgAAAAMAAAAAexampletasktoken", "registration": reg}
    rec = Recorder()
    with rec.installed():
        from ray_jobs import embed, extract

        assert extract.main(["--job", job_file("w-extract", {**base, "submission_id": "w-extract", "inputs": {}})]) == 0
        chunks_uri = next(p["Key"] for s, o, p in rec.calls if o == "PutObject" and p["Key"].startswith("chunks/"))
        assert embed.main(["--job", job_file("w-embed", {**base, "submission_id": "w-embed",
                                                         "inputs": {"chunks_uri": f"s3://{bucket}/{chunks_uri}"}})]) == 0
        # A failure answers too: the upload is gone (404 with ListBucket).
        gone = {**base, "submission_id": "w-gone", "inputs": {}, "registration": {**reg, "key": "input/gone.pdf"}}
        assert extract.main(["--job", job_file("w-gone", gone)]) == 1
    calls = [(s, o, p) for s, o, p in rec.calls if not (s == "s3" and o == "PutObject" and p["Key"].startswith("jobs/"))]
    ops = {(action(s, o), resource(s, p).split("/", 1)[-1].split("/")[0]) for s, o, p in calls}
    assert ("s3:GetObject", "embedding-cache") in ops and ("s3:PutObject", "embedding-cache") in ops, ops
    assert ("states:SendTaskFailure", "*") in ops and ("s3:DeleteObject", "jobs") in ops, ops

    template = load_cfn(REPO / "infra" / "ray-cluster.yaml")
    params = {"DocumentBucketName": bucket, "AWS::Partition": "aws", "AWS::Region": stack.region,
              "AWS::AccountId": stack.account, "StackNamePrefix": "docpipe",
              "EmbeddingCache": "s3", "EmbeddingBackend": "local", "EnrichmentBackend": "local",
              "VectorStoreBackend": "lancedb", "OpenAIKeySecretArn": "", "PineconeKeySecretArn": ""}
    statements = worker_statements(template, params)
    denied = sorted({f"{action(s, o)} on {resource(s, p)}" for s, o, p in calls
                     if not allowed(statements, action(s, o), resource(s, p))})
    assert denied == []

    # And no grant the code never uses (the DynamoDB and CloudWatch grants were such).
    unused = []
    for st in statements:
        if "Condition" in st:  # EFS mount: granted to the task's volume, not to API calls
            continue
        for act in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]]):
            if act in NOT_CALLED_HERE:
                continue
            for res in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]):
                one = {"Effect": "Allow", "Action": act, "Resource": res}
                if not any(action(s, o) == act and allowed([one], act, resource(s, p)) for s, o, p in calls):
                    unused.append(f"{act} on {res}")
    assert unused == []
