"""Query (Function URL, AWS_IAM auth): the chunks nearest to a text in the deployed index.

Request:  POST {"text": str, "top_k": int (default 5, at most 100),
                "mode": "vector" | "keyword" | "hybrid" (optional; default QUERY_MODE),
                "filter": {field: value, [values] or {operator: value}} (optional),
                "where": ["KEY=VALUE", ...] (optional; `docpipe query --where`'s items)}
          (ray_jobs/search.py: search, check, parse_where)
Response: 200 {"hits": [{"id", "score", "mode", "ranks", "document_id", "s3_key", "page_start",
                         "page_end", "locator", "text", "char_start", "char_end", ...,
                         "match": {"sentence", "char_start", "char_end"}}]}, best first;
          400 {"error"} for a request it cannot answer; 405 for a method other than POST;
          500 {"error"} otherwise.

Runs from the Ray image (lancedb, pyarrow and the model exceed a zip's 250 MB), inside the
cluster's VPC with the vector store's EFS access point mounted read-only
(infra/ray-cluster.yaml, QueryFunction). Its code is the image's, so it lives here, not in
functions/ (the zip packages `sam build` makes, which cannot carry the Ray side).
"""

import base64
import json
from typing import Any

from ray_jobs.log import logger
from ray_jobs.search import DEFAULT_TOP_K, BadQuery, request_filter, search


def lambda_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    method = event.get("requestContext", {}).get("http", {}).get("method", "POST")
    if method != "POST":
        return _response(405, {"error": 'POST a JSON body {"text": ..., "top_k": ..., "mode": ..., "where": [...]}'})
    try:
        request = _json_body(event)
        where = request_filter(request.get("filter"), request.get("where"))
        hits = search(request.get("text"), request.get("top_k", DEFAULT_TOP_K), where, request.get("mode"))
    except BadQuery as e:
        return _response(400, {"error": str(e)})
    except Exception:  # the caller gets a short answer, the log the trace
        logger.exception("query failed")
        return _response(500, {"error": "the query failed; see the Query function's log"})
    # Never the text: queries can be as confidential as the documents.
    logger.info("query", extra={"top_k": request.get("top_k", DEFAULT_TOP_K), "mode": request.get("mode"),
                                "hits": len(hits)})
    return _response(200, {"hits": hits})


def _json_body(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body") or ""
    try:
        body = json.loads(base64.b64decode(raw).decode("utf-8") if event.get("isBase64Encoded") else raw)
    except ValueError as e:  # binascii.Error and UnicodeDecodeError included
        raise BadQuery(f"the body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadQuery('the body must be a JSON object {"text": ...}')
    return body


def _response(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(payload, default=str)}
