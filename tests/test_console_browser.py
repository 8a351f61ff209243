"""`docpipe console` in a real browser: Debian's Chromium (`make browser`), driven by
Playwright, against the real local stack with real executions.

The console runs as users start it (`docpipe console --port P`, a subprocess). Each test
is one thing a user does: find an execution in the list and open its graph; watch a
running execution turn green without reloading; run a FAILED document again after fixing
its cause; search the index and read the citation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import REPO, corpus_file, history, wait_for_execution
from test_local_stack import _execution_for, clients, control_items, set_function_env

from docpipe import identity
from docpipe_local.stack import free_port

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google's hosts, which
# this closed network refuses; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SMALL = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
LONG = "pdfplumber/tests/pdfs/chelsea_pdta.pdf"  # 65 pages: runs long enough to be watched
SUCCEEDED_FILL = "#e6f6ea"  # docpipe_local.graph.render COLORS["succeeded"]["fill"]



@pytest.fixture(scope="module")
def console_url(local_stack):
    port = free_port()
    log = Path(local_stack["home"]) / "console-test.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "docpipe_local.cli", "console", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"docpipe console did not start:\n{log.read_text()}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed: run `make browser` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def upload(state, rel: str, key: str) -> str:
    """Upload a corpus file as a user would; the execution EventBridge started for it."""
    c = clients(state)
    c["s3"].put_object(Bucket=state["outputs"]["DocumentBucketName"], Key=key,
                       Body=corpus_file(rel).read_bytes())
    return _execution_for(state, key)


def document_id(state, key: str) -> str:
    return identity.document_id(state["outputs"]["DocumentBucketName"], key)


def test_list_shows_the_execution_and_a_click_opens_its_graph(local_stack, console_url, page):
    key = "input/console/listed.pdf"
    arn = upload(local_stack, SMALL, key)
    assert wait_for_execution(clients(local_stack)["stepfunctions"], arn)["status"] == "SUCCEEDED"

    page.goto(console_url + "/")
    row = page.locator(f'tr.execution[data-arn="{arn}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "SUCCEEDED"
    assert row.locator("td.file").inner_text().strip() == key
    assert int(page.locator('#counts [data-count-status="SUCCEEDED"]').inner_text()) >= 1

    # the status filter keeps it among SUCCEEDED and drops it from FAILED
    page.goto(console_url + "/?status=FAILED")
    page.locator("table#executions").wait_for()
    assert page.locator(f'tr.execution[data-arn="{arn}"]').count() == 0

    page.goto(console_url + "/?status=SUCCEEDED")
    page.locator(f'tr.execution[data-arn="{arn}"] a.execution-link').click()
    page.wait_for_url("**/executions/**")
    status = page.locator("#execution")
    assert status.get_attribute("data-status") == "SUCCEEDED"
    for state_name in ("RegisterDocument", "Extract", "Embed", "FinalizeDocument"):
        node = page.locator(f'#graph svg g[data-state="{state_name}"]')
        assert node.get_attribute("data-outcome") == "succeeded", state_name
    assert page.locator('table#states tr.state[data-state="Extract"] pre.io').count() >= 1
    # the task token the Extract state handed to Ray is in the history, never on the page
    tokens = [e["taskScheduledEventDetails"]["parameters"] for e in history(clients(local_stack)["stepfunctions"], arn)
              if e["type"] == "TaskScheduled"]
    token = next(p.split('"task_token": "', 1)[1].split('"', 1)[0] for p in tokens if '"task_token": "' in p)
    assert token not in page.content()
    assert "«redacted»" in page.content()

    page.locator("a.document-link").first.click()
    page.wait_for_url(f"**/documents/{document_id(local_stack, key)}")
    assert page.locator("#document").get_attribute("data-status") == "COMPLETED"
    assert page.locator("table#audit tr").count() > 2


def test_a_running_execution_turns_green_without_a_reload(local_stack, console_url, page, browser):
    key = "input/console/live.pdf"
    arn = upload(local_stack, LONG, key)
    page.goto(f"{console_url}/executions/{arn}")
    execution = page.locator("#execution")
    assert execution.get_attribute("data-status") == "RUNNING", "opened while the 65-page document is processed"
    listing = browser.new_page()
    listing.goto(console_url + "/")
    assert listing.locator(f'tr.execution[data-arn="{arn}"]').get_attribute("data-status") == "RUNNING"
    page.evaluate("window.__notReloaded = true")

    page.locator('#execution[data-status="SUCCEEDED"]').wait_for(timeout=240_000)
    assert page.evaluate("window.__notReloaded === true"), "the page updated itself, it was not reloaded"
    fill = page.locator('#graph svg g[data-state="FinalizeDocument"] rect').first.get_attribute("fill")
    assert fill.lower() == SUCCEEDED_FILL
    listing.locator(f'tr.execution[data-arn="{arn}"][data-status="SUCCEEDED"]').wait_for(timeout=30_000)
    listing.close()


def test_run_again_after_fixing_the_cause_completes(local_stack, console_url, page):
    """The user's limit was too small (TooLarge); they raise it (a deploy changes the
    function's environment) and press "run again" on the FAILED document."""
    key = "input/console/again.pdf"
    restore = set_function_env(local_stack, "RegisterDocument", MAX_DOCUMENT_BYTES="1000")
    try:
        arn = upload(local_stack, SMALL, key)
        assert wait_for_execution(clients(local_stack)["stepfunctions"], arn)["status"] == "FAILED"
    finally:
        restore()
    doc = document_id(local_stack, key)
    page.goto(f"{console_url}/documents/{doc}")
    assert page.locator("#document").get_attribute("data-status") == "FAILED"
    assert "TooLarge" in page.locator("#error-report").inner_text()

    page.locator("form#run-again button").click()
    page.wait_for_url("**/executions/**")
    new_arn = page.locator("#execution").get_attribute("data-arn") or page.url.split("/executions/", 1)[1]
    assert new_arn != arn
    page.locator('#execution[data-status="SUCCEEDED"]').wait_for(timeout=180_000)
    assert {i["status"] for i in control_items(local_stack, key)} >= {"COMPLETED"}

    page.goto(f"{console_url}/documents/{doc}")
    assert page.locator("#document").get_attribute("data-status") == "COMPLETED"
    assert page.locator("table#document-executions tbody tr").count() == 2


def test_search_cites_document_and_pages(local_stack, console_url, page):
    key = "input/console/searched.pdf"
    arn = upload(local_stack, SMALL, key)
    assert wait_for_execution(clients(local_stack)["stepfunctions"], arn)["status"] == "SUCCEEDED"
    page.goto(console_url + "/search")
    page.locator("form#search input[name=q]").fill("Is there a difference between this text and some nonsense")
    page.locator("form#search input[name=q]").press("Enter")
    hits = page.locator("ol#hits li.hit")
    hits.first.wait_for()
    citations = [hits.nth(i).locator(".citation").inner_text() for i in range(hits.count())]
    assert any("input/console/" in c and "page" in c for c in citations), citations
    assert "nonsense" in hits.first.locator(".snippet").inner_text()
