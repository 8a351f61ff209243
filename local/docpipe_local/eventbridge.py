"""S3 'Object Created' -> EventBridge rule -> StartExecution, as AWS delivers it.

moto builds its own S3->EventBridge event (with a fixed sequencer and an `eTag` field
AWS does not send) and cannot deliver to a Step Functions target. We replace that one
function: the event below has exactly EventBridge's envelope and S3's detail, is matched
against the rules created from template.yaml (moto's own pattern matcher), and each
matching Step Functions target gets StartExecution with that event as input.

As on AWS, where an EventBridge target cannot name the execution, every delivery starts
an execution with a generated (UUID) name: a re-delivered event starts a second one, and
the pipeline's own idempotency (RegisterDocument's conditional write to the control
table) turns it into a no-op. Whoever needs a document's execution reads the
`execution_arn` of its control item. (moto 5.2.5's executing engine does not generate a
name when none is given: it names every such execution "None", so the second one is
refused as ExecutionAlreadyExists. Hence the UUID is made here.)
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
import uuid
from datetime import UTC, datetime

import boto3

log = logging.getLogger("docpipe.local.eventbridge")
_seq = itertools.count(1)
_deliveries: queue.Queue[tuple[str, dict]] = queue.Queue()
_installed = False
_client_kwargs: dict = {}
_enabled = threading.Event()
_enabled.set()


def set_delivery(enabled: bool) -> None:
    """Tests of single handlers turn delivery off so an upload starts no execution."""
    (_enabled.set if enabled else _enabled.clear)()


def s3_object_created_event(account: str, region: str, bucket: str, key: str, size: int,
                            etag: str, version_id: str | None, reason: str = "PutObject") -> dict:
    # Sequencers grow with time for one key, as S3's do.
    sequencer = f"{time.time_ns():016X}{next(_seq):04X}"
    detail_object = {"key": key, "size": size, "etag": etag, "sequencer": sequencer}
    if version_id and version_id != "null":
        detail_object["version-id"] = version_id
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": detail_object,
            "request-id": uuid.uuid4().hex[:16].upper(),
            "requester": account,
            "source-ip-address": "127.0.0.1",
            "reason": reason,
        },
    }


def _on_s3_event(account_id, bucket, event_name, key) -> None:
    if not event_name.startswith("s3:ObjectCreated") or not _enabled.is_set():
        return
    event = s3_object_created_event(account_id, bucket.region_name, bucket.name, key.name, key.size,
                                    key.etag.replace('"', ""), key.version_id,
                                    reason={"s3:ObjectCreated:Copy": "CopyObject",
                                            "s3:ObjectCreated:CompleteMultipartUpload": "CompleteMultipartUpload"
                                            }.get(event_name, "PutObject"))
    deliver(event, account_id)


def deliver(event: dict, account_id: str) -> None:
    """Match `event` against the account's rules and queue StartExecution for each
    matching Step Functions target (EventBridge delivers at least once: tests call it
    again with the same event)."""
    from moto.events.models import events_backends

    backend = events_backends[account_id][event["region"]]
    for bus in backend.event_buses.values():
        for rule in bus.rules.values():
            if rule.state != "ENABLED" or not rule.event_pattern.matches_event(event):
                continue
            for target in rule.targets:
                if ":states:" in target["Arn"]:
                    _deliveries.put((target["Arn"], event))


def _deliver_forever() -> None:
    from docpipe import aws

    sfn, made_at = None, -1
    while True:
        arn, event = _deliveries.get()
        # One client for the deliveries (creating one costs more CPU than the call), made
        # again when the process resets its clients (tests switch mocked AWS worlds).
        if sfn is None or made_at != aws.generation():
            sfn, made_at = boto3.client("stepfunctions", **_client_kwargs), aws.generation()
        name = str(uuid.uuid4())  # AWS's name for an EventBridge-started execution
        for attempt in range(5):  # the target's RetryPolicy, in small
            try:
                sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(event))
                break
            except sfn.exceptions.ExecutionAlreadyExists:
                break  # an earlier attempt of this delivery started it after all
            except Exception:  # keep delivering other events
                log.exception("StartExecution failed (attempt %d)", attempt + 1)
                time.sleep(0.5 * 2 ** attempt)


def install(**client_kwargs) -> None:
    """Route S3 EventBridge notifications to StartExecution (call once per process)."""
    global _installed
    if _installed:
        return
    import moto.s3.notifications as notifications

    _client_kwargs.update(client_kwargs)
    notifications._send_event_bridge_message = _on_s3_event
    threading.Thread(target=_deliver_forever, name="eventbridge-delivery", daemon=True).start()
    _installed = True
