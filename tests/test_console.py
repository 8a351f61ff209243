"""`docpipe console` against the in-process moto world of conftest (the real ASL,
handlers and Ray-stage code): what a user sees on each page and what its actions do.

One world for the module: a completed document and a failed (encrypted) one, driven
exactly as tests/test_ingest_workflow.py drives them; the page asserts are on the
executions, tables and S3 objects of that world.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from conftest import corpus_file, executions_for, history, local_aws_stack, set_aws_env, wait_for_execution
from fakes import FakeHTTPServer

from docpipe import identity

GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
ENCRYPTED = "pdfplumber/tests/pdfs/password-example.pdf"
GOOD_KEY, FAILED_KEY = "input/console/good one.pdf", "input/console/secret.pdf"
RAY_TOKEN = "console-test-ray-token"


class FakeRayLogs(FakeHTTPServer):
    """The two Ray Jobs API reads the console makes (job list, one job's logs), with
    the bearer token checked as a token-auth head does."""

    def __init__(self, token: str, jobs: list[dict], logs: dict[str, str]):
        super().__init__()
        self.jobs, self.logs, self.token = jobs, logs, token

    def handle(self, method, path, query, body, headers):
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {}, {"error": "Unauthenticated"}
        if path.rstrip("/") == "/api/jobs":
            return 200, {}, self.jobs
        m = re.fullmatch(r"/api/jobs/([^/]+)/logs", path)
        if m and m.group(1) in self.logs:
            return 200, {}, {"logs": self.logs[m.group(1)]}
        return 404, {}, {"error": "not found"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(stack, clients, Flask test client, ray logs fake, {key: execution ARN})."""
    import boto3

    from docpipe_local.console.app import create_app

    tmp = tmp_path_factory.mktemp("console")
    (tmp / "home").mkdir()
    (tmp / "home" / "ray_token").write_text(RAY_TOKEN)
    with pytest.MonkeyPatch.context() as mp:
        set_aws_env(mp, tmp)
        with local_aws_stack() as (stack, clients, _head):
            bucket = stack.outputs["DocumentBucketName"]
            sfn = clients["stepfunctions"]
            arns = {}
            for n, (key, rel) in enumerate(((GOOD_KEY, GOOD), (FAILED_KEY, ENCRYPTED)), start=1):
                clients["s3"].put_object(Bucket=bucket, Key=key, Body=corpus_file(rel).read_bytes())
                newest = sorted(executions_for(sfn, stack.outputs["IngestDocumentStateMachineArn"], n),
                                key=lambda e: e["startDate"])[-1]
                wait_for_execution(sfn, newest["executionArn"])
                arns[key] = newest["executionArn"]
            logs = FakeRayLogs(RAY_TOKEN, [], {}).start()
            state = {"endpoint": "in-process moto", "ray_url": logs.url, "home": str(tmp / "home"),
                     "outputs": stack.outputs}
            app = create_app(state, client_factory=lambda service: boto3.client(service, region_name="us-east-1"))
            try:
                yield stack, clients, app.test_client(), logs, arns
            finally:
                logs.stop()
                for e in sfn.list_executions(stateMachineArn=stack.outputs["IngestDocumentStateMachineArn"])["executions"]:
                    wait_for_execution(sfn, e["executionArn"])  # a run-again still going


def doc_id(world, key: str) -> str:
    return identity.document_id(world[0].outputs["DocumentBucketName"], key)


def rows(page: str) -> list[dict]:
    """The executions table: one dict per tr.execution (its attributes and cells)."""
    out = []
    for tr in re.findall(r'<tr class="execution".*?</tr>', page, re.S):
        attrs = dict(re.findall(r'data-(arn|status|name)="([^"]*)"', tr))
        cells = dict(re.findall(r'<td class="(\w+)">(.*?)</td>', tr, re.S))
        attrs["file"] = re.sub(r"<[^>]+>", "", cells.get("file", "")).strip()
        attrs["document_link"] = re.search(r'class="document-link" href="([^"]+)"', tr)
        out.append(attrs)
    return out


def count(page: str, status: str) -> int:
    return int(re.search(rf'data-count-status="{status}">(\d+)<', page).group(1))


def test_list_shows_executions_newest_first_with_file_and_counts(world):
    _, _, web, _, arns = world
    r = web.get("/")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    listed = rows(page)
    by_arn = {row["arn"]: row for row in listed}
    good = by_arn[arns[GOOD_KEY]]
    assert good["status"] == "SUCCEEDED" and good["file"] == GOOD_KEY
    assert good["document_link"].group(1) == f"/documents/{doc_id(world, GOOD_KEY)}"
    assert by_arn[arns[FAILED_KEY]]["status"] == "FAILED"
    assert [row["arn"] for row in listed].index(arns[FAILED_KEY]) < [row["arn"] for row in listed].index(arns[GOOD_KEY])
    assert count(page, "SUCCEEDED") >= 1 and count(page, "FAILED") >= 1 and count(page, "RUNNING") >= 0
    assert f'href="/executions/{arns[GOOD_KEY]}"' in page and "in-process moto" in page  # link; stack endpoint

    api = web.get("/api/executions").get_json()
    assert api["counts"]["SUCCEEDED"] == count(page, "SUCCEEDED")
    assert {e["arn"]: e["file"] for e in api["executions"]}[arns[GOOD_KEY]] == GOOD_KEY
    assert 'class="execution"' in api["tbody"]


def test_status_and_text_filters(world):
    _, _, web, _, arns = world
    failed = rows(web.get("/?status=FAILED").get_data(as_text=True))
    assert failed and {r["status"] for r in failed} == {"FAILED"} and arns[FAILED_KEY] in {r["arn"] for r in failed}
    page = web.get("/?q=good+one").get_data(as_text=True)
    assert [r["arn"] for r in rows(page)] == [arns[GOOD_KEY]]
    assert count(page, "FAILED") >= 1, "counts are over all executions, not the filtered page"
    assert web.get("/api/executions?status=SUCCEEDED&q=secret").get_json()["executions"] == []


def test_execution_page_has_graph_states_io_and_no_task_token(world):
    _, clients, web, _, arns = world
    arn = arns[GOOD_KEY]
    events = history(clients["stepfunctions"], arn)
    tokens = [json.loads(e["taskScheduledEventDetails"]["parameters"])["Payload"]["task_token"]
              for e in events if e["type"] == "TaskScheduled"
              and "task_token" in json.loads(e["taskScheduledEventDetails"]["parameters"]).get("Payload", {})]
    assert tokens and all(len(t) > 20 for t in tokens)
    r = web.get(f"/executions/{arn}")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert 'id="execution" data-status="SUCCEEDED"' in page
    graph = page[page.index('<div id="graph">'):page.index("</div>", page.index('<div id="graph">'))]
    for state in ("RegisterDocument", "Extract", "Embed", "FinalizeDocument"):
        assert re.search(rf'<g [^>]*data-state="{state}"[^>]*data-outcome="succeeded"', graph), state
        assert f'<tr class="state outcome-succeeded" data-state="{state}"' in page
    assert 'class="io input"' in page and 'class="io output"' in page
    assert f'class="document-link" href="/documents/{doc_id(world, GOOD_KEY)}"' in page
    for token in tokens:
        assert token not in page
        assert quote(token, safe="") not in page
    assert "«redacted»" in page  # the task parameters are shown, with the token's place marked
    live = web.get(f"/api/executions/{arn}")
    data = live.get_json()
    assert data["status"] == "SUCCEEDED" and 'data-state="Embed"' in data["svg"]
    assert 'data-state="Extract"' in data["states_html"]
    assert not any(token in live.get_data(as_text=True) for token in tokens)


def test_failed_document_page_shows_control_audit_report_and_run_again(world):
    stack, clients, web, logs, _ = world
    doc = doc_id(world, FAILED_KEY)
    other = doc_id(world, GOOD_KEY)
    logs.jobs = [{"submission_id": "svc-extract-g1", "metadata": {"docpipe": "stage-service", "stage": "extract"}},
                 {"submission_id": "own-job", "metadata": {"docpipe": "stage-job", "document_id": other}},
                 {"submission_id": "not-ours", "metadata": {}}]
    logs.logs = {"svc-extract-g1": f'{{"message": "received", "document_id": "{doc}"}}\n'
                                   f'{{"message": "received", "document_id": "{other}"}}\n'
                                   f'{{"message": "failed <PdfEncrypted>", "document_id": "{doc}"}}\n',
                 "own-job": f"a line about {doc} in another document's job\n",
                 "not-ours": f"{doc} in a job that is not docpipe's\n"}
    r = web.get(f"/documents/{doc}")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert 'id="document" data-status="FAILED"' in page
    [item] = clients["dynamodb"].query(TableName=stack.outputs["ControlTableName"],
                                       KeyConditionExpression="document_id = :d",
                                       ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    control = page[page.index('<table id="control">'):]
    assert item["processing_version"]["S"] in control and "PdfEncrypted" in control
    audit = page[page.index('<table id="audit">'):]
    assert "created" in audit and "failed" in audit
    report = re.search(r'<pre id="error-report" class="io">(.*?)</pre>', page, re.S).group(1)
    assert '&#34;error_code&#34;: &#34;PdfEncrypted&#34;' in report and FAILED_KEY in report
    assert '<form id="run-again" method="post"' in page
    log_text = re.search(r'<pre id="logs">(.*?)</pre>', page, re.S).group(1)
    assert log_text.count(doc) == 2 and "failed &lt;PdfEncrypted&gt;" in log_text and other not in log_text
    assert "another document" not in log_text and "not docpipe" not in log_text
    assert 'id="document-executions"' in page and "execution-link" in page

    good = web.get(f"/documents/{other}").get_data(as_text=True)
    assert 'data-status="COMPLETED"' in good and "no error report" in good and 'id="run-again"' not in good
    counts = good[good.index('id="document-counts"'):]
    assert re.search(r'data-count="pages">4<', counts)


def test_ray_unreachable_is_a_message_not_an_error(world):
    _, _, web, logs, _ = world
    logs.token = "rotated"  # the head answers 401 to our token
    try:
        r = web.get(f"/documents/{doc_id(world, FAILED_KEY)}")
    finally:
        logs.token = RAY_TOKEN
    assert r.status_code == 200 and "did not answer" in r.get_data(as_text=True)


def test_refusals_and_not_found(world):
    _, _, web, _, _ = world
    good = doc_id(world, GOOD_KEY)
    r = web.post(f"/documents/{good}/run-again", headers={"Origin": "http://localhost"})
    assert r.status_code == 409 and "COMPLETED" in r.get_data(as_text=True)
    failed = doc_id(world, FAILED_KEY)
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {"Origin": "null"}):
        assert web.post(f"/documents/{failed}/run-again", headers=headers).status_code == 403
    assert web.get("/", headers={"Host": "rebound.example:8585"}).status_code == 403  # DNS rebinding
    missing = "0" * 32
    r = web.get(f"/documents/{missing}")
    assert r.status_code == 404 and f"no document {missing}" in r.get_data(as_text=True)
    arn = "arn:aws:states:us-east-1:123456789012:execution:nope:nothing"
    r = web.get(f"/executions/{arn}")
    assert r.status_code == 404 and arn in r.get_data(as_text=True)
    assert web.get(f"/api/executions/{arn}").status_code == 404
    assert web.get("/healthz").get_data(as_text=True) == "ok"


def test_search_cites_and_snippets_and_rejects_bad_queries(world):
    _, _, web, _, _ = world
    r = web.get("/search?q=printed+text+without+a+meaning&k=3")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    hits = re.findall(r'<li class="hit".*?</li>', page, re.S)
    assert 1 <= len(hits) <= 3
    assert re.search(rf'class="citation">{re.escape(GOOD_KEY)}, pages? \d', page)
    assert f'href="/documents/{doc_id(world, GOOD_KEY)}"' in page
    assert all(re.search(r'class="snippet">\S', h) for h in hits)
    for bad in ("/search?q=+", "/search?q=x&k=0", "/search?q=x&k=many"):
        r = web.get(bad)
        assert r.status_code == 400 and 'id="search-error"' in r.get_data(as_text=True), bad


def test_aws_down_is_a_503_that_says_how_to_start(monkeypatch):
    from docpipe_local import stack
    from docpipe_local.console.app import create_app

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    state = {"endpoint": f"http://127.0.0.1:{stack.free_port()}", "ray_url": "", "home": "/nonexistent",
             "outputs": {"IngestDocumentStateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:x",
                         "ControlTableName": "c", "AuditTableName": "a", "DocumentBucketName": "b"}}
    r = create_app(state).test_client().get("/")
    assert r.status_code == 503
    assert "not running" in r.get_data(as_text=True) and "docpipe stack start" in r.get_data(as_text=True)


def test_run_again_starts_the_same_input_and_redirects(world):
    stack, clients, web, _, arns = world
    sfn = clients["stepfunctions"]
    sm = stack.outputs["IngestDocumentStateMachineArn"]
    before = {e["executionArn"] for e in sfn.list_executions(stateMachineArn=sm)["executions"]}
    doc = doc_id(world, FAILED_KEY)
    r = web.post(f"/documents/{doc}/run-again", headers={"Origin": "http://localhost"})
    assert r.status_code == 303
    [new] = [e for e in sfn.list_executions(stateMachineArn=sm)["executions"] if e["executionArn"] not in before]
    assert new["name"].startswith(f"run-again-{doc[:12]}-")
    assert r.headers["Location"].endswith(f"/executions/{new['executionArn']}")
    assert sfn.describe_execution(executionArn=new["executionArn"])["input"] == \
        sfn.describe_execution(executionArn=arns[FAILED_KEY])["input"]
    assert wait_for_execution(sfn, new["executionArn"])["status"] == "FAILED"  # still encrypted
    page = web.get(f"/documents/{doc}").get_data(as_text=True)
    assert new["executionArn"] in page, "the new run is one of the document's executions"


def test_a_token_seen_under_its_key_is_redacted_wherever_it_appears():
    from docpipe_local.console.data import REDACTED, history_tokens, redact_history

    token = "AQCEAAAAKgAAAAMAAAAAAAAAAeXampleToken=="
    events = [
        {"id": 1, "type": "TaskScheduled", "taskScheduledEventDetails": {
            "parameters": json.dumps({"Payload": {"TaskToken": token, "stage": "extract"}})}},
        {"id": 2, "type": "TaskFailed", "taskFailedEventDetails": {
            "error": "Boom", "cause": f"could not answer {token} in time"}},
        {"id": 3, "type": "TaskStateExited", "stateExitedEventDetails": {
            "name": "Extract", "output": json.dumps({"echo": {"note": token}, "pages": 4})}},
    ]
    clean = redact_history(events, history_tokens(events))
    assert token not in json.dumps(clean)
    assert json.loads(clean[0]["taskScheduledEventDetails"]["parameters"])["Payload"] == \
        {"TaskToken": REDACTED, "stage": "extract"}
    assert clean[1]["taskFailedEventDetails"]["cause"] == f"could not answer {REDACTED} in time"
    assert json.loads(clean[2]["stateExitedEventDetails"]["output"]) == {"echo": {"note": REDACTED}, "pages": 4}
