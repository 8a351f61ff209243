"""The console's Flask app: routes parse the request, call `data.Console`, render.

Pages and JSON endpoints are those of docs/console.md; templates autoescape everything
but the execution graph, an SVG our renderer builds with every text escaped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError
from flask import Flask, abort, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from docpipe_local.console.data import STATUSES, Conflict, Console, NotFound

TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")


LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


def create_app(state: dict, client_factory: Any = None, *, bind_host: str = "127.0.0.1") -> Flask:
    """The console for the local stack described by `state` (`stack.running_state()`).
    `client_factory(service)` makes the boto3 clients (default: `stack.client`);
    `bind_host` is the address served on: other Host headers are refused."""
    if client_factory is None:
        from docpipe_local import stack

        def client_factory(service: str) -> Any:
            return stack.client(service, state)

    app = Flask(__name__)
    console = Console(state, client_factory)
    app.extensions["docpipe_console"] = console

    @app.before_request
    def _known_host():
        # A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) sends
        # its own name as Host: it gets nothing. Bound to every address, names are unknown.
        if bind_host not in ANY_ADDRESS:
            name = urlsplit(f"//{request.host}").hostname or ""
            if name not in (*LOOPBACK, bind_host.strip("[]")):
                abort(403, f"unexpected Host {request.host!r}: open the console at its own address")

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"endpoint": state.get("endpoint", ""), "statuses": STATUSES, "terminal": TERMINAL}

    # ------------------------------------------------------------------ executions

    def _list_args() -> tuple[str | None, str, int]:
        status = request.args.get("status") or None
        status = status if status in STATUSES else None
        q = (request.args.get("q") or "").strip()
        try:
            page = int(request.args.get("page", "1"))
        except ValueError:
            page = 1
        return status, q, page

    def _page_url(page: int, status: str | None, q: str) -> str:
        params = {k: v for k, v in (("status", status), ("q", q), ("page", page)) if v}
        return url_for("executions") + ("?" + urlencode(params) if params else "")

    @app.get("/")
    def executions():
        status, q, page = _list_args()
        listing = console.executions(status, q, page)
        return render_template("executions.html", listing=listing, status=status, q=q,
                               prev_url=_page_url(listing["page"] - 1, status, q) if listing["page"] > 1 else "",
                               next_url=_page_url(listing["page"] + 1, status, q)
                               if listing["page"] < listing["pages"] else "")

    @app.get("/api/executions")
    def executions_api():
        status, q, page = _list_args()
        listing = console.executions(status, q, page)
        return jsonify(counts=listing["counts"], total=listing["total"], page=listing["page"],
                       pages=listing["pages"], executions=[r.to_json() for r in listing["rows"]],
                       tbody=render_template("_execution_rows.html", rows=listing["rows"]))

    @app.get("/executions/<path:arn>")
    def execution(arn: str):
        return render_template("execution.html", ex=console.execution(arn))

    @app.get("/api/executions/<path:arn>")
    def execution_api(arn: str):
        ex = console.execution(arn)
        return jsonify(status=ex["status"], duration=ex["duration"], svg=ex["svg"], output=ex["output"],
                       states_html=render_template("_state_rows.html", states=ex["states"]))

    # ------------------------------------------------------------------ documents

    @app.get("/documents/<document_id>")
    def document(document_id: str):
        doc = console.document(document_id)
        lines, log_note = console.ray_log_lines(document_id)
        return render_template("document.html", doc=doc, log_lines=lines, log_note=log_note)

    @app.post("/documents/<document_id>/run-again")
    def run_again(document_id: str):
        if not _same_origin():
            abort(403, "cross-site request refused: run again only from the console's own page")
        arn = console.run_again(document_id)
        return redirect(url_for("execution", arn=arn), code=303)

    def _same_origin() -> bool:
        """Origin (else Referer), when the browser sends one, names this console."""
        origin = request.headers.get("Origin")
        if origin is None:
            origin = request.headers.get("Referer")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.host

    # ------------------------------------------------------------------ search

    @app.get("/search")
    def search():
        from ray_jobs.search import BadQuery

        q = request.args.get("q")
        k_arg = request.args.get("k", "5")
        hits, message, code = [], "", 200
        if q is not None:
            try:
                hits = console.search(q, int(k_arg) if k_arg.lstrip("-").isdigit() else k_arg)
            except BadQuery as err:
                message, code = str(err), 400
            except NotFound as err:
                message, code = str(err), 404
        page = render_template("search.html", q=q or "", k=k_arg, hits=hits, message=message,
                               searched=q is not None)
        return page, code

    @app.get("/healthz")
    def healthz():
        return "ok", 200, {"Content-Type": "text/plain; charset=utf-8"}

    # ------------------------------------------------------------------ errors

    def _error(code: int, title: str, message: str, hint: str = ""):
        if request.path.startswith("/api/"):
            return jsonify(error=title, message=message), code
        return render_template("error.html", code=code, title=title, message=message, hint=hint), code

    @app.errorhandler(NotFound)
    def _not_found(err: NotFound):
        return _error(404, "Not found", str(err))

    @app.errorhandler(Conflict)
    def _conflict(err: Conflict):
        return _error(409, "Cannot do that now", str(err))

    @app.errorhandler(BotoConnectionError)
    @app.errorhandler(HTTPClientError)
    def _aws_down(err: Exception):
        return _error(503, "The local stack is not running",
                      f"AWS at {state.get('endpoint', '?')} does not answer ({err}).",
                      "Start it with `docpipe stack start`, then reload this page.")

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        return _error(err.code or 500, err.name, err.description or "")

    return app
