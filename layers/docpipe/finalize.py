"""Closing a processed version: status, counts, cost, metrics, superseded versions."""

from __future__ import annotations

from botocore.exceptions import ClientError

from docpipe import costs
from docpipe.config import Settings
from docpipe.records import DONE_STATUSES, Records


def finalize(state: dict, settings: Settings, records: Records, execution_arn: str) -> dict:
    reg = state["registration"]
    extract = state.get("extract") or {}
    embed = state.get("embed") or {}
    doc, ver = reg["document_id"], reg["processing_version"]
    status = "PARTIAL" if extract.get("pages_without_text", 0) else "COMPLETED"
    durations = {**(extract.get("durations") or {}), **(embed.get("durations") or {})}
    fields = {
        "status": status,
        "current_stage": "done",
        "pages": extract.get("pages", 0),
        "pages_without_text": extract.get("pages_without_text", 0),
        "chunks": extract.get("chunks", 0),
        "vectors": embed.get("vectors", 0),
        "tokens": embed.get("tokens", 0),
        "cost_usd": float(embed.get("cost_usd", 0.0)),
        "embedding_model": embed.get("embedding_model"),
        "durations": durations,
        "artifacts": {k: v for k, v in {**extract, **embed}.items() if k.endswith("_uri")},
        "execution_arn": execution_arn,
    }
    try:
        records.update(doc, ver, fields, action=status.lower(), expect_status=("PENDING", "PROCESSING"),
                       detail={"vectors": fields["vectors"], "chunks": fields["chunks"]})
    except ClientError as err:
        if err.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        current = records.get(doc, ver) or {}
        if current.get("status") in DONE_STATUSES and current.get("execution_arn") == execution_arn:
            # A retried FinalizeDocument whose first attempt did commit: done already,
            # and the counters must not be added twice.
            return _result(doc, ver, current, [])
        raise
    superseded = []
    for other in records.versions(doc):
        if other["processing_version"] != ver and other.get("status") in DONE_STATUSES \
                and not other.get("superseded_by"):
            # The embed job already replaced this version's vectors (new first, then old
            # deleted); here the control item records it.
            records.update(doc, other["processing_version"], {"superseded_by": ver},
                           action="superseded", detail={"by": ver})
            superseded.append(other["processing_version"])
    records.add_metrics({
        "documents": {status.lower(): 1},
        "pages": {"count": fields["pages"], "without_text": fields["pages_without_text"]},
        "chunks": {"count": fields["chunks"], "vectors": fields["vectors"]},
        "tokens": {"embedding": fields["tokens"]},
        # Every spend of the document, so DailyCostUsd is not $0 with the local model.
        "costs": {"embedding_usd": fields["cost_usd"],
                  **costs.document_costs(sum(float(s) for s in durations.values()))},
    })
    return _result(doc, ver, fields, superseded)


def _result(doc: str, ver: str, item: dict, superseded: list[str]) -> dict:
    return {"document_id": doc, "processing_version": ver, "status": item["status"],
            "pages": item.get("pages", 0), "chunks": item.get("chunks", 0), "vectors": item.get("vectors", 0),
            "superseded_versions": superseded}
