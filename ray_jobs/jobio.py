"""S3 reads and writes of the stages: JSON Lines in, JSON Lines out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

from docpipe import aws
from docpipe.identity import parse_s3_uri, s3_uri


def s3() -> Any:  # Any: boto3's stubs type a client per literal service name
    return aws.client("s3")


def read_json(uri: str) -> dict[str, Any]:
    bucket, key = parse_s3_uri(uri)
    return cast(dict[str, Any], json.loads(s3().get_object(Bucket=bucket, Key=key)["Body"].read()))


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    bucket, key = parse_s3_uri(uri)
    body = s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def write_jsonl(bucket: str, key: str, rows: Iterable[dict[str, Any]]) -> str:
    # sort_keys + fixed separators: a re-run writes byte-identical objects.
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
                   for r in rows)
    s3().put_object(Bucket=bucket, Key=key, Body=body.encode("utf-8"),
                    ContentType="application/x-ndjson")
    return s3_uri(bucket, key)


def download(bucket: str, key: str, path: str, version_id: str = "") -> None:
    """The object at `path`; with `version_id`, that version whatever the key holds now."""
    s3().download_file(bucket, key, path, ExtraArgs={"VersionId": version_id} if version_id else None)


def delete(uri: str) -> None:
    bucket, key = parse_s3_uri(uri)
    s3().delete_object(Bucket=bucket, Key=key)


def delete_many(uris: list[str]) -> None:
    """`delete` for many objects: one DeleteObjects per bucket and 1000 keys (its limit)."""
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            s3().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                       "Quiet": True})
