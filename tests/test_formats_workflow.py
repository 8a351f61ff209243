"""Other formats and scans through IngestDocument on moto's Step Functions engine.

The real ASL and handlers, each stage run by the real ray_jobs entry point in-process
(FakeRayHead in conftest), as tests/test_ingest_workflow.py does for PDFs: a DOCX, an
HTML page, a Markdown file and a text file are routed by type, chunked, embedded and cited
by section; a scanned PDF is read by OCR; a damaged DOCX and an HTML page without text
fail with a code and a message, and the upload stays where it was.
"""

from __future__ import annotations

import io

import pytest
from conftest import corpus_file, entered_states, executions_for, history, local_aws_stack, wait_for_execution

from docpipe import identity

SCANNED_LOREM = "unstructured/example-docs/pdf/loremipsum-flat.pdf"
SCANNED_FORMS = "unstructured/label-party/holistic-src/M_Romney_1040_2011-p15-p16.pdf"  # 2 scanned pages


def docx_bytes() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Travel policy", level=0)
    d.add_heading("Booking flights", level=1)
    d.add_paragraph("Economy class is booked for flights under six hours; the travel desk approves exceptions.")
    d.add_heading("Hotels", level=1)
    d.add_paragraph("Hotel nights are reimbursed up to 180 euros in Frankfurt and 150 euros elsewhere.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "City", "Nightly cap"
    table.cell(1, 0).text, table.cell(1, 1).text = "Frankfurt", "180 EUR"
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


HTML = b"""<!doctype html><html><head><meta charset="windows-1252"><title>Release notes</title>
<style>body { color: red }</style><script>var hidden = "tracking pixel";</script></head>
<body><nav>Home | Docs</nav><h1>Release notes</h1>
<h2>Version 4.2</h2><p>The caf\xe9 ordering service now retries payment webhooks three times.</p>
<h2>Version 4.1</h2><p>Dark mode arrived for the kitchen display screens.</p></body></html>"""

MARKDOWN = b"""---
title: runbook
---
# Database runbook

## Failover

Promote the standby replica with `pg_ctl promote` and update the connection string secret.

## Backups

Nightly snapshots are kept for 35 days in the backup vault.
"""

TEXT = b"Meeting notes\n\nThe quarterly inventory count starts on 3 March at the Rotterdam warehouse.\n"


def run_upload(local_aws, key: str, body: bytes) -> tuple[dict, list[dict], dict]:
    stack, clients, _ = local_aws
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=key, Body=body)
    [execution] = executions_for(clients["stepfunctions"], stack.outputs["IngestDocumentStateMachineArn"], 1)
    desc = wait_for_execution(clients["stepfunctions"], execution["executionArn"])
    events = history(clients["stepfunctions"], execution["executionArn"])
    doc = identity.document_id(stack.outputs["DocumentBucketName"], key)
    items = clients["dynamodb"].query(TableName=stack.outputs["ControlTableName"],
                                      KeyConditionExpression="document_id = :d",
                                      ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    [item] = [{k: next(iter(v.values())) for k, v in i.items()} for i in items]
    return desc, events, item


def hits_for(item: dict, text: str) -> list[dict]:
    from ray_jobs.search import search

    return search(text, 3, {"document_id": item["document_id"]})


@pytest.mark.parametrize("key,body,document_type,question,section,words", [
    ("input/policies/travel.docx", None, "docx", "hotel reimbursement cap in Frankfurt",
     "section Travel policy › Hotels", "180 euros in Frankfurt"),
    ("input/site/release-notes.html", HTML, "html", "payment webhook retries",
     "section Release notes › Version 4.2", "café ordering service"),
    ("input/runbooks/db.md", MARKDOWN, "markdown", "how to promote the standby replica",
     "section Database runbook › Failover", "pg_ctl promote"),
    ("input/notes/meeting.txt", TEXT, "text", "when is the inventory count",
     "lines 1–3", "Rotterdam warehouse"),
])
def test_other_formats_are_routed_chunked_embedded_and_cited_by_section(
        local_aws, key, body, document_type, question, section, words):
    desc, events, item = run_upload(local_aws, key, body if body is not None else docx_bytes())
    assert desc["status"] == "SUCCEEDED", desc
    assert entered_states(events) == ["RegisterDocument", "AlreadyProcessed", "Extract", "Embed",
                                      "FinalizeDocument", "Done"]
    assert item["status"] == "COMPLETED" and item["document_type"] == document_type
    assert int(item["vectors"]) >= 1
    [best, *_] = hits_for(item, question)
    assert words in best["text"]
    from ray_jobs.search import citation

    assert citation(best) == f"{key}, {section}"
    if document_type == "html":  # what a reader never sees is not indexed
        assert "tracking pixel" not in best["text"] and "color: red" not in best["text"]


def test_scanned_pdf_is_read_by_ocr_and_searchable(local_aws):
    desc, _, item = run_upload(local_aws, "input/scans/lorem.pdf", corpus_file(SCANNED_LOREM).read_bytes())
    assert desc["status"] == "SUCCEEDED", desc
    assert item["status"] == "COMPLETED" and item["document_type"] == "pdf"
    assert int(item["pages_ocr"]) == 1 and item["ocr_engine"] == "rapidocr"
    assert float(item["ocr_cost_usd"]) == 0.0  # the local engine costs compute only
    [best, *_] = hits_for(item, "consectetur adipiscing elit")
    assert "consectetur adipiscing" in best["text"] and best["page_start"] == 1


def test_damaged_docx_fails_with_document_malformed_and_keeps_the_upload(local_aws):
    stack, clients, _ = local_aws
    key = "input/policies/broken.docx"
    desc, _, item = run_upload(local_aws, key, b"PK\x03\x04 this is no zip archive")
    assert desc["status"] == "FAILED"
    assert item["status"] == "FAILED" and item["error_code"] == "DocumentMalformed"
    assert "DOCX" in item["error_message"] and "save a new copy" in item["error_message"]
    bucket = stack.outputs["DocumentBucketName"]
    assert clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read().startswith(b"PK")
    base = f"errors/{item['document_id']}/{item['processing_version']}/"
    assert clients["s3"].head_object(Bucket=bucket, Key=base + "error.json")
    assert clients["s3"].get_object(Bucket=bucket, Key=base + "input.docx")["Body"].read().startswith(b"PK")


def test_html_without_text_fails_with_empty_document(local_aws):
    desc, _, item = run_upload(local_aws, "input/site/blank.html",
                               b"<html><head><script>track()</script></head><body>  </body></html>")
    assert desc["status"] == "FAILED"
    assert item["error_code"] == "EmptyDocument" and "html file has no text" in item["error_message"]


def test_scan_is_read_by_textract_with_ocr_backend_textract(aws_env, monkeypatch):
    """OcrBackend=textract: a multi-page scan goes to Textract's asynchronous API (the upload
    read in place, at its registered S3 version), and the pages it bills are counted."""
    from fakes.textract import FakeTextract

    from docpipe import aws

    with FakeTextract() as textract:
        textract.script_job({1: ["SCHEDULE SE", "Self-Employment Tax", "Net earnings from self-employment"],
                             2: ["Form 1116", "Foreign Tax Credit", "Individual, Estate, or Trust"]})
        monkeypatch.setenv("AWS_ENDPOINT_URL_TEXTRACT", textract.url)
        monkeypatch.setenv("TEXTRACT_POLL_SECONDS", "0.2")
        aws.reset_clients()
        with local_aws_stack({"OcrBackend": "textract"}) as env:
            stack = env[0]
            key = "input/tax/romney.pdf"
            desc, _, item = run_upload(env, key, corpus_file(SCANNED_FORMS).read_bytes())
            assert desc["status"] == "SUCCEEDED", desc
            assert item["status"] == "COMPLETED" and int(item["pages"]) == 2
            assert int(item["pages_ocr"]) == 2 and item["ocr_engine"] == "textract"
            assert float(item["ocr_cost_usd"]) == pytest.approx(2 * 0.0015)
            [start] = textract.calls_of("StartDocumentTextDetection")
            s3_object = start["params"]["DocumentLocation"]["S3Object"]
            assert (s3_object["Bucket"], s3_object["Name"]) == (stack.outputs["DocumentBucketName"], key)
            assert s3_object.get("Version") == item["s3_version_id"]
            assert not textract.calls_of("DetectDocumentText"), "a whole scan is one asynchronous job"
            [best, *_] = hits_for(item, "foreign tax credit form")
            assert "Foreign Tax Credit" in best["text"] and best["page_end"] == 2
    aws.reset_clients()
