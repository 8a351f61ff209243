"""The bytes a registration names are the bytes indexed: RegisterDocument records the
upload's S3 version, hashes that version, and the extract stage downloads that version,
whatever was written under the key since (the bucket is versioned)."""

from __future__ import annotations

import hashlib
import json

import botocore.client
import pytest
from conftest import REPO
from test_handlers import stack_with_upload  # noqa: F401 - a fixture

from docpipe import identity
from docpipe_local.invoke import invoke_function
from ray_jobs import extract, jobio
from ray_jobs.pdf import extract_pdf

A, B = REPO / "samples" / "annual-report-2025.pdf", REPO / "samples" / "pipeline-runbook.pdf"


def page_texts(pages: list[dict]) -> list[str]:
    return [p["text"] for p in pages]


def test_register_hashes_the_version_it_looked_at(stack_with_upload, monkeypatch):
    """An overwrite between RegisterDocument's HEAD and its read does not mix versions."""
    stack, clients, _, ev = stack_with_upload
    bucket, key = ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"]
    version_a = clients["s3"].put_object(Bucket=bucket, Key=key, Body=A.read_bytes())["VersionId"]
    original = botocore.client.BaseClient._make_api_call

    def overwrite_after_head(client, operation, params):
        answer = original(client, operation, params)
        if operation == "HeadObject" and params.get("Key") == key:
            original(client, "PutObject", {"Bucket": bucket, "Key": key, "Body": B.read_bytes()})
        return answer

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", overwrite_after_head)
    reg, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    monkeypatch.undo()
    assert not errored, reg
    assert reg["s3_version_id"] == version_a
    assert (reg["sha256"], reg["etag"], reg["size"]) == \
        (hashlib.sha256(A.read_bytes()).hexdigest(), hashlib.md5(A.read_bytes()).hexdigest(), A.stat().st_size)


def test_extract_reads_the_registered_version_not_a_later_overwrite(stack_with_upload, tmp_path):
    stack, clients, _, ev = stack_with_upload
    bucket, key = ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"]
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=A.read_bytes())
    reg, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    assert not errored and reg["decision"] == "PROCESS", reg
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=B.read_bytes())  # overwritten before extract runs

    out = extract.extract_document({"registration": reg})
    expected = extract_pdf(str(A), document_id=reg["document_id"], processing_version=reg["processing_version"])
    assert page_texts(jobio.read_jsonl(out["pages_uri"])) == page_texts(expected.pages)
    assert out["pages"] == expected.page_count


def test_a_bucket_without_versioning_is_read_as_it_is(stack_with_upload):
    """No version id to pin (versioning never enabled): registration and extract read the key."""
    stack, clients, _, ev = stack_with_upload
    bucket = "docpipe-unversioned-uploads"
    clients["s3"].create_bucket(Bucket=bucket)
    clients["s3"].put_object(Bucket=bucket, Key="input/plain.pdf", Body=A.read_bytes())
    event = json.loads(json.dumps(ev))
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"] = {"key": "input/plain.pdf", "size": A.stat().st_size}
    reg, errored, _ = invoke_function(stack, "RegisterDocument", event)
    assert not errored and reg["decision"] == "PROCESS", reg
    assert reg["s3_version_id"] == "" and reg["sha256"] == hashlib.sha256(A.read_bytes()).hexdigest()
    out = extract.extract_document({"registration": reg})
    assert out["pages_uri"] == identity.s3_uri(bucket, identity.artifact_key(
        "extracted", reg["document_id"], reg["processing_version"], "pages.jsonl"))
    assert out["pages"] == 3


def test_record_failure_keeps_a_copy_of_the_registered_version(stack_with_upload):
    stack, clients, _, ev = stack_with_upload
    bucket, key = ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"]
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=A.read_bytes())
    reg, _, _ = invoke_function(stack, "RegisterDocument", ev)
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=B.read_bytes())
    state = {"registration": reg, "error": {"Error": "PdfMalformed", "Cause": "refused"}}
    failure, errored, _ = invoke_function(stack, "RecordFailure", {"state": state, "execution_arn": ev["execution_arn"]})
    assert not errored, failure
    copy_bucket, copy_key = identity.parse_s3_uri(failure["input_copy_uri"])
    assert clients["s3"].get_object(Bucket=copy_bucket, Key=copy_key)["Body"].read() == A.read_bytes()


def _reads_of(key: str, monkeypatch) -> list[str]:
    """The S3 operations RegisterDocument makes on `key`, recorded as it runs."""
    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        if params.get("Key") == key:
            calls.append(operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return calls


@pytest.mark.parametrize(("algorithm", "operations"), [
    # S3 verified the SHA-256 at upload (docpipe ingest, `aws s3 cp --checksum-algorithm
    # SHA256`): RegisterDocument takes it from the HEAD and never downloads the upload.
    ("SHA256", ["HeadObject"]),
    # A CRC32 (boto3's default) says nothing about the SHA-256: the version is read and hashed.
    ("CRC32", ["HeadObject", "GetObject"]),
])
def test_the_upload_is_read_to_register_it_only_without_a_sha256_checksum(stack_with_upload, monkeypatch,
                                                                          algorithm, operations):
    stack, clients, _, ev = stack_with_upload
    bucket, key = ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"]
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=A.read_bytes(), ChecksumAlgorithm=algorithm)
    calls = _reads_of(key, monkeypatch)
    reg, errored, _ = invoke_function(stack, "RegisterDocument", ev)
    monkeypatch.undo()
    assert not errored and reg["decision"] == "PROCESS", reg
    assert calls == operations
    assert reg["sha256"] == hashlib.sha256(A.read_bytes()).hexdigest()
    assert reg["processing_version"] == identity.processing_version(reg["sha256"], identity.PIPELINE_VERSION)


def test_a_multipart_checksum_is_not_taken_for_the_content_hash():
    """A multipart upload's SHA-256 is a checksum of part checksums ("<b64>-<parts>")."""
    import base64

    from docpipe.documents import sha256_from_checksum

    full = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    assert sha256_from_checksum({"ChecksumSHA256": full}) == hashlib.sha256(b"x").hexdigest()
    assert sha256_from_checksum({"ChecksumSHA256": full, "ChecksumType": "FULL_OBJECT"}) == hashlib.sha256(b"x").hexdigest()
    assert sha256_from_checksum({"ChecksumSHA256": full + "-3", "ChecksumType": "COMPOSITE"}) == ""
    assert sha256_from_checksum({"ChecksumSHA256": full, "ChecksumType": "COMPOSITE"}) == ""
    assert sha256_from_checksum({"ChecksumCRC32": "ksWq1g=="}) == ""
