"""The local stack's Step Functions engine fixes (docpipe_local.moto_fixes) keep what an
execution does: concurrent executions of one state machine that share its parsed ASL each
get their own input, path results, retries and DynamoDB writes; two state machines never
share a program; and the engine's per-service client and parsed JSONPaths are made once."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto import mock_aws

from docpipe_local import moto_fixes
from tests.conftest import wait_for_execution

ROLE = "arn:aws:iam::123456789012:role/sfn"


@pytest.fixture
def aws(aws_env):
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        moto_fixes.install()
        ddb = boto3.client("dynamodb")
        ddb.create_table(TableName="t", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        yield boto3.client("stepfunctions"), ddb


def definition(marker: str, label: str) -> str:
    """Pass -> DynamoDB putItem (the engine's service client) -> Choice on a path ->
    Pass with a path result. `marker` makes the definition new to the engine's cache."""
    return json.dumps({
        "Comment": f"moto fixes test {marker}",
        "StartAt": "Shape",
        "States": {
            "Shape": {"Type": "Pass", "Parameters": {"id.$": "$.id", "n.$": "$.n", "label": label},
                      "Next": "Write"},
            "Write": {"Type": "Task", "Resource": "arn:aws:states:::dynamodb:putItem",
                      "Parameters": {"TableName": "t",
                                     "Item": {"pk": {"S.$": "$.id"}, "label": {"S.$": "$.label"}}},
                      "ResultPath": "$.write", "Next": "Big"},
            "Big": {"Type": "Choice",
                    "Choices": [{"Variable": "$.n", "NumericGreaterThan": 2, "Next": "Large"}],
                    "Default": "Small"},
            "Large": {"Type": "Pass", "Result": "large", "ResultPath": "$.size", "End": True},
            "Small": {"Type": "Pass", "Result": "small", "ResultPath": "$.size", "End": True},
        },
    })


def run(sfn, arn: str, inputs: list[dict]) -> list[dict]:
    def one(item):
        started = sfn.start_execution(stateMachineArn=arn, name=f"e-{item['id']}", input=json.dumps(item))
        return wait_for_execution(sfn, started["executionArn"], timeout=60)
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, inputs))


def test_concurrent_executions_share_one_parse_and_keep_their_own_state(aws, monkeypatch):
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    sfn, ddb = aws
    parses: list[str] = []
    real_parse = AmazonStateLanguageParser.parse
    monkeypatch.setattr(AmazonStateLanguageParser, "parse",
                        staticmethod(lambda d: parses.append(d) or real_parse(d)))
    arn = sfn.create_state_machine(name="m", definition=definition(uuid.uuid4().hex, "A"),
                                   roleArn=ROLE)["stateMachineArn"]
    parses.clear()  # CreateStateMachine's own check
    inputs = [{"id": f"doc{i}", "n": i} for i in range(8)]

    results = run(sfn, arn, inputs)

    assert [r["status"] for r in results] == ["SUCCEEDED"] * 8
    outputs = {json.loads(r["output"])["id"]: json.loads(r["output"]) for r in results}
    for item in inputs:
        out = outputs[item["id"]]
        assert (out["n"], out["label"], out["size"]) == (item["n"], "A", "large" if item["n"] > 2 else "small")
    stored = {i["pk"]["S"]: i["label"]["S"] for i in ddb.scan(TableName="t")["Items"]}
    assert stored == {f"doc{i}": "A" for i in range(8)}
    assert len(parses) == 1  # the engine parsed the definition once for 8 executions


def test_two_state_machines_never_share_a_program(aws):
    sfn, _ = aws
    marker = uuid.uuid4().hex
    a = sfn.create_state_machine(name="a", definition=definition(marker, "A"), roleArn=ROLE)["stateMachineArn"]
    b = sfn.create_state_machine(name="b", definition=definition(marker, "B"), roleArn=ROLE)["stateMachineArn"]

    (ra,), (rb,) = run(sfn, a, [{"id": "x", "n": 1}]), run(sfn, b, [{"id": "y", "n": 5}])

    assert (json.loads(ra["output"])["label"], json.loads(ra["output"])["size"]) == ("A", "small")
    assert (json.loads(rb["output"])["label"], json.loads(rb["output"])["size"]) == ("B", "large")


def test_a_missing_path_still_fails_the_execution_with_the_path_named(aws):
    sfn, _ = aws
    arn = sfn.create_state_machine(name="m", definition=definition(uuid.uuid4().hex, "A"),
                                   roleArn=ROLE)["stateMachineArn"]

    (result,) = run(sfn, arn, [{"id": "z"}])  # no "n"

    assert result["status"] == "FAILED"
    assert result["error"] == "States.Runtime" and "$.n" in result["cause"]


def test_engine_clients_and_paths_are_made_once():
    from moto.core import responses
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_dynamodb
    from moto.stepfunctions.parser.asl.utils import json_path
    from moto.stepfunctions.responses import StepFunctionResponse

    moto_fixes.install()
    client = state_task_service_dynamodb.boto_client_for("us-east-1", "dynamodb")
    assert state_task_service_dynamodb.boto_client_for("us-east-1", "dynamodb") is client
    assert lambda_eval_utils.boto_client_for is state_task_service_dynamodb.boto_client_for
    assert client.meta.config.retries["total_max_attempts"] == 1  # moto's engine settings kept
    assert state_task_service_dynamodb.boto_client_for("eu-west-1", "dynamodb") is not client
    assert json_path.parse("$.a.b") is json_path.parse("$.a.b")
    assert json_path.extract_json("$.a.b", {"a": {"b": 3}}) == 3
    names = responses.method_names_from_class(StepFunctionResponse)
    assert names is responses.method_names_from_class(StepFunctionResponse) and "send_task_failure" in names


WAITING = json.dumps({
    "StartAt": "Wait",
    "States": {"Wait": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                        "Parameters": {"QueueUrl.$": "$.queue", "MessageBody": {"token.$": "$$.Task.Token",
                                                                                "id.$": "$.id"}},
                        "HeartbeatSeconds": 60, "End": True}},
})


def test_task_tokens_reach_their_own_execution_and_finished_ones_are_refused(aws, monkeypatch):
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    sfn, _ = aws
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="tokens")["QueueUrl"]
    arn = sfn.create_state_machine(name="waits", definition=WAITING, roleArn=ROLE)["stateMachineArn"]
    runs = {i: sfn.start_execution(stateMachineArn=arn, name=f"w{i}",
                                   input=json.dumps({"queue": queue, "id": i}))["executionArn"] for i in range(3)}
    tokens: dict[int, str] = {}
    while len(tokens) < 3:
        for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(m["Body"])
            tokens[body["id"]] = body["token"]

    searched: list[int] = []  # executions each call looked through
    listed = StepFunctionsParserBackend._get_executions
    monkeypatch.setattr(StepFunctionsParserBackend, "_get_executions",
                        lambda self, status=None: searched.append(len(out := listed(self, status))) or out)
    for token in tokens.values():
        sfn.send_task_heartbeat(taskToken=token)
    sfn.send_task_success(taskToken=tokens[0], output=json.dumps({"answer": 0}))
    sfn.send_task_failure(taskToken=tokens[1], error="StageFailed", cause="failed on purpose")
    assert searched == [1] * 5  # each went to its own execution, not through all three
    monkeypatch.setattr(StepFunctionsParserBackend, "_get_executions", listed)

    done = {i: wait_for_execution(sfn, runs[i], timeout=30) for i in (0, 1)}
    assert done[0]["status"] == "SUCCEEDED" and json.loads(done[0]["output"]) == {"answer": 0}
    assert (done[1]["status"], done[1]["error"], done[1]["cause"]) == ("FAILED", "StageFailed", "failed on purpose")
    assert sfn.describe_execution(executionArn=runs[2])["status"] == "RUNNING"  # its token untouched
    for call in (lambda: sfn.send_task_heartbeat(taskToken=tokens[0]),
                 lambda: sfn.send_task_success(taskToken=tokens[0], output="{}"),
                 lambda: sfn.send_task_heartbeat(taskToken="not-a-token")):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] in ("InvalidToken", "TaskTimedOut", "TaskDoesNotExist")
    sfn.send_task_success(taskToken=tokens[2], output="{}")
    assert wait_for_execution(sfn, runs[2], timeout=30)["status"] == "SUCCEEDED"


def test_a_token_answered_before_the_task_call_returns_completes_the_task(aws):
    """A worker may answer before the Task state's own call has returned (a warm stage
    service finishing a small document while SubmitRayJob still ensures the service). On
    AWS that completes the task; moto waited for HeartbeatSeconds (60 here) and timed out."""
    from moto.stepfunctions.parser.asl.utils import boto_client

    sfn, _ = aws
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="early")["QueueUrl"]
    arn = sfn.create_state_machine(name="early", definition=WAITING, roleArn=ROLE)["stateMachineArn"]

    def answer_inside_the_call(params, **_):
        body = json.loads(params["MessageBody"])
        sfn.send_task_success(taskToken=body["token"], output=json.dumps({"early": body["id"]}))

    engine_sqs = boto_client.boto_client_for("us-east-1", "sqs")
    engine_sqs.meta.events.register("provide-client-params.sqs.SendMessage", answer_inside_the_call)
    try:
        started = sfn.start_execution(stateMachineArn=arn, input=json.dumps({"queue": queue, "id": 7}))
        done = wait_for_execution(sfn, started["executionArn"], timeout=20)
    finally:
        engine_sqs.meta.events.unregister("provide-client-params.sqs.SendMessage", answer_inside_the_call)
    assert done["status"] == "SUCCEEDED" and json.loads(done["output"]) == {"early": 7}
    types = [e["type"] for e in sfn.get_execution_history(executionArn=started["executionArn"])["events"]]
    assert "TaskTimedOut" not in types and types.count("TaskScheduled") == 1


@pytest.mark.parametrize("heartbeat", [60, None], ids=["heartbeat", "no-heartbeat"])
def test_a_retried_task_waits_for_its_own_answer_not_the_last_attempts(aws, heartbeat):
    """moto gives a retried attempt the same token as the one before; the earlier answer
    (a failure the Retry matched) must not answer the new attempt too."""
    sfn, _ = aws
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"retry-{heartbeat}")["QueueUrl"]
    state = json.loads(WAITING)
    wait_state = state["States"]["Wait"]
    wait_state["Retry"] = [{"ErrorEquals": ["Again"], "IntervalSeconds": 1, "MaxAttempts": 1}]
    if heartbeat is None:
        del wait_state["HeartbeatSeconds"]
    arn = sfn.create_state_machine(name=f"retry{heartbeat}", definition=json.dumps(state),
                                   roleArn=ROLE)["stateMachineArn"]
    run_arn = sfn.start_execution(stateMachineArn=arn, input=json.dumps({"queue": queue, "id": 1}))["executionArn"]

    def next_token() -> str:
        for _ in range(30):
            msgs = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
            if msgs:
                return json.loads(msgs[0]["Body"])["token"]
        raise AssertionError("no task message")

    sfn.send_task_failure(taskToken=next_token(), error="Again", cause="first attempt")
    second = next_token()  # the Retry's attempt: still waiting, not failed with the old answer
    assert sfn.describe_execution(executionArn=run_arn)["status"] == "RUNNING"
    sfn.send_task_success(taskToken=second, output=json.dumps({"attempt": 2}))
    done = wait_for_execution(sfn, run_arn, timeout=20)
    assert done["status"] == "SUCCEEDED" and json.loads(done["output"]) == {"attempt": 2}
