"""Every handler against its sample event in events/, on moto, as `docpipe invoke` runs it."""

from __future__ import annotations

import json

import pytest
from conftest import EVENTS

from docpipe import identity
from docpipe.timeutil import today
from docpipe_local.invoke import invoke_function, load_event

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def stack_with_upload(local_aws):
    from docpipe_local import eventbridge

    eventbridge.set_delivery(False)  # invoke each handler by hand, no execution
    stack, clients, head = local_aws
    ev = load_event(EVENTS / "register_document.json")
    bucket = stack.outputs["DocumentBucketName"]
    assert ev["detail"]["bucket"]["name"] == bucket, "sample events name the local stack's bucket"
    clients["s3"].put_object(Bucket=bucket, Key=ev["detail"]["object"]["key"], Body=PDF)
    yield stack, clients, head, ev
    eventbridge.set_delivery(True)


def control_item(clients, stack, doc, ver):
    item = clients["dynamodb"].get_item(TableName=stack.outputs["ControlTableName"], Key={
        "document_id": {"S": doc}, "processing_version": {"S": ver}}).get("Item")
    return {k: next(iter(v.values())) for k, v in (item or {}).items()}


def test_register_document_records_pending_version(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    result, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored, result
    assert result["decision"] == "PROCESS"
    assert result["processing_version"].startswith("v1-") and len(result["sha256"]) == 64
    item = control_item(clients, stack, result["document_id"], result["processing_version"])
    assert item["status"] == "PENDING" and item["s3_key"] == ev["detail"]["object"]["key"]
    audit = clients["dynamodb"].query(TableName=stack.outputs["AuditTableName"],
                                      KeyConditionExpression="document_id = :d",
                                      ExpressionAttributeValues={":d": {"S": result["document_id"]}})["Items"]
    assert [a["action"]["S"] for a in audit] == ["created"]


def test_register_document_twice_is_a_duplicate(stack_with_upload):
    stack, _, _, ev = stack_with_upload
    first, _, _ = invoke_function(stack, "RegisterDocument", ev)
    # Same bytes, another execution (re-delivered event or a re-upload): no second run.
    second, errored, _ = invoke_function(stack, "RegisterDocument", {**ev, "execution_arn": ev["execution_arn"] + "-2"})
    assert not errored and second["decision"] == "DUPLICATE"
    assert second["processing_version"] == first["processing_version"]


def test_register_document_new_bytes_are_a_new_version(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    first, _, _ = invoke_function(stack, "RegisterDocument", ev)
    clients["s3"].put_object(Bucket=ev["detail"]["bucket"]["name"], Key=ev["detail"]["object"]["key"], Body=PDF + b"%x\n")
    second, _, _ = invoke_function(stack, "RegisterDocument", {**ev, "execution_arn": ev["execution_arn"] + "-2"})
    assert second["decision"] == "PROCESS"
    assert second["document_id"] == first["document_id"]
    assert second["processing_version"] != first["processing_version"]


@pytest.mark.parametrize("key,reason", [("other/report.pdf", "NotInInputPrefix"),
                                        ("input/budget.xlsx", "UnsupportedType"),
                                        ("input/README", "UnsupportedType")])
def test_register_document_skips_keys_that_are_not_ours(stack_with_upload, key, reason):
    stack, clients, _, ev = stack_with_upload
    ev = json.loads(json.dumps(ev))
    ev["detail"]["object"]["key"] = key
    result, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored and result["decision"] == "SKIPPED" and result["reason"] == reason
    item = control_item(clients, stack, result["document_id"], "skipped")
    assert item["status"] == "SKIPPED" and item["error_code"] == reason
    if reason == "UnsupportedType":  # the message names what is supported
        assert "not a supported type" in item["error_message"] and ".docx" in item["error_message"]


@pytest.mark.parametrize("key,document_type", [("input/notes/Guide.DOCX", "docx"), ("input/site/index.htm", "html"),
                                               ("input/notes.md", "markdown"), ("input/notes.txt", "text"),
                                               ("input/scan.pdf", "pdf")])
def test_register_document_routes_by_type(stack_with_upload, key, document_type):
    stack, clients, _, ev = stack_with_upload
    ev = json.loads(json.dumps(ev))
    ev["detail"]["object"]["key"] = key
    clients["s3"].put_object(Bucket=ev["detail"]["bucket"]["name"], Key=key, Body=b"some content")
    result, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored and result["decision"] == "PROCESS" and result["document_type"] == document_type
    item = control_item(clients, stack, result["document_id"], result["processing_version"])
    assert item["status"] == "PENDING" and item["document_type"] == document_type


def test_register_document_zero_bytes_raises_empty_document(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    clients["s3"].put_object(Bucket=ev["detail"]["bucket"]["name"], Key=ev["detail"]["object"]["key"], Body=b"")
    result, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert errored and result["errorType"] == "EmptyDocument"


def test_register_document_over_the_limit_raises_too_large(stack_with_upload):
    stack, _, _, ev = stack_with_upload
    result, errored, _ = invoke_function(stack, "RegisterDocument", ev, extra_env={"MAX_DOCUMENT_BYTES": "10"})
    assert errored and result["errorType"] == "TooLarge"


def test_register_document_url_encoded_key_is_found(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    ev = json.loads(json.dumps(ev))
    clients["s3"].put_object(Bucket=ev["detail"]["bucket"]["name"], Key="input/Q3 résumé ../x.pdf", Body=PDF)
    ev["detail"]["object"]["key"] = "input/Q3+r%C3%A9sum%C3%A9+..%2Fx.pdf"
    result, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored, result
    assert result["s3_key"] == "input/Q3 résumé ../x.pdf" and result["decision"] == "PROCESS"


def test_submit_ray_job_small_document_goes_to_the_stage_queue_and_its_service(stack_with_upload):
    stack, clients, head, ev = stack_with_upload
    head.run_jobs = False  # the service stays PENDING: nothing reads the queue
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    result, errored, _ = invoke_function(stack, "SubmitRayJob", event)
    assert not errored, result
    assert result["route"] == "service"
    # One service job for the stage, generation 1, started through the Jobs API.
    [service] = head.submissions
    assert service["submission_id"].startswith("docpipe-service-extract-") and service["submission_id"].endswith("-g1")
    assert service["metadata"] == {"docpipe": "stage-service", "stage": "extract", "generation": "1",
                                   "config": service["metadata"]["config"]}
    assert service["entrypoint"].startswith("python -m ray_jobs.service --stage extract --queue-url ")
    assert service["entrypoint_resources"] == {"service_slot": 1} and service["entrypoint_num_cpus"] == 0
    # Ray's job supervisor reads its grace between SIGTERM and SIGKILL from the job's env:
    # a stopped service gets to wait for its long poll (ray_jobs/service.py).
    assert service["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "30"
    # The queue message names the job file only; the token stays in S3.
    queue = stack.outputs["ExtractQueueUrl"]
    [msg] = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(msg["Body"])
    assert body["job_uri"] == result["job_uri"] and body["submission_id"] == result["submission_id"]
    assert event["task_token"] not in msg["Body"] and event["task_token"] not in json.dumps(head.submissions)
    item = control_item(clients, stack, reg["document_id"], reg["processing_version"])
    assert item["status"] == "PROCESSING" and item["extract_route"] == "service"
    # The next document finds the service PENDING or RUNNING: no second generation.
    again, errored, _ = invoke_function(stack, "SubmitRayJob", {**event, "retry_count": 1})
    assert not errored and again["route"] == "service" and len(head.submissions) == 1
    # A finished service is followed by the next generation.
    head.status[service["submission_id"]] = "SUCCEEDED"
    from docpipe import rayjobs
    rayjobs._ensured.clear()  # another Lambda container
    invoke_function(stack, "SubmitRayJob", {**event, "retry_count": 2})
    assert [s["submission_id"][-3:] for s in head.submissions] == ["-g1", "-g2"]


def test_submit_ray_job_posts_with_token_and_keeps_the_token_out_of_ray(stack_with_upload):
    stack, clients, head, ev = stack_with_upload
    head.run_jobs = False
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = load_event(EVENTS / "submit_ray_job.json")
    event["registration"] = reg
    # Threshold 0: every document gets a Ray job of its own.
    result, errored, _ = invoke_function(stack, "SubmitRayJob", event, extra_env={"STAGE_SERVICE_MAX_BYTES": "0"})
    assert not errored, result
    assert result["route"] == "job"
    sub = head.submissions[0]
    assert sub["submission_id"] == result["submission_id"]
    assert event["task_token"] not in json.dumps(sub), "the task token must not reach Ray's job list"
    assert sub["entrypoint"] == f"python -m ray_jobs.extract --job {result['job_uri']}"
    bucket, key = identity.parse_s3_uri(result["job_uri"])
    job = json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    assert job["task_token"] == event["task_token"]
    item = control_item(clients, stack, reg["document_id"], reg["processing_version"])
    assert item["status"] == "PROCESSING" and item["current_stage"] == "extract"
    # A re-delivered submit of the same attempt is 'already exists' at Ray: not an error.
    again, errored, _ = invoke_function(stack, "SubmitRayJob", event, extra_env={"STAGE_SERVICE_MAX_BYTES": "0"})
    assert not errored and again["submission_id"] == result["submission_id"] and len(head.submissions) == 1


def test_submit_ray_job_unreachable_head_raises_retryable_error(stack_with_upload):
    stack, _, head, ev = stack_with_upload
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    head.fail_next = 1
    result, errored, _ = invoke_function(stack, "SubmitRayJob", event)
    assert errored and result["errorType"] == "RayHeadUnavailable"
    result, errored, _ = invoke_function(stack, "SubmitRayJob", event,
                                         extra_env={"RAY_DASHBOARD_URL": "http://127.0.0.1:9"})
    assert errored and result["errorType"] == "RayHeadUnavailable"


def test_submit_ray_job_wrong_token_is_rejected_not_retried(stack_with_upload):
    stack, _, head, ev = stack_with_upload
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    head.token = "another-token"
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    result, errored, _ = invoke_function(stack, "SubmitRayJob", event)
    assert errored and result["errorType"] == "RayJobRejected" and "401" in result["errorMessage"]


def test_finalize_document_completes_and_counts(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = load_event(EVENTS / "finalize_document.json")
    event["state"]["registration"] = reg
    result, errored, _ = invoke_function(stack, "FinalizeDocument", event)
    assert not errored, result
    chunks, vectors = event["state"]["extract"]["chunks"], event["state"]["embed"]["vectors"]
    assert result["status"] == "COMPLETED" and result["vectors"] == vectors
    item = control_item(clients, stack, reg["document_id"], reg["processing_version"])
    assert item["status"] == "COMPLETED" and item["chunks"] == str(chunks)
    metrics = clients["dynamodb"].query(TableName=stack.outputs["MetricsTableName"],
                                        KeyConditionExpression="#d = :d", ExpressionAttributeNames={"#d": "date"},
                                        ExpressionAttributeValues={":d": {"S": today()}})["Items"]
    by_type = {m["metric_type"]["S"]: m for m in metrics}
    assert by_type["documents"]["completed"]["N"] == "1" and by_type["chunks"]["count"]["N"] == str(chunks)
    # DailyCostUsd adds these up: with the local model the document still costs its Ray
    # compute (stage seconds on a Fargate vCPU) and its orchestration, not $0.
    from docpipe import costs
    stage_s = sum({**event["state"]["extract"]["durations"], **event["state"]["embed"]["durations"]}.values())
    spent = {k: float(v["N"]) for k, v in by_type["costs"].items() if "N" in v}
    assert spent["compute_usd"] == pytest.approx(stage_s * costs.vcpu_second_usd(), rel=1e-6) and stage_s > 0
    assert spent["orchestration_usd"] > 0


def test_finalize_document_records_ocr_pages_and_their_cost(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = load_event(EVENTS / "finalize_document.json")
    event["state"]["registration"] = reg
    # Textract read 2 scanned pages (billed $0.0015 each); the embedding API cost nothing.
    event["state"]["extract"]["ocr"] = {"backend": "textract", "engine": "textract", "pages_attempted": 2,
                                        "pages_recovered": 2, "billable_pages": 2, "cost_usd": 0.003}
    event["state"]["embed"]["cost_usd"] = 0.0
    result, errored, _ = invoke_function(stack, "FinalizeDocument", event)
    assert not errored and result["status"] == "COMPLETED"
    item = control_item(clients, stack, reg["document_id"], reg["processing_version"])
    assert item["pages_ocr"] == "2" and item["ocr_engine"] == "textract"
    assert float(item["ocr_cost_usd"]) == pytest.approx(0.003) and float(item["cost_usd"]) == pytest.approx(0.003)
    metrics = clients["dynamodb"].query(TableName=stack.outputs["MetricsTableName"],
                                        KeyConditionExpression="#d = :d", ExpressionAttributeNames={"#d": "date"},
                                        ExpressionAttributeValues={":d": {"S": today()}})["Items"]
    by_type = {m["metric_type"]["S"]: m for m in metrics}
    assert by_type["pages"]["ocr"]["N"] == "2"
    assert float(by_type["costs"]["ocr_usd"]["N"]) == pytest.approx(0.003)  # DailyCostUsd adds it


def test_finalize_document_retried_after_commit_changes_nothing(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = load_event(EVENTS / "finalize_document.json")
    event["state"]["registration"] = reg
    first, _, _ = invoke_function(stack, "FinalizeDocument", event)
    again, errored, _ = invoke_function(stack, "FinalizeDocument", event)
    assert not errored and again["status"] == first["status"] == "COMPLETED"
    metrics = clients["dynamodb"].get_item(TableName=stack.outputs["MetricsTableName"], Key={
        "date": {"S": today()}, "metric_type": {"S": "documents"}})["Item"]
    assert metrics["completed"]["N"] == "1", "counted once"


def test_record_failure_writes_report_copy_and_status(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    event = load_event(EVENTS / "record_failure.json")
    event["state"]["registration"] = reg
    result, errored, _ = invoke_function(stack, "RecordFailure", event)
    assert not errored, result
    code = event["state"]["error"]["Error"]
    assert result["error_code"] == code
    item = control_item(clients, stack, reg["document_id"], reg["processing_version"])
    assert item["status"] == "FAILED" and item["error_code"] == code
    bucket = reg["bucket"]
    base = f"errors/{reg['document_id']}/{reg['processing_version']}/"
    report = json.loads(clients["s3"].get_object(Bucket=bucket, Key=base + "error.json")["Body"].read())
    assert report["error_code"] == code and report["s3_key"] == reg["s3_key"]
    copy = clients["s3"].get_object(Bucket=bucket, Key=base + "input.pdf")["Body"].read()
    assert copy == PDF
    assert clients["s3"].get_object(Bucket=bucket, Key=reg["s3_key"])["Body"].read() == PDF, "the upload survives"


def test_record_failure_before_registration_identifies_from_the_event(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    s3_event = load_event(EVENTS / "s3_object_created.json")
    clients["s3"].put_object(Bucket=ev["detail"]["bucket"]["name"], Key=ev["detail"]["object"]["key"], Body=b"")
    cause = json.dumps({"errorMessage": "zero bytes", "errorType": "EmptyDocument"})
    state = {**s3_event, "error": {"Error": "EmptyDocument", "Cause": cause}}
    result, errored, _ = invoke_function(stack, "RecordFailure", {"state": state, "execution_arn": ev["execution_arn"]})
    assert not errored, result
    assert result["error_code"] == "EmptyDocument" and result["error_message"].startswith("zero bytes — ")
    assert "upload the file again" in result["error_message"], "what happened, then what to do"
    assert result["stage"] == "register"
    assert result["document_id"] == identity.document_id(ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"])


def test_record_failure_when_s3_denies_reading_the_upload_still_records_it(stack_with_upload, monkeypatch):
    """AWS answers 403 (AccessDenied) where a grant is missing: the failure is still
    recorded from what the event says, not lost in a crash of RecordFailure."""
    import botocore.client
    from botocore.exceptions import ClientError

    stack, clients, _, ev = stack_with_upload
    original = botocore.client.BaseClient._make_api_call

    def deny_reads(client, operation, params):
        if (operation in ("HeadObject", "GetObject", "CopyObject") and params.get("Key", "").startswith("input/")) \
                or operation == "CopyObject":
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", deny_reads)
    state = {**load_event(EVENTS / "s3_object_created.json"),
             "error": {"Error": "AccessDenied", "Cause": "S3 refused the HEAD"}}
    result, errored, _ = invoke_function(stack, "RecordFailure", {"state": state, "execution_arn": ev["execution_arn"]})
    assert not errored, result
    assert result["error_code"] == "AccessDenied" and result["input_copy_uri"] == ""
    doc = identity.document_id(ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"])
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", original)
    assert control_item(clients, stack, doc, result["processing_version"])["status"] == "FAILED"
    report = clients["s3"].get_object(Bucket=ev["detail"]["bucket"]["name"],
                                      Key=f"errors/{doc}/{result['processing_version']}/error.json")
    assert json.loads(report["Body"].read())["error_code"] == "AccessDenied"


def test_publish_backlog_counts_in_flight_documents(stack_with_upload):
    stack, _, head, ev = stack_with_upload
    head.run_jobs = False
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)  # one PENDING document
    result, errored, logs = invoke_function(stack, "PublishBacklog", load_event(EVENTS / "publish_backlog.json"))
    assert not errored, result
    assert result["pending_documents"] == 0 and result["pending"] == 1 and result["processing"] == 0
    # In a stage queue: pending, and a service is started for it when none runs.
    event = {**load_event(EVENTS / "submit_ray_job.json"), "registration": reg}
    invoke_function(stack, "SubmitRayJob", event)
    [service] = head.submissions
    head.status[service["submission_id"]] = "FAILED"  # it died; the message waits in the queue
    result, errored, logs = invoke_function(stack, "PublishBacklog", load_event(EVENTS / "publish_backlog.json"))
    assert not errored, result
    assert result["pending_documents"] == 1 and result["queued"] == 1 and result["processing"] == 1
    assert result["services_started"] == [service["submission_id"].replace("-g1", "-g2")]
    # A document in its own running job counts too; finished jobs' records are deleted
    # except the newest generation of each service.
    invoke_function(stack, "SubmitRayJob", {**event, "stage": "embed", "inputs": {"chunks_uri": "s3://x/y"}},
                    extra_env={"STAGE_SERVICE_MAX_BYTES": "0"})
    result, errored, logs = invoke_function(stack, "PublishBacklog", load_event(EVENTS / "publish_backlog.json"))
    assert result["pending_documents"] == 2 and result["jobs_running"] == 1
    assert head.deleted == [service["submission_id"]], "g1 finished and g2 is newer: its record goes"
    emf = [json.loads(line) for line in logs.splitlines() if '"_aws"' in line]
    published = {m["Name"] for e in emf for d in e["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"PendingDocuments", "DailyCostUsd"} <= published
