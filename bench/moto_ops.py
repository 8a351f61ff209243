"""What the local stack's moto fixes save on the two calls every document makes most:
an UpdateItem shaped like the handlers' (FinalizeDocument's: 16 SET actions, a condition,
ReturnValues ALL_OLD) and an SQS SendMessage into a queue already holding N messages (a
stage queue during a burst). Each is timed in-process (moto's mock, as the Lambdas call
it in the local stack), with moto as pinned and with docpipe_local.moto_fixes, each in a
fresh interpreter so nothing of one leaks into the other.

    python -m bench.moto_ops [--calls N] [--depths 0,200,2000] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

FIELDS = {
    "status": {"S": "COMPLETED"}, "current_stage": {"S": "done"}, "pages": {"N": "10"},
    "pages_without_text": {"N": "0"}, "pages_ocr": {"N": "0"}, "ocr_cost_usd": {"N": "0"},
    "chunks": {"N": "30"}, "vectors": {"N": "30"}, "tokens": {"N": "3000"}, "cost_usd": {"N": "0.0001"},
    "embedding_model": {"S": "all-MiniLM-L6-v2"},
    "durations": {"M": {k: {"N": "0.1"} for k in ("extract_s", "chunk_s", "enrich_s", "embed_s", "load_s")}},
    "artifacts": {"M": {k: {"S": f"s3://bucket/artifacts/{k}.jsonl"} for k in ("pages_uri", "chunks_uri", "vectors_uri")}},
    "execution_arn": {"S": "arn:aws:states:us-east-1:123456789012:execution:docpipe:" + "x" * 36},
    "updated_at": {"S": "2026-12-02T00:00:00Z"},
}


def measure(fixed: bool, calls: int, depths: list[int]) -> dict:
    import boto3
    from moto import mock_aws

    if fixed:
        from docpipe_local import moto_fixes

        moto_fixes.install()
    out: dict = {}
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        keys = [("document_id", "HASH"), ("processing_version", "RANGE")]
        ddb.create_table(TableName="control", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": n, "KeyType": t} for n, t in keys],
                         AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n, _ in keys])
        key = {"document_id": {"S": "doc"}, "processing_version": {"S": "v1"}}
        ddb.put_item(TableName="control", Item={**key, "status": {"S": "PROCESSING"}})
        names = {f"#f{i}": k for i, k in enumerate(FIELDS)} | {"#st": "status"}
        values = {f":v{i}": v for i, v in enumerate(FIELDS.values())}
        values |= {f":e{i}": {"S": s} for i, s in enumerate(("PENDING", "PROCESSING", "COMPLETED"))}
        update = {"TableName": "control", "Key": key, "ReturnValues": "ALL_OLD",
                  "UpdateExpression": "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(FIELDS))),
                  "ConditionExpression": "attribute_exists(document_id) AND #st IN (:e0, :e1, :e2)",
                  "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
        for _ in range(5):
            ddb.update_item(**update)
        t = time.perf_counter()
        for _ in range(calls):
            ddb.update_item(**update)
        out["update_item_ms"] = (time.perf_counter() - t) / calls * 1000

        sqs = boto3.client("sqs", region_name="us-east-1")
        for depth in depths:
            url = sqs.create_queue(QueueName=f"q{depth}")["QueueUrl"]
            for start in range(0, depth, 10):
                sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "MessageBody": "x" * 300} for i in range(min(10, depth - start))])
            n = max(20, calls // 4)
            t = time.perf_counter()
            for _ in range(n):
                sqs.send_message(QueueUrl=url, MessageBody="x" * 300)
            out[f"send_message_ms_at_{depth}"] = (time.perf_counter() - t) / n * 1000
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.moto_ops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=400, help="UpdateItem calls timed per round (default 400)")
    ap.add_argument("--depths", default="0,200,2000", help="messages already queued for the SendMessage timings")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, moto and fixed alternating (default 3)")
    ap.add_argument("--one", choices=("moto", "fixed"), help=argparse.SUPPRESS)  # a child's own run
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    if args.one:
        print(json.dumps(measure(args.one == "fixed", args.calls, depths)))
        return 0
    runs: dict[str, list[dict]] = {"moto": [], "fixed": []}
    for r in range(args.rounds):
        for mode in ("moto", "fixed"):
            cmd = [sys.executable, "-m", "bench.moto_ops", "--one", mode, "--calls", str(args.calls),
                   "--depths", args.depths]
            runs[mode].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            print(f"round {r + 1}/{args.rounds} {mode}: {runs[mode][-1]}", file=sys.stderr)
    print(f"{'median ms per call':32s} {'moto':>8s} {'fixed':>8s}")
    for metric in runs["moto"][0]:
        a = statistics.median(x[metric] for x in runs["moto"])
        b = statistics.median(x[metric] for x in runs["fixed"])
        print(f"{metric:32s} {a:8.2f} {b:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
