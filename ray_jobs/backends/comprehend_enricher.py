"""Production enricher: Amazon Comprehend entities and key phrases (PII optional).

Environment (``ComprehendEnricher.from_env``):

| env var              | meaning                                                       |
|----------------------|---------------------------------------------------------------|
| COMPREHEND_LANGUAGE  | language code of the documents, default ``en``                |
| COMPREHEND_PII       | ``off`` (default), ``detect`` or ``mask``                     |
| COMPREHEND_MAX_ATTEMPTS | attempts per call on throttling / 5xx, default 5          |

Output per text: ``{"key_phrases": [str], "entities": [{"type", "text"}]}``, plus with
PII on ``"pii": [{"type", "begin", "end", "score"}]`` (character offsets into the text;
the PII strings themselves are deliberately not copied into the output) and, with
``mask``, ``"masked_text"``: the text with every PII span replaced by ``[TYPE]``
(e.g. ``[EMAIL]``). Entity types are Comprehend's, upper-case as the local enricher's
(PERSON, ORGANIZATION, DATE, QUANTITY, LOCATION, ...). Key phrases and entities are
de-duplicated (case-insensitively), first occurrence first. An empty text gets empty
lists without a call.

Calls and limits: BatchDetectEntities and BatchDetectKeyPhrases with at most 25 texts
per call; each text is cut to at most 4,999 bytes of UTF-8 (the API says "fewer than
5,000 bytes"), at a character boundary so no character is split: entities and key
phrases describe the first ~5 KB of a longer text, which chunks normally fit in.
DetectPiiEntities (no batch API) runs once per text on windows of at most 99,999 bytes.
With ``mask``, PII is detected first and entities/key phrases are computed on the
masked text, so no PII leaks into them.

Retries: botocore's own, in its standard mode with ``max_attempts`` attempts per call
(throttling, 5xx and connection errors, exponential backoff with jitter). When they run
out, ``docpipe.errors.EnrichmentThrottled`` is raised (the ASL retries the stage); any
other refusal of a whole call raises ``StageFailed``. A batch's per-text
``InternalServerException`` entries come back in a successful response, which botocore
cannot retry: those texts are sent again with ``ray_jobs.backends.retry.Backoff``, up to
``max_attempts`` times. A text Comprehend refuses on its own (e.g. unsupported language)
gets empty lists and an ``"enrichment_error"`` code instead of failing the document.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from docpipe import aws
from docpipe.errors import EnrichmentThrottled, StageFailed
from ray_jobs.backends.retry import Backoff

log = logging.getLogger(__name__)

MAX_BATCH = 25
MAX_TEXT_BYTES = 4999
MAX_PII_BYTES = 99_999
PII_MODES = ("off", "detect", "mask")
RETRYABLE_CODES = {
    "ThrottlingException",
    "TooManyRequestsException",
    "ThrottledException",
    "InternalServerException",
    "InternalServerError",
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
}


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding is at most ``max_bytes``,
    never splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")  # drops a cut trailing char


def utf8_windows(text: str, max_bytes: int) -> list[tuple[int, str]]:
    """``text`` cut into consecutive (char_offset, piece) windows of <= max_bytes each."""
    out: list[tuple[int, str]] = []
    offset = 0
    while offset < len(text):
        piece = truncate_utf8(text[offset:], max_bytes)
        if not piece:  # cannot happen for max_bytes >= 4; guards an endless loop
            raise ValueError("max_bytes too small for one character")
        out.append((offset, piece))
        offset += len(piece)
    return out


def mask_spans(text: str, spans: list[dict[str, Any]]) -> str:
    """Replace each span (``begin``/``end`` char offsets) by ``[TYPE]``; overlapping
    spans are merged under the first one's type."""
    merged: list[list[Any]] = []
    for span in sorted(spans, key=lambda s: (s["begin"], -s["end"])):
        if merged and span["begin"] < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], span["end"])
        else:
            merged.append([span["begin"], span["end"], span["type"]])
    out, pos = [], 0
    for begin, end, type_ in merged:
        out.append(text[pos:begin])
        out.append(f"[{type_}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _dedupe(items: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    seen: set[Any] = set()
    out: list[Any] = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


class ComprehendEnricher:
    name = "comprehend"

    def __init__(
        self,
        client: Any = None,
        *,
        language: str = "en",
        pii: str = "off",
        max_attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        batch_size: int = MAX_BATCH,
        max_text_bytes: int = MAX_TEXT_BYTES,
        max_pii_bytes: int = MAX_PII_BYTES,
    ) -> None:
        if pii not in PII_MODES:
            raise ValueError(f"COMPREHEND_PII={pii!r}: expected one of {', '.join(PII_MODES)}")
        self._client = client
        self.language = language
        self.pii = pii
        self.max_attempts = max(1, max_attempts)
        # Re-sends of the texts a batch answered with a transient per-text error.
        self._resends = Backoff(self.max_attempts, base_delay, max_delay, sleep, rng)
        self.batch_size = min(batch_size, MAX_BATCH)
        self.max_text_bytes = min(max_text_bytes, MAX_TEXT_BYTES)
        self.max_pii_bytes = min(max_pii_bytes, MAX_PII_BYTES)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> ComprehendEnricher:
        from ray_jobs.settings import StageSettings

        settings = StageSettings.from_env(env)
        kwargs.setdefault("max_attempts", settings.comprehend_max_attempts)
        return cls(
            language=settings.comprehend_language,
            pii=settings.comprehend_pii,
            **kwargs,
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("comprehend", config=aws.retries(self.max_attempts))
        return self._client

    def _call(self, op: str, **params: Any) -> dict[str, Any]:
        """One call; the client has done its retries when this raises."""
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            return cast(dict[str, Any], getattr(self.client, op)(**params))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in RETRYABLE_CODES or status >= 500:
                raise EnrichmentThrottled(
                    f"Comprehend {op} still throttled or failing after {self.max_attempts} attempts: {exc}"
                ) from exc
            raise StageFailed(f"Comprehend {op} refused the request: {code}: {exc}") from exc
        except (BotoConnectionError, HTTPClientError) as exc:  # refused, reset, timed out
            raise EnrichmentThrottled(f"Comprehend {op} unreachable after {self.max_attempts} attempts: {exc}") from exc

    def _batch(self, op: str, texts: list[str]) -> list[tuple[list[dict[str, Any]] | None, str | None]]:
        """Per text: (the result's item list, None) or (None, error code)."""
        field = "Entities" if op == "batch_detect_entities" else "KeyPhrases"
        results: dict[int, tuple[list[dict[str, Any]] | None, str | None]] = {}
        pending = list(range(len(texts)))

        def send_pending() -> bool:
            nonlocal pending
            response = self._call(op, TextList=[texts[i] for i in pending], LanguageCode=self.language)
            resend: list[int] = []
            for item in response.get("ResultList", []):
                results[pending[item["Index"]]] = (item.get(field, []), None)
            for err in response.get("ErrorList", []):
                original = pending[err["Index"]]
                if err.get("ErrorCode") in RETRYABLE_CODES:
                    resend.append(original)
                else:
                    log.warning("Comprehend %s refused text %d: %s %s", op, original,
                                err.get("ErrorCode"), err.get("ErrorMessage"))
                    results[original] = (None, err.get("ErrorCode") or "Error")
            pending = sorted(resend)
            return not pending

        if not self._resends.until(send_pending):
            raise EnrichmentThrottled(
                f"Comprehend {op}: {len(pending)} texts still failing after {self.max_attempts} attempts"
            )
        return [results.get(i, ([], None)) for i in range(len(texts))]

    def _detect_pii(self, text: str) -> list[dict[str, Any]]:
        spans: list[dict[str, Any]] = []
        for offset, piece in utf8_windows(text, self.max_pii_bytes):
            if not piece.strip():
                continue
            response = self._call("detect_pii_entities", Text=piece, LanguageCode=self.language)
            for ent in response.get("Entities", []):
                spans.append({
                    "type": str(ent["Type"]).upper(),
                    "begin": offset + int(ent["BeginOffset"]),
                    "end": offset + int(ent["EndOffset"]),
                    "score": float(ent.get("Score", 0.0)),
                })
        return sorted(spans, key=lambda s: (s["begin"], s["end"]))

    def enrich(self, texts: list[str]) -> list[dict[str, Any]]:
        texts = list(texts)
        out: list[dict[str, Any]] = [{"key_phrases": [], "entities": []} for _ in texts]
        analysed = list(texts)
        if self.pii != "off":
            for i, text in enumerate(texts):
                spans = self._detect_pii(text) if text.strip() else []
                out[i]["pii"] = spans
                if self.pii == "mask":
                    analysed[i] = mask_spans(text, spans)
                    out[i]["masked_text"] = analysed[i]
        todo = [i for i, t in enumerate(analysed) if t.strip()]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            batch = [truncate_utf8(analysed[i], self.max_text_bytes) for i in idx]
            entities = self._batch("batch_detect_entities", batch)
            phrases = self._batch("batch_detect_key_phrases", batch)
            for i, (ents, ent_err), (kps, kp_err) in zip(idx, entities, phrases, strict=True):
                out[i]["entities"] = _dedupe(
                    [{"type": str(e["Type"]).upper(), "text": e["Text"]} for e in ents or []],
                    key=lambda e: (e["type"], e["text"].casefold()),
                )
                out[i]["key_phrases"] = _dedupe([k["Text"] for k in kps or []], key=str.casefold)
                if ent_err or kp_err:
                    out[i]["enrichment_error"] = ent_err or kp_err
        return out
