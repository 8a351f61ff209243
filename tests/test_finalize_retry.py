"""FinalizeDocument retried after its status update committed (the first attempt died
before marking superseded versions or counting the day's metrics): the retry does what
was left, every step exactly once, and a further retry changes nothing."""

from __future__ import annotations

import botocore.client
import pytest
from botocore.exceptions import ClientError
from conftest import EVENTS
from test_handlers import PDF, control_item, stack_with_upload  # noqa: F401 - stack_with_upload is a fixture

from docpipe.timeutil import today
from docpipe_local.invoke import invoke_function, load_event


def daily_metrics(clients, stack) -> dict[str, dict[str, str]]:
    items = clients["dynamodb"].query(TableName=stack.outputs["MetricsTableName"],
                                      KeyConditionExpression="#d = :d", ExpressionAttributeNames={"#d": "date"},
                                      ExpressionAttributeValues={":d": {"S": today()}})["Items"]
    return {m["metric_type"]["S"]: {k: v["N"] for k, v in m.items() if "N" in v} for m in items}


def audit_actions(clients, stack, doc: str) -> list[str]:
    items = clients["dynamodb"].query(TableName=stack.outputs["AuditTableName"],
                                      KeyConditionExpression="document_id = :d",
                                      ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    return [a["action"]["S"] for a in items]


def throttle_once(monkeypatch, matches) -> list[str]:
    """DynamoDB throttles the first call `matches` (operation, params) selects."""
    original = botocore.client.BaseClient._make_api_call
    failed: list[str] = []

    def flaky(client, operation, params):
        if not failed and matches(operation, params):
            failed.append(operation)
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", flaky)
    return failed


def tables_written(params: dict) -> set[str]:
    return {params.get("TableName", "")} | {t["TableName"] for item in params.get("TransactItems", [])
                                            for t in item.values()}


@pytest.mark.parametrize("dies_at", ["superseded", "metrics"])
def test_finalize_retry_finishes_what_the_first_attempt_left(stack_with_upload, monkeypatch, dies_at):
    stack, clients, _, ev = stack_with_upload
    bucket, key = ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"]
    finalize = load_event(EVENTS / "finalize_document.json")
    extract = finalize["state"]["extract"]

    def finalize_event(reg: dict, execution_arn: str) -> dict:
        return {**finalize, "state": {**finalize["state"], "registration": reg}, "execution_arn": execution_arn}

    # Version A completes; then new bytes under the same key make version B.
    reg_a, _, _ = invoke_function(stack, "RegisterDocument", ev)
    _, errored, _ = invoke_function(stack, "FinalizeDocument", finalize_event(reg_a, ev["execution_arn"]))
    assert not errored
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=PDF + b"%second version\n")
    run_b = ev["execution_arn"] + "-b"
    reg_b, _, _ = invoke_function(stack, "RegisterDocument", {**ev, "execution_arn": run_b})
    assert reg_b["decision"] == "PROCESS" and reg_b["processing_version"] != reg_a["processing_version"]
    doc, ver_a, ver_b = reg_a["document_id"], reg_a["processing_version"], reg_b["processing_version"]

    # B's first attempt commits its status, then DynamoDB throttles the next write.
    if dies_at == "superseded":
        failed = throttle_once(monkeypatch, lambda op, p: op == "UpdateItem" and p.get("Key", {}).get(
            "processing_version") == {"S": ver_a})
    else:
        failed = throttle_once(monkeypatch, lambda op, p: stack.outputs["MetricsTableName"] in tables_written(p))
    result, errored, _ = invoke_function(stack, "FinalizeDocument", finalize_event(reg_b, run_b))
    assert errored and result["errorType"] == "StoreThrottled" and failed, result
    assert control_item(clients, stack, doc, ver_b)["status"] == "COMPLETED", "the status update committed"
    monkeypatch.undo()

    # Step Functions retries (StoreThrottled): the retry finishes the job.
    result, errored, _ = invoke_function(stack, "FinalizeDocument", finalize_event(reg_b, run_b))
    assert not errored, result
    assert result["status"] == "COMPLETED" and result["superseded_versions"] == [ver_a]
    assert control_item(clients, stack, doc, ver_a)["superseded_by"] == ver_b
    metrics = daily_metrics(clients, stack)
    assert metrics["documents"]["completed"] == "2", "A and B, each counted once"
    assert metrics["pages"]["count"] == str(2 * extract["pages"])
    assert metrics["chunks"]["count"] == str(2 * extract["chunks"])

    # Another retry (e.g. the Lambda's answer was lost) changes nothing at all.
    before = (control_item(clients, stack, doc, ver_a), control_item(clients, stack, doc, ver_b),
              audit_actions(clients, stack, doc), metrics)
    again, errored, _ = invoke_function(stack, "FinalizeDocument", finalize_event(reg_b, run_b))
    assert not errored and again == result
    assert (control_item(clients, stack, doc, ver_a), control_item(clients, stack, doc, ver_b),
            audit_actions(clients, stack, doc), daily_metrics(clients, stack)) == before
