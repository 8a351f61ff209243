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
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from docpipe import aws
from docpipe.config import Settings
from docpipe.errors import StoreThrottled
from docpipe.timeutil import epoch_in_days, now_iso, today

STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "PARTIAL", "FAILED", "SKIPPED")
DONE_STATUSES = ("COMPLETED", "PARTIAL")
METRIC_TYPES = ("documents", "pages", "chunks", "tokens", "costs", "failures")

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


def _serialize(item: dict) -> dict:
    return {k: _ser.serialize(_to_ddb(v)) for k, v in item.items() if v is not None}


def _deserialize(item: dict) -> dict:
    return plain({k: _de.deserialize(v) for k, v in item.items()})


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
    def get(self, document_id: str, version: str) -> dict | None:
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

    def versions(self, document_id: str) -> list[dict]:
        items: list[dict] = []
        kwargs = {
            "TableName": self.settings.control_table,
            "KeyConditionExpression": "document_id = :d",
            "ExpressionAttributeValues": {":d": {"S": document_id}},
        }
        while True:
            resp = self.ddb.query(**kwargs)
            items += [_deserialize(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def create(self, item: dict) -> bool:
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
        fields: dict,
        *,
        action: str,
        expect_status: tuple[str, ...] | None = None,
        detail: dict | None = None,
    ) -> dict:
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
              to_status: str | None, detail: dict | None = None) -> None:
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

    def audit_trail(self, document_id: str) -> list[dict]:
        resp = self.ddb.query(
            TableName=self.settings.audit_table,
            KeyConditionExpression="document_id = :d",
            ExpressionAttributeValues={":d": {"S": document_id}},
        )
        return [_deserialize(i) for i in resp.get("Items", [])]

    # --- daily metrics ---------------------------------------------------------------
    def add_metrics(self, counters: dict[str, dict[str, float]], date: str | None = None) -> None:
        """counters: {metric_type: {field: amount}}, added atomically to today's items."""
        day = date or today()
        for metric_type, fields in counters.items():
            if metric_type not in METRIC_TYPES:
                raise ValueError(f"unknown metric_type {metric_type!r}")
            fields = {k: v for k, v in fields.items() if v}
            if not fields:
                continue
            names = {f"#f{i}": k for i, k in enumerate(fields)}
            values = {f":v{i}": _ser.serialize(_to_ddb(v)) for i, v in enumerate(fields.values())}
            try:
                self.ddb.update_item(
                    TableName=self.settings.metrics_table,
                    Key=_serialize({"date": day, "metric_type": metric_type}),
                    UpdateExpression="ADD " + ", ".join(f"#f{i} :v{i}" for i in range(len(fields))),
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
            except ClientError as err:
                _throttle_guard(err)
                raise

    def metrics(self, date: str | None = None) -> dict[str, dict]:
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
