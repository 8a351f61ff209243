"""docpipe.identity owns the formats: the names it builds, it also parses."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from docpipe import identity
from docpipe_local import ingest

DOC = "0123456789abcdef0123456789abcdef"


def test_a_vector_id_parses_back_into_its_parts():
    version = identity.processing_version("9f" * 32, "v7")
    assert identity.parse_vector_id(identity.vector_id(DOC, version, 12)) == (DOC, version, 12)
    assert identity.vector_id_prefix(DOC, version) == f"{DOC}#{version}#"
    for bad in (f"{DOC}#{version}", f"{DOC}#{version}#x", f"{DOC}##3", f"{DOC}#{version}#1#2"):
        with pytest.raises(ValueError):
            identity.parse_vector_id(bad)


def test_versions_know_their_pipeline_version():
    assert identity.pipeline_version_of(identity.processing_version("ab" * 32, "v2")) == "v2"
    unread = identity.unread_version('"d41d8cd98f00b204e9800998ecf8427e"', "v2")
    assert identity.pipeline_version_of(unread) == "v2"
    assert unread.startswith(identity.unread_version_prefix("v2"))
    assert not unread.startswith(identity.unread_version_prefix("v1"))


def test_ingest_finds_a_refused_upload_under_another_pipeline_version(aws_env, tmp_path):
    """`docpipe ingest` follows a too-large file to its FAILED unread version; with
    PipelineVersion v2 that version starts "v2-etag", not "v1-etag"."""
    pdf = tmp_path / "big.pdf"
    pdf.write_bytes(b"%PDF-1.4 too large")
    [doc] = ingest.plan([Path(pdf)], "docs", "input/", pipeline_version="v2")
    with mock_aws():
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName="control",
            KeySchema=[{"AttributeName": "document_id", "KeyType": "HASH"},
                       {"AttributeName": "processing_version", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "document_id", "AttributeType": "S"},
                                  {"AttributeName": "processing_version", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        unread = identity.unread_version('"0123abcd"', "v2")
        ddb.put_item(TableName="control", Item={
            "document_id": {"S": doc.document_id}, "processing_version": {"S": unread},
            "status": {"S": "FAILED"}, "error_code": {"S": "TooLarge"}})
        ingest.refresh(ddb, "control", doc)
    assert doc.status == "FAILED" and doc.item["processing_version"] == unread
