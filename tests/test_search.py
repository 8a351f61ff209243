"""ray_jobs/search.py: the modes and their fusion, the filter language and `--where`, the
matched sentence with its span in the document, citations; and the enrichment the embed
stage writes to the index (ray_jobs/embed.py), searched on a real LanceDB index.

The unit tests run against a small in-test store (the protocol's `query` and
`keyword_query`) and a bag-of-words embedder, so ranks and similarities are known exactly.
"""

from __future__ import annotations

import pytest

from ray_jobs import warm
from ray_jobs.backends.base import EmbeddingResult, Match
from ray_jobs.search import (
    BadQuery,
    check,
    citation,
    fuse,
    matched_sentence,
    parse_where,
    request_filter,
    search,
    sentence_spans,
    where_in_document,
)

VOCABULARY = ("revenue", "growth", "profit", "weather", "rain", "tax", "cat", "dog")


class BagOfWords:
    """One dimension per VOCABULARY word: a text's vector counts them."""

    model, dims = "bag-of-words", len(VOCABULARY)

    def __init__(self):
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return EmbeddingResult([[float(t.lower().count(w)) for w in VOCABULARY] for t in texts])


class FakeStore:
    """Answers each list as given (already ranked) and records what it was asked."""

    def __init__(self, by_vector: list[Match], by_keyword: list[Match]):
        self.by_vector, self.by_keyword = by_vector, by_keyword
        self.asked: list[tuple[str, int, dict | None]] = []

    def query(self, vector, top_k=5, filter=None):
        self.asked.append(("vector", top_k, filter))
        return self.by_vector[:top_k]

    def keyword_query(self, text, top_k=5, filter=None):
        self.asked.append(("keyword", top_k, filter))
        return self.by_keyword[:top_k]


def chunk(i: str, text: str = "Revenue growth was 5%.", **meta) -> dict:
    return {"s3_key": f"input/{i}.pdf", "page_start": 1, "page_end": 1, "text": text, **meta}


@pytest.fixture
def fake(monkeypatch):
    """install(by_vector_ids, by_keyword_ids) -> (store, embedder), warm's."""
    embedder = BagOfWords()
    monkeypatch.setattr(warm, "embedder", lambda: embedder)

    def install(vector_ids, keyword_ids, metadata=None):
        meta = metadata or {}
        store = FakeStore([Match(i, 1.0 - n / 100, meta.get(i, chunk(i))) for n, i in enumerate(vector_ids)],
                          [Match(i, 10.0 - n, meta.get(i, chunk(i))) for n, i in enumerate(keyword_ids)])
        monkeypatch.setattr(warm, "vector_store", lambda: store)
        return store, embedder

    return install


# --------------------------------------------------------------------------- fusion
def test_reciprocal_rank_fusion_adds_one_over_60_plus_rank():
    fused = fuse(["a", "b", "c"], ["c", "a", "d"])
    assert [f[0] for f in fused] == ["a", "c", "b", "d"]
    scores = {i: s for i, s, _ in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62) and scores["d"] == pytest.approx(1 / 63)
    assert {i: r for i, _, r in fused}["d"] == {"vector": None, "keyword": 3}


def test_a_lighter_vector_list_lets_the_keyword_list_lead():
    # An id both lists rank low (vector 10th, keyword 40th) against the keyword list's
    # first: with equal weights it wins (1/70 + 1/100 > 1/61), with HYBRID_VECTOR_WEIGHT
    # 0.3 the keyword list's first leads (0.3/70 + 1/100 < 1/61).
    vector = [f"v{n}" for n in range(1, 10)] + ["both"]
    keyword = ["k1"] + [f"k{n}" for n in range(2, 40)] + ["both"]
    even = [f[0] for f in fuse(vector, keyword)]
    light = [f[0] for f in fuse(vector, keyword, vector_weight=0.3)]
    assert even.index("both") < even.index("k1")
    assert light.index("k1") < light.index("both")
    scores = {i: s for i, s, _ in fuse(["a"], ["a"], vector_weight=0.3)}
    assert scores["a"] == pytest.approx(0.3 / 61 + 1 / 61)


def test_equal_fused_scores_go_by_vector_rank():
    # a and b both score 1/61 + 1/62: a is the vector list's first.
    assert [f[0] for f in fuse(["a", "b"], ["b", "a"])] == ["a", "b"]
    # Equal scores, one only in the keyword list: the one with a vector rank first.
    assert [f[0] for f in fuse(["x"], ["y"])] == ["x", "y"]


def test_hybrid_fuses_deep_candidate_lists_and_reports_ranks(fake, monkeypatch):
    monkeypatch.setenv("HYBRID_VECTOR_WEIGHT", "1")
    store, _ = fake(["a", "b", "c"], ["c", "a", "d"])
    hits = search("revenue growth", top_k=3, mode="hybrid")
    assert [h["id"] for h in hits] == ["a", "c", "b"]
    assert hits[0]["mode"] == "hybrid" and hits[0]["ranks"] == {"vector": 1, "keyword": 2}
    assert hits[0]["score"] == pytest.approx(1 / 61 + 1 / 62)
    assert sorted((kind, k) for kind, k, _ in store.asked) == [("keyword", 50), ("vector", 50)]
    store.asked.clear()
    search("revenue", top_k=20, mode="hybrid", filter={"s3_key": "input/a.pdf"})
    assert sorted(store.asked) == [("keyword", 80, {"s3_key": {"$eq": "input/a.pdf"}}),
                                   ("vector", 80, {"s3_key": {"$eq": "input/a.pdf"}})]


def test_each_mode_uses_its_own_list_and_score(fake, monkeypatch):
    store, _ = fake(["a", "b"], ["b", "a"])
    [v] = search("revenue growth", top_k=1, mode="vector")
    assert (v["id"], v["mode"], v["score"], v["ranks"]) == ("a", "vector", 1.0, {"vector": 1, "keyword": None})
    [k] = search("revenue growth", top_k=1, mode="keyword")
    assert (k["id"], k["mode"], k["score"], k["ranks"]) == ("b", "keyword", 10.0, {"vector": None, "keyword": 1})
    assert [kind for kind, _, _ in store.asked] == ["vector", "keyword"]
    monkeypatch.setenv("QUERY_MODE", "keyword")
    assert search("revenue", top_k=1)[0]["mode"] == "keyword"
    monkeypatch.setenv("QUERY_MODE", "Hybrid")
    assert search("revenue", top_k=1)[0]["mode"] == "hybrid"


def test_a_store_that_cannot_search_by_keyword_runs_hybrid_as_vector(fake, monkeypatch):
    # A Pinecone index created with the cosine metric (docs/deploy.md): the default mode
    # still answers, and says it ran as vector; keyword mode alone says why it cannot.
    from ray_jobs.backends.base import KeywordSearchUnavailable

    store, _ = fake(["a", "b", "c"], ["c"])

    def no_keywords(text, top_k=5, filter=None):
        raise KeywordSearchUnavailable("keyword search needs a Pinecone index with the dotproduct metric")

    monkeypatch.setattr(store, "keyword_query", no_keywords)
    hits = search("revenue growth", top_k=2, mode="hybrid")
    assert [(h["id"], h["mode"], h["ranks"]) for h in hits] == [
        ("a", "vector", {"vector": 1, "keyword": None}), ("b", "vector", {"vector": 2, "keyword": None})]
    with pytest.raises(BadQuery, match="dotproduct"):
        search("revenue growth", top_k=2, mode="keyword")
    # The default mode (keyword unless QUERY_MODE says otherwise) still answers.
    monkeypatch.delenv("QUERY_MODE", raising=False)
    assert [(h["id"], h["mode"]) for h in search("revenue growth", top_k=1)] == [("a", "vector")]


def test_unknown_modes_are_bad_queries(fake, monkeypatch):
    fake(["a"], ["a"])
    with pytest.raises(BadQuery, match="mode must be one of vector, keyword, hybrid, got 'semantic'"):
        search("revenue", mode="semantic")
    monkeypatch.setenv("QUERY_MODE", "bm25")
    with pytest.raises(BadQuery, match="QUERY_MODE must be one of"):
        search("revenue")


def test_numbers_from_a_float_store_are_integers(fake):
    fake(["a"], [], {"a": chunk("a", page_start=3.0, page_end=4.0, chunk_index=2.0, char_start=120.0,
                                 char_end=142.0)})
    [hit] = search("revenue growth", top_k=1, mode="vector")
    assert [type(hit[k]) for k in ("page_start", "page_end", "chunk_index", "char_start", "char_end")] == [int] * 5
    assert hit["match"] == {"sentence": "Revenue growth was 5%.", "char_start": 120, "char_end": 142}


# --------------------------------------------------------------------------- filters
def test_filters_in_both_languages_become_operators():
    _, _, f = check("x", 5, {"s3_key": "input/a.pdf", "page_start": [1, 2], "entity_types": {"$eq": "MONEY"},
                             "page_end": {"$gte": 3, "$lte": 5}, "key_phrases": {"$in": ["net revenue"]}})
    assert f == {"s3_key": {"$eq": "input/a.pdf"}, "page_start": {"$in": [1, 2]}, "entity_types": {"$eq": "MONEY"},
                 "page_end": {"$gte": 3, "$lte": 5}, "key_phrases": {"$in": ["net revenue"]}}


@pytest.mark.parametrize("filter, complaint", [
    ({"text": "x"}, "cannot filter on 'text'"),
    ({"s3_key": {"$ne": "a"}}, "one of $eq, $in"),
    ({"s3_key": {"$eq": "a", "$in": ["b"]}}, "one of $eq, $in"),
    ({"page_start": {"$eq": 1, "$gte": 1}}, "one of $eq, $in"),
    ({"s3_key": {"$gte": 1}}, "only on chunk_index"),
    ({"page_start": {"$lte": "3"}}, "takes an integer"),
    ({"entities": {"$in": []}}, "non-empty list"),
    ({"entities": {"$eq": None}}, "a string or integer"),
])
def test_bad_filters_say_what_is_wrong(filter, complaint):
    with pytest.raises(BadQuery) as e:
        check("x", 5, filter)
    assert complaint in str(e.value)


# --------------------------------------------------------------------------- --where
DOC = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("items, expected", [
    ([f"document={DOC}"], {"document_id": {"$eq": DOC}}),
    (["document=input/reports/q1.pdf"], {"s3_key": {"$eq": "input/reports/q1.pdf"}}),
    (["document=notes.md"], {"s3_key": {"$eq": "notes.md"}}),
    (["document=input/a.pdf", "document=input/b.pdf"], {"s3_key": {"$in": ["input/a.pdf", "input/b.pdf"]}}),
    (["entity=money"], {"entity_types": {"$eq": "MONEY"}}),
    (["entity=DATE, organization", "entity=date"], {"entity_types": {"$in": ["DATE", "ORGANIZATION"]}}),
    (["phrase=Net  Revenue"], {"key_phrases": {"$eq": "net revenue"}}),
    (["pages=3-5"], {"page_start": {"$lte": 5}, "page_end": {"$gte": 3}}),
    (["pages=3–5"], {"page_start": {"$lte": 5}, "page_end": {"$gte": 3}}),
    (["page=2"], {"page_start": {"$lte": 2}, "page_end": {"$gte": 2}}),
    (["Page = 7", "entity=PERCENT"], {"entity_types": {"$eq": "PERCENT"}, "page_start": {"$lte": 7},
                                      "page_end": {"$gte": 7}}),
    ([], {}),
])
def test_where_items_become_a_filter_the_stores_accept(items, expected):
    assert parse_where(items) == expected
    check("x", 5, expected)  # the language of check, and so of both stores


@pytest.mark.parametrize("items, complaint", [
    (["document"], "KEY=VALUE"),
    (["author=me"], "'author' is not a key; keys: document, entity, phrase, pages, page"),
    (["document="], "needs a value"),
    (["document=report"], "neither a document_id (32 hex characters) nor an S3 key"),
    ([f"document={DOC}", "document=input/a.pdf"], "use one kind"),
    (["entity=net-revenue"], "entity types such as DATE"),
    (["pages=5-3"], "FIRST <= LAST"),
    (["pages=0-2"], "FIRST >= 1"),
    (["pages=three"], "a range FIRST-LAST"),
    (["page=x"], "a page number"),
    (["page=2", "pages=3-4"], "only once"),
])
def test_bad_where_items_say_what_is_wrong(items, complaint):
    with pytest.raises(BadQuery) as e:
        parse_where(items)
    assert complaint in str(e.value)


def test_filter_and_where_combine_unless_they_name_the_same_field():
    assert request_filter({"processing_version": "v1-x"}, ["page=2"]) == {
        "processing_version": "v1-x", "page_start": {"$lte": 2}, "page_end": {"$gte": 2}}
    assert request_filter(None, None) is None and request_filter({}, []) is None
    with pytest.raises(BadQuery, match="both restrict s3_key"):
        request_filter({"s3_key": "input/a.pdf"}, ["document=input/b.pdf"])
    with pytest.raises(BadQuery, match="list of"):
        request_filter(None, "page=2")


# --------------------------------------------------------------------------- matched sentence
DOCUMENT = ("Annual report 2023.\n\nThe weather was mild. Revenue growth reached 12% in the second half, "
            "led by services. Costs rose too!\nTax matters are in note 7.")


def hit_in(document: str, start: int, end: int, **extra) -> dict:
    return {"text": document[start:end], "char_start": start, "char_end": end, **extra}


def test_matched_sentence_is_the_best_overlap_with_its_span_in_the_document(fake):
    fake([], [])
    start = DOCUMENT.index("The weather")
    m = matched_sentence(hit_in(DOCUMENT, start, len(DOCUMENT)), "what was the revenue growth")
    assert m["sentence"] == "Revenue growth reached 12% in the second half, led by services."
    assert DOCUMENT[m["char_start"]:m["char_end"]] == m["sentence"]
    m = matched_sentence(hit_in(DOCUMENT, start, len(DOCUMENT)), "tax note")
    assert DOCUMENT[m["char_start"]:m["char_end"]] == m["sentence"] == "Tax matters are in note 7."


def test_a_common_word_does_not_outweigh_a_rare_one(fake):
    fake([], [])
    text = "The cat sat on the mat in the hall. The profit fell. The dog and the cat were in the yard."
    m = matched_sentence(hit_in(text, 0, len(text)), "the profit of the cat the the")
    assert m["sentence"] == "The profit fell."


def test_ties_and_no_overlap_go_to_the_most_similar_sentence(fake):
    _, embedder = fake([], [])
    text = "Rain fell all week, rain again. Revenue and profit and growth and revenue."
    document = "Preface.\n\n" + text
    m = matched_sentence(hit_in(document, 10, len(document)), "quarterly money results",
                         query_vector=[1.0, 1, 1, 0, 0, 0, 0, 0])
    assert m["sentence"] == "Revenue and profit and growth and revenue."
    assert document[m["char_start"]:m["char_end"]] == m["sentence"]
    assert embedder.calls == [["Rain fell all week, rain again.", "Revenue and profit and growth and revenue."]]
    # No query vector given: the query itself is embedded (bag of words: "weather").
    m = matched_sentence(hit_in(text, 0, len(text)), "weather rain outlook")
    assert m["sentence"] == "Rain fell all week, rain again."


def test_search_embeds_only_the_returned_hits_ties_in_one_call(fake):
    texts = {i: f"Cat {i} one. Dog {i} two." for i in "abcdefgh"}
    _, embedder = fake(list(texts), [], {i: chunk(i, t, char_start=0, char_end=len(t)) for i, t in texts.items()})
    hits = search("dog", top_k=2, mode="vector")
    assert [h["match"]["sentence"] for h in hits] == ["Dog a two.", "Dog b two."]  # overlap decides: no ties
    assert embedder.calls == [["dog"]]
    embedder.calls.clear()
    hits = search("weather", top_k=2, mode="vector")  # no overlap anywhere: one call for both hits' sentences
    assert embedder.calls == [["weather"], ["Cat a one.", "Dog a two.", "Cat b one.", "Dog b two."]]


def test_an_index_without_offsets_still_gets_the_sentence(fake):
    fake([], [])
    m = matched_sentence({"text": "First one. Revenue growth here."}, "revenue")
    assert m == {"sentence": "Revenue growth here.", "char_start": None, "char_end": None}
    assert matched_sentence({"text": "  "}, "revenue") is None


def test_sentences_tile_cjk_and_long_table_text():
    text = "收入增长了百分之十二。成本也上升了！Profit fell. Next"
    assert [text[a:b] for a, b in sentence_spans(text)] == ["收入增长了百分之十二。", "成本也上升了！", "Profit fell.", "Next"]
    table = "\n".join(f"row {n} | {n * 3} | {n * 7}" for n in range(40))  # no sentence ends, > 400 chars
    spans = sentence_spans(table)
    assert len(spans) == 40 and table[spans[5][0]:spans[5][1]] == "row 5 | 15 | 35"


# --------------------------------------------------------------------------- citations
def test_citations_name_the_place_and_with_chars_the_matched_span():
    hit = {"s3_key": "input/x.pdf", "page_start": 3, "page_end": 3, "char_start": 1000, "char_end": 2000,
           "match": {"sentence": "s", "char_start": 1200, "char_end": 1290}}
    assert citation(hit) == "input/x.pdf, page 3"
    assert citation(hit, chars=True) == "input/x.pdf, page 3, chars 1200–1290"
    assert where_in_document({**hit, "match": None}, chars=True) == "page 3, chars 1000–2000"
    assert where_in_document({"locator": "Setup › Install", "char_start": None}, chars=True) == "section Setup › Install"
    assert citation({"s3_key": "input/a.txt", "locator": "lines 1–40"}, chars=True) == "input/a.txt, lines 1–40"


# --------------------------------------------------------------------------- the index's enrichment
def test_enrichment_becomes_list_metadata_without_empty_values():
    from ray_jobs.embed import MAX_ENTITIES, enrichment_metadata

    row = {"key_phrases": ["Net Revenue", "net  revenue", *(f"phrase {n}" for n in range(30))],
           "entities": [{"type": "MONEY", "text": "$5 million"}, {"type": "DATE", "text": "2023"},
                        {"type": "MONEY", "text": "$5 million"},
                        *({"type": "ORGANIZATION", "text": f"Org {n}"} for n in range(40))]}
    meta = enrichment_metadata(row)
    assert meta["entity_types"] == ["DATE", "MONEY", "ORGANIZATION"]
    assert meta["entities"][:3] == ["$5 million", "2023", "Org 0"] and len(meta["entities"]) == MAX_ENTITIES
    assert meta["key_phrases"][:2] == ["net revenue", "phrase 0"] and len(meta["key_phrases"]) == 16
    assert enrichment_metadata({"key_phrases": [], "entities": []}) == {}  # Pinecone stores no nulls



# --------------------------------------------------------------------------- end to end: a real LanceDB
REPORT = ["Acme Corporation reported revenue of $12.5 million for fiscal 2023. Net revenue growth was 8%.",
          "The weather in the region was mild all year.\n\nStaff numbers were stable.",
          "Outlook: management expects gross margin to improve. Tax expense was $1.1 million in 2023."]


@pytest.fixture
def indexed(aws_env, monkeypatch, tmp_path):
    """The embed stage (local enricher and embedder) writing a three-page report into a
    LanceDB index in tmp_path: (document_id, document text)."""
    import boto3
    from moto import mock_aws

    from docpipe import aws, identity
    from ray_jobs import jobio
    from ray_jobs.embed import embed_document

    for k, v in {"EMBEDDING_BACKEND": "local", "VECTOR_STORE_BACKEND": "lancedb", "ENRICHMENT_BACKEND": "local",
                 "LANCEDB_URI": str(tmp_path / "vectors")}.items():
        monkeypatch.setenv(k, v)
    text = "\n\n".join(REPORT)
    doc, ver = identity.document_id("bucket", "input/report.pdf"), "v1-0123456789abcdef"
    rows, at = [], 0
    for n, page in enumerate(REPORT):
        rows.append({"chunk_index": n, "page_start": n + 1, "page_end": n + 1, "text": page,
                     "char_start": at, "char_end": at + len(page)})
        at += len(page) + 2
    with mock_aws():
        aws.reset_clients()
        boto3.client("s3").create_bucket(Bucket="bucket")
        uri = jobio.write_jsonl("bucket", identity.artifact_key("chunks", doc, ver, "chunks.jsonl"), rows)
        embed_document({"registration": {"document_id": doc, "processing_version": ver, "bucket": "bucket",
                                         "s3_key": "input/report.pdf"}, "inputs": {"chunks_uri": uri}})
    aws.reset_clients()
    return doc, text


def test_the_index_keeps_offsets_and_enrichment_and_every_mode_filters_on_them(indexed):
    doc, text = indexed
    for mode in ("vector", "keyword", "hybrid"):
        [best, *_] = search("net revenue growth", top_k=3, mode=mode)
        assert (best["page_start"], best["char_start"], best["char_end"]) == (1, 0, len(REPORT[0])), mode
        assert best["match"]["sentence"] == "Net revenue growth was 8%."
        assert text[best["match"]["char_start"]:best["match"]["char_end"]] == best["match"]["sentence"]
        assert {"MONEY", "ORGANIZATION"} <= set(best["entity_types"]) and "$12.5 million" in best["entities"]
        assert best["key_phrases"] and all(p == p.casefold() for p in best["key_phrases"])
        # --where: an entity type only pages 1 and 3 have, a page range, the document.
        hits = search("revenue tax million", top_k=5, mode=mode, filter=parse_where(["entity=money"]))
        assert sorted(h["page_start"] for h in hits) == [1, 3], mode
        hits = search("revenue tax weather", top_k=5, mode=mode, filter=parse_where(["pages=2-3", f"document={doc}"]))
        assert {h["page_start"] for h in hits} <= {2, 3} and hits, mode
        phrase = best["key_phrases"][0]
        hits = search("revenue", top_k=5, mode=mode, filter=parse_where([f"phrase={phrase.upper()}"]))
        assert [h["page_start"] for h in hits] == [1], (mode, phrase)
    [tax] = search("tax expense", top_k=1, mode="keyword", filter=parse_where(["page=3"]))
    assert citation(tax, chars=True) == f"input/report.pdf, page 3, chars {text.index('Tax expense')}–{len(text)}"
