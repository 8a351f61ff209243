"""Cost per document on AWS at list prices, from the counts the pipeline records.

Prices: the rates listed in the benchmark issue, us-east-1, on-demand, as of November
2026 (not re-checked from this machine: it has no network). DynamoDB, S3 and Pinecone
rates are their published list prices for us-east-1 / Pinecone Standard on AWS
us-east-1. Each line below says whether its count is MEASURED in the run or ESTIMATED
from the code path; the estimates are per COMPLETED document.

Two configurations:
- "as benchmarked": EmbeddingBackend=local, VectorStoreBackend=lancedb. The embedding
  model runs on the Ray workers, so it is all Fargate time.
- "managed backends": EmbeddingBackend=openai (text-embedding-3-small, 1536 dims),
  VectorStoreBackend=pinecone (serverless), EmbeddingCache=auto (= s3 for OpenAI). The
  Fargate time drops by the local model's warm compute (measured by the bare run);
  OpenAI, Pinecone and the S3 embedding cache are added.
"""

from __future__ import annotations

import math

# The pipeline's own prices (DailyCostUsd) and the bench's are one list: docpipe.costs.
from docpipe.costs import (
    FARGATE_PER_GB_H,
    FARGATE_PER_VCPU_H,
    LAMBDA_MEMORY_GB,
    LAMBDA_PER_GB_S,
    LAMBDA_PER_REQUEST,
    SFN_PER_TRANSITION,
    WORKER_GB,
    WORKER_VCPU,
)

OPENAI_PER_TOKEN = 0.02 / 1_000_000  # text-embedding-3-small
PINECONE_PER_WU = 4.00 / 1_000_000  # Standard plan, AWS us-east-1
PINECONE_PER_RU = 16.00 / 1_000_000
PINECONE_STORAGE_PER_GB_MONTH = 0.33
S3_PER_PUT = 0.005 / 1000  # PUT, COPY, POST, LIST
S3_PER_GET = 0.0004 / 1000  # GET, HEAD, SELECT
S3_PER_GB_MONTH = 0.023
DDB_PER_WRU = 0.625 / 1_000_000  # on-demand, since 2024-11
DDB_PER_RRU = 0.125 / 1_000_000

# infra/ray-cluster.yaml defaults: a 2 vCPU / 8 GB head (workers: docpipe.costs).
HEAD_VCPU, HEAD_GB = 2, 8
HOURS_PER_MONTH = 730
BENCH_CORES = 2  # the machine the throughput was measured on

TEN_PAGE_TARGET_USD = 0.0003  # issue #11: a 10-page document with the local model

OPENAI_DIMS = 1536
PINECONE_BATCH_RECORDS = 65  # ~2 MB of JSON per upsert at 1536 dims (docs/design.md; PineconeStore.plan_batches)
S3_MULTIPART_CHUNK = 8 * 2**20  # boto3 download_file: ranged GETs of 8 MB above 8 MB


def s3_requests(size_bytes: float, chunks: float, cache: bool) -> dict:
    """ESTIMATED from the code path of a COMPLETED document."""
    gets_input = max(1, math.ceil(size_bytes / S3_MULTIPART_CHUNK))
    puts = (1  # the upload itself (input/)
            + 2  # SubmitRayJob: jobs/<id>.json per stage
            + 2  # extract: pages.jsonl, chunks.jsonl
            + 2)  # embed: enriched chunks.jsonl, vectors.jsonl
    gets = (2  # RegisterDocument: HeadObject + GetObject (sha256 of the content)
            + 2  # each job reads its job file
            + 1 + gets_input  # extract: download_file = HeadObject + GetObject(s)
            + 1)  # embed: chunks.jsonl
    # DeleteObject of the two job files is free.
    if cache:  # EmbeddingCache=s3: one GET per distinct text (a miss here), one PUT per miss
        gets += chunks
        puts += chunks
    return {"put": puts, "get": gets}


def dynamodb_units(audit_items: float) -> dict:
    """Writes: every control-item write (create/update) also writes one audit item, so
    2 x audit items (audit count MEASURED); FinalizeDocument adds 5 ADDs to the daily
    metrics table and its control update is ~1.5 KB (2 WRU). Reads: FinalizeDocument's
    versions() query (0.5 RRU, eventually consistent). ESTIMATED item sizes < 1 KB."""
    return {"wru": 2 * audit_items + 1 + 5, "rru": 0.5}


def pinecone_units(chunks: float, text_chars_per_chunk: float) -> dict:
    """ESTIMATED: 1 WU per KB of records (id + 1536 float32 + metadata), at least 5 per
    upsert request; version_sync lists the new prefix, the document prefix and confirms
    (3 list calls per 100 ids), assumed 1 RU each."""
    record_kb = (OPENAI_DIMS * 4 + 250 + min(2000, text_chars_per_chunk)) / 1000
    requests = max(1, math.ceil(chunks / PINECONE_BATCH_RECORDS))
    wu = max(5 * requests, math.ceil(chunks * record_kb))
    ru = 3 * max(1, math.ceil(chunks / 100))
    return {"wu": wu, "ru": ru, "storage_gb": chunks * record_kb / 1e6}


def per_document(e2e: dict, bare: dict | None = None, lambda_ms: float | None = None) -> dict:
    """Cost lines for the average COMPLETED document of one e2e workload. `lambda_ms`:
    billed Lambda ms per document measured on an idle stack (the local stack runs its
    Lambdas one at a time, so under load their durations include queueing that AWS,
    running them concurrently, would not bill)."""
    n = max(1, e2e["completed"])
    per_doc = [r for r in e2e["per_doc"] if r["status"] in ("COMPLETED", "PARTIAL") and "latency_s" in r]
    avg = lambda key: sum(r.get(key, 0) or 0 for r in per_doc) / n  # noqa: E731
    chunks, tokens, size = avg("chunks"), avg("chunk_tokens"), avg("bytes")
    transitions, invocations = avg("transitions"), avg("lambda_invocations")
    billed_ms = sum(sum(math.ceil(s * 1000) for s in r["lambda_s"]) for r in per_doc) / n
    if lambda_ms is not None:
        billed_ms = min(billed_ms, lambda_ms)
    audit = avg("audit_items")
    chars = sum(r.get("chunk_chars", 0) for r in per_doc) / max(1, sum(r["chunks"] for r in per_doc))

    # Fargate: the 2-core machine's wall time per document at the measured throughput,
    # charged as a 2 vCPU / 8 GB slice of a 4 vCPU / 16 GB worker (workers kept busy).
    machine_s = 60.0 / e2e["docs_per_min"] if e2e["docs_per_min"] else float("nan")
    slice_per_h = BENCH_CORES * FARGATE_PER_VCPU_H + BENCH_CORES * (WORKER_GB / WORKER_VCPU) * FARGATE_PER_GB_H
    fargate = machine_s / 3600 * slice_per_h
    bare_s = embed_machine_s = None
    if bare and bare.get("wall_s") and bare.get("completed"):
        bare_s = bare["wall_s"] / bare["completed"]
        # The model's own compute, warm (what OpenAI replaces), in machine seconds: a worker
        # with t threads on c cores occupies t/c of the machine while it embeds.
        share = bare.get("embed_threads_per_worker", 1) / BENCH_CORES
        embed_machine_s = bare.get("stage_s", {}).get("embed", 0.0) * share / bare["completed"]
    if embed_machine_s is None:  # no bare run: fall back on the jobs' own embed timings
        stage = e2e["stage_compute_s"]
        embed_machine_s = machine_s * stage.get("embed", 0.0) / (sum(stage.values()) or 1.0)
    managed_machine_s = max(0.0, machine_s - embed_machine_s)

    s3_local = s3_requests(size, chunks, cache=False)
    s3_managed = s3_requests(size, chunks, cache=True)
    ddb = dynamodb_units(audit)
    pc = pinecone_units(chunks, chars)
    common = {
        "step_functions": ("MEASURED transitions (history)", transitions * SFN_PER_TRANSITION),
        "lambda_requests": ("MEASURED invocations (history)", invocations * LAMBDA_PER_REQUEST),
        "lambda_duration": ("MEASURED in-process ms on an idle stack, billed per ms at 512 MB (no cold starts)",
                            billed_ms / 1000 * LAMBDA_MEMORY_GB * LAMBDA_PER_GB_S),
        "dynamodb": ("audit items MEASURED, units ESTIMATED", ddb["wru"] * DDB_PER_WRU + ddb["rru"] * DDB_PER_RRU),
    }
    local = dict(common)
    local["s3_requests"] = ("ESTIMATED from code paths", s3_local["put"] * S3_PER_PUT + s3_local["get"] * S3_PER_GET)
    local["fargate"] = ("MEASURED throughput on 2 cores -> 2 vCPU / 8 GB slice", fargate)
    managed = dict(common)
    managed["s3_requests"] = ("ESTIMATED; + embedding cache GET+PUT per chunk",
                              s3_managed["put"] * S3_PER_PUT + s3_managed["get"] * S3_PER_GET)
    managed["fargate"] = ("as benchmarked minus the local model's warm compute (bare run)",
                          managed_machine_s / 3600 * slice_per_h)
    managed["openai_embeddings"] = ("MEASURED cl100k tokens of the chunks", tokens * OPENAI_PER_TOKEN)
    managed["pinecone_writes"] = ("ESTIMATED write + read units", pc["wu"] * PINECONE_PER_WU + pc["ru"] * PINECONE_PER_RU)
    out = {
        "inputs": {"chunks": round(chunks, 2), "chunk_tokens": round(tokens, 1), "bytes": round(size),
                   "transitions": round(transitions, 2), "lambda_invocations": round(invocations, 2),
                   "lambda_billed_ms": round(billed_ms, 1), "audit_items": round(audit, 2),
                   "s3_requests_local": s3_local, "s3_requests_managed": s3_managed,
                   "dynamodb_units": ddb, "pinecone_units": pc, "machine_s_per_doc": round(machine_s, 3),
                   "bare_machine_s_per_doc": round(bare_s, 3) if bare_s else None,
                   "local_model_machine_s_per_doc": round(embed_machine_s, 3)},
        "as_benchmarked": {k: {"basis": b, "usd": v} for k, (b, v) in local.items()},
        "managed_backends": {k: {"basis": b, "usd": v} for k, (b, v) in managed.items()},
    }
    out["total_as_benchmarked_usd"] = sum(v for _, v in local.values())
    out["total_managed_usd"] = sum(v for _, v in managed.values())
    if bare_s:
        # What Fargate would cost per document if the pipeline ran at the bare-compute bound.
        out["fargate_at_bare_bound_usd"] = bare_s / 3600 * slice_per_h
    out["monthly_storage_per_1000_docs_usd"] = {
        "pinecone": round(1000 * pc["storage_gb"] * PINECONE_STORAGE_PER_GB_MONTH, 4),
        "s3_artifacts": round(1000 * avg("artifact_bytes") / 1e9 * S3_PER_GB_MONTH, 4),
    }
    return out


def scaled_to_pages(per_doc: dict, pages_per_doc: float, pages: float = 10) -> float:
    """The "as benchmarked" cost of a `pages`-page document from a workload's average one
    (`per_document`'s result): Fargate is machine time at the measured throughput, so it
    scales with pages; the other lines are per document (one execution with its
    transitions, Lambdas, control and audit items, S3 requests) and do not."""
    lines = per_doc["as_benchmarked"]
    per_document = sum(v["usd"] for k, v in lines.items() if k != "fargate")
    return per_document + lines["fargate"]["usd"] / pages_per_doc * pages


def fixed_monthly() -> dict:
    head = (HEAD_VCPU * FARGATE_PER_VCPU_H + HEAD_GB * FARGATE_PER_GB_H) * HOURS_PER_MONTH
    # PublishBacklog runs every minute (EventBridge schedule): ~43,800 invocations/month.
    backlog_invocations = 60 * HOURS_PER_MONTH
    backlog = backlog_invocations * (LAMBDA_PER_REQUEST + 0.2 * LAMBDA_MEMORY_GB * LAMBDA_PER_GB_S)
    return {"ray_head_fargate_usd": round(head, 2), "publish_backlog_lambda_usd": round(backlog, 2),
            "note": "not per document; a minimum worker count adds its own Fargate hours"}
