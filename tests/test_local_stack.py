"""The real local stack end to end: moto server + a Ray head with token auth, stages
submitted through the Ray Jobs REST API, answering Step Functions with the task token.

One stack per test session (conftest.local_stack); every test talks to it the way a
user does: S3 uploads, the `docpipe` command, the tables, the index.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import pytest
from conftest import REPO, corpus_file, history, wait_for_execution

from docpipe import identity

pytestmark = [pytest.mark.ray, pytest.mark.e2e]
DOCPIPE = [sys.executable, "-m", "docpipe_local.cli"]

# corpus file -> (final status, error code or None), as documented in README "Outcomes".
OUTCOMES = {
    "pdfplumber/tests/pdfs/chelsea_pdta.pdf": ("COMPLETED", None),            # 65-page report
    "pdf.js/test/pdfs/tracemonkey.pdf": ("COMPLETED", None),                  # two-column paper
    "py-pdf-sample-files/007-imagemagick-images/imagemagick-ASCII85Decode.pdf": ("FAILED", "PdfNoText"),
    "pdfplumber/tests/pdfs/password-example.pdf": ("FAILED", "PdfEncrypted"),
    "pdf.js/test/pdfs/poppler-937-0-fuzzed.pdf": ("FAILED", "PdfMalformed"),
    "pdfplumber/tests/pdfs/empty.pdf": ("FAILED", "EmptyDocument"),
    "pdf.js/test/pdfs/Pages-tree-refs.pdf": ("COMPLETED", None),              # page-tree loop
    "unstructured/example-docs/pdf/loremipsum-flat.pdf": ("COMPLETED", None),  # a scan: OCR in a Ray worker
}
# Files the fixture writes beside them: other types, routed by RegisterDocument.
WRITTEN = {"handbook.md": ("COMPLETED", "markdown"), "travel.docx": ("COMPLETED", "docx"),
           "budget.xlsx": ("SKIPPED", None)}


def travel_docx() -> bytes:
    import io

    import docx

    d = docx.Document()
    d.add_heading("Travel policy", level=1)
    d.add_paragraph("Hotel nights are reimbursed up to 180 euros in Frankfurt.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def clients(state):
    kw = {"endpoint_url": state["endpoint"], "region_name": "us-east-1",
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return {n: boto3.client(n, **kw) for n in ("s3", "stepfunctions", "dynamodb", "lambda", "sqs", "sns")}


def run_cli(*args, timeout=600, check=True):
    out = subprocess.run([*DOCPIPE, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "COLUMNS": "200"}, cwd=REPO)
    if check and out.returncode not in (0, 1):
        raise AssertionError(f"docpipe {' '.join(args)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def control_items(state, key):
    c = clients(state)
    doc = identity.document_id(state["outputs"]["DocumentBucketName"], key)
    items = c["dynamodb"].query(TableName=state["outputs"]["ControlTableName"],
                                KeyConditionExpression="document_id = :d",
                                ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    return [{k: next(iter(v.values())) for k, v in i.items()} for i in items]


@pytest.fixture(scope="module")
def ingested(local_stack, tmp_path_factory):
    """`docpipe ingest` over a mix of corpus files: the user's main job."""
    folder = tmp_path_factory.mktemp("mix")
    for rel in OUTCOMES:
        src = corpus_file(rel)
        (folder / src.name).symlink_to(src)
    (folder / "handbook.md").write_bytes((REPO / "samples" / "operator-handbook.md").read_bytes())
    (folder / "travel.docx").write_bytes(travel_docx())
    (folder / "budget.xlsx").write_bytes(b"PK\x03\x04 a spreadsheet docpipe does not read")
    # Files, not the folder: each keeps its base name (input/<name>), as these tests expect.
    out = run_cli("ingest", *map(str, sorted(folder.iterdir())), "--timeout", "600")
    return out, folder


def test_ingest_reaches_documented_outcome_for_every_file(local_stack, ingested):
    out, _ = ingested
    assert "summary" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 1, "some documents fail on purpose: exit code 1"
    for rel, (status, code) in OUTCOMES.items():
        items = control_items(local_stack, f"input/{Path(rel).name}")
        assert items, f"{rel}: no control item"
        final = [i for i in items if i["status"] in ("COMPLETED", "PARTIAL", "FAILED")]
        assert final, f"{rel}: {items}"
        assert final[0]["status"] == status or (status == "COMPLETED" and final[0]["status"] == "PARTIAL"), (rel, final[0])
        if code:
            assert final[0]["error_code"] == code, (rel, final[0])


def test_other_types_are_routed_and_a_scan_is_read_by_ocr_on_the_ray_stack(local_stack, ingested):
    for name, (status, document_type) in WRITTEN.items():
        [item] = control_items(local_stack, f"input/{name}")
        assert item["status"] == status, (name, item)
        if document_type:
            assert item["document_type"] == document_type and int(item["vectors"]) >= 1
        else:
            assert item["error_code"] == "UnsupportedType" and ".xlsx" in item["error_message"]
    [scan] = control_items(local_stack, "input/loremipsum-flat.pdf")
    assert int(scan["pages_ocr"]) == 1 and scan["ocr_engine"] == "rapidocr"
    out = run_cli("query", "hotel nights reimbursed in Frankfurt", "--json")
    [best, *_] = json.loads(out.stdout)
    assert best["s3_key"] == "input/travel.docx" and best["locator"] == "Travel policy", best
    out = run_cli("query", "Lorem ipsum dolor sit amet consectetur adipiscing elit", "--json")
    assert json.loads(out.stdout)[0]["s3_key"] == "input/loremipsum-flat.pdf"
    out = run_cli("query", "page the on-call engineer of the data platform rotation", "--json")
    [best, *_] = json.loads(out.stdout)
    assert (best["s3_key"], best["locator"]) == ("input/handbook.md", "docpipe operator handbook › Escalation"), best


def test_completed_documents_have_artifacts_audit_and_vectors(local_stack, ingested):
    c = clients(local_stack)
    bucket = local_stack["outputs"]["DocumentBucketName"]
    key = "input/tracemonkey.pdf"
    [item] = control_items(local_stack, key)
    doc, ver = item["document_id"], item["processing_version"]
    keys = {o["Key"] for o in c["s3"].list_objects_v2(Bucket=bucket, Prefix="")["Contents"]}
    for k in (f"extracted/{doc}/{ver}/pages.jsonl", f"chunks/{doc}/{ver}/chunks.jsonl",
              f"enriched/{doc}/{ver}/chunks.jsonl", f"embeddings/{doc}/{ver}/vectors.jsonl", key):
        assert k in keys, k
    audit = c["dynamodb"].query(TableName=local_stack["outputs"]["AuditTableName"],
                                KeyConditionExpression="document_id = :d",
                                ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    assert [a["action"]["S"] for a in audit][-1] in ("completed", "partial")
    os.environ["LANCEDB_URI"] = str(Path(local_stack["home"]) / "vectors")
    from ray_jobs.backends.lancedb_store import LanceDBStore

    ids = LanceDBStore.from_env().list_ids(identity.vector_id_prefix(doc, ver))
    assert len(ids) == int(item["vectors"]) == int(item["chunks"]) > 0


def test_failed_documents_have_error_reports_and_keep_their_upload(local_stack, ingested):
    c = clients(local_stack)
    bucket = local_stack["outputs"]["DocumentBucketName"]
    for rel, (status, code) in OUTCOMES.items():
        if status != "FAILED":
            continue
        key = f"input/{Path(rel).name}"
        item = next(i for i in control_items(local_stack, key) if i["status"] == "FAILED")
        report = json.loads(c["s3"].get_object(
            Bucket=bucket, Key=f"errors/{item['document_id']}/{item['processing_version']}/error.json")["Body"].read())
        assert report["error_code"] == code and report["s3_key"] == key
        original = c["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()
        assert original == corpus_file(rel).read_bytes(), "the upload is untouched"


def test_query_finds_a_passage_from_the_corpus(local_stack, ingested):
    out = run_cli("query", "trace-based just-in-time compilation of JavaScript", "--json")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert hits and hits[0]["s3_key"] == "input/tracemonkey.pdf", hits[:2]
    best = hits[0]
    # The default mode (QUERY_MODE) is keyword: what measured best (docs/retrieval.md).
    assert best["mode"] == "keyword" and best["ranks"]["keyword"] == 1, best
    # The citation a reader can check: the matched sentence is exactly those characters of
    # the document text the chunk offsets refer to (pages.jsonl, joined as chunking does).
    c = clients(local_stack)
    [item] = control_items(local_stack, "input/tracemonkey.pdf")
    body = c["s3"].get_object(Bucket=local_stack["outputs"]["DocumentBucketName"],
                              Key=f"extracted/{item['document_id']}/{item['processing_version']}/pages.jsonl")["Body"]
    from ray_jobs.chunking import document_text

    text = document_text([json.loads(line) for line in body.read().decode().splitlines() if line.strip()])
    match = best["match"]
    assert text[match["char_start"]:match["char_end"]] == match["sentence"]
    assert best["char_start"] <= match["char_start"] < match["char_end"] <= best["char_end"]
    out = run_cli("query", "trace-based just-in-time compilation of JavaScript", "--mode", "vector", "--json")
    [best, *_] = json.loads(out.stdout)
    assert best["s3_key"] == "input/tracemonkey.pdf" and best["score"] > 0.3, best  # cosine similarity
    out = run_cli("query", "trace-based just-in-time compilation of JavaScript", "--mode", "hybrid", "--json")
    [best, *_] = json.loads(out.stdout)
    # Hybrid fuses both lists; the hit found by each says at which rank.
    assert best["s3_key"] == "input/tracemonkey.pdf" and best["ranks"]["vector"] and best["ranks"]["keyword"], best
    out = run_cli("query", "nested trace trees", "--mode", "keyword", "--where", "document=input/tracemonkey.pdf",
                  "--where", "pages=3-4", "--json")
    hits = json.loads(out.stdout)
    assert hits and all(h["s3_key"] == "input/tracemonkey.pdf" and h["page_start"] <= 4 and h["page_end"] >= 3
                        for h in hits), hits


def test_second_ingest_of_the_same_files_does_no_new_work(local_stack, ingested):
    c = clients(local_stack)
    arn = local_stack["outputs"]["IngestDocumentStateMachineArn"]
    before = len(c["stepfunctions"].list_executions(stateMachineArn=arn)["executions"])
    out = run_cli("ingest", *map(str, sorted(ingested[1].iterdir())), "--timeout", "120")
    assert "summary" in out.stdout
    after = len(c["stepfunctions"].list_executions(stateMachineArn=arn)["executions"])
    assert after == before, "same bytes at the same keys: nothing uploaded, nothing started"


def test_execution_graph_shows_states_and_colours(local_stack, ingested, tmp_path):
    out = run_cli("graph", "password-example.pdf", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    svg = next(tmp_path.glob("*.svg"))
    text = svg.read_text()
    ET.fromstring(text)  # well-formed
    for state in ("RegisterDocument", "Extract", "RecordFailure", "NotifyFailure", "DocumentFailed", "Embed"):
        assert state in text
    assert "#d13212" in text, "the failed state is red"
    assert "#ec7211" in text, "the caught Extract task is orange"
    assert next(tmp_path.glob("*.html")).read_text().count("<tr") > 5


def set_function_env(state, name_part: str, **values):
    """A template parameter changed and deployed (what `sam deploy` does to a function's
    environment); returns a callable that puts the old environment back."""
    c = clients(state)
    fn = next(f for f in c["lambda"].list_functions()["Functions"] if name_part in f["FunctionName"])
    env = fn["Environment"]["Variables"]
    c["lambda"].update_function_configuration(FunctionName=fn["FunctionName"],
                                              Environment={"Variables": {**env, **values}})
    return lambda: c["lambda"].update_function_configuration(FunctionName=fn["FunctionName"],
                                                             Environment={"Variables": env})


def test_killed_job_is_retried_after_its_heartbeat_timeout(local_stack):
    """SIGKILL of a document's own Ray job sends nothing back: the state's heartbeat
    catches it, its Retry submits the stage again (a new submission id, a new job) and
    the document completes. The heartbeat is the template's minimum (10 s); the document
    is small (4 pages: the driver is killed while it starts, so its size changes nothing
    but the time the retry's extract and embed jobs take)."""
    sys.path.insert(0, str(REPO))
    from bench.gen import document_bytes

    c = clients(local_stack)

    restore = [set_function_env(local_stack, "RegisterDocument", STAGE_HEARTBEAT_SECONDS="10"),
               set_function_env(local_stack, "SubmitRayJob", STAGE_SERVICE_MAX_BYTES="0")]  # every document its own job
    try:
        body = document_bytes(3100, 4)
        c["s3"].put_object(Bucket=local_stack["outputs"]["DocumentBucketName"], Key="input/killed.pdf", Body=body)
        pid = _wait_for_driver("ray_jobs.extract", timeout=60)
        os.kill(pid, signal.SIGKILL)
        arn = _execution_for(local_stack, "input/killed.pdf")
        desc = wait_for_execution(c["stepfunctions"], arn, timeout=240)
    finally:
        for undo in restore:
            undo()
    assert desc["status"] == "SUCCEEDED"
    events = history(c["stepfunctions"], arn)
    assert any(e["type"] == "TaskTimedOut" for e in events)
    extract_runs = [e for e in events if e["type"] == "TaskScheduled"
                    and '"stage": "extract"' in e["taskScheduledEventDetails"]["parameters"]]
    assert len(extract_runs) == 2, "one retry after the timeout"
    [item] = control_items(local_stack, "input/killed.pdf")
    assert item["status"] == "COMPLETED" and item["extract_submission_id"].endswith("-r1")
    assert item["extract_route"] == "job"


def _wait_for_driver(marker: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    argv = (proc / "cmdline").read_bytes().decode().split("\0")
                except OSError:
                    continue
                # The python driver itself, not the `sh -c` Ray wraps the entrypoint in.
                if "python" in Path(argv[0]).name and argv[1:3] == ["-m", marker] and "--job" in argv:
                    return int(proc.name)
        time.sleep(0.02)
    raise AssertionError(f"no {marker} driver process appeared")


def _execution_for(state, key: str) -> str:
    """The execution that registered the upload, from its control item: EventBridge-started
    executions have generated names, so nothing else ties an execution to a document."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        arns = [i["execution_arn"] for i in control_items(state, key) if i.get("execution_arn")]
        if arns:
            return arns[0]
        time.sleep(0.1)
    raise AssertionError(f"no control item with an execution_arn for {key}")


def test_rerunning_stages_for_the_same_version_is_identical(local_stack, ingested, monkeypatch):
    """Deterministic chunking and vector ids: running both stages again for the same
    version overwrites the same S3 objects with the same bytes and the same vectors."""
    c = clients(local_stack)
    bucket = local_stack["outputs"]["DocumentBucketName"]
    [item] = control_items(local_stack, "input/tracemonkey.pdf")
    doc, ver = item["document_id"], item["processing_version"]
    keys = [f"extracted/{doc}/{ver}/pages.jsonl", f"chunks/{doc}/{ver}/chunks.jsonl",
            f"enriched/{doc}/{ver}/chunks.jsonl"]
    before = {k: c["s3"].get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    vectors_before = c["s3"].get_object(Bucket=bucket, Key=f"embeddings/{doc}/{ver}/vectors.jsonl")["Body"].read()
    for k, v in {"AWS_ENDPOINT_URL": local_stack["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "DOCPIPE_NO_RAY": "1", "LANCEDB_URI": str(Path(local_stack["home"]) / "vectors")}.items():
        monkeypatch.setenv(k, v)
    from ray_jobs.backends.lancedb_store import LanceDBStore
    from ray_jobs.embed import embed_document
    from ray_jobs.extract import extract_document

    count_before = LanceDBStore.from_env().count()
    reg = {"document_id": doc, "processing_version": ver, "bucket": bucket, "s3_key": "input/tracemonkey.pdf"}
    extracted = extract_document({"registration": reg})
    embed_document({"registration": reg, "inputs": extracted})
    after = {k: c["s3"].get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    assert after == before
    vectors_after = c["s3"].get_object(Bucket=bucket, Key=f"embeddings/{doc}/{ver}/vectors.jsonl")["Body"].read()
    rows_b = [json.loads(x) for x in vectors_before.splitlines()]
    rows_a = [json.loads(x) for x in vectors_after.splitlines()]
    assert [r["id"] for r in rows_a] == [r["id"] for r in rows_b]
    for a, b in zip(rows_a, rows_b, strict=True):  # same model; BLAS thread counts may differ in the last bits
        assert max(abs(x - y) for x, y in zip(a["vector"], b["vector"], strict=True)) < 1e-5
    assert LanceDBStore.from_env().count() == count_before


def test_starting_the_stack_twice_says_so(local_stack):
    out = run_cli("stack", "start", check=False)
    assert out.returncode == 2
    assert "already running" in out.stderr


def test_busy_port_gives_a_clear_message(local_stack, tmp_path):
    port = int(local_stack["endpoint"].rsplit(":", 1)[1])  # taken by the running stack
    out = subprocess.run([*DOCPIPE, "stack", "start", "--port", str(port)], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env={**os.environ, "DOCPIPE_HOME": str(tmp_path)})
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is busy" in out.stderr


def test_ctrl_c_stops_ingest_cleanly_and_a_rerun_resumes(local_stack, tmp_path):
    c = clients(local_stack)
    arn = local_stack["outputs"]["IngestDocumentStateMachineArn"]
    before = len(c["stepfunctions"].list_executions(stateMachineArn=arn)["executions"])
    # Enough documents that following outlasts the Ctrl-C under any load (warm stage
    # services finish two small files in about a second).
    files = []
    for i in range(16):
        src = REPO / "samples" / ("annual-report-2025.pdf", "pipeline-runbook.pdf")[i % 2]
        files.append(tmp_path / f"ctrlc-{i:02d}.pdf")
        files[-1].write_bytes(src.read_bytes())
    # A terminal's Ctrl-C, whatever this test inherited: a shell's background job starts
    # with SIGINT ignored, and its children would ignore it too.
    proc = subprocess.Popen([*DOCPIPE, "ingest", *map(str, files), "--prefix", "input/ctrlc/"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    bucket = local_stack["outputs"]["DocumentBucketName"]
    for _ in range(300):  # wait until it is following (an upload landed), then Ctrl-C
        if c["s3"].list_objects_v2(Bucket=bucket, Prefix="input/ctrlc/").get("KeyCount", 0):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "re-run" in err
    again = run_cli("ingest", *map(str, files), "--prefix", "input/ctrlc/", "--timeout", "300")
    assert again.returncode == 0, again.stdout + again.stderr
    for f in files:
        [item] = control_items(local_stack, f"input/ctrlc/{f.name}")
        assert item["status"] == "COMPLETED"
    after = len(c["stepfunctions"].list_executions(stateMachineArn=arn)["executions"])
    assert after - before == len(files), "one execution per file: nothing processed twice"
