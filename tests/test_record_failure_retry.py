"""RecordFailure retried by the same execution (e.g. its answer to Step Functions was
lost, or a throttled write made it raise): the failure is counted once, not per attempt."""

from __future__ import annotations

import json

import pytest
from conftest import EVENTS
from test_finalize_retry import audit_actions, daily_metrics
from test_handlers import control_item, stack_with_upload  # noqa: F401 - stack_with_upload is a fixture

from docpipe_local.invoke import invoke_function, load_event


@pytest.mark.parametrize("when", ["after registration", "in registration"])
def test_record_failure_retried_counts_the_failure_once(stack_with_upload, when):
    stack, clients, _, ev = stack_with_upload
    if when == "after registration":
        reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
        event = load_event(EVENTS / "record_failure.json")
        event["state"]["registration"] = reg
        code = event["state"]["error"]["Error"]
    else:  # RegisterDocument itself failed: RecordFailure identifies the upload from the event
        code = "StoreThrottled"
        event = {"state": {**load_event(EVENTS / "s3_object_created.json"),
                           "error": {"Error": code, "Cause": json.dumps({"errorMessage": "DynamoDB answered 400"})}},
                 "execution_arn": ev["execution_arn"]}

    first, errored, _ = invoke_function(stack, "RecordFailure", event)
    assert not errored, first
    again, errored, _ = invoke_function(stack, "RecordFailure", event)
    assert not errored, again
    doc, ver = first["document_id"], first["processing_version"]
    assert control_item(clients, stack, doc, ver)["status"] == "FAILED"
    failures = daily_metrics(clients, stack)["failures"]
    assert (failures["count"], failures[code]) == ("1", "1"), "one failure, however often it is recorded"
    assert daily_metrics(clients, stack)["documents"]["failed"] == "1"
    assert audit_actions(clients, stack, doc).count("failed") <= 1

    # The same version failing again in another execution is another failure.
    _, errored, _ = invoke_function(stack, "RecordFailure", {**event, "execution_arn": event["execution_arn"] + "-2"})
    assert not errored
    assert daily_metrics(clients, stack)["failures"]["count"] == "2"
