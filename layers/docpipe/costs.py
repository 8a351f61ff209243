"""What a document costs on AWS at list prices: the spend DailyCostUsd adds up, and the
prices `make bench`'s cost model uses (bench/cost.py).

DailyCostUsd used to count the embedding API only ($0 with the local model). Each
COMPLETED document now also adds its Ray compute (its stage seconds on one vCPU of a
Fargate worker, with that vCPU's share of memory) and its orchestration (Step Functions
transitions, Lambda requests and duration, ESTIMATED per document from the happy path).
Not counted: the always-on Ray head and idle workers (see docs/deploy.md, "Cost").
Prices: us-east-1, on-demand, list, as of PRICES_AS_OF.
"""

from __future__ import annotations

PRICES_AS_OF = "2026-11 (list prices, us-east-1)"
SFN_PER_TRANSITION = 0.025 / 1000  # Step Functions Standard, per state transition
LAMBDA_PER_GB_S = 0.0000166667  # x86
LAMBDA_PER_REQUEST = 0.20 / 1_000_000
LAMBDA_MEMORY_GB = 512 / 1024  # template.yaml Globals: MemorySize 512
FARGATE_PER_VCPU_H = 0.04048  # Linux/x86
# Amazon Textract DetectDocumentText (sync and async), first 1M pages a month; OcrBackend=textract.
TEXTRACT_PER_PAGE = 1.50 / 1000
FARGATE_PER_GB_H = 0.004445

# infra/ray-cluster.yaml defaults: workers of 4 vCPU / 16 GB; a document's task holds one vCPU.
WORKER_VCPU, WORKER_GB = 4, 16
# ESTIMATED for a COMPLETED document: RegisterDocument, SubmitRayJob x2, FinalizeDocument,
# ~0.15 s billed each; RegisterDocument .. Done is 6 state transitions (retries add more).
LAMBDA_REQUESTS_PER_DOCUMENT = 4
LAMBDA_SECONDS_PER_DOCUMENT = 4 * 0.15
TRANSITIONS_PER_DOCUMENT = 6


def vcpu_second_usd(worker_vcpu: float = WORKER_VCPU, worker_gb: float = WORKER_GB) -> float:
    """One vCPU of a Fargate worker for a second, with its share of the worker's memory."""
    return (FARGATE_PER_VCPU_H + worker_gb / worker_vcpu * FARGATE_PER_GB_H) / 3600


def document_costs(stage_seconds: float) -> dict[str, float]:
    """The `costs` counters (besides the embedding API's) one finished document adds."""
    orchestration = (TRANSITIONS_PER_DOCUMENT * SFN_PER_TRANSITION
                     + LAMBDA_REQUESTS_PER_DOCUMENT * LAMBDA_PER_REQUEST
                     + LAMBDA_SECONDS_PER_DOCUMENT * LAMBDA_MEMORY_GB * LAMBDA_PER_GB_S)
    return {"compute_usd": max(0.0, stage_seconds) * vcpu_second_usd(), "orchestration_usd": orchestration}
