"""The local stack's SQS fix (docpipe_local.moto_fixes) keeps SQS's retention rule - a
message older than the queue's MessageRetentionPeriod is never received, a younger one is -
while receiving no longer computes the queue's attributes (each a walk over every message
in the queue) for every message it returns; and the queue's message counts (read by every
SendMessage) are moto's own while they read the clock once, not twice per message."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from docpipe_local import moto_fixes


@pytest.fixture
def sqs(aws_env):
    with mock_aws():
        moto_fixes.install()
        client = boto3.client("sqs")
        url = client.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        yield client, url


def _queue():
    from moto.sqs.models import sqs_backends

    return sqs_backends["123456789012"]["us-east-1"].get_queue("q")


def _bodies(client, url) -> list[str]:
    got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    return sorted(m["Body"] for m in got.get("Messages", []))


def test_a_message_past_the_retention_period_is_not_received_a_younger_one_is(sqs):
    client, url = sqs
    client.send_message(QueueUrl=url, MessageBody="young")
    assert _bodies(client, url) == ["young"]

    client.send_message(QueueUrl=url, MessageBody="old")
    old = next(m for m in _queue()._messages if m.body == "old")
    old.sent_timestamp -= 61_000  # sent 61 s ago, retention 60 s
    assert _bodies(client, url) == []


def test_receiving_does_not_walk_the_queue_for_each_message(sqs, monkeypatch):
    from moto.sqs.models import Queue

    client, url = sqs
    for i in range(5):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}")
    walks = []
    original = Queue.attributes
    monkeypatch.setattr(Queue, "attributes", property(lambda self: walks.append(1) or original.fget(self)))

    assert _bodies(client, url) == [f"m{i}" for i in range(5)]
    assert walks == []


COUNTS = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]


def test_message_counts_are_motos_own_and_a_send_reads_the_clock_once_per_count(sqs, monkeypatch):
    from moto.sqs import models

    client, url = sqs
    for i in range(30):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}", **({"DelaySeconds": 60} if i % 3 == 0 else {}))
    client.receive_message(QueueUrl=url, MaxNumberOfMessages=7, VisibilityTimeout=60)  # 7 in flight

    def counts() -> dict[str, str]:
        return client.get_queue_attributes(QueueUrl=url, AttributeNames=COUNTS)["Attributes"]

    fast = counts()
    assert fast == {"ApproximateNumberOfMessages": "13", "ApproximateNumberOfMessagesNotVisible": "7",
                    "ApproximateNumberOfMessagesDelayed": "10"}
    reads = []
    clock = models.unix_time_millis
    monkeypatch.setattr(models, "unix_time_millis", lambda *a: reads.append(1) or clock(*a))
    client.send_message(QueueUrl=url, MessageBody="one more")
    assert len(reads) < 10  # moto's own: two per queued message and count, ~150 here
    for name in ("messages", "approximate_number_of_messages_delayed", "approximate_number_of_messages_not_visible"):
        monkeypatch.setattr(models.Queue, name, getattr(models.Queue, name).fget.moto_original)
    reads.clear()
    assert counts() == {**fast, "ApproximateNumberOfMessages": "14"}
    assert len(reads) > 100  # the check above can fail: moto's own walk reads it per message
