"""Closing a processed version: status, counts, cost, metrics, superseded versions."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from docpipe import costs
from docpipe.config import Settings
from docpipe.records import DONE_STATUSES, Records

# Control item attribute: when this version's daily metrics were counted (exactly once).
METRICS_MARKER = "metrics_counted_at"


def finalize(state: dict[str, Any], settings: Settings, records: Records, execution_arn: str) -> dict[str, Any]:
    reg = state["registration"]
    extract = state.get("extract") or {}
    embed = state.get("embed") or {}
    doc, ver = reg["document_id"], reg["processing_version"]
    status = "PARTIAL" if extract.get("pages_without_text", 0) else "COMPLETED"
    durations = {**(extract.get("durations") or {}), **(embed.get("durations") or {})}
    ocr = extract.get("ocr") or {}
    ocr_cost = float(ocr.get("cost_usd", 0.0))
    fields = {
        "status": status,
        "current_stage": "done",
        "pages": extract.get("pages", 0),
        "pages_without_text": extract.get("pages_without_text", 0),
        # Pages whose text came from OCR, and what reading them cost (Textract; $0 locally).
        "pages_ocr": int(ocr.get("pages_recovered", 0)),
        "ocr_engine": ocr.get("engine") or None,
        "ocr_cost_usd": ocr_cost,
        "chunks": extract.get("chunks", 0),
        "vectors": embed.get("vectors", 0),
        "tokens": embed.get("tokens", 0),
        "cost_usd": float(embed.get("cost_usd", 0.0)) + ocr_cost,
        "embedding_model": embed.get("embedding_model"),
        "durations": durations,
        "artifacts": {k: v for k, v in {**extract, **embed}.items() if k.endswith("_uri")},
        "execution_arn": execution_arn,
    }
    item: dict[str, Any] = fields
    try:
        records.update(doc, ver, fields, action=status.lower(), expect_status=("PENDING", "PROCESSING"),
                       detail={"vectors": fields["vectors"], "chunks": fields["chunks"]})
    except ClientError as err:
        if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        current = records.get(doc, ver) or {}
        if current.get("status") not in DONE_STATUSES or current.get("execution_arn") != execution_arn:
            raise
        # A retried FinalizeDocument whose first attempt committed the status and may have
        # died before the steps below: each is safe to redo and takes effect once.
        item = current
    superseded = mark_superseded(records, doc, ver)
    records.add_metrics_once(doc, ver, {
        "documents": {status.lower(): 1},
        "pages": {"count": fields["pages"], "without_text": fields["pages_without_text"],
                  "ocr": fields["pages_ocr"]},
        "chunks": {"count": fields["chunks"], "vectors": fields["vectors"]},
        "tokens": {"embedding": fields["tokens"]},
        # Every spend of the document, so DailyCostUsd is not $0 with the local model.
        "costs": {"embedding_usd": float(embed.get("cost_usd", 0.0)), "ocr_usd": ocr_cost,
                  **costs.document_costs(sum(float(s) for s in durations.values()))},
    }, marker=METRICS_MARKER)
    return _result(doc, ver, item, superseded)


def mark_superseded(records: Records, doc: str, ver: str) -> list[str]:
    """Record on every other finished version that `ver` replaced it; returns all versions
    `ver` superseded (marked now or by an earlier attempt), so a retry answers the same."""
    superseded = []
    for other in records.versions(doc, attributes=("status", "superseded_by")):
        if other["processing_version"] == ver or other.get("status") not in DONE_STATUSES:
            continue
        if not other.get("superseded_by"):
            # The embed job already replaced this version's vectors (new first, then old
            # deleted); here the control item records it.
            records.update(doc, other["processing_version"], {"superseded_by": ver},
                           action="superseded", detail={"by": ver})
            other["superseded_by"] = ver
        if other["superseded_by"] == ver:
            superseded.append(other["processing_version"])
    return superseded


def _result(doc: str, ver: str, item: dict[str, Any], superseded: list[str]) -> dict[str, Any]:
    return {"document_id": doc, "processing_version": ver, "status": item["status"],
            "pages": item.get("pages", 0), "chunks": item.get("chunks", 0), "vectors": item.get("vectors", 0),
            "superseded_versions": superseded}
