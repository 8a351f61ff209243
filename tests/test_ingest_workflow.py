"""IngestDocument executing on moto's Step Functions engine: one named test per path.

The real ASL (with the template's substitutions), the real handlers behind moto's
Lambda seam, uploads delivered as EventBridge events, and each submitted stage run by
the real ray_jobs entry point in-process (FakeRayHead in conftest). Assertions are on
what a user sees: the execution history, the tables, S3, the alert, the index.
"""

from __future__ import annotations

import json
import uuid

from conftest import corpus_file, entered_states, executions_for, history, wait_for_execution

from docpipe import identity

GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
ENCRYPTED = "pdfplumber/tests/pdfs/password-example.pdf"
SCANNED = "py-pdf-sample-files/007-imagemagick-images/imagemagick-ASCII85Decode.pdf"


def upload(clients, stack, key: str, body: bytes) -> None:
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=key, Body=body)


def run_upload(local_aws, key: str, body: bytes, nth: int = 1) -> tuple[dict, list[dict]]:
    stack, clients, _ = local_aws
    upload(clients, stack, key, body)
    arn = stack.outputs["IngestDocumentStateMachineArn"]
    execs = executions_for(clients["stepfunctions"], arn, nth)
    newest = sorted(execs, key=lambda e: e["startDate"])[-1]
    desc = wait_for_execution(clients["stepfunctions"], newest["executionArn"])
    return desc, history(clients["stepfunctions"], newest["executionArn"])


def control(local_aws, key: str) -> list[dict]:
    stack, clients, _ = local_aws
    doc = identity.document_id(stack.outputs["DocumentBucketName"], key)
    items = clients["dynamodb"].query(TableName=stack.outputs["ControlTableName"],
                                      KeyConditionExpression="document_id = :d",
                                      ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    return [{k: next(iter(v.values())) for k, v in i.items()} for i in items]


def documents_run(head) -> int:
    """Stage runs so far: documents the stage services received plus documents' own jobs."""
    own = sum(1 for b in head.submissions if b.get("metadata", {}).get("docpipe") == "stage-job")
    return own + sum(s.counts["received"] for s in head.services)


def alerts_queue(local_aws) -> str:
    stack, clients, _ = local_aws
    url = clients["sqs"].create_queue(QueueName="alerts-probe")["QueueUrl"]
    qarn = clients["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    clients["sns"].subscribe(TopicArn=stack.outputs["AlertsTopicArn"], Protocol="sqs", Endpoint=qarn,
                             Attributes={"RawMessageDelivery": "true"})
    return url


def state_strings(events: list[dict]) -> list[str]:
    """Every string inside every state's input and output in the history."""
    def leaves(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from leaves(v)
        elif isinstance(value, list):
            for v in value:
                yield from leaves(v)
        elif isinstance(value, str):
            yield value

    out = []
    for e in events:
        for details in (v for k, v in e.items() if k.endswith("EventDetails")):
            for field in ("input", "output"):
                if isinstance(details.get(field), str):
                    try:
                        out += leaves(json.loads(details[field]))
                    except ValueError:
                        out.append(details[field])
    return out


def test_happy_path_completes_with_chunks_vectors_and_audit(local_aws):
    stack, clients, _ = local_aws
    key = "input/papers/pdflatex 4 pages.pdf"
    desc, events = run_upload(local_aws, key, corpus_file(GOOD).read_bytes())
    assert desc["status"] == "SUCCEEDED", desc
    assert entered_states(events) == ["RegisterDocument", "AlreadyProcessed", "Extract", "Embed",
                                      "FinalizeDocument", "Done"]
    [item] = control(local_aws, key)
    assert item["status"] == "COMPLETED" and item["current_stage"] == "done"
    assert int(item["pages"]) == 4 and int(item["chunks"]) >= 4 and item["vectors"] == item["chunks"]
    bucket, doc, ver = stack.outputs["DocumentBucketName"], item["document_id"], item["processing_version"]
    keys = {o["Key"] for o in clients["s3"].list_objects_v2(Bucket=bucket)["Contents"]}
    for prefix, name in (("extracted", "pages.jsonl"), ("chunks", "chunks.jsonl"),
                         ("enriched", "chunks.jsonl"), ("embeddings", "vectors.jsonl")):
        assert f"{prefix}/{doc}/{ver}/{name}" in keys
    assert key in keys, "the upload is never moved or deleted"
    assert not any(k.startswith("jobs/") for k in keys), "job files (with task tokens) are removed"
    audit = clients["dynamodb"].query(TableName=stack.outputs["AuditTableName"],
                                      KeyConditionExpression="document_id = :d",
                                      ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    actions = [a["action"]["S"] for a in audit]
    assert actions == ["created", "extract_submitted", "embed_submitted", "completed"]
    from ray_jobs.backends.lancedb_store import LanceDBStore

    store = LanceDBStore.from_env()
    assert len(store.list_ids(identity.vector_id_prefix(doc, ver))) == int(item["vectors"])
    # Only URIs and counts travel in the state (payload limit 256 KiB): no state's input
    # or output carries the document's text, and the whole output stays small.
    chunks_body = clients["s3"].get_object(Bucket=bucket, Key=f"chunks/{doc}/{ver}/chunks.jsonl")["Body"].read()
    snippets = {" ".join(json.loads(line)["text"].split())[:40] for line in chunks_body.decode().splitlines()}
    carried = " | ".join(" ".join(s.split()) for s in state_strings(events))
    assert snippets and not [t for t in snippets if t in carried], "document text travelled in the state"
    assert len(desc["output"]) < 8000


def test_same_bytes_again_does_no_work(local_aws):
    body = corpus_file(GOOD).read_bytes()
    run_upload(local_aws, "input/a.pdf", body)
    desc, events = run_upload(local_aws, "input/a.pdf", body, nth=2)
    assert desc["status"] == "SUCCEEDED"
    assert entered_states(events) == ["RegisterDocument", "AlreadyProcessed", "NoWorkNeeded"]
    assert [i["status"] for i in control(local_aws, "input/a.pdf")] == ["COMPLETED"]
    assert len(local_aws[2].submissions) == 2, "no new Ray job for the duplicate"


def test_redelivered_event_starts_a_second_execution_that_does_no_work(local_aws):
    """EventBridge delivers at least once and names the executions it starts itself (a
    UUID): the same event again is a second execution, and RegisterDocument's control
    item makes it a no-op. The control item names the execution that did the work."""
    from docpipe_local import eventbridge

    stack, clients, head = local_aws
    sfn = clients["stepfunctions"]
    first, _ = run_upload(local_aws, "input/twice.pdf", corpus_file(GOOD).read_bytes())
    assert first["status"] == "SUCCEEDED"
    event = json.loads(first["input"])
    eventbridge.deliver(event, event["account"])
    arn = stack.outputs["IngestDocumentStateMachineArn"]
    second = next(e for e in executions_for(sfn, arn, 2) if e["executionArn"] != first["executionArn"])
    desc = wait_for_execution(sfn, second["executionArn"])
    assert desc["status"] == "SUCCEEDED" and json.loads(desc["input"]) == event
    assert entered_states(history(sfn, second["executionArn"])) == ["RegisterDocument", "AlreadyProcessed",
                                                                      "NoWorkNeeded"]
    for name in (first["name"], second["name"]):
        assert str(uuid.UUID(name)) == name, "a generated name, as EventBridge's target gives"
    [item] = control(local_aws, "input/twice.pdf")
    assert item["status"] == "COMPLETED" and item["execution_arn"] == first["executionArn"]
    assert documents_run(head) == 2, "extract and embed ran once"


def test_failure_that_cannot_be_recorded_still_alerts_and_ends_with_the_stage_error(local_aws, monkeypatch):
    """RecordFailure itself fails (here: every control-table read raises): the alert still
    goes out and the execution ends FAILED with the stage's error, not a JSONPath error."""
    from docpipe.records import Records

    _, clients, _ = local_aws
    queue = alerts_queue(local_aws)

    def broken(*args, **kwargs):
        raise RuntimeError("control table unreachable")

    monkeypatch.setattr(Records, "get", broken)
    desc, events = run_upload(local_aws, "input/unrecorded.pdf", corpus_file(ENCRYPTED).read_bytes())
    assert desc["status"] == "FAILED"
    assert entered_states(events)[-4:] == ["RecordFailure", "FailureNotRecorded", "NotifyFailure", "DocumentFailed"]
    assert desc["error"] == "PdfEncrypted"
    assert "recording the failure failed too (RuntimeError)" in desc["cause"]
    alert = json.loads(clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"][0]["Body"])
    assert alert["error_code"] == "PdfEncrypted" and alert["recorded"] is False
    assert alert["record_error"]["Error"] == "RuntimeError"


def test_encrypted_pdf_fails_with_report_alert_and_input_kept(local_aws):
    stack, clients, _ = local_aws
    queue = alerts_queue(local_aws)
    body = corpus_file(ENCRYPTED).read_bytes()
    desc, events = run_upload(local_aws, "input/secret.pdf", body)
    assert desc["status"] == "FAILED"
    assert entered_states(events) == ["RegisterDocument", "AlreadyProcessed", "Extract", "RecordFailure",
                                      "NotifyFailure", "DocumentFailed"]
    failed = [e for e in events if e["type"] == "TaskFailed"]
    assert failed and failed[0]["taskFailedEventDetails"]["error"] == "PdfEncrypted"
    [item] = control(local_aws, "input/secret.pdf")
    assert item["status"] == "FAILED" and item["error_code"] == "PdfEncrypted" and item["failed_stage"] == "extract"
    bucket = stack.outputs["DocumentBucketName"]
    base = f"errors/{item['document_id']}/{item['processing_version']}/"
    report = json.loads(clients["s3"].get_object(Bucket=bucket, Key=base + "error.json")["Body"].read())
    assert report["error_code"] == "PdfEncrypted"
    assert clients["s3"].get_object(Bucket=bucket, Key=base + "input.pdf")["Body"].read() == body
    assert clients["s3"].get_object(Bucket=bucket, Key="input/secret.pdf")["Body"].read() == body
    msgs = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    alert = json.loads(msgs[0]["Body"])
    assert alert["event"] == "DocumentFailed" and alert["error_code"] == "PdfEncrypted"
    assert alert["s3_key"] == "input/secret.pdf"


def test_zero_byte_upload_fails_at_registration(local_aws):
    desc, events = run_upload(local_aws, "input/empty.pdf", b"")
    assert desc["status"] == "FAILED"
    assert entered_states(events)[:2] == ["RegisterDocument", "RecordFailure"]
    [item] = control(local_aws, "input/empty.pdf")
    assert item["status"] == "FAILED" and item["error_code"] == "EmptyDocument"


def test_image_only_pdf_without_words_fails_with_no_text(local_aws):
    # An 8x8-pixel image page: no text layer, and OCR (on by default) finds no words either.
    desc, _ = run_upload(local_aws, "input/scan.pdf", corpus_file(SCANNED).read_bytes())
    assert desc["status"] == "FAILED"
    [item] = control(local_aws, "input/scan.pdf")
    assert item["error_code"] == "PdfNoText"
    assert "OCR (rapidocr) found no text either" in item["error_message"]


def test_unsupported_upload_is_recorded_as_skipped(local_aws):
    desc, events = run_upload(local_aws, "input/budget.xlsx", b"PK\x03\x04 not read")
    assert desc["status"] == "SUCCEEDED"
    assert entered_states(events) == ["RegisterDocument", "AlreadyProcessed", "NotForUs"]
    [item] = control(local_aws, "input/budget.xlsx")
    assert item["status"] == "SKIPPED" and item["error_code"] == "UnsupportedType"
    assert item["error_message"].startswith(".xlsx is not a supported type")


def test_ray_head_unavailable_is_retried_then_completes(local_aws):
    local_aws[2].fail_next = 1
    desc, events = run_upload(local_aws, "input/retry.pdf", corpus_file(GOOD).read_bytes())
    assert desc["status"] == "SUCCEEDED"
    failed = [e for e in events if e["type"] == "TaskFailed"]
    assert [e["taskFailedEventDetails"]["error"] for e in failed] == ["RayHeadUnavailable"]
    assert entered_states(events).count("Extract") == 1, "the Retry re-ran the task inside the state"
    # The first POST (the extract service) answered 503; the state's retry sent the
    # document again under a new submission id, and the service ran that one.
    [item] = control(local_aws, "input/retry.pdf")
    assert item["extract_submission_id"].endswith("-r1"), "the retry got a new submission id"
    assert item["extract_route"] == "service"


def test_new_content_replaces_old_version_vectors(local_aws):
    run_upload(local_aws, "input/v.pdf", corpus_file(GOOD).read_bytes())
    other = corpus_file("py-pdf-sample-files/001-trivial/minimal-document.pdf").read_bytes()
    desc, _ = run_upload(local_aws, "input/v.pdf", other, nth=2)
    assert desc["status"] == "SUCCEEDED"
    items = {i["processing_version"]: i for i in control(local_aws, "input/v.pdf")}
    assert len(items) == 2
    new = [i for i in items.values() if "superseded_by" not in i]
    old = [i for i in items.values() if "superseded_by" in i]
    assert len(new) == 1 and len(old) == 1 and old[0]["superseded_by"] == new[0]["processing_version"]
    from ray_jobs.backends.lancedb_store import LanceDBStore

    ids = LanceDBStore.from_env().list_ids(identity.vector_id_prefix(new[0]["document_id"]))
    assert ids and all(i.startswith(identity.vector_id_prefix(new[0]["document_id"], new[0]["processing_version"])) for i in ids)


def test_backfill_ingests_what_is_already_in_the_bucket_once(local_aws):
    from docpipe_local import eventbridge

    stack, clients, head = local_aws
    bucket = stack.outputs["DocumentBucketName"]
    eventbridge.set_delivery(False)  # objects that were there before the pipeline
    try:
        clients["s3"].put_object(Bucket=bucket, Key="input/old/a.pdf", Body=corpus_file(GOOD).read_bytes())
        clients["s3"].put_object(Bucket=bucket, Key="input/old/b.pdf", Body=corpus_file(ENCRYPTED).read_bytes())
        clients["s3"].put_object(Bucket=bucket, Key="input/old/sheet.xlsx", Body=b"not a type docpipe reads")
    finally:
        eventbridge.set_delivery(True)
    sfn = clients["stepfunctions"]

    def backfill(name):
        arn = sfn.start_execution(stateMachineArn=stack.outputs["BackfillStateMachineArn"], name=name,
                                  input=json.dumps({"prefix": "input/old/", "max_concurrency": 2}))["executionArn"]
        return wait_for_execution(sfn, arn, timeout=180)

    desc = backfill("first")
    assert desc["status"] == "SUCCEEDED", desc
    # Children's results go to S3 (ResultWriter), never into the state: 256 KiB at most.
    results = json.loads(desc["output"])["results"]
    assert results["Bucket"] == bucket and results["Key"].startswith("backfill-results/")
    assert clients["s3"].head_object(Bucket=bucket, Key=results["Key"])["ContentLength"] > 0
    statuses = {k: [i["status"] for i in control(local_aws, k)]
                for k in ("input/old/a.pdf", "input/old/b.pdf", "input/old/sheet.xlsx")}
    assert statuses == {"input/old/a.pdf": ["COMPLETED"], "input/old/b.pdf": ["FAILED"], "input/old/sheet.xlsx": ["SKIPPED"]}
    runs = documents_run(head)
    desc = backfill("second")
    assert desc["status"] == "SUCCEEDED"
    assert documents_run(head) == runs + 1, "only the FAILED document is tried again"
