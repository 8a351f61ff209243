"""LanceDBStore on a temporary directory, including several writer processes."""

from __future__ import annotations

import math
import multiprocessing as mp
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from ray_jobs.backends.base import Match, VectorRecord, VectorStore
from ray_jobs.backends.lancedb_store import LanceDBStore

DIMS = 384


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())  # stable across processes, unlike hash()


def _vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIMS)
    return (v / np.linalg.norm(v)).tolist()


def _rec(doc: str, ver: str, i: int, vec: list[float] | None = None, **meta) -> VectorRecord:
    md = {
        "document_id": doc,
        "processing_version": ver,
        "chunk_index": i,
        "page_start": i + 1,
        "page_end": i + 2,
        "s3_key": f"input/{doc}.pdf",
        "text": f"chunk {i} of {doc}",
    }
    md.update(meta)
    vid = f"{doc}#{ver}#{i}"
    return VectorRecord(id=vid, vector=vec if vec is not None else _vec(_seed(vid)), metadata=md)


@pytest.fixture
def store(tmp_path) -> LanceDBStore:
    return LanceDBStore(str(tmp_path / "vectors"))


# ---- single process --------------------------------------------------------------------


def test_import_and_construction_are_cheap():
    # lancedb takes seconds to import: only the first real use may pay for it.
    code = (
        "import sys\n"
        "from ray_jobs.backends.lancedb_store import LanceDBStore\n"
        "LanceDBStore.from_env()\n"
        "assert 'lancedb' not in sys.modules and 'pyarrow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=60)


def test_from_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for var in ("LANCEDB_URI", "LANCEDB_TABLE", "EMBEDDING_DIMS"):
        monkeypatch.delenv(var, raising=False)
    s = LanceDBStore.from_env()
    assert (s.uri, s.table_name, s.dims) == (str(tmp_path / ".docpipe" / "vectors"), "chunks", 384)
    monkeypatch.setenv("LANCEDB_URI", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LANCEDB_TABLE", "t2")
    monkeypatch.setenv("EMBEDDING_DIMS", "8")
    s = LanceDBStore.from_env()
    assert (s.uri, s.table_name, s.dims) == (str(tmp_path / "elsewhere"), "t2", 8)
    assert isinstance(s, VectorStore)


def test_upsert_then_count(store):
    assert store.count() == 0
    assert store.upsert([_rec("d1", "v1", i) for i in range(10)]) == 10
    assert store.count() == 10
    assert store.upsert([]) == 0


def test_upsert_is_idempotent_and_updates(store):
    store.upsert([_rec("d1", "v1", i) for i in range(5)])
    changed = [_rec("d1", "v1", i, vec=_vec(1000 + i), text=f"new {i}") for i in range(5)]
    assert store.upsert(changed) == 5
    assert store.upsert(changed) == 5
    assert store.count() == 5
    m = store.query(_vec(1003), top_k=1)[0]
    assert m.id == "d1#v1#3" and m.metadata["text"] == "new 3"
    assert m.score == pytest.approx(1.0, abs=1e-5)


def test_duplicate_ids_in_one_batch_keep_the_last(store):
    assert store.upsert([_rec("d1", "v1", 0, text="first"), _rec("d1", "v1", 0, text="last")]) == 1
    assert store.count() == 1
    assert store.query(_vec(5), top_k=1)[0].metadata["text"] == "last"


def test_delete_prefix_of_one_version_keeps_the_other(store):
    store.upsert([_rec("d1", "v1", i) for i in range(12)] + [_rec("d1", "v2", i) for i in range(7)])
    store.upsert([_rec("d2", "v1", i) for i in range(3)])
    assert store.delete_prefix("d1#v1#") == 12
    assert store.list_ids("d1#") == sorted(f"d1#v2#{i}" for i in range(7))
    assert store.count() == 10
    assert store.delete_prefix("d1#v1#") == 0
    with pytest.raises(ValueError):
        store.delete_prefix("")


def test_delete_ids_is_exact(store):
    store.upsert([_rec("d1", "v1", i) for i in range(12)])
    assert store.delete_ids(["d1#v1#1", "d1#v1#1", "d1#v1#5", "not-there", "it's"]) == 2
    assert store.list_ids("d1#v1#1") == ["d1#v1#10", "d1#v1#11"]  # prefix-sharing ids stay
    assert store.count() == 10
    assert store.delete_ids([]) == 0


def test_list_ids_is_a_plain_prefix_match(store):
    store.upsert([_rec("d1", "v1", i) for i in range(12)] + [_rec("d10", "v1", 0)])
    assert len(store.list_ids("")) == 13  # more than a query's default limit of 10
    assert store.list_ids("d1#v1#1") == ["d1#v1#1", "d1#v1#10", "d1#v1#11"]
    assert store.list_ids("d1#") == sorted(f"d1#v1#{i}" for i in range(12))
    # Quotes, LIKE wildcards and backslashes are literal characters, not patterns.
    for prefix in ("d_#", "%", "d1#v1#_", "d1'", "d1\\", "' OR 1=1 --"):
        assert store.list_ids(prefix) == []
        assert store.delete_prefix(prefix) == 0
    assert store.count() == 13


def test_odd_characters_in_ids_round_trip(store):
    odd = VectorRecord("it's_100%\\#v1#0", _vec(7), {"text": "odd"})
    store.upsert([odd, _rec("its", "v1", 0)])
    assert store.list_ids("it's_") == ["it's_100%\\#v1#0"]
    assert store.delete_prefix("it's_100%") == 1
    assert store.list_ids("") == ["its#v1#0"]


def test_query_nearest_first_with_metadata_and_filter(store):
    target = np.array(_vec(42))
    other = np.array(_vec(43))
    other -= (other @ target) * target  # orthogonal to target
    other /= np.linalg.norm(other)
    # Vectors at known cosine similarity to the target: cos(angle).
    recs = []
    for i, angle in enumerate([0.1, 0.5, 0.9, 1.3]):
        v = math.cos(angle) * target + math.sin(angle) * other
        recs.append(_rec("d1" if i % 2 == 0 else "d2", "v1", i, vec=v.tolist()))
    store.upsert(recs + [_rec("d3", "v1", i) for i in range(20)])

    matches = store.query(target.tolist(), top_k=3)
    assert [m.id for m in matches] == ["d1#v1#0", "d2#v1#1", "d1#v1#2"]
    assert all(isinstance(m, Match) for m in matches)
    assert [m.score for m in matches] == pytest.approx([math.cos(0.1), math.cos(0.5), math.cos(0.9)], abs=1e-5)
    assert matches[1].metadata == {
        "document_id": "d2",
        "processing_version": "v1",
        "chunk_index": 1,
        "page_start": 2,
        "page_end": 3,
        "s3_key": "input/d2.pdf",
        "locator": None,  # a PDF's chunk: its pages say where it is
        "text": "chunk 1 of d2",
        # Not given: null.
        "char_start": None,
        "char_end": None,
        "entity_types": None,
        "entities": None,
        "key_phrases": None,
    }

    only_d2 = store.query(target.tolist(), top_k=5, filter={"document_id": "d2"})
    assert [m.id for m in only_d2] == ["d2#v1#1", "d2#v1#3"]
    assert [m.id for m in store.query(target.tolist(), top_k=5, filter={"document_id": "d1", "chunk_index": 2})] == [
        "d1#v1#2"
    ]
    in_list = store.query(target.tolist(), top_k=5, filter={"document_id": ["d1", "d2"], "processing_version": "v1"})
    assert len(in_list) == 4
    assert store.query(target.tolist(), top_k=5, filter={"document_id": "it's not there"}) == []
    # Pinecone's operator form, so one filter works with either backend.
    assert [m.id for m in store.query(target.tolist(), top_k=5, filter={"document_id": {"$eq": "d2"}})] == [
        "d2#v1#1",
        "d2#v1#3",
    ]
    assert len(store.query(target.tolist(), top_k=5, filter={"document_id": {"$in": ["d1", "d2"]}})) == 4
    with pytest.raises(ValueError):
        store.query(target.tolist(), filter={"chunk_index": {"$gt": 1}})  # not in the contract

    with pytest.raises(ValueError):
        store.query(target.tolist(), filter={"no_such_column": 1})
    with pytest.raises(ValueError):
        store.query(target.tolist()[:10])


def test_missing_metadata_is_null_and_unknown_keys_are_dropped(store):
    store.upsert([VectorRecord("x#v1#0", _vec(1), {"text": "t", "extra": "not stored"})])
    m = store.query(_vec(1), top_k=1)[0]
    assert m.metadata["text"] == "t" and m.metadata["document_id"] is None
    assert "extra" not in m.metadata
    assert [x.id for x in store.query(_vec(1), filter={"document_id": None})] == ["x#v1#0"]


def test_a_table_from_before_a_column_existed_gets_it_and_keeps_its_vectors(tmp_path, monkeypatch):
    import ray_jobs.backends.lancedb_store as module

    before = {k: v for k, v in module.METADATA_COLUMNS.items() if k != "locator"}
    monkeypatch.setattr(module, "METADATA_COLUMNS", before)
    LanceDBStore(str(tmp_path), dims=DIMS).upsert([_rec("old", "v1", 0)])
    monkeypatch.undo()
    # A reader (the Query function's read-only mount) reads the old table as it is.
    [old] = LanceDBStore(str(tmp_path), dims=DIMS).query(_vec(1), top_k=1)
    assert old.id == "old#v1#0" and old.metadata["locator"] is None
    writer = LanceDBStore(str(tmp_path), dims=DIMS)
    writer.upsert([_rec("new", "v1", 0, vec=_vec(2), locator="Guide › Setup")])
    assert "locator" in writer.table.schema.names and writer.count() == 2
    [new] = writer.query(_vec(2), top_k=1, filter={"document_id": "new"})
    assert new.metadata["locator"] == "Guide › Setup"


def test_rejects_wrong_dims(tmp_path, store):
    with pytest.raises(ValueError):
        store.upsert([VectorRecord("a#v#0", [0.1] * 10, {})])
    with pytest.raises(ValueError):
        store.upsert([VectorRecord("a#v#0", [float("nan")] * DIMS, {})])
    store.upsert([_rec("d1", "v1", 0)])
    wrong = LanceDBStore(store.uri, dims=768)
    for _ in range(2):  # and not only on first use
        with pytest.raises(ValueError, match="384-dim"):
            wrong.count()


# lancedb warns that cleanup_older_than=0 breaks concurrent readers: none here.
@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\):UserWarning")
def test_compaction_keeps_versions_down(tmp_path):
    manual = LanceDBStore(str(tmp_path / "a"), compact_every=0)
    for i in range(12):
        manual.upsert([_rec("d1", "v1", i)])
    assert manual.version_count() >= 12
    manual.compact(older_than=timedelta(0))
    assert manual.version_count() <= 2
    assert manual.count() == 12

    auto = LanceDBStore(str(tmp_path / "b"), compact_every=4, keep_versions=timedelta(0))
    for i in range(12):
        auto.upsert([_rec("d1", "v1", i)])
    assert auto.version_count() <= 4
    assert auto.count() == 12


# ---- several processes -----------------------------------------------------------------


def _writer(uri: str, ids: list[str], barrier, batches: int) -> None:
    """Child process: open (or create) the store at the same moment as its siblings, then
    upsert `ids` in `batches` commits."""
    import lancedb  # noqa: F401 - import before the barrier so the race window is real

    store = LanceDBStore(uri, compact_every=3)
    barrier.wait(timeout=60)
    n = math.ceil(len(ids) / batches)
    for b in range(0, len(ids), n):
        store.upsert([VectorRecord(i, _vec(_seed(i)), {"document_id": i.split("#")[0]}) for i in ids[b : b + n]])


def _run_writers(uri: str, id_lists: list[list[str]], batches: int) -> None:
    ctx = mp.get_context("spawn")  # what Ray workers look like: fresh interpreters
    barrier = ctx.Barrier(len(id_lists))
    procs = [ctx.Process(target=_writer, args=(uri, ids, barrier, batches)) for ids in id_lists]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_two_writer_processes_lose_nothing(tmp_path):
    uri = str(tmp_path / "vectors")
    ids = [[f"doc{w}#v1#{i}" for i in range(300)] for w in range(2)]
    _run_writers(uri, ids, batches=15)
    store = LanceDBStore(uri)
    assert store.count() == 600
    assert store.list_ids("") == sorted(ids[0] + ids[1])


def test_two_writer_processes_same_ids_no_duplicates(tmp_path):
    # Without the write lock, lance 13 inserted some of these ids twice.
    uri = str(tmp_path / "vectors")
    ids = [f"docX#v1#{i}" for i in range(300)]
    _run_writers(uri, [ids, ids], batches=15)
    store = LanceDBStore(uri)
    assert store.count() == 300


def test_table_creation_race(tmp_path):
    # Every process creates-or-opens the table at once and writes straight away: no
    # process may fail, and no creation may wipe another's rows.
    uri = str(tmp_path / "vectors")
    ids = [[f"doc{w}#v1#{i}" for i in range(5)] for w in range(3)]
    _run_writers(uri, ids, batches=1)
    store = LanceDBStore(uri)
    assert store.count() == 15
    assert store.list_ids("") == sorted(i for writer in ids for i in writer)


# ---- the embed stage: one truth in S3 and in the index ----------------------------------


def test_vectors_jsonl_and_the_index_hold_the_same_numbers(aws_env):
    """The embed stage's embeddings/.../vectors.jsonl in S3 and the vector store hold the
    same values for every chunk id (both float32; vectors.jsonl was once rounded)."""
    import boto3
    from moto import mock_aws

    from docpipe import identity
    from ray_jobs import jobio
    from ray_jobs.embed import embed_document

    bucket, key = "docs", "input/report.pdf"
    document_id = identity.document_id(bucket, key)
    version = identity.processing_version("ab" * 32)
    chunks = [{"chunk_index": i, "page_start": 1, "page_end": 1,
               "text": f"paragraph {i}: the quarterly revenue grew by {i} percent"} for i in range(5)]
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=bucket)
        chunks_uri = jobio.write_jsonl(bucket, identity.artifact_key("chunks", document_id, version, "chunks.jsonl"),
                                       chunks)
        result = embed_document({"registration": {"document_id": document_id, "processing_version": version,
                                                  "bucket": bucket, "s3_key": key},
                                 "inputs": {"chunks_uri": chunks_uri}})
        in_s3 = {row["id"]: row["vector"] for row in jobio.read_jsonl(result["embeddings_uri"])}
    rows = LanceDBStore.from_env().table.search().select(["id", "vector"]).limit(None).to_arrow().to_pylist()
    in_index = {row["id"]: row["vector"] for row in rows}
    assert sorted(in_s3) == sorted(in_index) == sorted(identity.vector_id(document_id, version, i) for i in range(5))
    for vector_id, vector in in_s3.items():
        assert vector == in_index[vector_id], vector_id


# ---- keyword search and enrichment metadata ----------------------------------------------

FINANCE = [
    "Net revenue for fiscal 2023 was $31.4 billion, up 4 percent from the prior year.",
    "Total revenue reached $30.9 billion in fiscal 2022, driven by cloud services.",
    "Revenue in fiscal 2021 was $32.0 billion, an increase of 7 percent.",
    "Operating income was $9.2 billion while revenue grew to $33.5 billion.",
    "Attach Form 1040 Schedule C to report the income of a sole proprietorship.",
    "Form 1065 is the partnership return; Form 1120 is the corporate one.",
    "2023年营业收入增长率为百分之十二，净利润创历史新高。",
    "公司董事会批准了新的股息政策和回购计划。",
]


def _texts(store: LanceDBStore, texts: list[str], doc: str = "d1", **meta) -> list[VectorRecord]:
    recs = [_rec(doc, "v1", i, text=t, **meta) for i, t in enumerate(texts)]
    store.upsert(recs)
    return recs


def test_keyword_query_finds_exact_figures_a_vector_query_ranks_low(store):
    recs = _texts(store, FINANCE)
    # An embedding that sees "$32.0 billion" as just another revenue figure: the query's
    # vector lies next to the $31.4 billion chunk's and far from the $32.0 billion one's.
    confused = (np.array(recs[0].vector) + 0.05 * np.array(_vec(99))).tolist()
    by_vector = [m.id for m in store.query(confused, top_k=len(FINANCE))]
    assert by_vector.index("d1#v1#2") >= 3

    hits = store.keyword_query("$32.0 billion", top_k=3)
    assert hits[0].id == "d1#v1#2"
    assert hits[0].score > hits[1].score > 0  # BM25: "billion" alone scores lower
    assert [m.score for m in hits] == sorted((m.score for m in hits), reverse=True)
    # The same metadata as a vector query's match of the same row.
    [same] = store.query(recs[2].vector, top_k=1)
    assert hits[0].metadata == same.metadata and hits[0].metadata["text"] == FINANCE[2]

    assert store.keyword_query("form 1040", top_k=2)[0].id == "d1#v1#4"
    assert store.keyword_query("FORM 1040", top_k=1)[0].id == "d1#v1#4"  # case folded
    assert store.keyword_query("zebra", top_k=3) == []  # no term in common: no match
    assert store.keyword_query("?!", top_k=3) == []  # no terms at all
    assert store.keyword_query("revenue", top_k=0) == []


def test_keyword_query_finds_chinese_text_by_a_chinese_query(store):
    _texts(store, FINANCE)
    assert store.keyword_query("营业收入", top_k=1)[0].id == "d1#v1#6"
    assert store.keyword_query("增长率是多少", top_k=1)[0].id == "d1#v1#6"
    assert store.keyword_query("股息政策", top_k=1)[0].id == "d1#v1#7"


def test_enrichment_metadata_round_trips_and_filters(store):
    enriched = [
        _rec("d1", "v1", 0, text="Apple paid $3 billion in March", page_start=1, page_end=1, char_start=0,
             char_end=30, entity_types=["DATE", "MONEY", "ORGANIZATION"], entities=["Apple", "March", "$3 billion"],
             key_phrases=["quarterly revenue"]),
        _rec("d1", "v1", 1, text="revenue in Paris rose", page_start=2, page_end=3, char_start=30, char_end=51,
             entity_types=["LOCATION"], entities=["Paris"], key_phrases=["quarterly revenue", "paris office"]),
        _rec("d1", "v1", 2, text="revenue was flat", page_start=4, page_end=4, entity_types=[], entities=[],
             key_phrases=[]),
        _rec("d2", "v1", 0, text="revenue of another document", page_start=3, page_end=5),  # not enriched
    ]
    store.upsert(enriched)
    [m] = store.keyword_query("apple", top_k=5)
    assert m.metadata["entity_types"] == ["DATE", "MONEY", "ORGANIZATION"]
    assert m.metadata["entities"] == ["Apple", "March", "$3 billion"]
    assert m.metadata["key_phrases"] == ["quarterly revenue"]
    assert (m.metadata["char_start"], m.metadata["char_end"]) == (0, 30)
    other = store.query(enriched[3].vector, top_k=1)[0]
    assert other.id == "d2#v1#0" and other.metadata["entity_types"] is None and other.metadata["char_start"] is None

    def ids(flt):
        by_keyword = sorted(m.id for m in store.keyword_query("revenue paid", top_k=10, filter=flt))
        by_vector = sorted(m.id for m in store.query(_vec(1), top_k=10, filter=flt))
        assert by_keyword == by_vector  # one filter language, both searches
        return by_keyword

    assert ids({"entity_types": {"$in": ["MONEY", "PERSON"]}}) == ["d1#v1#0"]
    assert ids({"entity_types": {"$in": ["MONEY", "LOCATION"]}}) == ["d1#v1#0", "d1#v1#1"]
    assert ids({"entity_types": {"$eq": "LOCATION"}}) == ["d1#v1#1"]
    assert ids({"entity_types": {"$in": []}}) == []
    assert ids({"entities": {"$eq": "$3 billion"}}) == ["d1#v1#0"]
    assert ids({"key_phrases": {"$eq": "quarterly revenue"}}) == ["d1#v1#0", "d1#v1#1"]
    assert ids({"key_phrases": {"$eq": "quarterly"}}) == []  # an element, not a substring
    # Chunks overlapping pages 3-4: page_start <= 4 and page_end >= 3.
    assert ids({"page_start": {"$lte": 4}, "page_end": {"$gte": 3}}) == ["d1#v1#1", "d1#v1#2", "d2#v1#0"]
    assert ids({"page_start": {"$gte": 2, "$lte": 3}}) == ["d1#v1#1", "d2#v1#0"]
    assert ids({"page_end": {"$gte": 2.5}}) == ["d1#v1#1", "d1#v1#2", "d2#v1#0"]  # Pinecone's numbers are floats
    assert ids({"document_id": {"$eq": "d1"}, "entity_types": {"$in": ["LOCATION"]}, "page_start": {"$gte": 2}}) == [
        "d1#v1#1"
    ]
    assert ids({"char_start": {"$gte": 1}}) == ["d1#v1#1"]  # null: no match

    for bad in (
        {"entity_types": {"$gte": 1}},  # ranges are for numbers
        {"s3_key": {"$lte": "z"}},
        {"page_start": {"$gte": "3"}},
        {"page_start": {"$gt": 3}},
        {"page_start": {}},
        {"entity_types": {"$eq": ["MONEY"]}},
        {"entity_types": {"$in": "MONEY"}},
        {"keywords": {"$eq": "revenue"}},  # derived, not metadata
    ):
        with pytest.raises(ValueError):
            store.keyword_query("revenue", filter=bad)
        with pytest.raises(ValueError):
            store.query(_vec(1), filter=bad)


def test_rows_written_after_the_keyword_index_are_found_and_deleted_ones_are_gone(store):
    _texts(store, FINANCE[:4])
    assert "keywords_fts" in [i.name for i in store.table.list_indices()]  # made by the writer
    # Written after the index was built: searched all the same.
    store.upsert([_rec("d2", "v1", 0, text="The Form 1040 instructions changed in 2024.")])
    assert store.keyword_query("form 1040", top_k=1)[0].id == "d2#v1#0"
    # An update replaces the row's terms.
    store.upsert([_rec("d2", "v1", 0, text="Schedule K-1 reports partnership income.")])
    assert store.keyword_query("1040", top_k=3) == []
    assert store.keyword_query("partnership", top_k=1)[0].id == "d2#v1#0"
    # Compaction folds the new rows into the index: still found, once.
    store.compact()
    assert [m.id for m in store.keyword_query("partnership schedule", top_k=5)] == ["d2#v1#0"]
    assert store.table.index_stats("keywords_fts").num_unindexed_rows == 0
    store.upsert([_rec("d3", "v1", 0, text="More partnership income.")])
    assert store.delete_prefix("d2#") == 1
    assert [m.id for m in store.keyword_query("partnership", top_k=5)] == ["d3#v1#0"]
    assert store.delete_prefix("d1#v1#") == 4  # rows that were in the index
    assert store.keyword_query("revenue billion", top_k=5) == []


def _old_schema_table(uri: str) -> None:
    """A table as the store made it before #12: no char span, enrichment or keywords."""
    import lancedb
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False), pa.field("vector", pa.list_(pa.float32(), DIMS), nullable=False)]
    fields += [pa.field(n, pa.int32() if n in ("chunk_index", "page_start", "page_end") else pa.string())
               for n in ("document_id", "processing_version", "chunk_index", "page_start", "page_end", "s3_key",
                         "locator", "text")]
    schema = pa.schema(fields)
    rows = [{**_rec("old", "v1", i, text=t).metadata, "id": f"old#v1#{i}", "vector": _vec(i), "locator": None}
            for i, t in enumerate(FINANCE[:3])]
    lancedb.connect(uri).create_table("chunks", schema=schema).add(pa.Table.from_pylist(rows, schema=schema))


def test_an_old_schema_table_is_migrated_by_the_first_writer(tmp_path):
    uri = str(tmp_path / "vectors")
    _old_schema_table(uri)
    # A reader (read-only mount) changes nothing: vector search works, keyword search finds nothing.
    reader = LanceDBStore(uri)
    assert reader.query(_vec(0), top_k=1)[0].metadata["entity_types"] is None
    assert reader.keyword_query("$32.0 billion") == []
    with pytest.raises(Exception):  # noqa: B017 - the old table has no such column to filter on
        reader.query(_vec(0), top_k=5, filter={"entity_types": {"$in": ["MONEY"]}})

    writer = LanceDBStore(uri)
    writer.upsert([_rec("new", "v1", 0, text="Revenue was $32.0 billion again.", entity_types=["MONEY"],
                        entities=["$32.0 billion"], char_start=5, char_end=38)])
    names = writer.table.schema.names
    assert {"char_start", "char_end", "entity_types", "entities", "key_phrases", "keywords"} <= set(names)
    assert writer.count() == 4
    # The old rows got their keywords: found by keyword search, with null enrichment.
    assert sorted(m.id for m in writer.keyword_query("$32.0 billion", top_k=2)) == ["new#v1#0", "old#v1#2"]
    assert [m.id for m in writer.keyword_query("$32.0 billion", top_k=5, filter={"entity_types": {"$eq": "MONEY"}})] == [
        "new#v1#0"
    ]
    old = next(m for m in writer.keyword_query("fiscal 2022", top_k=1))
    assert old.id == "old#v1#1" and old.metadata["entities"] is None and old.metadata["char_start"] is None
    # And a new reader now has the keyword path too.
    assert LanceDBStore(uri).keyword_query("fiscal 2021", top_k=1)[0].id == "old#v1#2"


def test_integer_fields_accept_pinecone_style_floats(store):
    store.upsert([_rec("d1", "v1", i) for i in range(4)])  # page_start = i + 1
    assert [m.id for m in store.query(_vec(1), top_k=5, filter={"page_start": {"$eq": 2.0}})] == ["d1#v1#1"]
    assert store.query(_vec(1), top_k=5, filter={"page_start": {"$eq": 2.5}}) == []
    assert sorted(m.id for m in store.query(_vec(1), top_k=5, filter={"chunk_index": {"$in": [1.0, 3, 2.5]}})) == [
        "d1#v1#1", "d1#v1#3"]
    assert sorted(m.id for m in store.query(_vec(1), top_k=5, filter={"page_start": {"$gte": 2.5, "$lte": 4.9}})) == [
        "d1#v1#2", "d1#v1#3"]
    with pytest.raises(ValueError):
        store.query(_vec(1), filter={"page_start": {"$in": 3}})
    with pytest.raises(ValueError):
        store.query(_vec(1), filter={"page_start": {"$gte": float("nan")}})
