"""`docpipe ingest` follows many documents with one BatchGetItem per 100 of them, and still
finds each one's item: processed, refused unread, or not registered yet."""

from __future__ import annotations

from pathlib import Path

import boto3
from moto import mock_aws

from docpipe import identity
from docpipe_local import ingest


def _control_table(ddb) -> None:
    ddb.create_table(
        TableName="control",
        KeySchema=[{"AttributeName": "document_id", "KeyType": "HASH"},
                   {"AttributeName": "processing_version", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "document_id", "AttributeType": "S"},
                              {"AttributeName": "processing_version", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def test_many_documents_are_followed_in_batches_to_their_items(aws_env, tmp_path):
    files = []
    for i in range(230):  # three BatchGetItem calls: 100 + 100 + 30
        p = tmp_path / f"doc-{i:03d}.pdf"
        p.write_bytes(f"%PDF-1.4 document {i}".encode())
        files.append(Path(p))
    docs = ingest.plan(files, "docs", "input/")
    calls: list[str] = []
    with mock_aws():
        ddb = boto3.client("dynamodb")
        _control_table(ddb)
        ddb.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
        for i, d in enumerate(docs[:200]):
            status = "COMPLETED" if i % 2 else "RUNNING"
            ddb.put_item(TableName="control", Item={
                "document_id": {"S": d.document_id}, "processing_version": {"S": d.processing_version},
                "status": {"S": status}, "current_stage": {"S": "embed"}, "pages": {"N": str(i)},
                "durations": {"M": {"extract_s": {"N": "0.5"}}}})
        refused = docs[200]  # too large: its FAILED item is under an unread version
        unread = identity.unread_version('"0123abcd"', "v1")
        ddb.put_item(TableName="control", Item={
            "document_id": {"S": refused.document_id}, "processing_version": {"S": unread},
            "status": {"S": "FAILED"}, "error_code": {"S": "TooLarge"}})

        ingest.refresh_all(ddb, "control", docs)
        # 3 polls of what the live table shows (100 + 100 + 30), then the 50 + 50 that turned
        # terminal read whole, once.
        assert calls.count("BatchGetItem") == 5 and "GetItem" not in calls
        # The 30 without an item under their version are looked for once under an unread one.
        assert calls.count("Query") == 30

        assert [d.status for d in docs[:4]] == ["RUNNING", "COMPLETED", "RUNNING", "COMPLETED"]
        assert docs[7].item["pages"] == 7 and docs[7].stage == "embed"
        assert docs[7].item["durations"] == {"extract_s": 0.5}  # terminal: the whole item
        assert docs[6].item["pages"] == 6 and "durations" not in docs[6].item  # in flight: the polled fields
        assert refused.status == "FAILED" and refused.item["error_code"] == "TooLarge"
        assert {d.status for d in docs[201:]} == {"UPLOADING"}  # not registered yet

        # The next poll asks only for what is not done, and not again for the unregistered yet.
        calls.clear()
        ingest.refresh_all(ddb, "control", docs)
        assert calls == ["BatchGetItem", "BatchGetItem"]  # 100 RUNNING + 29 unregistered


def test_ingest_finds_a_refused_upload_under_another_pipeline_version(aws_env, tmp_path):
    """`docpipe ingest` follows a too-large file to its FAILED unread version; with
    PipelineVersion v2 that version starts "v2-etag", not "v1-etag"."""
    pdf = tmp_path / "big.pdf"
    pdf.write_bytes(b"%PDF-1.4 too large")
    [doc] = ingest.plan([Path(pdf)], "docs", "input/", pipeline_version="v2")
    with mock_aws():
        ddb = boto3.client("dynamodb")
        _control_table(ddb)
        unread = identity.unread_version('"0123abcd"', "v2")
        ddb.put_item(TableName="control", Item={
            "document_id": {"S": doc.document_id}, "processing_version": {"S": unread},
            "status": {"S": "FAILED"}, "error_code": {"S": "TooLarge"}})
        ingest.refresh(ddb, "control", doc)
    assert doc.status == "FAILED" and doc.item["processing_version"] == unread
