"""Control, audit and daily-metrics items: the only code that writes the three tables.

- control (ControlTable; its name: CONTROL_TABLE): PK document_id, SK processing_version.
- audit (AuditTable, AUDIT_TABLE): PK document_id, SK timestamp (ISO + '#' + seq);
  one item per transition: actor, action, from_status, to_status, detail.
- metrics (MetricsTable, METRICS_TABLE): PK date, SK metric_type; atomic ADD counters.
"""

from __future__ import annotations

import itertools
import json
import os
from decimal import Decimal
from typing import Any, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from docpipe import aws
from docpipe.config import Settings
from docpipe.errors import StoreThrottled
from docpipe.timeutil import epoch_in_days, now_iso, today

STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "PARTIAL", "FAILED", "SKIPPED")
DONE_STATUSES = ("COMPLETED", "PARTIAL")
METRIC_TYPES = ("documents", "pages", "chunks", "tokens", "costs", "failures")
# Why DynamoDB cancels a transaction when trying again later can succeed.
TRANSIENT_CANCELLATIONS = {"ThrottlingError", "ProvisionedThroughputExceeded", "TransactionConflict"}

# An item of one of the tables as plain Python (attribute name -> value).
Item = dict[str, Any]

_ser = TypeSerializer()
_de = TypeDeserializer()
_seq = itertools.count()


def _to_ddb(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _to_ddb(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_to_ddb(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """DynamoDB values back to JSON-friendly Python (Decimal -> int/float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, set, tuple)):
        return [plain(v) for v in value]
    return value


def _serialize(item: Item) -> dict[str, Any]:
    return {k: _ser.serialize(_to_ddb(v)) for k, v in item.items() if v is not None}


def _deserialize(item: dict[str, Any]) -> Item:
    return cast(Item, plain({k: _de.deserialize(v) for k, v in item.items()}))


def _throttle_guard(err: ClientError) -> None:
    code = err.response.get("Error", {}).get("Code", "")
    if code in aws.THROTTLING_CODES:
        raise StoreThrottled(f"DynamoDB answered {code}") from err


class Records:
    """The three tables behind one object; `actor` names who writes (function or job)."""

    def __init__(self, settings: Settings, actor: str = "docpipe"):
        self.settings = settings
        self.actor = actor
        self.ddb = aws.client("dynamodb")

    # --- control ---------------------------------------------------------------------
    def get(self, document_id: str, version: str) -> Item | None:
        try:
            resp = self.ddb.get_item(
                TableName=self.settings.control_table,
                Key=_serialize({"document_id": document_id, "processing_version": version}),
                ConsistentRead=True,
            )
        except ClientError as err:
            _throttle_guard(err)
            raise
        return _deserialize(resp["Item"]) if "Item" in resp else None

    def versions(self, document_id: str, attributes: tuple[str, ...] = ()) -> list[Item]:
        """Every version's control item of a document; only `attributes` (and the key) when
        given: a whole item is ~35 attributes that each cost serialising on every call."""
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": self.settings.control_table,
            "KeyConditionExpression": "document_id = :d",
            "ExpressionAttributeValues": {":d": {"S": document_id}},
        }
        if attributes:
            names = {f"#p{i}": a for i, a in enumerate(("document_id", "processing_version", *attributes))}
            kwargs["ProjectionExpression"] = ", ".join(names)
            kwargs["ExpressionAttributeNames"] = names
        while True:
            resp = self.ddb.query(**kwargs)
            items += [_deserialize(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def create(self, item: Item) -> bool:
        """Put a new control item; False if (document_id, version) already exists."""
        now = now_iso()
        full = {
            "created_at": now,
            "updated_at": now,
            "ttl": epoch_in_days(self.settings.record_ttl_days),
            **item,
        }
        try:
            self.ddb.put_item(
                TableName=self.settings.control_table,
                Item=_serialize(full),
                ConditionExpression="attribute_not_exists(document_id)",
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            _throttle_guard(err)
            raise
        self.audit(item["document_id"], "created", None, item.get("status"), {
            "processing_version": item["processing_version"], "s3_key": item.get("s3_key")})
        return True

    def update(
        self,
        document_id: str,
        version: str,
        fields: Item,
        *,
        action: str,
        expect_status: tuple[str, ...] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Item:
        """Set `fields` (None values are removed); one audit item per call.

        `expect_status` guards a transition (e.g. only PENDING/PROCESSING may complete);
        a mismatch raises ConditionalCheckFailedException to the caller.
        """
        fields = {**fields, "updated_at": now_iso()}
        names, values, sets, removes = {}, {}, [], []
        for i, (k, v) in enumerate(fields.items()):
            names[f"#f{i}"] = k
            if v is None:
                removes.append(f"#f{i}")
            else:
                values[f":v{i}"] = _ser.serialize(_to_ddb(v))
                sets.append(f"#f{i} = :v{i}")
        expr = ("SET " + ", ".join(sets)) if sets else ""
        if removes:
            expr += " REMOVE " + ", ".join(removes)
        kwargs: dict[str, Any] = {
            "TableName": self.settings.control_table,
            "Key": _serialize({"document_id": document_id, "processing_version": version}),
            "UpdateExpression": expr.strip(),
            "ExpressionAttributeNames": names,
            "ReturnValues": "ALL_OLD",
        }
        cond = "attribute_exists(document_id)"
        if expect_status:
            names["#st"] = "status"
            for j, st in enumerate(expect_status):
                values[f":e{j}"] = {"S": st}
            cond += " AND #st IN (" + ", ".join(f":e{j}" for j in range(len(expect_status))) + ")"
        kwargs["ConditionExpression"] = cond
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            old = self.ddb.update_item(**kwargs).get("Attributes", {})
        except ClientError as err:
            _throttle_guard(err)
            raise
        old = _deserialize(old)
        self.audit(document_id, action, old.get("status"), fields.get("status", old.get("status")),
                   {"processing_version": version, **(detail or {})})
        return old

    # --- audit -----------------------------------------------------------------------
    def audit(self, document_id: str, action: str, from_status: str | None,
              to_status: str | None, detail: dict[str, Any] | None = None) -> None:
        # ISO time + pid + counter: unique and time-ordered even for two writes in one ms.
        ts = f"{now_iso()}#{os.getpid() % 100000:05d}{next(_seq) % 10000:04d}"
        item = {
            "document_id": document_id,
            "timestamp": ts,
            "actor": self.actor,
            "action": action,
            "from_status": from_status,
            "to_status": to_status,
            "detail": json.dumps(detail or {}, default=str, sort_keys=True),
            "ttl": epoch_in_days(self.settings.record_ttl_days),
        }
        try:
            self.ddb.put_item(TableName=self.settings.audit_table, Item=_serialize(item))
        except ClientError as err:
            _throttle_guard(err)
            raise

    def audit_trail(self, document_id: str) -> list[Item]:
        resp = self.ddb.query(
            TableName=self.settings.audit_table,
            KeyConditionExpression="document_id = :d",
            ExpressionAttributeValues={":d": {"S": document_id}},
        )
        return [_deserialize(i) for i in resp.get("Items", [])]

    # --- daily metrics ---------------------------------------------------------------
    def _metric_updates(self, counters: dict[str, dict[str, float]], day: str) -> list[dict[str, Any]]:
        """One UpdateItem (ADD) per metric type with a non-zero amount."""
        updates = []
        for metric_type, fields in counters.items():
            if metric_type not in METRIC_TYPES:
                raise ValueError(f"unknown metric_type {metric_type!r}")
            fields = {k: v for k, v in fields.items() if v}
            if not fields:
                continue
            updates.append({
                "TableName": self.settings.metrics_table,
                "Key": _serialize({"date": day, "metric_type": metric_type}),
                "UpdateExpression": "ADD " + ", ".join(f"#f{i} :v{i}" for i in range(len(fields))),
                "ExpressionAttributeNames": {f"#f{i}": k for i, k in enumerate(fields)},
                "ExpressionAttributeValues": {f":v{i}": _ser.serialize(_to_ddb(v))
                                              for i, v in enumerate(fields.values())},
            })
        return updates

    def add_metrics_once(self, document_id: str, version: str, counters: dict[str, dict[str, float]], *,
                         marker: str, token: str | None = None, date: str | None = None) -> bool:
        """Add `counters` to the day's items unless this control item's `marker` says they
        were added already: the marker and the counters are written in one transaction, so
        a retried step (the first attempt died after or during this call) counts exactly once.

        token None: once per (document, version). A token (e.g. the execution ARN): once
        per token. True when counted now, False when counted before."""
        names = {"#m": marker}
        values: dict[str, Any] = {":t": {"S": now_iso() if token is None else token}}
        cond = "attribute_exists(document_id) AND " + (
            "attribute_not_exists(#m)" if token is None else "(attribute_not_exists(#m) OR #m <> :t)")
        items: list[dict[str, Any]] = [{"Update": {
            "TableName": self.settings.control_table,
            "Key": _serialize({"document_id": document_id, "processing_version": version}),
            "UpdateExpression": "SET #m = :t",
            "ConditionExpression": cond,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }}]
        items += [{"Update": u} for u in self._metric_updates(counters, date or today())]
        try:
            self.ddb.transact_write_items(TransactItems=items)
        except ClientError as err:
            _throttle_guard(err)
            if err.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = [r.get("Code", "None") for r in err.response.get("CancellationReasons", [])]
            if reasons[:1] == ["ConditionalCheckFailed"]:
                return False  # counted by an earlier attempt
            if any(r in TRANSIENT_CANCELLATIONS for r in reasons):
                raise StoreThrottled(f"DynamoDB cancelled the metrics transaction: {reasons}") from err
            raise
        return True

    def metrics(self, date: str | None = None) -> dict[str, Item]:
        resp = self.ddb.query(
            TableName=self.settings.metrics_table,
            KeyConditionExpression="#d = :d",
            ExpressionAttributeNames={"#d": "date"},
            ExpressionAttributeValues={":d": {"S": date or today()}},
        )
        out = {}
        for raw in resp.get("Items", []):
            item = _deserialize(raw)
            out[item.pop("metric_type")] = {k: v for k, v in item.items() if k != "date"}
        return out
