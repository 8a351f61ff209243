"""A local server that speaks Pinecone's data-plane REST API as the pinecone 10.2 SDK
calls it (``Pinecone(api_key=...).Index(host="http://127.0.0.1:PORT")``).

Endpoints (paths and bodies read from the SDK's ``pinecone/index/__init__.py``):
- ``POST /vectors/upsert``  {"vectors": [{"id", "values", "sparseValues"?, "metadata"?}],
  "namespace"?} -> {"upsertedCount"}; 413 for a body over 2 MB (``max_request_bytes``; the
  SDK maps it to PayloadTooLargeError), 400 for > 1000 vectors, metadata > 40 KB, a
  dimension mismatch, an all-zero dense vector, a null metadata value or a list that is
  not all strings, and sparse values with unequal lengths, repeated or non-uint32
  indices or more than 1000 non-zero values.
- ``POST /query``  {"topK", "vector" | "id", "sparseVector"?, "namespace"?, "filter"?,
  "includeMetadata", "includeValues"} -> {"matches": [{"id", "score", "values",
  "metadata"?}], "namespace", "usage": {"readUnits"}}; the score is the index's ``metric``
  (``cosine``, the default, or ``dotproduct``); a ``sparseVector`` is refused (400) unless
  the metric is ``dotproduct``, where it adds the sparse dot product to the dense one (a
  hybrid query; records without sparse values add 0). Filter operators $eq $ne $in $nin $gt
  $gte $lt $lte $exists $and $or, and the implicit ``{"field": value}`` equality; on a list
  field $eq means "contains", $in "contains one of", $ne/$nin their negations; ranges
  compare numbers only.
- ``POST /vectors/delete``  {"ids"? (<= 1000), "deleteAll"?, "filter"?, "namespace"}
  -> {}; a filter is refused as on serverless indexes.
- ``GET /vectors/list``  ?namespace&prefix&limit(<=100, default 100)&paginationToken
  -> {"vectors": [{"id"}], "pagination": {"next"}?, "namespace", "usage"}; ids sorted.
- ``POST /describe_index_stats`` -> {"namespaces": {name: {"vectorCount"}}, "dimension",
  "indexFullness", "totalVectorCount", "metric", "vectorType"}; the default namespace
  appears as ``__default__``; ``metric`` is the one the server was made with.
- ``GET /vectors/fetch``  ?ids=..&ids=..&namespace -> {"vectors": {id: {...}},
  "namespace", "usage"}.
Errors use Pinecone's shape ``{"code": <grpc code>, "message", "details": []}``.

Fault injection: ``fail_next(n, status=429)`` answers the next n requests with that
status; ``fail_upserts_after(k)`` lets k more upserts through, then fails every upsert
(an interrupted load) until ``clear_faults()``. Injected failures carry
``Retry-After: 0`` by default so the SDK's own transport retries do not sleep.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from . import FakeHTTPServer

MAX_UPSERT_VECTORS = 1000
MAX_REQUEST_BYTES = 2 * 1000 * 1000  # stricter of the two readings of "2 MB"
MAX_METADATA_BYTES = 40 * 1024
MAX_IDS_PER_DELETE = 1000
MAX_IDS_PER_FETCH = 1000
MAX_SPARSE_VALUES = 1000
METRICS = ("cosine", "dotproduct")
LIST_LIMIT_MAX = 100
DEFAULT_NAMESPACE = "__default__"

_GRPC = {400: 3, 401: 16, 404: 5, 413: 3, 429: 8, 500: 13, 503: 14}


def _err(status: int, message: str, headers: dict | None = None):
    return status, headers or {}, {"code": _GRPC.get(status, 2), "message": message, "details": []}


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _sparse_dot(query: dict, stored: dict | None) -> float:
    if not stored:
        return 0.0
    weights = dict(zip(stored["indices"], stored["values"], strict=True))
    return sum(v * weights.get(i, 0.0) for i, v in zip(query["indices"], query["values"], strict=True))


def _sparse_error(sparse: Any, what: str) -> str | None:
    if not isinstance(sparse, dict) or not isinstance(sparse.get("indices"), list) \
            or not isinstance(sparse.get("values"), list):
        return f"{what}: sparse values must have indices and values lists"
    indices, values = sparse["indices"], sparse["values"]
    if len(indices) != len(values):
        return f"{what}: sparse indices and values must have the same length"
    if len(indices) > MAX_SPARSE_VALUES:
        return f"{what}: sparse vector has {len(indices)} non-zero values, more than {MAX_SPARSE_VALUES}"
    if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < 2**32 for i in indices):
        return f"{what}: sparse indices must be uint32"
    if len(set(indices)) != len(indices):
        return f"{what}: sparse indices must be unique"
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
        return f"{what}: sparse values must be numbers"
    return None


def _matches(meta: dict, flt: dict | None) -> bool:
    if not flt:
        return True
    for key, cond in flt.items():
        if key == "$and":
            if not all(_matches(meta, sub) for sub in cond):
                return False
            continue
        if key == "$or":
            if not any(_matches(meta, sub) for sub in cond):
                return False
            continue
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        present = key in meta
        value = meta.get(key)
        for op, arg in cond.items():
            if op == "$exists":
                ok = present == bool(arg)
            elif not present:
                ok = op in ("$ne", "$nin")
            elif op == "$eq":
                ok = arg in value if isinstance(value, list) else value == arg
            elif op == "$ne":
                ok = arg not in value if isinstance(value, list) else value != arg
            elif op in ("$in", "$nin") and not isinstance(arg, list):
                raise ValueError(f"{op} requires an array")
            elif op == "$in":
                ok = any(v in arg for v in value) if isinstance(value, list) else value in arg
            elif op == "$nin":
                ok = not any(v in arg for v in value) if isinstance(value, list) else value not in arg
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    ok = False
                else:
                    ok = {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op]
            else:
                raise ValueError(f"unsupported filter operator {op}")
            if not ok:
                return False
    return True


class FakePineconeServer(FakeHTTPServer):
    def __init__(self, api_key: str | None = None, dimension: int | None = None, metric: str = "cosine") -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        self.metric = metric
        self.api_key = api_key  # None: accept any Api-Key
        self.dimension = dimension  # None: fixed by the first upsert
        self.max_request_bytes = MAX_REQUEST_BYTES  # lower it to provoke a 413
        self.namespaces: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self._fail_next: list[list] = []  # [remaining, status, headers]
        self._upserts_left: int | None = None
        self._upsert_fault: tuple[int, dict] = (503, {})

    # -- scripting ----------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 429, retry_after: str | None = "0") -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self.lock:
            self._fail_next.append([n, status, headers])

    def fail_upserts_after(self, k: int, status: int = 503, retry_after: str | None = "0") -> None:
        with self.lock:
            self._upserts_left = k
            self._upsert_fault = (status, {"Retry-After": retry_after} if retry_after is not None else {})

    def clear_faults(self) -> None:
        with self.lock:
            self._fail_next.clear()
            self._upserts_left = None

    def ids(self, namespace: str = "") -> list[str]:
        with self.lock:
            return sorted(self.namespaces.get(namespace or DEFAULT_NAMESPACE, {}))

    def requests_to(self, path: str, status: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path and (status is None or r["status"] == status)]

    # -- HTTP ---------------------------------------------------------------------------
    def handle(self, method, path, query, body, headers):
        record: dict[str, Any] = {"method": method, "path": path, "bytes": len(body), "status": None}
        with self.lock:
            self.requests.append(record)
            status, out_headers, payload = self._dispatch(method, path, query, body, headers, record)
            record["status"] = status
            return status, out_headers, payload

    def _dispatch(self, method, path, query, body, headers, record):
        if self.api_key is not None and headers.get("Api-Key") != self.api_key:
            return _err(401, "Invalid API Key")
        for fault in self._fail_next:
            if fault[0] > 0:
                fault[0] -= 1
                return _err(fault[1], "Too many requests" if fault[1] == 429 else "Internal error", dict(fault[2]))
        route = (method, path)
        if route == ("POST", "/vectors/upsert"):
            if self._upserts_left is not None:
                if self._upserts_left <= 0:
                    status, hdrs = self._upsert_fault
                    return _err(status, "Service unavailable", dict(hdrs))
                self._upserts_left -= 1
            if len(body) > self.max_request_bytes:
                return _err(413, f"Request size {len(body)} bytes exceeds the maximum supported size of "
                                 f"{self.max_request_bytes} bytes")
            return self._upsert(json.loads(body), record)
        if route == ("POST", "/query"):
            return self._query(json.loads(body or b"{}"))
        if route == ("POST", "/vectors/delete"):
            return self._delete(json.loads(body or b"{}"), record)
        if route == ("GET", "/vectors/list"):
            return self._list(query)
        if route == ("POST", "/describe_index_stats"):
            return self._stats(json.loads(body or b"{}"))
        if route == ("GET", "/vectors/fetch"):
            return self._fetch(query)
        return _err(404, f"Not found: {method} {path}")

    @staticmethod
    def _ns(name: str | None) -> str:
        return name or DEFAULT_NAMESPACE

    def _upsert(self, req: dict, record: dict):
        vectors = req.get("vectors") or []
        record["count"] = len(vectors)
        if len(vectors) > MAX_UPSERT_VECTORS:
            return _err(400, f"Batch size exceeds {MAX_UPSERT_VECTORS}. The batch size for upsert requests is "
                             f"limited to {MAX_UPSERT_VECTORS} vectors")
        checked = []
        for v in vectors:
            vid, values, meta = v.get("id"), v.get("values"), v.get("metadata")
            if not isinstance(vid, str) or not vid:
                return _err(400, "Vector ID must not be empty")
            if not isinstance(values, list) or not values:
                return _err(400, f"Vector {vid} has no dense values")
            dim = self.dimension or len(values)
            if len(values) != dim:
                return _err(400, f"Vector dimension {len(values)} does not match the dimension of the index {dim}")
            if not any(values):
                return _err(400, f"Dense vectors must contain at least one non-zero value. Vector ID {vid!r} "
                                 "contains only zeros")
            sparse = v.get("sparseValues")
            if sparse is not None:
                problem = _sparse_error(sparse, f"Vector {vid}")
                if problem:
                    return _err(400, problem)
            if meta is not None:
                size = len(json.dumps(meta, separators=(",", ":")).encode())
                if size > MAX_METADATA_BYTES:
                    return _err(400, f"Metadata size is {size} bytes, which exceeds the limit of "
                                     f"{MAX_METADATA_BYTES} bytes per vector")
                for key, value in meta.items():
                    if value is None or isinstance(value, dict) or (
                            isinstance(value, list) and not all(isinstance(x, str) for x in value)):
                        return _err(400, f"Metadata value for field {key!r} must be a string, number, boolean or list of strings")
            checked.append((vid, values, meta, sparse))
        if checked and self.dimension is None:
            self.dimension = len(checked[0][1])
        ns = self.namespaces.setdefault(self._ns(req.get("namespace")), {})
        for vid, values, meta, sparse in checked:
            ns[vid] = {"id": vid, "values": [float(x) for x in values], "metadata": meta,
                       "sparseValues": None if sparse is None else {"indices": list(sparse["indices"]),
                                                                     "values": [float(x) for x in sparse["values"]]}}
        return 200, {}, {"upsertedCount": len(checked)}

    def _query(self, req: dict):
        top_k = req.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= 10_000:
            return _err(400, "topK must be between 1 and 10000")
        ns = self.namespaces.get(self._ns(req.get("namespace")), {})
        vector = req.get("vector")
        if vector is None and req.get("id") is not None:
            stored = ns.get(req["id"])
            vector = stored["values"] if stored else None
        if vector is None:
            return _err(400, "No query provided")
        if self.dimension is not None and len(vector) != self.dimension:
            return _err(400, f"Query vector dimension {len(vector)} does not match the dimension of the index {self.dimension}")
        sparse = req.get("sparseVector")
        if sparse is not None:
            if self.metric != "dotproduct":
                return _err(400, f"Cannot query index with metric {self.metric} using sparse values. "
                                 "Only indexes with dotproduct metric support sparse values")
            problem = _sparse_error(sparse, "Query")
            if problem:
                return _err(400, problem)
        try:
            candidates = [r for r in ns.values() if _matches(r["metadata"] or {}, req.get("filter"))]
        except ValueError as exc:
            return _err(400, str(exc))

        def score(r: dict) -> float:
            if self.metric == "cosine":
                return _cosine(vector, r["values"])
            return _dot(vector, r["values"]) + (_sparse_dot(sparse, r["sparseValues"]) if sparse else 0.0)

        scored = sorted(((score(r), r) for r in candidates), key=lambda sr: (-sr[0], sr[1]["id"]))
        matches = []
        for score, r in scored[:top_k]:
            m: dict[str, Any] = {"id": r["id"], "score": score, "values": r["values"] if req.get("includeValues") else []}
            if req.get("includeMetadata") and r["metadata"] is not None:
                m["metadata"] = r["metadata"]
            matches.append(m)
        return 200, {}, {"matches": matches, "namespace": req.get("namespace") or "", "usage": {"readUnits": 5}}

    def _delete(self, req: dict, record: dict):
        ns_name = self._ns(req.get("namespace"))
        if req.get("filter") is not None:
            return _err(400, "Serverless and Starter indexes do not support deleting with metadata filtering")
        if req.get("deleteAll"):
            self.namespaces.pop(ns_name, None)
            return 200, {}, {}
        ids = req.get("ids") or []
        record["count"] = len(ids)
        if len(ids) > MAX_IDS_PER_DELETE:
            return _err(400, f"Delete request exceeds the maximum of {MAX_IDS_PER_DELETE} ids")
        ns = self.namespaces.get(ns_name, {})
        for vid in ids:
            ns.pop(vid, None)
        return 200, {}, {}

    def _list(self, query: dict):
        ns_name = (query.get("namespace") or [""])[0]
        prefix = (query.get("prefix") or [""])[0]
        raw_limit = (query.get("limit") or ["100"])[0]
        try:
            limit = int(raw_limit)
        except ValueError:
            return _err(400, "limit must be an integer")
        if not 1 <= limit <= LIST_LIMIT_MAX:
            return _err(400, f"limit must be between 1 and {LIST_LIMIT_MAX}")
        token = (query.get("paginationToken") or [None])[0]
        after = base64.urlsafe_b64decode(token.encode()).decode() if token else None
        ids = [i for i in sorted(self.namespaces.get(self._ns(ns_name), {})) if i.startswith(prefix)]
        if after is not None:
            ids = [i for i in ids if i > after]
        page = ids[:limit]
        out: dict[str, Any] = {"vectors": [{"id": i} for i in page], "namespace": ns_name, "usage": {"readUnits": 1}}
        if len(ids) > limit:
            out["pagination"] = {"next": base64.urlsafe_b64encode(page[-1].encode()).decode()}
        return 200, {}, out

    def _stats(self, req: dict):
        if req.get("filter"):
            return _err(400, "Serverless and Starter indexes do not support describing index stats with metadata filtering")
        namespaces = {name: {"vectorCount": len(v)} for name, v in self.namespaces.items() if v}
        return 200, {}, {
            "namespaces": namespaces,
            "dimension": self.dimension or 0,
            "indexFullness": 0.0,
            "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
            "metric": self.metric,
            "vectorType": "dense",
        }

    def _fetch(self, query: dict):
        ids = query.get("ids") or []
        if len(ids) > MAX_IDS_PER_FETCH:
            return _err(400, f"Fetch request exceeds the maximum of {MAX_IDS_PER_FETCH} ids")
        ns_name = (query.get("namespace") or [""])[0]
        ns = self.namespaces.get(self._ns(ns_name), {})
        vectors = {i: {k: v for k, v in ns[i].items() if v is not None} for i in ids if i in ns}
        return 200, {}, {"vectors": vectors, "namespace": ns_name, "usage": {"readUnits": 1}}
