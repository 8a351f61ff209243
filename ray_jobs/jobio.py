"""S3 reads and writes of the stages: JSON Lines in, JSON Lines out."""

from __future__ import annotations

import json
from typing import Iterable

import boto3

from docpipe.identity import parse_s3_uri, s3_uri


def s3():
    return boto3.client("s3")


def read_json(uri: str) -> dict:
    bucket, key = parse_s3_uri(uri)
    return json.loads(s3().get_object(Bucket=bucket, Key=key)["Body"].read())


def read_jsonl(uri: str) -> list[dict]:
    bucket, key = parse_s3_uri(uri)
    body = s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def write_jsonl(bucket: str, key: str, rows: Iterable[dict]) -> str:
    # sort_keys + fixed separators: a re-run writes byte-identical objects.
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
                   for r in rows)
    s3().put_object(Bucket=bucket, Key=key, Body=body.encode("utf-8"),
                    ContentType="application/x-ndjson")
    return s3_uri(bucket, key)


def download(bucket: str, key: str, path: str) -> None:
    s3().download_file(bucket, key, path)


def delete(uri: str) -> None:
    bucket, key = parse_s3_uri(uri)
    s3().delete_object(Bucket=bucket, Key=key)
