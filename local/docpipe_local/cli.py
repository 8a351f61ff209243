"""`docpipe`: the local stack and the main job, from the command line.

    docpipe stack start|status|stop      the local AWS (moto) + Ray head
    docpipe ingest PATH...               upload documents, follow them, print a summary
    docpipe backfill [--prefix P]        re-ingest what is already in the bucket
    docpipe status [DOCUMENT]            control item and audit trail
    docpipe query "TEXT" [--mode M]      top chunks: document, pages, matched sentence
    docpipe graph EXECUTION              execution graph as SVG + HTML
    docpipe invoke FUNCTION -e EVENT     one function in-process (like `sam local invoke`)
    docpipe events                       events/*.json filled in for the running stack
    docpipe console [--port N]           the web console: executions, documents, search
    docpipe demo                         start the stack, ingest the samples, query them

Exit codes: 0 success, 1 some document failed / nothing found, 2 usage or stack
problem, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from docpipe_local import paths
from docpipe_local import stack as stackmod
from docpipe_local.console.command import console as console_command  # `console` is the rich Console here

console = Console(stderr=False)
err = Console(stderr=True)
STATUS_STYLE = {"COMPLETED": "green", "PARTIAL": "yellow", "FAILED": "red", "SKIPPED": "grey50",
                "PENDING": "cyan", "PROCESSING": "blue", "UPLOADING": "cyan", "DUPLICATE": "green"}


def _fail(message: str, code: int = 2):
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="docpipe", prog_name="docpipe")
def main():
    """docpipe on your machine: the same template, ASL, handlers and Ray jobs as in AWS,
    on a local stack (moto + a Ray head). State lives in $DOCPIPE_HOME (default .docpipe/)."""


# ------------------------------------------------------------------------- stack
@main.group()
def stack():
    """Start, inspect or stop the local stack."""


@stack.command("start")
@click.option("--port", default=stackmod.DEFAULT_MOTO_PORT, show_default=True, help="local AWS endpoint port")
@click.option("--ray-port", default=stackmod.DEFAULT_RAY_DASHBOARD_PORT, show_default=True, help="Ray dashboard / Jobs API port")
@click.option("--gcs-port", default=stackmod.DEFAULT_RAY_GCS_PORT, show_default=True, help="Ray GCS port")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="template parameter override (repeatable)")
def stack_start(port, ray_port, gcs_port, params):
    """Start moto (with Step Functions execution) and a Ray head, and create every
    resource template.yaml declares."""
    overrides = {}
    for p in params:
        if "=" not in p:
            _fail(f"--param wants KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        overrides[k] = v
    try:
        state = stackmod.start(port, ray_port, gcs_port, overrides)
    except stackmod.StackError as e:
        _fail(str(e))
    _print_outputs(state)


def _print_outputs(state):
    t = Table(title="local stack", show_header=False)
    t.add_row("AWS endpoint", state["endpoint"])
    t.add_row("Ray dashboard", state["ray_url"])
    for k, v in state.get("outputs", {}).items():
        t.add_row(k, str(v))
    t.add_row("env-vars file", state.get("env_vars", ""))
    console.print(t)
    console.print(f"use it with: export AWS_ENDPOINT_URL={state['endpoint']} "
                  "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1")


@stack.command("status")
def stack_status():
    """Show whether the local stack runs, and its endpoints and resources."""
    st = stackmod.status()
    if not st["running"]:
        console.print("[yellow]not running[/yellow]" if not st.get("aws") else
                      f"[red]partly running[/red]: {json.dumps(st, default=str)}")
        sys.exit(1)
    console.print(f"[green]running[/green]: AWS {st['aws']['endpoint']} (pid {st['aws']['pid']}), "
                  f"Ray {st['ray']['url']} (pid {st['ray']['pid']})")
    for k, v in st["outputs"].items():
        console.print(f"  {k}: {v}")
    console.print(f"  env-vars file (sam local invoke / docpipe invoke --env-vars): {st.get('env_vars')}",
                  soft_wrap=True)  # a wrapped path cannot be copied
    table = Table(title="stage services (Ray jobs fed by the stage queues)", title_justify="left")
    for col in ("stage", "queue waiting", "held by a service", "service", "status"):
        table.add_column(col)
    for stage, q in st.get("queues", {}).items():
        mine = [s for s in st.get("services", []) if s["stage"] == stage]
        newest = mine[0] if mine else {"submission_id": "-", "status": "none yet"}
        table.add_row(stage, str(q["visible"]), str(q["held"]), newest["submission_id"], newest["status"])
    console.print(table)


@stack.command("stop")
def stack_stop():
    """Stop exactly the processes `stack start` started."""
    stackmod.stop(echo=console.print)


# ------------------------------------------------------------------------- ingest
def _stage_durations(docs) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for d in docs:
        for k, v in (d.item.get("durations") or {}).items():
            out.setdefault(k.removesuffix("_s"), []).append(float(v))
    return out


def _progress_table(docs, started) -> Table:
    t = Table(title=f"docpipe ingest — {sum(d.done for d in docs)}/{len(docs)} done, "
                    f"{time.monotonic() - started:.0f} s")
    for col in ("document", "status", "stage", "pages", "chunks", "vectors", "error", "time"):
        t.add_column(col)
    for d in docs:
        it = d.item
        elapsed = (d.finished or time.monotonic()) - d.started
        t.add_row(d.key.removeprefix("input/"), f"[{STATUS_STYLE.get(d.status, 'white')}]{d.status}[/]",
                  d.stage, str(it.get("pages", "")), str(it.get("chunks", "")), str(it.get("vectors", "")),
                  str(it.get("error_code", "") if d.status in ("FAILED", "SKIPPED") else ""), f"{elapsed:.1f}s")
    return t


def _summary(docs, started) -> Table:
    from collections import Counter

    t = Table()
    t.add_column("what")
    t.add_column("value", justify="right")
    for status, n in sorted(Counter(d.status for d in docs).items()):
        t.add_row(f"documents {status}", str(n))
    for field in ("pages", "chunks", "vectors"):
        t.add_row(field, str(sum(int(d.item.get(field, 0) or 0) for d in docs)))
    for stage, values in _stage_durations(docs).items():
        t.add_row(f"time {stage} (sum)", f"{sum(values):.2f} s")
    t.add_row("wall time", f"{time.monotonic() - started:.1f} s")
    return t


def _failures(docs) -> Table | None:
    """Each failed document with its code and its whole message (what happened, what to
    do), wrapped to the terminal's width, never cut."""
    failed = [d for d in docs if d.status == "FAILED"]
    if not failed:
        return None
    t = Table(title=f"failed documents ({len(failed)})", title_justify="left", show_lines=True)
    t.add_column("document", overflow="fold")
    t.add_column("code", style="red", no_wrap=True)
    t.add_column("what happened — what to do", overflow="fold")
    for d in failed:
        t.add_row(d.key, str(d.item.get("error_code", "")), str(d.item.get("error_message") or ""))
    return t


def print_summary(out: Console, docs, started) -> None:
    """Below the live table, set apart by a blank line and a rule: totals, then failures."""
    out.print()
    out.rule("[bold]summary[/bold]")
    out.print(_summary(docs, started))
    failures = _failures(docs)
    if failures is not None:
        out.print()
        out.print(failures)


def run_ingest(paths_in, prefix="input/", timeout=900.0, quiet=False) -> list:
    from docpipe_local import ingest

    state = stackmod.running_state()
    bucket = state["outputs"]["DocumentBucketName"]
    table = state["outputs"]["ControlTableName"]
    s3, ddb = stackmod.client("s3", state), stackmod.client("dynamodb", state)
    files = ingest.find_documents(list(paths_in))
    if not files:
        _fail("no PDF files found in the given paths", 1)
    try:
        docs = ingest.plan(files, bucket, prefix, state.get("parameters", {}).get("PipelineVersion", "v1"))
    except ValueError as e:  # two arguments would upload to the same key
        _fail(str(e))
    started = time.monotonic()
    live_console = Console(quiet=True) if quiet else console
    with Live(_progress_table(docs, started), console=live_console, refresh_per_second=4,
              transient=False) as live:
        for d in ingest.upload_order(docs):  # the table keeps the files' order
            if ingest.already_there(s3, bucket, d):
                d.status = "PENDING"  # resume: follow what the earlier run started
            else:
                ingest.upload(s3, bucket, d)
                d.status = "PENDING"
            live.update(_progress_table(docs, started))
        deadline = time.monotonic() + timeout
        while not all(d.done for d in docs):
            if time.monotonic() > deadline:
                err.print(f"[yellow]timed out after {timeout:.0f} s; documents keep processing — "
                          "re-run the same command to follow them[/yellow]")
                break
            ingest.refresh_all(ddb, table, docs)
            live.update(_progress_table(docs, started))
            time.sleep(0.5)
    if not live_console.is_terminal:
        live_console.line()  # Live ends its table's last line itself only on a terminal
    if not quiet:
        print_summary(console, docs, started)
    return docs


@main.command()
@click.argument("paths_in", nargs=-1, required=True, type=click.Path(exists=True), metavar="PATH...")
@click.option("--prefix", default="input/", show_default=True, help="S3 prefix to upload under")
@click.option("--timeout", default=900.0, show_default=True, help="seconds to follow before giving up")
def ingest(paths_in, prefix, timeout):
    """Upload documents (files or folders: PDF, DOCX, HTML, Markdown, text) to the local
    stack and follow every document to a terminal status, with a live table per document
    and stage and a summary (each failure with its code and what to do). A folder
    contributes the files of those types; a file named explicitly is uploaded whatever
    its type (the pipeline records an unsupported one SKIPPED, with the reason).

    A file is uploaded as PREFIX/<its name>; a folder keeps its structure, its own name
    included: `docpipe ingest reports/` uploads reports/2023/q1.pdf as
    input/reports/2023/q1.pdf. Two arguments that would upload to the same key are an
    error.

    Ctrl-C stops following (uploaded documents keep processing); running the same
    command again resumes without uploading or processing anything twice."""
    try:
        docs = run_ingest(paths_in, prefix, timeout)
    except stackmod.StackError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: uploaded documents keep processing; re-run to follow them[/yellow]")
        sys.exit(130)
    sys.exit(1 if any(d.status == "FAILED" for d in docs) else 0)


# ------------------------------------------------------------------------- backfill
@main.command()
@click.option("--prefix", default="input/", show_default=True, help="S3 prefix to (re)ingest")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="documents in flight at once (keep it near the Ray job slots)")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds to follow before giving up")
def backfill(prefix, concurrency, timeout):
    """Ingest every object already under PREFIX through the Backfill state machine
    (a distributed Map over the S3 listing, at a bounded concurrency). Documents already
    COMPLETED cost nothing."""
    import uuid

    try:
        state = stackmod.running_state()
    except stackmod.StackError as e:
        _fail(str(e))
    sfn = stackmod.client("stepfunctions", state)
    arn = sfn.start_execution(stateMachineArn=state["outputs"]["BackfillStateMachineArn"],
                              name=f"backfill-{uuid.uuid4().hex[:12]}",
                              input=json.dumps({"prefix": prefix, "max_concurrency": concurrency}))["executionArn"]
    console.print(f"backfill started: {arn}")
    deadline = time.monotonic() + timeout
    with console.status("backfilling ...") as spinner:
        while True:
            desc = sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING" or time.monotonic() > deadline:
                break
            spinner.update(f"backfilling {prefix} ({time.monotonic() - deadline + timeout:.0f} s)")
            time.sleep(1)
    console.print(f"backfill {desc['status']}: {desc.get('output', '')}")
    sys.exit(0 if desc["status"] == "SUCCEEDED" else 1)


# ------------------------------------------------------------------------- status
def _document_id(target: str, state, ddb) -> str:
    from docpipe_local import lookup

    try:
        return lookup.document_id_for(target, state, ddb)
    except lookup.AmbiguousDocument as e:
        _fail(str(e))


@main.command()
@click.argument("document", required=False)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
def status(document, as_json):
    """Without DOCUMENT: every document's latest status. With DOCUMENT (a document_id,
    an S3 key such as input/reports/2023/q1.pdf, the key below input/ such as
    reports/2023/q1.pdf, or a file's path or name): its control items and audit trail."""
    from docpipe_local import lookup

    try:
        state = stackmod.running_state()
    except stackmod.StackError as e:
        _fail(str(e))
    ddb = stackmod.client("dynamodb", state)
    out = state["outputs"]
    if not document:
        items = lookup.all_control_items(ddb, out["ControlTableName"])
        if as_json:
            console.print_json(json.dumps(items, default=str))
            return
        t = Table(title="documents")
        for c in ("document_id", "s3_key", "type", "version", "status", "stage", "pages", "chunks", "error"):
            t.add_column(c)
        for i in sorted(items, key=lambda i: i.get("updated_at", "")):
            pages = str(i.get("pages", ""))
            if i.get("pages_ocr"):  # how many of them OCR read
                pages += f" ({i['pages_ocr']} OCR)"
            t.add_row(i["document_id"][:12], i.get("s3_key", ""), i.get("document_type", ""),
                      i["processing_version"],
                      f"[{STATUS_STYLE.get(i.get('status'), 'white')}]{i.get('status')}[/]",
                      i.get("current_stage", ""), pages, str(i.get("chunks", "")), i.get("error_code", ""))
        console.print(t)
        return
    doc = _document_id(document, state, ddb)
    items = lookup.control_items(ddb, out["ControlTableName"], doc)
    audit = lookup.audit_items(ddb, out["AuditTableName"], doc)
    if not items:
        _fail(f"no document {document!r} (document_id {doc}) in the control table", 1)
    if as_json:
        console.print_json(json.dumps({"control": items, "audit": audit}, default=str))
        return
    for i in items:
        t = Table(title=f"{i.get('s3_key')} — {i['processing_version']}", show_header=False)
        for k in sorted(i):
            t.add_row(k, json.dumps(i[k], default=str) if isinstance(i[k], (dict, list)) else str(i[k]))
        console.print(t)
    t = Table(title="audit trail")
    for c in ("timestamp", "actor", "action", "from", "to", "detail"):
        t.add_column(c)
    for a in audit:
        t.add_row(a["timestamp"].split("#")[0], a.get("actor", ""), a.get("action", ""),
                  str(a.get("from_status") or ""), str(a.get("to_status") or ""), a.get("detail", "")[:80])
    console.print(t)


# ------------------------------------------------------------------------- query
def _score(hit) -> str:
    # RRF scores are small (two first places: 2/61 = 0.0328); cosine and BM25 read at 3 places.
    return f"{hit['score']:.4f}" if hit.get("mode") == "hybrid" else f"{hit['score']:.3f}"


def _hits_table(hits, title: str) -> Table:
    from ray_jobs.search import where_in_document

    t = Table(title=title)
    t.add_column("score", no_wrap=True)
    t.add_column("document", overflow="fold")
    t.add_column("where", overflow="fold")
    t.add_column("matched sentence", overflow="fold")
    for h in hits:
        match = h.get("match") or {}
        sentence = " ".join(str(match.get("sentence") or h.get("text") or "").split())
        t.add_row(_score(h), str(h.get("s3_key", "")), where_in_document(h, chars=True),
                  sentence if len(sentence) <= 300 else sentence[:300].rstrip() + "…")
    return t


def search(text: str, top_k: int = 5, filter: dict | None = None, mode: str | None = None) -> list[dict]:
    """Hits from the local index: the search the deployed Query function runs too."""
    os.environ.setdefault("LANCEDB_URI", str(paths.vectors_dir()))
    from ray_jobs.search import search as search_index

    return search_index(text, top_k, filter, mode)


def _filters(pairs) -> dict:
    from ray_jobs.search import INTEGER_FIELDS

    out: dict = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep:
            _fail(f"--filter wants FIELD=VALUE, got {pair!r}")
        if field in INTEGER_FIELDS:
            if not value.lstrip("-").isdigit():
                _fail(f"--filter {field} takes an integer, got {value!r}")
            value = int(value)
        if field not in out:
            out[field] = value
        else:  # the same field again: either value
            out[field] = (out[field] if isinstance(out[field], list) else [out[field]]) + [value]
    return out


@main.command()
@click.argument("text")
@click.option("-k", "--top-k", default=5, show_default=True, help="how many chunks")
@click.option("--mode", type=click.Choice(["vector", "keyword", "hybrid"]), default=None,
              help="vector: embedding similarity (cosine); keyword: BM25 over the chunk text; hybrid: both, "
                   "fused by reciprocal rank (default: $QUERY_MODE, else keyword, which measured best: "
                   "docs/retrieval.md)")
@click.option("--where", "where_items", multiple=True, metavar="KEY=VALUE",
              help="only chunks that match (repeatable; different keys: all of them, the same key twice: "
                   "either value): document=<document_id or S3 key such as input/report.pdf>, "
                   "entity=<TYPE>[,<TYPE>] (an entity of one of the types: DATE, MONEY, PERCENT, "
                   "ORGANIZATION, PERSON, ...), phrase=<key phrase> (any case), pages=A-B or page=N "
                   "(chunks overlapping those pages)")
@click.option("--filter", "filter_pairs", multiple=True, metavar="FIELD=VALUE",
              help="only chunks whose FIELD is VALUE (repeatable; the same FIELD twice = either "
                   "value): s3_key, document_id, processing_version, chunk_index, page_start, page_end, "
                   "locator, entity_types, key_phrases, entities (a list field: contains VALUE)")
@click.option("--stack", "stack_name", metavar="NAME",
              help="query the index of this deployed CloudFormation stack (its QueryFunctionUrl "
                   "output, signed with your AWS credentials) instead of the local one")
@click.option("--region", help="region of --stack (default: your AWS configuration's)")
@click.option("--json", "as_json", is_flag=True,
              help="print JSON: each hit's id, score, mode, ranks, metadata and match "
                   "(sentence, char_start, char_end)")
def query(text, top_k, mode, where_items, filter_pairs, stack_name, region, as_json):
    """Find the chunks that answer TEXT in the vector index: the local index, or with
    --stack the index of a deployed stack (needs lambda:InvokeFunctionUrl and
    lambda:InvokeFunction on its Query function).

    Each hit shows its score (cosine similarity for --mode vector, BM25 for keyword,
    reciprocal-rank-fusion score for hybrid), its document, where in it (a PDF's page
    span, a DOCX/HTML/Markdown section or a text file's lines, and the character span
    of the matched sentence in the document text) and the sentence of the chunk that
    best matches TEXT.

    \b
    Example:
      docpipe query "revenue growth" --mode hybrid --where entity=MONEY --where pages=3-5

    Exit codes: 0 hits found, 1 none, 2 a usage, stack or permission problem."""
    from ray_jobs.search import BadQuery, check, request_filter

    if region and not stack_name:
        _fail("--region goes with --stack (the local index has no region)")
    filters = _filters(filter_pairs)
    try:
        check(text, top_k, request_filter(filters, list(where_items)))  # the function's own rules, before any call
    except BadQuery as e:
        _fail(str(e))
    if stack_name:
        import boto3

        from docpipe_local import remote_query

        session = boto3.Session(region_name=region)
        try:
            hits = remote_query.query(session, remote_query.function_url(session, stack_name),
                                      text, top_k, filters, mode=mode, where=list(where_items))
        except remote_query.QueryError as e:
            _fail(str(e), e.exit_code)
        source = f"stack {stack_name}"
    elif not paths.vectors_dir().exists():
        _fail("no vector index yet: ingest documents first (`docpipe ingest PATH`)", 1)
    else:
        try:
            hits = search(text, top_k, request_filter(filters, list(where_items)), mode)
        except BadQuery as e:  # QUERY_MODE set to a mode that does not exist
            _fail(str(e))
        source = "local index"
    if as_json:
        console.print_json(json.dumps(hits, default=str))
    else:
        shown = hits[0]["mode"] if hits and hits[0].get("mode") else mode or "default mode"
        console.print(_hits_table(hits, f"top {top_k} for: {text} ({source}, {shown})"))
    if not hits and mode in (None, "keyword"):
        # Keyword search (the default) finds only chunks that share a word with TEXT.
        click.echo("no chunk shares a word with the question; --mode vector or --mode hybrid "
                   "also rank chunks by meaning", err=True)
    sys.exit(0 if hits else 1)


# ------------------------------------------------------------------------- graph
@main.command()
@click.argument("execution")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="output folder (default $DOCPIPE_HOME/graphs)")
def graph(execution, out_dir):
    """Draw an execution as the Step Functions console does: states coloured by outcome,
    with durations and retries. EXECUTION is an execution ARN, an execution name (of
    IngestDocument or Backfill), or a document as `docpipe status` takes it (document_id,
    S3 key, key below input/, file path or name): its latest execution."""
    from docpipe_local import lookup
    from docpipe_local.graph import fetch_execution, write_graph

    try:
        state = stackmod.running_state()
    except stackmod.StackError as e:
        _fail(str(e))
    sfn = stackmod.client("stepfunctions", state)
    try:
        arn = lookup.execution_arn_for(execution, state, sfn, stackmod.client("dynamodb", state))
    except lookup.AmbiguousDocument as e:
        _fail(str(e))
    if arn is None:
        _fail(f"no execution found for {execution!r}", 1)
    definition, events, name = fetch_execution(sfn, arn)
    out = Path(out_dir or paths.home() / "graphs")
    files = write_graph(definition, events, out, name, execution_name=name)
    console.print(f"{files['status']}: {files['svg']}\n  {files['html']}")


# ------------------------------------------------------------------------- invoke
@main.command()
@click.argument("function")
@click.option("-e", "--event", "event_path", required=True, type=click.Path(exists=True), help="event JSON file (events/*.json)")
@click.option("-n", "--env-vars", "env_vars", type=click.Path(exists=True),
              help="env-vars JSON file, SAM's format (`docpipe stack start` writes one for the stack)")
@click.option("--as-is", is_flag=True, help="send the event file unchanged (default: fill in the "
              "upload's version id and the execution that processed it, as `docpipe events` does)")
def invoke(function, event_path, env_vars, as_is):
    """Invoke one function in-process with an event file, like
    `sam local invoke FUNCTION -e EVENT --env-vars FILE`, against the running local stack.
    FUNCTION is a logical id (RegisterDocumentFunction) or short name (RegisterDocument).
    After `make demo` each events/*.json gives the result events/README.md documents."""
    from docpipe_local import invoke as inv
    from docpipe_local import template

    try:
        state = stackmod.running_state()
    except stackmod.StackError as e:
        _fail(str(e))
    os.environ.update({"AWS_ENDPOINT_URL": state["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    stk = template.load("docpipe", state.get("parameters") or {})
    event = inv.load_event(event_path)
    if not as_is:
        event = inv.fill_event(event, state["outputs"], stackmod.client("s3", state),
                               stackmod.client("dynamodb", state))
    try:
        result, errored, logs = inv.invoke_function(
            stk, function, event, json.loads(Path(env_vars).read_text()) if env_vars else None)
    except KeyError as e:
        _fail(str(e.args[0]))
    if logs:
        err.print(logs.rstrip())
    console.print_json(json.dumps(result, default=str))
    sys.exit(1 if errored else 0)


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="folder to write to (default $DOCPIPE_HOME/events)")
def events(out_dir):
    """Write events/*.json filled in for the running stack (each upload's version id,
    the execution that processed a document), for
    `sam local invoke FUNCTION -e $DOCPIPE_HOME/events/x.json --env-vars $DOCPIPE_HOME/env.json`.
    Run it again after ingesting: the values change with every run."""
    try:
        state = stackmod.running_state()
    except stackmod.StackError as e:
        _fail(str(e))
    _write_events(state, Path(out_dir) if out_dir else None)


def _write_events(state, out_dir=None) -> None:
    from docpipe_local import invoke as inv

    written = inv.write_events(state["outputs"], stackmod.client("s3", state),
                               stackmod.client("dynamodb", state), target=out_dir)
    console.print(f"sample events for this stack: {written[0].parent}/ ({len(written)} files)\n"
                  f"env-vars file: {state.get('env_vars') or paths.env_vars_file()}")


# ------------------------------------------------------------------------- demo
@main.command()
@click.option("--keep/--stop", default=True, show_default=True, help="leave the stack running afterwards")
@click.argument("paths_in", nargs=-1, type=click.Path(exists=True), metavar="[PATH...]")
def demo(keep, paths_in):
    """Start the local stack (if needed), ingest the sample documents (or PATHs), and
    run a query against what was indexed."""
    from docpipe_local import ingest as uploads

    started_here = False
    if not stackmod.status()["running"]:
        try:
            stackmod.start(echo=console.print)
            started_here = True
        except stackmod.StackError as e:
            _fail(str(e))
    try:
        docs = run_ingest(paths_in or uploads.demo_files())
        question = "What was the revenue growth?"
        console.print(f"\n[bold]docpipe query[/bold] {question!r}")
        hits = search(question, 3)
        console.print(_hits_table(hits, f"top 3 for: {question}"))
        if keep:
            console.print("\n[bold]try one function[/bold] (README, \"Try one function\"): "
                          "docpipe invoke FinalizeDocument -e events/finalize_document.json")
            _write_events(stackmod.running_state())
    finally:
        if started_here and not keep:
            stackmod.stop(echo=console.print)
    failed_unexpectedly = [d for d in docs if d.status == "FAILED" and "broken" not in d.key]
    sys.exit(1 if failed_unexpectedly or not hits else 0)


# ------------------------------------------------------------------------- console
main.add_command(console_command)


if __name__ == "__main__":
    main()
