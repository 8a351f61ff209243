"""The local stack's Lambda seam (docpipe_local.lambda_seam) in the server process: once
`dispatch_in_process` is on, a handler's AWS calls reach moto's backends directly, even
when the function's environment names an HTTP endpoint, and what they write is there for
every other client."""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest
from moto import mock_aws

from docpipe_local import lambda_seam

HANDLER = '''
import boto3
from botocore.config import Config

def handler(event, context):
    s3 = boto3.client("s3", config=Config(retries={"total_max_attempts": 1}))
    s3.put_object(Bucket="seam-test", Key=event["key"], Body=b"written by the handler")
    return {"written": event["key"]}
'''


def _function(lam, iam) -> None:
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", HANDLER)
    lam.create_function(FunctionName="writer", Runtime="python3.12", Role=role, Handler="app.handler",
                        Code={"ZipFile": buf.getvalue()},
                        # Nothing listens here: a call that left the process would fail.
                        Environment={"Variables": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}})


@pytest.fixture
def seam(aws_env, monkeypatch):
    """moto with the seam installed, a bucket and the writer function; in-process dispatch
    off until the test turns it on."""
    monkeypatch.setattr(lambda_seam, "_in_process", False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # restored after the test
    with mock_aws():
        lambda_seam.install()
        lam, s3 = boto3.client("lambda"), boto3.client("s3")
        s3.create_bucket(Bucket="seam-test")
        _function(lam, boto3.client("iam"))
        yield lam, s3


def test_a_handlers_calls_stay_in_the_server_process(seam):
    lam, s3 = seam
    lambda_seam.dispatch_in_process()

    resp = lam.invoke(FunctionName="writer", Payload=json.dumps({"key": "k1"}).encode())

    assert "FunctionError" not in resp, resp["Payload"].read()
    assert json.loads(resp["Payload"].read()) == {"written": "k1"}
    assert s3.get_object(Bucket="seam-test", Key="k1")["Body"].read() == b"written by the handler"


def test_without_it_the_same_call_goes_to_the_functions_endpoint(seam):
    lam, s3 = seam

    resp = lam.invoke(FunctionName="writer", Payload=json.dumps({"key": "k2"}).encode())

    assert resp.get("FunctionError") and "127.0.0.1:9" in resp["Payload"].read().decode()
    assert "Contents" not in s3.list_objects_v2(Bucket="seam-test")


def test_clients_made_before_it_are_made_again_in_the_process(seam, monkeypatch):
    # The server's own clients (the EventBridge deliveries' StartExecution among them) are
    # made while AWS_ENDPOINT_URL still names the HTTP endpoint; after the switch they must
    # not keep calling it.
    from docpipe import aws

    _, s3 = seam
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens here
    aws.reset_clients()
    before, generation = aws.client("s3"), aws.generation()
    assert before.meta.endpoint_url == "http://127.0.0.1:9"

    lambda_seam.dispatch_in_process()

    assert aws.generation() > generation
    after = aws.client("s3")
    after.put_object(Bucket="seam-test", Key="k3", Body=b"after the switch")
    assert s3.get_object(Bucket="seam-test", Key="k3")["Body"].read() == b"after the switch"
