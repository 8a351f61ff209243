"""events/*.json after `make demo`: each names what the demo loads and gives the result
events/README.md documents, through `docpipe invoke`'s path (fill_event, then
invoke_function with the stack's env-vars file).

The demo data is loaded the way `docpipe demo` loads it (docpipe_local.ingest: plan and
upload samples/, EventBridge -> IngestDocument), with the stages run in-process by
FakeRayHead instead of a Ray cluster. Each test leaves the documents as the demo left
them, so the tests share one load and do not depend on their order.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import EVENTS, REPO, entered_states, history, local_aws_stack, set_aws_env, wait_for_execution

from docpipe import identity, rayjobs
from docpipe.records import plain
from docpipe_local import ingest
from docpipe_local.invoke import env_vars, fill_event, invoke_function, load_event, write_events

SAMPLES = REPO / "samples"
REPORT, BROKEN = "input/annual-report-2025.pdf", "input/broken-upload.pdf"
# Which function each sample event is for (s3_object_created.json starts IngestDocument).
FUNCTIONS = {"register_document.json": "RegisterDocument", "submit_ray_job.json": "SubmitRayJob",
             "finalize_document.json": "FinalizeDocument", "record_failure.json": "RecordFailure",
             "publish_backlog.json": "PublishBacklog", "s3_object_created.json": None}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The local stack (in-process) after `make demo`, and its env-vars file."""
    tmp = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        set_aws_env(mp, tmp)  # before moto starts: it reads the credentials
        with local_aws_stack() as (stack, clients, head):
            bucket, table = stack.outputs["DocumentBucketName"], stack.outputs["ControlTableName"]
            docs = ingest.plan(ingest.find_documents(ingest.demo_files()), bucket, "input/",
                               stack.parameters["PipelineVersion"])
            for d in docs:
                ingest.upload(clients["s3"], bucket, d)
            deadline = time.monotonic() + 180
            while not all(d.done for d in docs):
                assert time.monotonic() < deadline, [(d.key, d.status) for d in docs]
                for d in docs:
                    ingest.refresh(clients["dynamodb"], table, d)
                time.sleep(0.3)
            assert {d.key: d.status for d in docs} == {REPORT: "COMPLETED", BROKEN: "FAILED",
                                                       "input/pipeline-runbook.pdf": "COMPLETED",
                                                       "input/operator-handbook.md": "COMPLETED"}
            env_file = tmp / "env.json"  # what `docpipe stack start` writes
            env_file.write_text(json.dumps(env_vars(stack)))
            yield stack, clients, head, json.loads(env_file.read_text())


def run(demo, name: str):
    """`docpipe invoke <Function> -e events/<name> --env-vars <file>`."""
    stack, clients, _, env = demo
    event = fill_event(load_event(EVENTS / name), stack.outputs, clients["s3"], clients["dynamodb"])
    return invoke_function(stack, FUNCTIONS[name], event, env)


def item(demo, key: str) -> dict:
    stack, clients, _, _ = demo
    from boto3.dynamodb.types import TypeDeserializer

    doc = identity.document_id(stack.outputs["DocumentBucketName"], key)
    [found] = clients["dynamodb"].query(TableName=stack.outputs["ControlTableName"],
                                        KeyConditionExpression="document_id = :d",
                                        ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    return plain({k: TypeDeserializer().deserialize(v) for k, v in found.items()})


def test_every_event_is_documented_and_covered():
    assert {p.name for p in EVENTS.glob("*.json")} == set(FUNCTIONS)
    readme = (EVENTS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in FUNCTIONS)


def test_env_vars_file_points_every_function_at_the_stack(demo):
    stack, _, head, env = demo
    functions = [k for k in env if k != "Parameters"]
    assert sorted(functions) == sorted(stack.of_type("AWS::Lambda::Function"))
    for lid in functions:
        assert env[lid]["CONTROL_TABLE"] == stack.outputs["ControlTableName"]
        assert env[lid]["DOCUMENT_BUCKET"] == stack.outputs["DocumentBucketName"]
        assert env[lid]["EXTRACT_QUEUE_URL"] == stack.outputs["ExtractQueueUrl"]
        assert env[lid]["RAY_DASHBOARD_URL"] == head.url
        assert env[lid]["RAY_TOKEN_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
        assert "AWS_ENDPOINT_URL" in env[lid], "declared in template.yaml, or sam local invoke drops it"
    assert env["Parameters"]["AWS_REGION"] == stack.region


def test_events_name_what_the_demo_loaded(demo):
    stack, clients, _, _ = demo
    bucket = stack.outputs["DocumentBucketName"]
    for name in FUNCTIONS:
        event = load_event(EVENTS / name)
        state = event.get("state", event)
        detail = state.get("detail")
        if detail:
            head = clients["s3"].head_object(Bucket=detail["bucket"]["name"], Key=detail["object"]["key"])
            assert detail["bucket"]["name"] == bucket, name
            assert (detail["object"]["size"], detail["object"]["etag"]) == \
                (head["ContentLength"], head["ETag"].strip('"')), name
        reg = state.get("registration") or event.get("registration")
        if reg:
            control = item(demo, reg["s3_key"])
            assert reg["document_id"] == identity.document_id(bucket, reg["s3_key"]), name
            for field, value in (("processing_version", reg["processing_version"]), ("sha256", reg["sha256"]),
                                 ("size", reg["size"]), ("etag", reg["etag"])):
                assert control[field] == value, (name, field)


def test_fill_event_takes_the_version_id_and_execution_from_the_stack(demo, tmp_path):
    stack, clients, _, _ = demo
    [written] = [p for p in write_events(stack.outputs, clients["s3"], clients["dynamodb"], target=tmp_path)
                 if p.name == "finalize_document.json"]
    filled, original = load_event(written), load_event(EVENTS / "finalize_document.json")
    head = clients["s3"].head_object(Bucket=stack.outputs["DocumentBucketName"], Key=REPORT)
    assert filled["state"]["detail"]["object"]["version-id"] == head["VersionId"]
    assert filled["execution_arn"] == item(demo, REPORT)["execution_arn"] != original["execution_arn"]
    original["state"]["detail"]["object"]["version-id"] = head["VersionId"]
    assert {**filled, "execution_arn": ""} == {**original, "execution_arn": ""}, "nothing else changes"


def test_register_document_answers_duplicate(demo):
    before = item(demo, REPORT)
    result, errored, _ = run(demo, "register_document.json")
    assert not errored, result
    assert (result["decision"], result["reason"]) == ("DUPLICATE", "already COMPLETED")
    assert (result["document_id"], result["processing_version"]) == (before["document_id"], before["processing_version"])
    assert item(demo, REPORT) == before


def test_finalize_document_answers_the_committed_result(demo):
    before = item(demo, REPORT)
    result, errored, _ = run(demo, "finalize_document.json")
    assert not errored, result
    assert result == {"document_id": before["document_id"], "processing_version": before["processing_version"],
                      "status": "COMPLETED", "pages": 3, "chunks": 1, "vectors": 1, "superseded_versions": []}
    assert item(demo, REPORT) == before, "a retried FinalizeDocument changes nothing"


def test_record_failure_records_the_broken_upload_again(demo):
    stack, clients, _, _ = demo
    before = item(demo, BROKEN)
    result, errored, _ = run(demo, "record_failure.json")
    assert not errored, result
    base = f"errors/{before['document_id']}/{before['processing_version']}/"
    bucket = stack.outputs["DocumentBucketName"]
    assert (result["event"], result["error_code"], result["stage"], result["s3_key"]) == \
        ("DocumentFailed", "PdfMalformed", "extract", BROKEN)
    assert result["report_uri"] == f"s3://{bucket}/{base}error.json"
    assert result["execution_arn"] == before["execution_arn"]
    after = item(demo, BROKEN)
    assert (after["status"], after["error_code"]) == ("FAILED", "PdfMalformed")
    cause = load_event(EVENTS / "record_failure.json")["state"]["error"]["Cause"]
    assert after["error_message"].startswith(cause + " — ") and "re-export" in after["error_message"], \
        "the event's cause, then what to do"
    report = json.loads(clients["s3"].get_object(Bucket=bucket, Key=base + "error.json")["Body"].read())
    assert report["error_code"] == "PdfMalformed" and report["failed_at"] == result["failed_at"]
    copy = clients["s3"].get_object(Bucket=bucket, Key=base + "input.pdf")["Body"].read()
    assert copy == (SAMPLES / "broken-upload.pdf").read_bytes()


def test_publish_backlog_reports_nothing_pending(demo):
    result, errored, logs = run(demo, "publish_backlog.json")
    assert not errored, result
    assert (result["pending_documents"], result["pending"], result["processing"]) == (0, 0, 0)
    assert result["services_started"] == [] and result["ray_error"] == ""
    assert '"PendingDocuments"' in logs


def test_s3_object_created_runs_ingest_to_no_work_needed(demo):
    stack, clients, _, _ = demo
    sfn = clients["stepfunctions"]
    event = fill_event(load_event(EVENTS / "s3_object_created.json"), stack.outputs, clients["s3"], clients["dynamodb"])
    arn = sfn.start_execution(stateMachineArn=stack.outputs["IngestDocumentStateMachineArn"],
                              name="try-s3-object-created", input=json.dumps(event))["executionArn"]
    assert wait_for_execution(sfn, arn)["status"] == "SUCCEEDED"
    assert entered_states(history(sfn, arn)) == ["RegisterDocument", "AlreadyProcessed", "NoWorkNeeded"]


def test_submit_ray_job_puts_the_report_back_in_flight_until_finalize(demo):
    stack, clients, _, _ = demo
    before = item(demo, REPORT)
    result, errored, _ = run(demo, "submit_ray_job.json")
    assert not errored, result
    assert result["route"] == "service" and result["submission_id"].startswith(f"extract-{before['document_id']}-")
    during = item(demo, REPORT)
    assert (during["status"], during["current_stage"]) == ("PROCESSING", "extract")
    # The extract stage service takes the message; the sample token is refused
    # (InvalidToken), so it drops the document and the queue empties.
    queue = stack.outputs["ExtractQueueUrl"]
    deadline = time.monotonic() + 60
    while rayjobs.queue_depth(clients["sqs"], queue) != {"visible": 0, "held": 0}:
        assert time.monotonic() < deadline, rayjobs.queue_depth(clients["sqs"], queue)
        time.sleep(0.5)
    assert item(demo, REPORT)["status"] == "PROCESSING"
    # finalize_document.json completes it again (the execution that processed it).
    result, errored, _ = run(demo, "finalize_document.json")
    assert not errored and result["status"] == "COMPLETED", result
    after = item(demo, REPORT)
    assert (after["status"], after["current_stage"], after["execution_arn"]) == \
        ("COMPLETED", "done", before["execution_arn"])
