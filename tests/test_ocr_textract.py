"""OCR through Amazon Textract (ray_jobs.ocr_textract), against a wire-level fake of the
service (tests/fakes/textract.py) reached through boto3 via AWS_ENDPOINT_URL_TEXTRACT.

Pages are really rendered (in the limited child) from a scanned corpus file without a
text layer; only the recognition is the fake's."""

from __future__ import annotations

import copy

import pytest
from conftest import corpus_file
from fakes.textract import FakeLine, FakeTextract

from docpipe import aws, errors
from ray_jobs import ocr_textract
from ray_jobs.ocr import S3Source, apply_ocr
from ray_jobs.pdf import extract_pdf
from ray_jobs.settings import StageSettings

ROMNEY = "unstructured/label-party/holistic-src/M_Romney_1040_2011-p15-p16.pdf"  # 2 scanned pages
SOURCE = S3Source(bucket="docpipe-documents", key="input/tax/romney.pdf", version_id="3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")


@pytest.fixture(scope="module")
def scanned():
    path = str(corpus_file(ROMNEY))
    result = extract_pdf(path, document_id="d1", processing_version="v1#abc")
    assert result.pages_with_text == 0 and result.page_count == 2
    return path, result.pages


@pytest.fixture
def textract(aws_env, monkeypatch):
    fake = FakeTextract().start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_TEXTRACT", fake.url)
    aws.reset_clients()
    sleeps: list[float] = []
    monkeypatch.setattr(ocr_textract, "sleep", sleeps.append)  # backoff and polling waits, recorded
    fake.sleeps = sleeps
    try:
        yield fake
    finally:
        fake.stop()
        aws.reset_clients()


def settings(**env: str) -> StageSettings:
    return StageSettings.from_env({"OCR_BACKEND": "textract", "TEXTRACT_MAX_ATTEMPTS": "4",
                                   "TEXTRACT_POLL_SECONDS": "2", **env})


def test_sync_per_page_recovers_from_throttling(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)
    textract.throttle_next("DetectDocumentText", 2)
    textract.answer_sync(
        ["SCHEDULE SE", FakeLine("(Form 1040)", left=0.6, top=0.05), "Self-Employment Tax"],
        [FakeLine("Form 1116", confidence=97.0), FakeLine("smudge", confidence=20.0), "Foreign Tax Credit"])

    outcome = apply_ocr(path, rows, settings())

    detect = textract.calls_of("DetectDocumentText")
    assert [c["code"] for c in detect] == ["ProvisionedThroughputExceededException"] * 2 + [None, None]
    assert all(c["params"]["Document"]["Bytes"]["format"] == "png" for c in detect)
    assert len(textract.sleeps) == 2 and all(0 <= s <= ocr_textract.BACKOFF_CAP_S for s in textract.sleeps)
    # Boxes on one row joined by a space; the line under OCR_MIN_CONFIDENCE (0.5) dropped.
    assert rows[0]["text"] == "SCHEDULE SE (Form 1040)\nSelf-Employment Tax"
    assert rows[1]["text"] == "Form 1116\nForeign Tax Credit"
    assert all(r["extractor"] == "ocr-textract" and r["has_text"] and r["ocr_error"] is None for r in rows)
    assert rows[0]["ocr_confidence"] == 0.99 and rows[1]["char_count"] == len(rows[1]["text"])
    assert (outcome.backend, outcome.engine, outcome.pages_attempted, outcome.pages_recovered) == ("textract", "textract", 2, 2)
    assert outcome.billable_pages == 2 and outcome.cost_usd == pytest.approx(2 * 0.0015)
    assert textract.calls_of("StartDocumentTextDetection") == []  # no S3 source: synchronous


def test_throttling_exhausted_raises_ocr_throttled(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)
    textract.throttle_next("DetectDocumentText", 50, code="ThrottlingException")

    with pytest.raises(errors.OcrThrottled, match=r"DetectDocumentText.*4 attempts"):
        apply_ocr(path, rows, settings())

    assert len(textract.calls_of("DetectDocumentText")) == 4  # ours only: botocore's retries are off
    assert len(textract.sleeps) == 3
    assert rows == pages  # nothing half-written


def test_bad_page_gets_ocr_error_and_the_others_are_read(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)
    textract.fail_next("DetectDocumentText", 1, "UnsupportedDocumentException", "Request has unsupported document format")
    textract.answer_sync(["Foreign Tax Credit"])

    outcome = apply_ocr(path, rows, settings())

    assert rows[0]["ocr_error"].startswith("textract: UnsupportedDocumentException")
    assert rows[0]["has_text"] is False and rows[0]["extractor"] == "pdfium"
    assert rows[1]["text"] == "Foreign Tax Credit" and rows[1]["ocr_error"] is None
    assert (outcome.page_errors, outcome.pages_recovered, outcome.billable_pages) == (1, 1, 1)


def test_async_job_multi_page_with_pagination(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)
    heartbeats: list[int] = []
    textract.script_job({1: ["SCHEDULE SE", "Self-Employment Tax", "Part I"],
                         2: ["Form 1116", "Foreign Tax Credit", "Part II"]},
                        polls_in_progress=2, blocks_per_response=3)

    outcome = apply_ocr(path, rows, settings(), source=SOURCE, heartbeat=lambda: heartbeats.append(1))

    start = textract.calls_of("StartDocumentTextDetection")
    assert [c["params"]["DocumentLocation"]["S3Object"] for c in start] == [
        {"Bucket": SOURCE.bucket, "Name": SOURCE.key, "Version": SOURCE.version_id}]
    gets = textract.calls_of("GetDocumentTextDetection")
    # 2 x IN_PROGRESS, then 2 pages x (PAGE + 3 LINE + 5 WORD... blocks) in pages of 3 blocks.
    assert len(gets) > 4 and [c["params"].get("NextToken") is not None for c in gets[:3]] == [False, False, False]
    assert all(c["params"]["MaxResults"] == 1000 for c in gets)
    assert textract.sleeps == [2.0, 2.0] and heartbeats
    assert textract.calls_of("DetectDocumentText") == []
    assert rows[0]["text"] == "SCHEDULE SE\nSelf-Employment Tax\nPart I"
    assert rows[1]["text"] == "Form 1116\nForeign Tax Credit\nPart II"
    assert outcome.billable_pages == 2 and outcome.cost_usd == pytest.approx(0.003)
    assert outcome.pages_recovered == 2 and outcome.page_errors == 0


def test_failed_job_falls_back_to_sync(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)
    textract.script_job({1: [], 2: []}, status="FAILED", status_message="Unable to read the PDF object")
    textract.answer_sync(["Self-Employment Tax"], ["Foreign Tax Credit"])

    outcome = apply_ocr(path, rows, settings(), source=SOURCE)

    assert len(textract.calls_of("StartDocumentTextDetection")) == 1
    assert len(textract.calls_of("DetectDocumentText")) == 2
    assert [r["text"] for r in rows] == ["Self-Employment Tax", "Foreign Tax Credit"]
    assert "Unable to read the PDF object" in outcome.note and "one by one" in outcome.note
    assert outcome.billable_pages == 2


def test_partial_success_fills_missing_pages_by_sync(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)
    textract.script_job({1: ["Self-Employment Tax"], 2: ["never returned"]}, status="PARTIAL_SUCCESS",
                        status_message="Some pages could not be processed", missing_pages=(2,))
    textract.answer_sync(["Foreign Tax Credit"])

    outcome = apply_ocr(path, rows, settings(TEXTRACT_PRICE_PER_PAGE="0.01"), source=SOURCE)

    assert len(textract.calls_of("DetectDocumentText")) == 1
    assert [r["text"] for r in rows] == ["Self-Employment Tax", "Foreign Tax Credit"]
    assert "partly succeeded" in outcome.note and "1 missing" in outcome.note
    # The job bills the document's pages (DocumentMetadata.Pages), the sync call one more.
    assert outcome.billable_pages == 3 and outcome.cost_usd == pytest.approx(0.03)


def test_async_only_for_documents_worth_a_job(textract, scanned):
    path, pages = scanned
    rows = copy.deepcopy(pages)

    outcome = apply_ocr(path, rows, settings(TEXTRACT_ASYNC_MIN_PAGES="3"), source=SOURCE)

    assert textract.calls_of("StartDocumentTextDetection") == []
    assert len(textract.calls_of("DetectDocumentText")) == 2 and outcome.pages_recovered == 2


def test_fake_validates_what_textract_does(textract):
    client = aws.client("textract", config=aws.retries(1))
    with pytest.raises(client.exceptions.UnsupportedDocumentException):
        client.detect_document_text(Document={"Bytes": b"%PDF-1.7 not an image"})
    with pytest.raises(client.exceptions.InvalidParameterException):
        client.start_document_text_detection(DocumentLocation={"S3Object": {"Name": "input/a.pdf"}})
    with pytest.raises(client.exceptions.InvalidJobIdException):
        client.get_document_text_detection(JobId="nope")
