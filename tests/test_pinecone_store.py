"""PineconeStore through the real ``pinecone`` client against a local wire-compatible
server (tests/fakes/pinecone_server.py), and replace_document_version on it and on a
minimal in-memory store (the function is backend-independent)."""

from __future__ import annotations

import json
import math

import boto3
import pytest
from fakes.pinecone_server import MAX_METADATA_BYTES, MAX_REQUEST_BYTES, FakePineconeServer
from moto import mock_aws
from pinecone import Pinecone

from docpipe.errors import StageFailed, VectorStoreUnavailable
from ray_jobs.backends import secrets
from ray_jobs.backends.base import KeywordSearchUnavailable, VectorRecord, VectorStore
from ray_jobs.backends.pinecone_store import PineconeStore, fit_metadata
from ray_jobs.backends.version_sync import replace_document_version

API_KEY = "pc-test-key"
DOC = "0123456789abcdef0123456789abcdef"
OTHER_DOC = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def server():
    with FakePineconeServer(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def sdk_pauses(monkeypatch) -> list[float]:
    """The pauses of the SDK's transport retries (the one retry layer), recorded instead of
    slept: it sleeps through this seam."""
    pauses: list[float] = []
    monkeypatch.setattr("pinecone._internal.http_client._retry_sleep", pauses.append)
    return pauses


def make_store(server: FakePineconeServer, namespace: str = "docpipe", **kwargs) -> PineconeStore:
    index = Pinecone(api_key=API_KEY).Index(host=server.url)
    return PineconeStore(index, namespace=namespace, **kwargs)


def vec(i: int, dims: int = 8) -> list[float]:
    # Distinct per i, with full-precision floats (~20 JSON chars each, like real embeddings).
    return [math.sin(i * 1.7 + k * 0.31) for k in range(dims)]


def records(doc: str, version: str, n: int, dims: int = 8, text: str = "chunk text") -> list[VectorRecord]:
    return [
        VectorRecord(
            id=f"{doc}#{version}#{i}",
            vector=vec(i, dims),
            metadata={"document_id": doc, "processing_version": version, "chunk_index": i,
                      "page_start": 1, "page_end": 1, "s3_key": "input/a.pdf", "text": f"{text} {i}"},
        )
        for i in range(n)
    ]


def test_is_a_vector_store(server):
    store = make_store(server)
    assert isinstance(store, VectorStore)


def test_upsert_batches_stay_under_1000_vectors(server):
    store = make_store(server)
    assert store.upsert(records(DOC, "v1-a", 2500)) == 2500
    upserts = server.requests_to("/vectors/upsert")
    assert [r["count"] for r in upserts] == [1000, 1000, 500]
    assert all(r["status"] == 200 for r in upserts)
    assert store.count() == 2500


def test_upsert_batches_stay_under_2mb(server):
    store = make_store(server)
    big = records(DOC, "v1-a", 150, dims=1536, text="x" * 1990)  # ~30 KB of JSON each
    assert store.upsert(big) == 150
    upserts = server.requests_to("/vectors/upsert")
    assert len(upserts) >= 3  # 150 x ~30 KB could never go in one request
    assert all(r["status"] == 200 and r["bytes"] <= MAX_REQUEST_BYTES for r in upserts)
    assert sum(r["count"] for r in upserts) == 150 == store.count()


def test_a_413_despite_the_estimate_splits_the_batch(server, sdk_pauses):
    server.max_request_bytes = 700_000  # the server's real cap turns out lower than planned
    store = make_store(server)
    assert store.upsert(records(DOC, "v1-a", 50, dims=1536)) == 50
    statuses = [r["status"] for r in server.requests_to("/vectors/upsert")]
    assert 413 in statuses and statuses[-1] == 200 and sdk_pauses == []
    assert store.count() == 50


def test_the_fake_rejects_what_the_store_avoids(server):
    """The limits are real in the fake: one request with everything is refused."""
    index = Pinecone(api_key=API_KEY).Index(host=server.url)
    with pytest.raises(Exception, match="1000"):
        index.upsert(vectors=[{"id": f"x{i}", "values": vec(i)} for i in range(1001)], namespace="docpipe")


def test_metadata_text_is_truncated_to_fit(server):
    store = make_store(server)
    long_text = records(DOC, "v1-a", 1)[0]
    long_text.metadata["text"] = "é" * 50_000
    crowded = records(DOC, "v1-a", 2)[1]
    crowded.metadata["keywords"] = ["k" * 100] * 385  # ~39 KB of other metadata
    crowded.metadata["text"] = "y" * 1800
    crowded.metadata["empty"] = None  # Pinecone rejects nulls: dropped
    assert store.upsert([long_text, crowded]) == 2
    stored = server.namespaces["docpipe"]
    assert stored[long_text.id]["metadata"]["text"] == "é" * 2000  # the 2,000-char contract
    kept = stored[crowded.id]["metadata"]
    assert "empty" not in kept and kept["keywords"] == crowded.metadata["keywords"]
    assert 0 < len(kept["text"]) < 1800  # cut further so the whole metadata fits
    assert len(json.dumps(kept, separators=(",", ":")).encode()) <= MAX_METADATA_BYTES


def test_fit_metadata_rules():
    meta = fit_metadata({"text": "ü" * 30_000, "a": 1}, max_text_chars=100_000, max_bytes=1000)
    assert len(json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()) <= 1000
    assert meta["a"] == 1 and meta["text"] == "ü" * len(meta["text"])
    with pytest.raises(StageFailed):
        fit_metadata({"blob": "z" * 50_000})  # nothing we may cut


def test_429_is_retried(server, sdk_pauses):
    store = make_store(server)
    server.fail_next(3, 429)  # the SDK's 4 attempts absorb three
    assert store.upsert(records(DOC, "v1-a", 3)) == 3
    assert [r["status"] for r in server.requests_to("/vectors/upsert")] == [429, 429, 429, 200]
    assert len(sdk_pauses) == 3
    assert store.count() == 3


def test_retry_after_of_a_429_is_honoured(server, sdk_pauses):
    store = make_store(server)
    server.fail_next(1, 429, retry_after="7")
    store.upsert(records(DOC, "v1-a", 1))
    assert len(sdk_pauses) == 1 and 7.0 <= sdk_pauses[0] <= 7.0 * 1.5


def test_persistent_5xx_raises_vector_store_unavailable(server, sdk_pauses):
    store = make_store(server)
    server.fail_next(1000, 503)
    with pytest.raises(VectorStoreUnavailable) as info:
        store.upsert(records(DOC, "v1-a", 3))
    assert info.value.retryable
    assert [r["status"] for r in server.requests_to("/vectors/upsert")] == [503] * 4  # one layer of retries
    server.clear_faults()
    assert store.count() == 0


def test_unreachable_pinecone_raises_vector_store_unavailable(sdk_pauses):
    with FakePineconeServer(api_key=API_KEY) as gone:
        url = gone.url
    store = PineconeStore(Pinecone(api_key=API_KEY).Index(host=url))
    with pytest.raises(VectorStoreUnavailable, match="unreachable"):
        store.count()


def test_a_4xx_is_not_retried(server, sdk_pauses):
    store = make_store(server)
    store.upsert(records(DOC, "v1-a", 1, dims=8))
    with pytest.raises(StageFailed, match="dimension"):
        store.upsert(records(DOC, "v1-b", 1, dims=4))
    assert [r["status"] for r in server.requests_to("/vectors/upsert")] == [200, 400] and sdk_pauses == []


def test_delete_prefix_lists_and_deletes_in_batches(server):
    store = make_store(server)
    store.upsert(records(DOC, "v1-a", 2500) + records(OTHER_DOC, "v1-a", 10))
    assert store.delete_prefix(f"{DOC}#") == 2500
    deletes = server.requests_to("/vectors/delete")
    assert [r["count"] for r in deletes] == [1000, 1000, 500]
    assert len(server.requests_to("/vectors/list")) >= 25  # pages of <= 100 ids
    assert store.list_ids(f"{DOC}#") == []
    assert len(store.list_ids(f"{OTHER_DOC}#")) == 10 == store.count()
    with pytest.raises(ValueError):
        store.delete_prefix("")


def test_query_returns_scores_and_metadata(server):
    store = make_store(server)
    store.upsert(records(DOC, "v1-a", 20) + records(OTHER_DOC, "v1-a", 20))
    matches = store.query(vec(3), top_k=4)
    assert len(matches) == 4
    assert matches[0].score == pytest.approx(1.0) and matches[0].id.endswith("#3")
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert matches[0].metadata["text"] == "chunk text 3" and matches[0].metadata["chunk_index"] == 3
    only = store.query(vec(3), top_k=10, filter={"document_id": {"$eq": OTHER_DOC}})
    assert {m.metadata["document_id"] for m in only} == {OTHER_DOC}


def test_namespaces_are_separate(server):
    a = make_store(server, namespace="tenant-a")
    b = make_store(server, namespace="tenant-b")
    a.upsert(records(DOC, "v1-a", 5))
    assert (a.count(), b.count()) == (5, 0)
    assert b.list_ids(f"{DOC}#") == [] and b.query(vec(1), top_k=3) == []


def test_from_env_reads_the_key_from_secrets_manager(server, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETSMANAGER", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("PINECONE_API_KEY", "never-used")
    secrets.clear_cache()
    with mock_aws():
        sm = boto3.client("secretsmanager")
        good = sm.create_secret(Name="pc-good", SecretString=json.dumps({"api_key": API_KEY}))["ARN"]
        bad = sm.create_secret(Name="pc-bad", SecretString="wrong-key")["ARN"]
        store = PineconeStore.from_env({"PINECONE_API_KEY_SECRET_ARN": good, "PINECONE_INDEX_HOST": server.url})
        assert store.namespace == "docpipe"
        store.upsert(records(DOC, "v1-a", 2))
        assert store.count() == 2
        # The usual console setup's secret: both keys under their env-var names.
        both = sm.create_secret(Name="pc-console", SecretString=json.dumps(
            {"OPENAI_API_KEY": "sk-not-this-one", "PINECONE_API_KEY": API_KEY}))["ARN"]
        console = PineconeStore.from_env({"PINECONE_API_KEY_SECRET_ARN": both, "PINECONE_INDEX_HOST": server.url})
        assert console.count() == 2

        wrong = PineconeStore.from_env({"PINECONE_API_KEY_SECRET_ARN": bad, "PINECONE_INDEX_HOST": server.url,
                                        "PINECONE_NAMESPACE": "other"})
        with pytest.raises(StageFailed, match="API key"):
            wrong.count()
        assert [r["status"] for r in server.requests[-2:]] == [401, 401]  # re-read once, then fail
    secrets.clear_cache()


# -- replace_document_version ------------------------------------------------------------
def ids_of(store: VectorStore) -> set[str]:
    return set(store.list_ids(f"{DOC}#"))


def test_replace_version_swaps_vectors(server):
    store = make_store(server)
    store.upsert(records(DOC, "v1-old", 5) + records(OTHER_DOC, "v1-old", 3))
    new = records(DOC, "v1-new", 3)
    summary = replace_document_version(store, new, DOC, "v1-new")
    assert summary == {"upserted": 3, "kept": 3, "deleted": 5, "old_versions": ["v1-old"]}
    assert ids_of(store) == {r.id for r in new}
    assert len(store.list_ids(f"{OTHER_DOC}#")) == 3  # other documents untouched
    again = replace_document_version(store, new, DOC, "v1-new")  # idempotent
    assert again["deleted"] == 0 and ids_of(store) == {r.id for r in new}


def test_interrupted_upsert_then_rerun_ends_with_exactly_the_new_version(server, sdk_pauses):
    store = make_store(server)
    old = records(DOC, "v1-old", 1200)
    store.upsert(old)
    new = records(DOC, "v1-new", 1500)
    server.fail_upserts_after(1)  # the first batch of the new version lands, then the store fails
    with pytest.raises(VectorStoreUnavailable):
        replace_document_version(store, new, DOC, "v1-new")
    partial = ids_of(store)
    assert {r.id for r in old} <= partial  # never missing: the old version is intact
    assert 0 < len(partial - {r.id for r in old}) < 1500

    server.clear_faults()
    summary = replace_document_version(store, new, DOC, "v1-new")
    assert ids_of(store) == {r.id for r in new}  # exactly the new version, nothing old
    assert summary["old_versions"] == ["v1-old"] and summary["deleted"] == 1200
    assert store.count() == 1500


def test_interrupted_delete_then_rerun(server, monkeypatch):
    store = make_store(server)
    store.upsert(records(DOC, "v1-a", 1500) + records(DOC, "v1-b", 30))
    new = records(DOC, "v1-c", 10)
    real_delete = store.delete_ids
    calls = []

    def crash_after_first_chunk(ids):
        calls.append(1)
        real_delete(list(ids)[:1000])
        raise VectorStoreUnavailable("worker killed mid-delete")

    monkeypatch.setattr(store, "delete_ids", crash_after_first_chunk)
    with pytest.raises(VectorStoreUnavailable):
        replace_document_version(store, new, DOC, "v1-c")
    assert {r.id for r in new} <= ids_of(store)  # the new version is never missing
    monkeypatch.setattr(store, "delete_ids", real_delete)
    replace_document_version(store, new, DOC, "v1-c")
    assert ids_of(store) == {r.id for r in new}


def test_leftovers_of_the_same_version_are_removed(server):
    store = make_store(server)
    store.upsert(records(DOC, "v1-a", 12))  # an earlier run made more chunks
    replace_document_version(store, records(DOC, "v1-a", 10), DOC, "v1-a")
    assert ids_of(store) == {f"{DOC}#v1-a#{i}" for i in range(10)}


def test_new_vectors_not_listed_means_old_ones_stay():
    class Lagging(DictStore):
        def list_ids(self, prefix):
            return [i for i in super().list_ids(prefix) if "#v1-new#" not in i]

    store = Lagging()
    store.upsert(records(DOC, "v1-old", 4))
    with pytest.raises(VectorStoreUnavailable, match="not listed"):
        replace_document_version(store, records(DOC, "v1-new", 2), DOC, "v1-new", sleep=lambda s: None)
    assert sum(1 for i in store.data if "#v1-old#" in i) == 4


def test_records_of_another_version_are_refused():
    with pytest.raises(ValueError):
        replace_document_version(DictStore(), records(DOC, "v1-x", 1), DOC, "v1-y")


class DictStore:
    """The smallest VectorStore: no delete_ids, so the prefix fallback is exercised."""

    def __init__(self) -> None:
        self.data: dict[str, VectorRecord] = {}

    def upsert(self, records):
        for r in records:
            self.data[r.id] = r
        return len(records)

    def delete_prefix(self, prefix):
        doomed = [i for i in self.data if i.startswith(prefix)]
        for i in doomed:
            del self.data[i]
        return len(doomed)

    def list_ids(self, prefix):
        return sorted(i for i in self.data if i.startswith(prefix))

    def query(self, vector, top_k=5, filter=None):
        return []

    def count(self):
        return len(self.data)


def test_generic_store_without_delete_ids():
    store = DictStore()
    store.upsert(records(DOC, "v1-old", 15) + records(DOC, "v1-new", 13) + records(OTHER_DOC, "v1-old", 2))
    new = records(DOC, "v1-new", 11)  # ids #11 and #12 of v1-new are leftovers
    summary = replace_document_version(store, new, DOC, "v1-new")
    assert set(store.list_ids(f"{DOC}#")) == {r.id for r in new}
    assert summary["old_versions"] == ["v1-old"] and len(store.list_ids(f"{OTHER_DOC}#")) == 2

    # A leftover whose id is a prefix of a kept id cannot be removed by prefix alone.
    store.upsert(records(DOC, "v1-new", 2))
    with pytest.raises(StageFailed, match="delete_ids"):
        replace_document_version(store, [VectorRecord(id=f"{DOC}#v1-new#10", vector=vec(0))], DOC, "v1-new")


# -- keyword search (sparse-dense) and enrichment metadata ------------------------------
FINANCE = [
    "Net revenue for fiscal 2023 was $31.4 billion, up 4 percent from the prior year.",
    "Total revenue reached $30.9 billion in fiscal 2022, driven by cloud services.",
    "Revenue in fiscal 2021 was $32.0 billion, an increase of 7 percent.",
    "Attach Form 1040 Schedule C to report the income of a sole proprietorship.",
    "Form 1065 is the partnership return; Form 1120 is the corporate one.",
    "2023年营业收入增长率为百分之十二，净利润创历史新高。",
    "公司董事会批准了新的股息政策和回购计划。",
]


@pytest.fixture
def hybrid():
    with FakePineconeServer(api_key=API_KEY, metric="dotproduct") as srv:
        yield srv


def unit(i: int, dims: int = 8) -> list[float]:
    v = vec(i, dims)
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]  # dotproduct index: normalised, as both embedders make them


def finance_records(doc: str = DOC, **meta) -> list[VectorRecord]:
    return [VectorRecord(id=f"{doc}#v1-a#{i}", vector=unit(i),
                         metadata={"document_id": doc, "chunk_index": i, "page_start": i + 1, "page_end": i + 2,
                                   "text": t, **meta})
            for i, t in enumerate(FINANCE)]


def test_keyword_query_finds_exact_figures_a_vector_query_ranks_low(hybrid):
    store = make_store(hybrid)
    store.upsert(finance_records())
    stored = hybrid.namespaces["docpipe"][f"{DOC}#v1-a#2"]
    assert stored["sparseValues"]["indices"] and len(stored["sparseValues"]["indices"]) == len(
        stored["sparseValues"]["values"])
    # A query vector next to the $31.4 billion chunk's: the vector search ranks $32.0 low.
    by_vector = [m.id for m in store.query(unit(0), top_k=len(FINANCE))]
    assert by_vector.index(f"{DOC}#v1-a#2") >= 2

    hits = store.keyword_query("$32.0 billion", top_k=3)
    assert hits[0].id == f"{DOC}#v1-a#2" and hits[0].metadata["text"] == FINANCE[2]
    assert hits[0].score > hits[1].score > 0
    assert store.keyword_query("Form 1040", top_k=2)[0].id == f"{DOC}#v1-a#3"
    assert store.keyword_query("zebra", top_k=5) == []  # no shared term: no match, despite the dense part
    assert store.keyword_query("?!", top_k=5) == []
    [query] = hybrid.requests_to("/query")[-1:]
    assert query["status"] == 200
    assert len(hybrid.requests_to("/describe_index_stats")) == 1  # the metric is asked once


def test_keyword_query_finds_chinese_text_by_a_chinese_query(hybrid):
    store = make_store(hybrid)
    store.upsert(finance_records())
    assert store.keyword_query("营业收入", top_k=1)[0].id == f"{DOC}#v1-a#5"
    assert store.keyword_query("股息政策", top_k=1)[0].id == f"{DOC}#v1-a#6"


def test_keyword_query_needs_a_dotproduct_index(server):
    store = make_store(server)  # the fake's default metric: cosine
    store.upsert(finance_records())
    with pytest.raises(KeywordSearchUnavailable, match="dotproduct"):
        store.keyword_query("revenue")
    # The fake refuses the query as Pinecone does, had the store sent it.
    index = Pinecone(api_key=API_KEY).Index(host=server.url)
    with pytest.raises(Exception, match="dotproduct"):
        index.query(vector=unit(0), sparse_vector={"indices": [1], "values": [1.0]}, top_k=1, namespace="docpipe")


def test_keyword_query_on_an_empty_index(hybrid):
    assert make_store(hybrid).keyword_query("revenue") == []


def test_enrichment_metadata_and_filters(hybrid):
    store = make_store(hybrid)
    recs = finance_records()
    recs[0].metadata.update(entity_types=["DATE", "MONEY"], entities=["$31.4 billion", "2023"],
                            key_phrases=["net revenue"], char_start=0, char_end=80)
    recs[2].metadata.update(entity_types=["MONEY"], entities=["$32.0 billion"], key_phrases=[],
                            char_start=200, char_end=266)
    recs[3].metadata.update(entity_types=["ORGANIZATION"], entities=["IRS"], key_phrases=["form 1040"])
    store.upsert(recs)
    first = store.keyword_query("net revenue", top_k=1)[0]
    assert first.metadata["entity_types"] == ["DATE", "MONEY"] and first.metadata["key_phrases"] == ["net revenue"]
    assert (first.metadata["char_start"], first.metadata["char_end"]) == (0, 80)
    assert "key_phrases" not in hybrid.namespaces["docpipe"][f"{DOC}#v1-a#2"]["metadata"]  # empty: dropped

    def ids(flt, text="revenue billion form"):
        by_keyword = sorted(m.id.rsplit("#", 1)[1] for m in store.keyword_query(text, top_k=10, filter=flt))
        by_vector = sorted(m.id.rsplit("#", 1)[1] for m in store.query(unit(0), top_k=10, filter=flt))
        return by_keyword, by_vector

    assert ids({"entity_types": {"$in": ["MONEY", "PERSON"]}}) == (["0", "2"], ["0", "2"])
    assert ids({"entity_types": {"$eq": "ORGANIZATION"}}) == (["3"], ["3"])
    assert ids({"entities": {"$eq": "$32.0 billion"}}) == (["2"], ["2"])
    assert ids({"key_phrases": {"$in": ["form 1040"]}}) == (["3"], ["3"])
    # Chunks overlapping pages 2-3 (page_start = i + 1, page_end = i + 2).
    assert ids({"page_start": {"$lte": 3}, "page_end": {"$gte": 2}}) == (["0", "1", "2"], ["0", "1", "2"])
    assert ids({"page_start": {"$gte": 2, "$lte": 3}, "entity_types": {"$in": ["MONEY"]}}) == (["2"], ["2"])
    assert ids({"document_id": {"$eq": OTHER_DOC}}) == ([], [])


def test_delete_prefix_removes_records_from_keyword_results(hybrid):
    store = make_store(hybrid)
    store.upsert(finance_records() + finance_records(OTHER_DOC))
    assert {m.id.split("#")[0] for m in store.keyword_query("form 1040", top_k=4)} == {DOC, OTHER_DOC}
    store.delete_prefix(f"{DOC}#")
    assert {m.id.split("#")[0] for m in store.keyword_query("form 1040", top_k=4)} == {OTHER_DOC}


def test_enrichment_lists_are_trimmed_to_fit_never_over_the_limit(hybrid):
    meta = {"text": "t" * 2000, "entities": [f"entity {i} " + "e" * 1500 for i in range(32)],
            "key_phrases": ["p" * 300] * 16, "entity_types": ["MONEY"], "page_start": 1}
    kept = fit_metadata(meta)
    assert len(json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()) <= MAX_METADATA_BYTES
    assert kept["text"] == meta["text"] and kept["key_phrases"] == meta["key_phrases"]  # lists give way first
    assert 0 < len(kept["entities"]) < 32 and kept["entities"] == meta["entities"][: len(kept["entities"])]
    assert len(meta["entities"]) == 32  # the caller's metadata is not changed
    store = make_store(hybrid)
    store.upsert([VectorRecord(id=f"{DOC}#v1-a#0", vector=unit(0), metadata=meta)])
    assert hybrid.requests_to("/vectors/upsert")[-1]["status"] == 200


def test_sparse_vectors_respect_pinecone_limits(hybrid):
    store = make_store(hybrid)
    many_terms = " ".join(f"w{i}" for i in range(3000))  # a long chunk (OpenAI's window)
    store.upsert([VectorRecord(id=f"{DOC}#v1-a#0", vector=unit(0), metadata={"text": many_terms}),
                  VectorRecord(id=f"{DOC}#v1-a#1", vector=unit(1), metadata={"text": "?!"})])
    assert [r["status"] for r in hybrid.requests_to("/vectors/upsert")] == [200]
    assert len(hybrid.namespaces["docpipe"][f"{DOC}#v1-a#0"]["sparseValues"]["indices"]) == 1000
    assert hybrid.namespaces["docpipe"][f"{DOC}#v1-a#1"]["sparseValues"] is None  # no terms: none sent
    # The fake enforces what the store avoids.
    index = Pinecone(api_key=API_KEY).Index(host=hybrid.url)
    with pytest.raises(Exception, match="1000"):
        index.upsert(vectors=[{"id": "x", "values": unit(0),
                               "sparse_values": {"indices": list(range(1001)), "values": [1.0] * 1001}}])
    with pytest.raises(Exception, match="zeros"):
        index.upsert(vectors=[{"id": "x", "values": [0.0] * 8}])
