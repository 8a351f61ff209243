"""The chunks that answer a text: the one search behind `docpipe query` (the local index),
the console and the Query function (the deployed index, ray_jobs/query_function.py).

The text is embedded by the configured embedder and looked up in the configured vector
store (EMBEDDING_BACKEND, VECTOR_STORE_BACKEND and their settings, ray_jobs/backends), so a
query is embedded by the same model the embed stage used. Both come from `ray_jobs.warm`:
a warm process (a Lambda container between invocations) loads the model and opens the
index once.

Modes (QUERY_MODE, or per query): ``vector`` (cosine similarity of the embeddings),
``keyword`` (BM25 over the chunk text, the store's ``keyword_query``) and ``hybrid``: the
best ``max(50, 4 * top_k)`` of each, fused by reciprocal rank (score = the sum over both
lists of 1 / (60 + rank), ranks from 1; equal scores ordered by vector rank).

A hit is ``{"id", "score", "mode", "ranks": {"vector", "keyword"}, **metadata, "match"}``:
the vector id, the mode's score (cosine, BM25 or RRF), the hit's rank in each list it was
found in, the chunk's metadata of docs/architecture.md (document_id, processing_version,
chunk_index, page_start, page_end, s3_key, locator, text, char_start, char_end,
entity_types, key_phrases, entities) and the sentence of the chunk that best answers the
text with its span in the document text (`matched_sentence`). `where_in_document` and
`citation` say where a hit is the same way everywhere (CLI, console).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

DEFAULT_TOP_K = 5
MAX_TOP_K = 100
MAX_TEXT_CHARS = 10_000
MODES = ("vector", "keyword", "hybrid")
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al., 2009)
MIN_CANDIDATES = 50  # each list's depth before fusion: max(50, 4 * top_k)
# A text file's locator (ray_jobs.formats.text_sections): "line 7", "lines 1–40 (part 2)".
_LINES = re.compile(r"lines? \d")
# Metadata both stores can filter on (ray_jobs/backends/base.py); `text` is not one.
FILTER_FIELDS = ("document_id", "processing_version", "chunk_index", "page_start", "page_end", "s3_key",
                 "locator", "entity_types", "key_phrases", "entities")
INTEGER_FIELDS = ("chunk_index", "page_start", "page_end")
LIST_FIELDS = ("entity_types", "key_phrases", "entities")
_OFFSETS = ("char_start", "char_end")
_OPERATORS = ("$eq", "$in", "$gte", "$lte")
WHERE_KEYS = ("document", "entity", "phrase", "pages", "page")
_DOCUMENT_ID = re.compile(r"[0-9a-f]{32}")  # docpipe.identity.document_id
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_ENTITY_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")
_PAGES = re.compile(r"(\d+)\s*[-–]\s*(\d+)")

# Sentence ends (a Western stop needs the space after it; a CJK one needs none) and
# paragraph breaks, as ray_jobs.chunking cuts; a "sentence" still longer than
# _LONG_SENTENCE (a table, a list) is cut again at its line breaks.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？]+[」』”’)）]*|\n[ \t]*\n")
_LONG_SENTENCE = 400


class BadQuery(ValueError):
    """The request itself is wrong (the caller can fix it): empty text, top_k out of range,
    an unknown mode, filter field or --where key."""


class SentenceMatch(TypedDict):
    sentence: str
    char_start: int | None  # in the document text; None for an index without chunk offsets
    char_end: int | None


Similarity = Callable[[list[str]], list[float]]


# --------------------------------------------------------------------------- search


def search(text: object, top_k: object = DEFAULT_TOP_K, filter: object = None,
           mode: object = None) -> list[dict[str, Any]]:
    """The `top_k` hits for `text`, best first, optionally restricted by `filter` (see
    `check`), in `mode` (None: QUERY_MODE)."""
    from ray_jobs import warm

    text, top_k, where = check(text, top_k, filter)
    asked = mode is not None
    mode = query_mode(mode)
    store = warm.vector_store()
    depth = top_k if mode != "hybrid" else max(MIN_CANDIDATES, 4 * top_k)
    by_keyword = _keyword_query(store, text, depth, where, strict=asked and mode == "keyword") \
        if mode != "vector" else None
    if by_keyword is None and mode != "vector":
        # The store cannot search by keyword (a cosine Pinecone index): hybrid, and the
        # default mode when it is keyword, run as vector; the hits say what ran.
        mode, depth = "vector", top_k
    vector: list[float] | None = None
    if mode != "keyword":
        vector = _embed([text])[0]
    by_vector = store.query(vector, top_k=depth, filter=where) if vector is not None else []
    by_keyword = by_keyword or []
    if mode == "vector":
        hits = [_hit(m.id, m.score, mode, m.metadata, vector=n) for n, m in enumerate(by_vector, 1)]
    elif mode == "keyword":
        hits = [_hit(m.id, m.score, mode, m.metadata, keyword=n) for n, m in enumerate(by_keyword, 1)]
    else:
        metadata = {m.id: m.metadata for m in [*by_keyword, *by_vector]}  # the vector's copy wins
        hits = [_hit(i, score, mode, metadata[i], **ranks)
                for i, score, ranks in fuse([m.id for m in by_vector], [m.id for m in by_keyword],
                                            vector_weight=_vector_weight())[:top_k]]
    similarity = _similarity(text, vector)
    for hit, match in zip(hits, matched_sentences(hits, text, similarity), strict=True):
        hit["match"] = match
    return hits


def _keyword_query(store: Any, text: str, top_k: int, where: dict[str, Any] | None,
                   strict: bool) -> list[Any] | None:
    """The store's keyword hits; None (logged) when it cannot search by keyword, e.g. a
    Pinecone index without the dotproduct metric. Keyword mode asked for by name
    (`strict`) then is a BadQuery; the default mode and hybrid run as vector."""
    from ray_jobs.backends.base import KeywordSearchUnavailable

    try:
        return list(store.keyword_query(text, top_k=top_k, filter=where))
    except KeywordSearchUnavailable as e:
        if strict:  # keyword mode asked for by name
            raise BadQuery(str(e)) from e
        from ray_jobs.log import logger

        logger.warning("keyword search unavailable, ran as vector: %s", e)
        return None


def fuse(vector_ids: Sequence[str], keyword_ids: Sequence[str],
         k: int = RRF_K, vector_weight: float = 1.0) -> list[tuple[str, float, dict[str, int | None]]]:
    """Reciprocal rank fusion of two rankings (best first): (id, score, {"vector": rank,
    "keyword": rank}) best first; score = 1 / (k + keyword rank) + vector_weight / (k +
    vector rank), each term only for a list the id is in (ranks from 1). Equal scores: the
    better vector rank first (an id only the keyword list has comes after), then the
    better keyword rank."""
    ranks: dict[str, dict[str, int | None]] = {}
    for name, ids in (("vector", vector_ids), ("keyword", keyword_ids)):
        for n, i in enumerate(ids, 1):
            ranked = ranks.setdefault(i, {"vector": None, "keyword": None})
            if ranked[name] is None:  # a list naming an id twice: its better rank counts
                ranked[name] = n
    def score(r: dict[str, int | None]) -> float:
        vector, keyword = r["vector"], r["keyword"]
        return (vector_weight / (k + vector) if vector else 0.0) + (1.0 / (k + keyword) if keyword else 0.0)

    fused = [(i, score(r), r) for i, r in ranks.items()]
    none_last = math.inf
    fused.sort(key=lambda f: (-f[1], f[2]["vector"] or none_last, f[2]["keyword"] or none_last))
    return fused


def _vector_weight() -> float:
    from ray_jobs.settings import StageSettings

    return StageSettings.from_env().hybrid_vector_weight


def query_mode(mode: object) -> str:
    """`mode` checked; None = QUERY_MODE (StageSettings.query_mode)."""
    if mode is None:
        from ray_jobs.settings import StageSettings

        mode, source = StageSettings.from_env().query_mode, "QUERY_MODE"
    else:
        source = "mode"
    if mode not in MODES:
        raise BadQuery(f"{source} must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def _hit(id: str, score: float, mode: str, metadata: dict[str, Any], vector: int | None = None,
         keyword: int | None = None) -> dict[str, Any]:
    return {"id": id, "score": float(score), "mode": mode, "ranks": {"vector": vector, "keyword": keyword},
            **_integers(metadata)}


def _integers(metadata: dict[str, Any]) -> dict[str, Any]:
    # Pinecone keeps every number as a float: page 3 comes back as 3.0.
    return {k: int(v) if k in (*INTEGER_FIELDS, *_OFFSETS) and isinstance(v, float) and v.is_integer() else v
            for k, v in metadata.items()}


def _embed(texts: list[str]) -> list[list[float]]:
    from ray_jobs import warm

    return [[float(v) for v in vector] for vector in warm.embedder().embed(texts).vectors]


def _similarity(query: str, query_vector: Sequence[float] | None) -> Similarity:
    """Cosine similarity of sentences to the query, by the warm embedder (the query is
    embedded only if a tie needs it and no vector came with it)."""
    import numpy as np

    known: list[Sequence[float]] = [query_vector] if query_vector is not None else []

    def similarity(sentences: list[str]) -> list[float]:
        if not known:
            known.append(_embed([query])[0])
        q = np.asarray(known[0], dtype=np.float64)
        s = np.asarray(_embed(sentences), dtype=np.float64)
        norms = np.linalg.norm(s, axis=1) * (np.linalg.norm(q) or 1.0)
        return [float(x) for x in (s @ q) / np.where(norms == 0, 1.0, norms)]

    return similarity


# --------------------------------------------------------------------------- matched sentence


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """The sentences of `text` as (start, end) offsets, whitespace trimmed: cut after a
    sentence end or at a blank line, and a sentence over 400 characters again at its
    line breaks."""
    cuts = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    spans: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        pieces = [(a, b)]
        if b - a > _LONG_SENTENCE:
            bounds = [a, *(a + m.end() for m in re.finditer(r"\n", text[a:b])), b]
            pieces = list(itertools.pairwise(bounds))
        for x, y in pieces:
            piece = text[x:y]
            start = x + len(piece) - len(piece.lstrip())
            end = y - (len(piece) - len(piece.rstrip()))
            if start < end:
                spans.append((start, end))
    return spans


def _tied_best(text: str, spans: list[tuple[int, int]], wanted: set[str]) -> list[int]:
    """Indices of the spans with the most query-term overlap: the query's distinct terms
    (`wanted`, ray_jobs.keywords.terms of the query) a sentence has, each weighted by how rare it is among the
    chunk's sentences (log(1 + n / df)) and, if a stopword, by keywords.STOPWORD_WEIGHT,
    so "the" cannot outweigh "revenue". No overlap at all: every span."""
    from ray_jobs import keywords

    has = [wanted & set(keywords.terms(text[a:b])) for a, b in spans]
    df: dict[str, int] = {}
    for found in has:
        for t in found:
            df[t] = df.get(t, 0) + 1
    def weight(t: str) -> float:  # keywords' own stopword weight, as its sparse queries
        return math.log1p(len(spans) / df[t]) * (keywords.STOPWORD_WEIGHT if t in keywords.STOPWORDS else 1.0)

    scores = [round(sum(weight(t) for t in found), 9) for found in has]
    best = max(scores)
    return [n for n, s in enumerate(scores) if s == best]


def matched_sentences(hits: Sequence[dict[str, Any]], query: str,
                      similarity: Similarity | None = None) -> list[SentenceMatch | None]:
    """`matched_sentence` of each hit, with one embedding call for all the ties."""
    from ray_jobs import keywords

    wanted = set(keywords.terms(query))  # once for all the hits
    chosen: list[tuple[str, list[tuple[int, int]], list[int]]] = []
    ties: list[str] = []
    for hit in hits:
        text = str(hit.get("text") or "")
        spans = sentence_spans(text)
        best = _tied_best(text, spans, wanted) if spans else []
        chosen.append((text, spans, best))
        if len(best) > 1 and similarity is not None:
            ties += [text[a:b] for a, b in (spans[n] for n in best)]
    scores = iter(similarity(ties) if ties and similarity is not None else [])
    out: list[SentenceMatch | None] = []
    for hit, (text, spans, best) in zip(hits, chosen, strict=True):
        if not best:
            out.append(None)
            continue
        pick = best[0]
        if len(best) > 1 and similarity is not None:
            tie_scores = [next(scores) for _ in best]
            pick = best[max(range(len(best)), key=lambda n: (tie_scores[n], -n))]
        a, b = spans[pick]
        base = hit.get("char_start")
        offset = int(base) if isinstance(base, (int, float)) and not isinstance(base, bool) else None
        out.append({"sentence": text[a:b], "char_start": None if offset is None else offset + a,
                    "char_end": None if offset is None else offset + b})
    return out


def matched_sentence(hit: dict[str, Any], query: str,
                     query_vector: Sequence[float] | None = None) -> SentenceMatch | None:
    """The sentence of the hit's text that best answers `query`: the most query-term
    overlap, then (a tie, or no overlap at all) the highest embedding similarity to the
    query (the warm embedder's; `query_vector` saves embedding the query again). Its
    span is in DOCUMENT offsets (the chunk's char_start + the offset in the chunk, so
    ``document_text[char_start:char_end] == sentence``); None offsets for a chunk
    without char_start (an index written before chunks had offsets). None for a hit
    without text."""
    return matched_sentences([hit], query, _similarity(query, query_vector))[0]


# --------------------------------------------------------------------------- citations


def where_in_document(hit: dict[str, Any], chars: bool = False) -> str:
    """"section Setup › Install" for a DOCX/HTML/Markdown hit (its locator), a text file's
    "line 7" / "lines 1–40" as they are, "page 3" or "pages 3–4" for a PDF's; "" when the
    hit says neither. With `chars`, the span of the matched sentence (else of the chunk)
    in the document text follows: "page 3, chars 1200–1290"."""
    if hit.get("locator"):
        locator = str(hit["locator"])
        where = locator if _LINES.match(locator) else f"section {locator}"
    else:
        start, end = hit.get("page_start"), hit.get("page_end")
        where = "" if start is None else f"page {start}" if end in (None, start) else f"pages {start}–{end}"
    span = char_span(hit) if chars else ""
    return ", ".join(p for p in (where, span) if p)


def char_span(hit: dict[str, Any]) -> str:
    """"chars 1200–1290": where the matched sentence (else the chunk) is in the document
    text; "" when the index has no offsets."""
    for source in (hit.get("match") or {}, hit):
        start, end = source.get("char_start"), source.get("char_end")
        if start is not None and end is not None:
            return f"chars {int(start)}–{int(end)}"
    return ""


def citation(hit: dict[str, Any], chars: bool = False) -> str:
    """The document and the place in it: "input/report.pdf, pages 3–4" (with `chars`,
    "input/report.pdf, pages 3–4, chars 1200–1290")."""
    where = where_in_document(hit, chars)
    return f"{hit.get('s3_key', '')}, {where}" if where else str(hit.get("s3_key", ""))


# --------------------------------------------------------------------------- requests


def check(text: Any, top_k: Any, filter: Any) -> tuple[str, int, dict[str, Any] | None]:
    """The request's values, validated; the filter in the operator form both stores
    accept. A filter is {field: condition} (fields ANDed, see FILTER_FIELDS); a condition
    is a value (equal; on a list field: contains), a non-empty list of values (any of
    them), or operators: {"$eq": v}, {"$in": [v, ...]}, {"$gte": n} and/or {"$lte": n}
    (numbers, on chunk_index/page_start/page_end)."""
    if not isinstance(text, str) or not text.strip():
        raise BadQuery("text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise BadQuery(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise BadQuery(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
    if filter in (None, {}):
        return text, top_k, None
    if not isinstance(filter, dict):
        raise BadQuery("filter must be an object of {field: value, [values] or {operator: value}}")
    return text, top_k, {field: _condition(field, value) for field, value in filter.items()}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _condition(field: Any, value: Any) -> dict[str, Any]:
    if field not in FILTER_FIELDS:
        raise BadQuery(f"cannot filter on {field!r}; fields: {', '.join(FILTER_FIELDS)}")
    if not isinstance(value, dict):  # the first clients' shapes: a value or a list of values
        value = {"$in": value} if isinstance(value, list) else {"$eq": value}
    ops = set(value)
    if not ops or not ops <= set(_OPERATORS) or len(ops & {"$eq", "$in"}) + bool(ops & {"$gte", "$lte"}) != 1:
        raise BadQuery(f"filter on {field!r}: one of $eq, $in, or $gte and/or $lte; got {value!r}")
    if "$eq" in ops and not _scalar(value["$eq"]):
        raise BadQuery(f"filter on {field!r}: a string or integer, or a non-empty list of them")
    if "$in" in ops and not (isinstance(value["$in"], list) and value["$in"] and all(map(_scalar, value["$in"]))):
        raise BadQuery(f"filter on {field!r}: a string or integer, or a non-empty list of them")
    for op in ops & {"$gte", "$lte"}:
        if field not in INTEGER_FIELDS or not isinstance(value[op], int) or isinstance(value[op], bool):
            raise BadQuery(f"filter on {field!r}: {op} takes an integer and only on {', '.join(INTEGER_FIELDS)}")
    return dict(value)


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """`--where KEY=VALUE` items as a filter (the CLI's, the console's, the Query
    function's "where"):

    - ``document=<document_id or S3 key>``: a value with a "/" or a file extension is an
      S3 key (input/report.pdf), else a document_id (32 hex characters);
    - ``entity=TYPE[,TYPE...]``: chunks with an entity of one of the types (DATE, MONEY,
      ORGANIZATION, PERSON, ...; any case);
    - ``phrase=<key phrase>``: chunks with that key phrase (any case);
    - ``pages=A-B`` or ``page=N``: chunks overlapping those pages (page_start <= B and
      page_end >= A).

    The same key twice means either value (pages/page: only once)."""
    out: dict[str, Any] = {}

    def add(field: str, values: list[Any]) -> None:
        before = out.get(field, {}).get("$in", [])
        out[field] = {"$in": before + [v for v in values if v not in before]}

    pages: tuple[int, int] | None = None
    for item in items:
        key, sep, value = str(item).partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            raise BadQuery(f"--where wants KEY=VALUE ({', '.join(WHERE_KEYS)}), got {item!r}")
        if key not in WHERE_KEYS:
            raise BadQuery(f"--where {key!r} is not a key; keys: {', '.join(WHERE_KEYS)}")
        if not value:
            raise BadQuery(f"--where {key}= needs a value")
        if key == "document":
            field = "s3_key" if "/" in value or _EXTENSION.search(value) else "document_id"
            if field == "document_id" and not _DOCUMENT_ID.fullmatch(value):
                raise BadQuery(f"--where document={value}: neither a document_id (32 hex characters) "
                               "nor an S3 key (a path such as input/report.pdf)")
            add(field, [value])
            if "s3_key" in out and "document_id" in out:
                raise BadQuery("--where document= names both document_ids and S3 keys: use one kind")
        elif key == "entity":
            types = [t.strip().upper() for t in value.split(",") if t.strip()]
            bad = [t for t in types if not _ENTITY_TYPE.fullmatch(t)]
            if not types or bad:
                raise BadQuery(f"--where entity= takes entity types such as DATE or ORGANIZATION,MONEY; got {value!r}")
            add("entity_types", types)
        elif key == "phrase":
            add("key_phrases", [key_phrase(value)])
        else:
            if pages is not None:
                raise BadQuery("--where pages=/page= only once")
            pages = _page_range(key, value)
    if pages is not None:
        out["page_start"] = {"$lte": pages[1]}
        out["page_end"] = {"$gte": pages[0]}
    for field, condition in out.items():  # one value: $eq (on a list field: "contains")
        if "$in" in condition and len(condition["$in"]) == 1:
            out[field] = {"$eq": condition["$in"][0]}
    return out


def _page_range(key: str, value: str) -> tuple[int, int]:
    if key == "page":
        if not value.isdigit() or int(value) < 1:
            raise BadQuery(f"--where page= takes a page number (1, 2, ...), got {value!r}")
        return int(value), int(value)
    m = _PAGES.fullmatch(value)
    if m is None and value.isdigit():
        m = _PAGES.fullmatch(f"{value}-{value}")
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BadQuery(f"--where pages= takes a range FIRST-LAST such as 3-5 (FIRST >= 1, FIRST <= LAST), got {value!r}")
    return int(m.group(1)), int(m.group(2))


def key_phrase(text: str) -> str:
    """A key phrase as the index keeps it (ray_jobs/embed.py) and `phrase=` looks it up:
    casefolded, whitespace collapsed, so the match ignores case."""
    return " ".join(text.split()).casefold()


def request_filter(filter: Any, where: Any) -> dict[str, Any] | None:
    """A request's `filter` (see `check`) and `where` items (see `parse_where`) as one
    filter; both restricting the same field is an error (they would have to be ANDed on
    one field, which the filter language cannot say)."""
    if where is not None and not (isinstance(where, list) and all(isinstance(w, str) for w in where)):
        raise BadQuery('where must be a list of "KEY=VALUE" strings')
    from_where = parse_where(where or [])
    if filter in (None, {}):
        return from_where or None
    if not isinstance(filter, dict):
        raise BadQuery("filter must be an object of {field: value, [values] or {operator: value}}")
    both = sorted(set(filter) & set(from_where))
    if both:
        raise BadQuery(f"filter and where both restrict {', '.join(both)}: give each field once")
    return {**filter, **from_where}
