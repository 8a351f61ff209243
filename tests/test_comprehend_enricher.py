"""ComprehendEnricher against botocore's Stubber (moto 5.2.5 has no BatchDetectEntities
/ BatchDetectKeyPhrases). The Stubber checks every request's parameters and validates
every canned response against Comprehend's service model. The Stubber answers before
botocore's retry loop, so the retry tests answer at the HTTP level instead (FakeComprehend)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from docpipe.errors import EnrichmentThrottled, StageFailed
from ray_jobs.backends.base import Enricher
from ray_jobs.backends.comprehend_enricher import (
    ComprehendEnricher,
    mask_spans,
    truncate_utf8,
    utf8_windows,
)


@pytest.fixture
def client():
    c = boto3.client("comprehend", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(c) as stubber:
        c.stubber = stubber  # handy in tests
        yield c
        stubber.assert_no_pending_responses()


def entities_response(texts: list[str]) -> dict:
    return {
        "ResultList": [
            {"Index": i, "Entities": [
                {"Type": "ORGANIZATION", "Text": "Acme Corp", "Score": 0.99, "BeginOffset": 0, "EndOffset": 9},
                {"Type": "DATE", "Text": "2024", "Score": 0.95, "BeginOffset": 10, "EndOffset": 14},
                {"Type": "ORGANIZATION", "Text": "ACME CORP", "Score": 0.90, "BeginOffset": 20, "EndOffset": 29},
            ]}
            for i in range(len(texts))
        ],
        "ErrorList": [],
    }


def phrases_response(texts: list[str]) -> dict:
    return {
        "ResultList": [
            {"Index": i, "KeyPhrases": [
                {"Text": f"phrase {t[:6]}", "Score": 0.9, "BeginOffset": 0, "EndOffset": 6},
                {"Text": "the revenue", "Score": 0.9, "BeginOffset": 0, "EndOffset": 6},
                {"Text": "The Revenue", "Score": 0.8, "BeginOffset": 7, "EndOffset": 12},
            ]}
            for i, t in enumerate(texts)
        ],
        "ErrorList": [],
    }


def expect_batch(client, texts: list[str], language: str = "en") -> None:
    params = {"TextList": texts, "LanguageCode": language}
    client.stubber.add_response("batch_detect_entities", entities_response(texts), params)
    client.stubber.add_response("batch_detect_key_phrases", phrases_response(texts), params)


def make(client, **kwargs) -> tuple[ComprehendEnricher, list[float]]:
    slept: list[float] = []
    kwargs.setdefault("sleep", slept.append)
    return ComprehendEnricher(client, **kwargs), slept


def test_is_an_enricher(client):
    enricher, _ = make(client)
    assert isinstance(enricher, Enricher) and enricher.name == "comprehend"


def test_batches_of_at_most_25_and_output_shape(client):
    texts = [f"text {i:02d} about Acme Corp in 2024" for i in range(60)]
    for start in (0, 25, 50):  # 25 + 25 + 10, each batch: entities then key phrases
        expect_batch(client, texts[start:start + 25])
    enricher, _ = make(client)
    out = enricher.enrich(texts)
    assert len(out) == 60
    assert out[0]["entities"] == [{"type": "ORGANIZATION", "text": "Acme Corp"}, {"type": "DATE", "text": "2024"}]
    assert out[59]["key_phrases"] == ["phrase text 5", "the revenue"]  # de-duplicated, first kept
    assert "pii" not in out[0] and "masked_text" not in out[0]


def test_text_over_5kb_is_cut_on_a_utf8_boundary(client):
    long_text = "é" * 3000  # 6000 bytes; 4,999 bytes would split the 2,500th "é"
    cut = "é" * 2499
    expect_batch(client, [cut, "short"])
    enricher, _ = make(client)
    enricher.enrich([long_text, "short"])
    assert len(cut.encode()) == 4998


def test_truncate_and_window_helpers():
    assert truncate_utf8("abc", 10) == "abc"
    assert truncate_utf8("a😀b", 4) == "a"  # the 4-byte emoji would be split: dropped
    assert truncate_utf8("a😀b", 5) == "a😀"
    text = "€" * 100 + "x" * 50  # 300 + 50 bytes
    windows = utf8_windows(text, 64)
    assert "".join(p for _, p in windows) == text
    assert all(len(p.encode()) <= 64 for _, p in windows)
    assert [o for o, _ in windows][:3] == [0, 21, 42]


def test_empty_texts_make_no_call(client):
    enricher, _ = make(client)
    assert enricher.enrich(["", "   "]) == [{"key_phrases": [], "entities": []}] * 2


def test_pii_mask_replaces_spans_before_analysis(client):
    text = "Contact John Smith at john@example.com today."
    client.stubber.add_response(
        "detect_pii_entities",
        {"Entities": [
            {"Type": "NAME", "Score": 0.99, "BeginOffset": 8, "EndOffset": 18},
            {"Type": "EMAIL", "Score": 0.99, "BeginOffset": 22, "EndOffset": 38},
        ]},
        {"Text": text, "LanguageCode": "en"},
    )
    masked = "Contact [NAME] at [EMAIL] today."
    expect_batch(client, [masked])  # entities and key phrases never see the PII
    enricher, _ = make(client, pii="mask")
    (out,) = enricher.enrich([text])
    assert out["masked_text"] == masked
    assert out["pii"] == [
        {"type": "NAME", "begin": 8, "end": 18, "score": 0.99},
        {"type": "EMAIL", "begin": 22, "end": 38, "score": 0.99},
    ]
    assert "John" not in repr(out["pii"])


def test_pii_detect_keeps_the_text(client):
    text = "Call 555-0100."
    client.stubber.add_response(
        "detect_pii_entities",
        {"Entities": [{"Type": "PHONE", "Score": 0.9, "BeginOffset": 5, "EndOffset": 13}]},
        {"Text": text, "LanguageCode": "de"},
    )
    expect_batch(client, [text], language="de")
    enricher, _ = make(client, pii="detect", language="de")
    (out,) = enricher.enrich([text])
    assert out["pii"][0]["type"] == "PHONE" and "masked_text" not in out


def test_mask_spans_merges_overlaps():
    spans = [{"type": "NAME", "begin": 0, "end": 4}, {"type": "ADDRESS", "begin": 2, "end": 8}]
    assert mask_spans("abcdefghij", spans) == "[NAME]ij"


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **kwargs):
        yield self.data


class FakeComprehend:
    """Comprehend's HTTP answers, given under botocore's retry loop (a before-send hook),
    so the enricher's own client retries as it would against AWS; its pauses are recorded,
    not slept. Each answer is (status, JSON body) or an exception; the last one repeats."""

    def __init__(self, client, monkeypatch, *answers) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.pauses: list[float] = []
        client.meta.events.register("before-send.comprehend", self._send)
        monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount",
                            lambda _self, context: self.pauses.append(1.0) or 0.0)

    def _send(self, request, **kwargs):
        self.requests.append(json.loads(request.body))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return AWSResponse(request.url, status, {"Content-Type": "application/x-amz-json-1.1"},
                           _Body(json.dumps(body).encode()))


def throttled(code: str = "ThrottlingException", status: int = 400) -> tuple[int, dict]:
    return status, {"__type": code, "message": "slow down"}


def test_throttling_is_retried_by_the_client(aws_env, monkeypatch):
    texts = ["Acme Corp grew."]
    enricher = ComprehendEnricher(sleep=lambda s: None)
    fake = FakeComprehend(enricher.client, monkeypatch, throttled(), throttled("InternalServerException", 500),
                          (200, entities_response(texts)), (200, phrases_response(texts)))
    (out,) = enricher.enrich(texts)
    assert out["entities"][0] == {"type": "ORGANIZATION", "text": "Acme Corp"}
    assert len(fake.requests) == 4 and len(fake.pauses) == 2  # 3 entity attempts, 1 key phrases


def test_persistent_throttling_raises_enrichment_throttled(aws_env, monkeypatch):
    enricher = ComprehendEnricher(max_attempts=3)
    fake = FakeComprehend(enricher.client, monkeypatch, throttled())
    with pytest.raises(EnrichmentThrottled, match="after 3 attempts"):
        enricher.enrich(["Acme Corp grew."])
    assert len(fake.requests) == 3


def test_unreachable_comprehend_raises_enrichment_throttled(aws_env, monkeypatch):
    enricher = ComprehendEnricher(max_attempts=2)
    fake = FakeComprehend(enricher.client, monkeypatch, EndpointConnectionError(endpoint_url="https://comprehend"))
    with pytest.raises(EnrichmentThrottled, match="unreachable"):
        enricher.enrich(["Acme Corp grew."])
    assert len(fake.requests) == 2


def test_a_refused_call_is_not_retried_by_the_client(aws_env, monkeypatch):
    enricher = ComprehendEnricher(language="xx")
    fake = FakeComprehend(enricher.client, monkeypatch, throttled("UnsupportedLanguageException"))
    with pytest.raises(StageFailed, match="UnsupportedLanguageException"):
        enricher.enrich(["text"])
    assert len(fake.requests) == 1


def test_non_transient_error_is_not_retried(client):
    client.stubber.add_client_error("batch_detect_entities", "UnsupportedLanguageException", http_status_code=400)
    enricher, slept = make(client, language="xx")
    with pytest.raises(StageFailed, match="UnsupportedLanguageException"):
        enricher.enrich(["text"])
    assert slept == []


def test_per_text_errors_in_a_batch(client):
    texts = ["first text", "second text", "third text"]
    client.stubber.add_response(
        "batch_detect_entities",
        {"ResultList": [{"Index": 0, "Entities": []}],
         "ErrorList": [
             {"Index": 1, "ErrorCode": "InternalServerException", "ErrorMessage": "try again"},
             {"Index": 2, "ErrorCode": "TextSizeLimitExceededException", "ErrorMessage": "too long"},
         ]},
        {"TextList": texts, "LanguageCode": "en"},
    )
    # Only the transient failure is sent again.
    client.stubber.add_response("batch_detect_entities", entities_response(["second text"]),
                                {"TextList": ["second text"], "LanguageCode": "en"})
    client.stubber.add_response("batch_detect_key_phrases", phrases_response(texts),
                                {"TextList": texts, "LanguageCode": "en"})
    enricher, slept = make(client)
    out = enricher.enrich(texts)
    assert out[0]["entities"] == [] and "enrichment_error" not in out[0]
    assert out[1]["entities"][0]["text"] == "Acme Corp"
    assert out[2]["entities"] == [] and out[2]["enrichment_error"] == "TextSizeLimitExceededException"
    assert len(slept) == 1


def test_from_env():
    enricher = ComprehendEnricher.from_env({"COMPREHEND_LANGUAGE": "fr", "COMPREHEND_PII": "MASK"})
    assert (enricher.language, enricher.pii) == ("fr", "mask")
    assert ComprehendEnricher.from_env({}).pii == "off"
    with pytest.raises(ValueError, match="COMPREHEND_PII"):
        ComprehendEnricher.from_env({"COMPREHEND_PII": "redact"})
