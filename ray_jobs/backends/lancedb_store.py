"""LanceDB on local disk: the default, embedded `VectorStore`.

Chosen because it stays correct with several writer processes (Ray workers): every write
is a Lance commit with optimistic concurrency and retries, and `merge_insert("id")` makes
upserts idempotent (docs/design.md, "Facts the code relies on"). Each commit adds a table
version, so the store compacts every `compact_every` writes and on `compact()`.

Writers on a local path also take an exclusive file lock (`<uri>/.<table>.write-lock`)
around every commit. Measured with lance 13 (lancedb 0.40), without it: two processes
upserting the same 500 ids at once left 525 rows (both inserted some of them);
two concurrent `create_table(exist_ok=True)` both committed (versions 1 and 2 of one empty
table; a create is an overwrite commit, so rows written in between would be dropped); and
compaction fails ("Rewrite preempted by concurrent Update") when it races an upsert.
Remote URIs (s3://...) get no lock and keep those races.

One row per vector; columns: id, vector (fixed-size float32 list), the metadata of
docs/architecture.md as typed columns (METADATA_COLUMNS: document_id, processing_version,
chunk_index, page_start, page_end, s3_key, locator, text, char_start, char_end and the
enrichment lists entity_types, entities, key_phrases), and `keywords`, the text's
normalised terms (`ray_jobs.keywords.keyword_text`) that `upsert` derives. Metadata keys
outside that list are not stored. A table made before a column existed gets it (null in
its old rows) the first time a writer opens it; `keywords` is then also computed for the
old rows, so keyword search finds documents indexed before it existed.

Keyword search (`keyword_query`): BM25 over a native Lance full-text index on `keywords`
(whitespace tokenizer, no stemming, stop words, lower-casing or ASCII folding: the column
is already normalised). A writer creates the index when it is missing. Rows written after
the index was built are not in it, but Lance searches them too (a flat pass over the
unindexed rows, measured: found, and deleted rows are gone at once); compaction
(`optimize`) folds them into the index. Readers never write (the Query function's
mount is read-only): on a table without the `keywords` column keyword search returns
nothing (logged once) until a writer has opened it; with the column but no index yet,
Lance's flat search still answers, with its default tokenizer (slower; stems English).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from ray_jobs.backends.base import Match, VectorRecord
from ray_jobs.keywords import keyword_text

log = logging.getLogger(__name__)

# Metadata column -> Arrow type name (see _schema). Integers are int32: pages and chunk
# indexes stay far below 2**31.
METADATA_COLUMNS: dict[str, str] = {
    "document_id": "string",
    "processing_version": "string",
    "chunk_index": "int32",
    "page_start": "int32",
    "page_end": "int32",
    "s3_key": "string",
    # Where in the document: the section's heading path for DOCX/HTML/Markdown, the
    # lines of a text file; "" for PDFs (their pages say it).
    "locator": "string",
    "text": "string",
    # The chunk's span in the document's text (ray_jobs/chunking.py).
    "char_start": "int32",
    "char_end": "int32",
    # Enrichment: unique, sorted entity types; entity texts; key phrases.
    "entity_types": "list<string>",
    "entities": "list<string>",
    "key_phrases": "list<string>",
}
LIST_COLUMNS = frozenset(name for name, t in METADATA_COLUMNS.items() if t == "list<string>")
# Derived from `text` by upsert; searched by keyword_query, never returned as metadata.
KEYWORD_COLUMN = "keywords"
_KEYWORD_INDEX = "keywords_fts"
_BACKFILL_BATCH = 5000
_RANGE_OPS = {"$gte": ">=", "$lte": "<="}


def _sql_literal(value: Any) -> str:
    """A value as a DataFusion SQL literal. Strings: single quotes doubled, which is the
    only escape inside '...' (backslashes are literal)."""
    if value is None:
        raise ValueError("None has no literal; use IS NULL")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a usable filter value")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"unsupported filter value {value!r}")


def _starts_with(prefix: str) -> str:
    # starts_with() instead of LIKE: no wildcard (% _) or escape-character handling at all.
    return f"starts_with(id, {_sql_literal(prefix)})"


class LanceDBStore:
    """`VectorStore` on a LanceDB directory (or any URI lancedb.connect accepts)."""

    def __init__(
        self,
        uri: str,
        table: str = "chunks",
        dims: int = 384,
        *,
        compact_every: int = 50,
        keep_versions: timedelta = timedelta(hours=1),
    ) -> None:
        # Resolve a local path now so a later chdir cannot move the store.
        self.uri = uri if "://" in uri else str(Path(uri).expanduser().resolve())
        self.table_name = table
        self.dims = int(dims)
        self.compact_every = compact_every  # 0 disables automatic compaction
        self.keep_versions = keep_versions
        self._writes = 0
        self._migrated = False  # missing columns and the keyword index added (writers only)
        self._warned_no_keywords = False
        # lancedb's connection and table (Any: lancedb and pyarrow are untyped here).
        self._db: Any = None
        self._table: Any = None
        self._lock_path = None if "://" in self.uri else os.path.join(self.uri, f".{table}.write-lock")

    @classmethod
    def from_env(cls) -> LanceDBStore:
        from ray_jobs.settings import StageSettings

        settings = StageSettings.from_env()
        return cls(uri=settings.lancedb_uri, table=settings.lancedb_table, dims=settings.embedding_dims)

    # ---- table -----------------------------------------------------------------------

    @staticmethod
    def _columns() -> list[Any]:
        """The metadata and keyword columns as Arrow fields (all nullable)."""
        import pyarrow as pa

        types = {"string": pa.string(), "int32": pa.int32(), "list<string>": pa.list_(pa.string())}
        return [
            *(pa.field(name, types[t]) for name, t in METADATA_COLUMNS.items()),
            pa.field(KEYWORD_COLUMN, pa.string()),
        ]

    def _schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("vector", pa.list_(pa.float32(), self.dims), nullable=False),
                *self._columns(),
            ]
        )

    @property
    def table(self) -> Any:
        """The LanceDB table, opened or created on first use (writers: with every column)."""
        if self._existing_table() is None:
            with self._write_lock():  # see the module docstring: creations race
                self._table = self._checked(self._open() or self._create())
        if not self._migrated:
            self._add_missing_columns(self._table)
        return self._table

    def _add_missing_columns(self, table: Any) -> None:
        """Columns added after the table was made: added as nulls (Arrow fields: Lance's
        SQL has no list type to CAST a NULL to), so an upgrade keeps the vectors already
        in the store; then `keywords` of rows that lack it, and the keyword index."""

        def missing() -> list[Any]:
            return [f for f in self._columns() if f.name not in table.schema.names]

        if missing():
            with self._write_lock():
                table.checkout_latest()
                fields = missing()
                if fields:
                    table.add_columns(fields)
                    log.info("added columns %s to %s/%s", [f.name for f in fields], self.uri, self.table_name)
        self._backfill_keywords(table)
        self._ensure_keyword_index(table)
        self._migrated = True

    def _backfill_keywords(self, table: Any) -> None:
        """`keywords` for rows written before the column existed (or by an older writer)."""
        import pyarrow as pa

        lacking = f"{KEYWORD_COLUMN} IS NULL AND text IS NOT NULL"
        while True:
            # Read and write under one lock: a concurrent upsert of a row cannot slip in
            # between and have its new keywords replaced by those of its old text.
            with self._write_lock():
                rows = table.search().where(lacking).select(["id", "text"]).limit(_BACKFILL_BATCH).to_arrow()
                if rows.num_rows == 0:
                    return
                texts = rows.column("text").to_pylist()
                update = pa.table(
                    {"id": rows.column("id"), KEYWORD_COLUMN: pa.array([keyword_text(t) for t in texts], pa.string())}
                )
                # Only the two columns: the rest of each row stays as it is.
                table.merge_insert("id").when_matched_update_all().execute(update)
            log.info("computed keywords of %d old rows in %s/%s", rows.num_rows, self.uri, self.table_name)

    def _has_keyword_index(self, table: Any) -> bool:
        return any(
            index.index_type == "FTS" and list(index.columns) == [KEYWORD_COLUMN] for index in table.list_indices()
        )

    def _ensure_keyword_index(self, table: Any) -> None:
        from lancedb.index import FTS

        if self._has_keyword_index(table):
            return
        with self._write_lock():
            table.checkout_latest()
            if self._has_keyword_index(table):
                return
            # Native Lance FTS; the column is normalised already (ray_jobs.keywords), so the
            # tokenizer only splits on whitespace and changes nothing.
            config = FTS(
                base_tokenizer="whitespace",
                lower_case=False,
                stem=False,
                remove_stop_words=False,
                ascii_folding=False,
                max_token_length=None,
            )
            table.create_index(KEYWORD_COLUMN, config=config, name=_KEYWORD_INDEX)
            log.info("created the keyword index of %s/%s", self.uri, self.table_name)

    def _existing_table(self) -> Any:
        """The table if it exists, else None; never creates it, so a reader on a read-only
        mount (the Query function) can search before the first document is indexed."""
        if self._table is None:
            import lancedb  # lazy: importing lancedb takes 1-5 s

            if self._db is None:
                # Consistency interval 0: every read checks for commits made by other
                # processes (Ray workers), at the cost of one manifest lookup.
                self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
            table = self._open()
            if table is not None:
                self._table = self._checked(table)
        return self._table

    def _checked(self, table: Any) -> Any:
        size = table.schema.field("vector").type.list_size
        if size != self.dims:
            raise ValueError(
                f"{self.uri}/{self.table_name} holds {size}-dim vectors, not {self.dims}"
                " (EMBEDDING_DIMS must match the embedding model)"
            )
        return table

    def _open(self) -> Any:
        try:
            return self._db.open_table(self.table_name)
        except ValueError as e:  # lancedb 0.40: "Table '...' was not found"
            if "not found" not in str(e).lower():
                raise
            return None

    def _create(self) -> Any:
        try:
            return self._db.create_table(self.table_name, schema=self._schema(), exist_ok=True)
        except Exception as e:
            if "already exists" not in str(e).lower() and "conflict" not in str(e).lower():
                raise
            return self._db.open_table(self.table_name)

    # ---- VectorStore -----------------------------------------------------------------

    def upsert(self, records: list[VectorRecord]) -> int:
        if not records:
            return 0
        # One row per id (the last one wins): merge_insert rejects duplicate source keys.
        latest = {r.id: r for r in records}
        data = self._to_arrow(list(latest.values()))
        table = self.table
        with self._write_lock():
            table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        self._after_write()
        return len(latest)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("delete_prefix('') would delete every vector")
        table = self.table
        with self._write_lock():
            result = table.delete(_starts_with(prefix))
        if result.num_deleted_rows:
            self._after_write()
        return int(result.num_deleted_rows)

    def delete_ids(self, ids: list[str]) -> int:
        """Delete exactly these ids (version_sync uses it when a store has it)."""
        unique = sorted(set(ids))
        deleted = 0
        table = self.table if unique else None
        if table is None:
            return 0
        for start in range(0, len(unique), 1000):  # keeps each IN list (and SQL) bounded
            batch = unique[start : start + 1000]
            with self._write_lock():
                result = table.delete(f"id IN ({', '.join(_sql_literal(i) for i in batch)})")
            deleted += int(result.num_deleted_rows)
        if deleted:
            self._after_write()
        return deleted

    def list_ids(self, prefix: str) -> list[str]:
        q = self.table.search().select(["id"]).limit(None)
        if prefix:
            q = q.where(_starts_with(prefix))
        # set(): an id written concurrently through an unlocked (remote) URI can repeat.
        return sorted(set(q.to_arrow().column("id").to_pylist()))

    def query(self, vector: list[float], top_k: int = 5, filter: dict[str, Any] | None = None) -> list[Match]:
        if len(vector) != self.dims:
            raise ValueError(f"query vector has {len(vector)} dims, expected {self.dims}")
        table = self._existing_table()
        if top_k <= 0 or table is None:
            return []
        # A reader never migrates (the Query function's mount is read-only): a table from
        # before a column existed is read without it.
        present = [name for name in METADATA_COLUMNS if name in table.schema.names]
        q = (
            table.search(vector, vector_column_name="vector")
            .distance_type("cosine")
            # _distance named explicitly: lance warns (per query, on stderr) when it is
            # only auto-projected.
            .select(["id", *present, "_distance"])
            .limit(top_k)
        )
        where = self._where(filter)
        if where:
            # Prefilter: the filter applies before top-k, so a selective filter still
            # yields up to top_k matches.
            q = q.where(where, prefilter=True)
        rows = q.to_arrow().to_pylist()
        return [
            Match(
                id=row["id"],
                score=1.0 - float(row["_distance"]),  # cosine distance = 1 - similarity
                metadata={k: row.get(k) for k in METADATA_COLUMNS},  # unset: None
            )
            for row in rows
        ]

    def keyword_query(self, text: str, top_k: int = 5, filter: dict[str, Any] | None = None) -> list[Match]:
        """BM25 over the keyword index, best first; `Match.score` is the BM25 score."""
        from lancedb import query as lance_query

        where = self._where(filter)  # a bad filter is an error even on an empty store
        query = keyword_text(text)
        table = self._existing_table()
        if top_k <= 0 or table is None or not query:
            return []
        if KEYWORD_COLUMN not in table.schema.names:
            # A reader on a table no writer has upgraded yet (see the module docstring).
            if not self._warned_no_keywords:
                log.warning("%s/%s has no %s column yet: keyword search finds nothing until a"
                            " writer opens it", self.uri, self.table_name, KEYWORD_COLUMN)
                self._warned_no_keywords = True
            return []
        present = [name for name in METADATA_COLUMNS if name in table.schema.names]
        # OR of the terms (a chunk needs only some of them), each scored by BM25.
        match: Any = lance_query.MatchQuery  # Any: its pydantic signature lists every default as required
        q = table.search(match(query, KEYWORD_COLUMN), query_type="fts").select(["id", *present, "_score"])
        if where:
            q = q.where(where, prefilter=True)  # before top-k, as in query()
        rows = q.limit(top_k).to_arrow().to_pylist()
        return [
            Match(id=row["id"], score=float(row["_score"]), metadata={k: row.get(k) for k in METADATA_COLUMNS})
            for row in rows
        ]

    def count(self) -> int:
        return int(self.table.count_rows())

    # ---- maintenance -----------------------------------------------------------------

    def compact(self, older_than: timedelta | None = None) -> None:
        """Merge small data files and drop versions older than `older_than` (default:
        `keep_versions`). Keep it above the longest read or query that may still be
        running against an old version in another process."""
        table = self.table
        with self._write_lock():
            table.optimize(cleanup_older_than=self.keep_versions if older_than is None else older_than)

    def version_count(self) -> int:
        return len(self.table.list_versions())

    def _after_write(self) -> None:
        self._writes += 1
        if self.compact_every and self._writes % self.compact_every == 0:
            try:
                self.compact()
            except Exception as e:
                # Unlocked (remote) writers can make compaction conflict; the next one retries.
                log.warning("LanceDB compaction of %s failed, will retry: %s", self.table_name, e)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Exclusive across processes on this host (and threads: each call opens its own
        file description). A no-op for remote URIs or where fcntl is missing."""
        if self._lock_path is None:
            yield
            return
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        os.makedirs(self.uri, exist_ok=True)
        with open(self._lock_path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- helpers ---------------------------------------------------------------------

    def _to_arrow(self, records: list[VectorRecord]) -> Any:
        import numpy as np
        import pyarrow as pa

        vecs = np.asarray([r.vector for r in records], dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dims:
            bad = next(r for r in records if len(r.vector) != self.dims)
            raise ValueError(f"{bad.id}: vector has {len(bad.vector)} dims, expected {self.dims}")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors must be finite (NaN or inf found)")
        columns = {
            "id": pa.array([r.id for r in records], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), self.dims),
        }
        schema = self._schema()
        for name in METADATA_COLUMNS:
            values = [r.metadata.get(name) for r in records]
            if name in LIST_COLUMNS:
                values = [None if v is None else [str(x) for x in v] for v in values]
            columns[name] = pa.array(values, schema.field(name).type)
        texts = [r.metadata.get("text") for r in records]
        columns[KEYWORD_COLUMN] = pa.array(
            [keyword_text(t) if isinstance(t, str) else None for t in texts], pa.string()
        )
        return pa.Table.from_pydict(columns, schema=schema)

    @staticmethod
    def _where(filter: dict[str, Any] | None) -> str:
        """The filter language of the VectorStore contract (Pinecone's) as SQL, fields ANDed:
        {"$eq": v}, {"$in": [...]}, {"$gte": n}, {"$lte": n} (several operators of one field
        ANDed too). On the list columns (entity_types, entities, key_phrases) $eq means
        "contains v" and $in "contains one of", as in Pinecone; ranges are for numbers
        only. Also accepted: a bare value (= $eq), a bare list (= $in) and None (IS NULL).
        A row whose field is null matches no operator."""
        if not filter:
            return ""
        parts: list[str] = []
        for key, value in filter.items():
            if key not in METADATA_COLUMNS and key != "id":
                # Column names cannot be quoted-escaped safely: accept known ones only.
                raise ValueError(f"cannot filter on {key!r}; known: id, {', '.join(METADATA_COLUMNS)}")
            if value is None:
                parts.append(f"{key} IS NULL")
                continue
            if isinstance(value, dict):
                conditions = value
                unknown = set(conditions) - {"$eq", "$in", *_RANGE_OPS}
                if unknown or not conditions:
                    raise ValueError(
                        f"filter on {key!r}: only $eq, $in, $gte and $lte are supported, got {value!r}"
                    )
            elif isinstance(value, (list, tuple, set, frozenset)):
                conditions = {"$in": value}
            else:
                conditions = {"$eq": value}
            for op, arg in conditions.items():
                parts.append(LanceDBStore._condition(key, op, arg))
        return " AND ".join(parts)

    @staticmethod
    def _condition(key: str, op: str, arg: Any) -> str:
        is_list = key in LIST_COLUMNS
        if METADATA_COLUMNS.get(key) == "int32":
            # 3.0 (a float from JSON or Pinecone) is the integer 3; 2.5 matches no integer.
            if op == "$eq" and isinstance(arg, float):
                if not arg.is_integer():
                    return "FALSE"
                arg = int(arg)
            elif op == "$in" and isinstance(arg, (list, tuple, set, frozenset)):
                arg = [int(v) if isinstance(v, float) and v.is_integer() else v for v in arg]
                arg = [v for v in arg if not isinstance(v, float)]
        if op == "$eq":
            if arg is None or isinstance(arg, (list, tuple, set, frozenset, dict)):
                raise ValueError(f"filter on {key!r}: $eq takes one value, got {arg!r}")
            return f"array_has({key}, {_sql_literal(arg)})" if is_list else f"{key} = {_sql_literal(arg)}"
        if op == "$in":
            if not isinstance(arg, (list, tuple, set, frozenset)):
                raise ValueError(f"filter on {key!r}: $in takes a list")
            if not arg:
                return "FALSE"
            literals = ", ".join(_sql_literal(v) for v in arg)
            return f"array_has_any({key}, [{literals}])" if is_list else f"{key} IN ({literals})"
        # $gte / $lte
        if is_list or METADATA_COLUMNS.get(key) != "int32":
            raise ValueError(f"filter on {key!r}: {op} applies to numeric fields only")
        if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg):
            raise ValueError(f"filter on {key!r}: {op} takes a number, got {arg!r}")
        # The columns are int32 and Lance will not compare them with a float literal:
        # n >= 2.5 is n >= 3, n <= 2.5 is n <= 2 (Pinecone keeps numbers as floats).
        bound = math.ceil(arg) if op == "$gte" else math.floor(arg)
        return f"{key} {_RANGE_OPS[op]} {bound}"
