"""The peer: the usual LangChain ingestion script, on the same files and machine.

    python -m bench.peer --out result.json --lancedb DIR FILE...
    python -m bench.peer --out result.json --lancedb DIR --spec workloads.json

PyPDFLoader (langchain-community, pypdf underneath, one Document per page) ->
RecursiveCharacterTextSplitter -> LanceDB vector store (langchain-community's, on a
local directory: works offline) with the same embedding model: our LocalEmbedder
wrapped as a LangChain `Embeddings` (HuggingFaceEmbeddings would need torch).

Sizes match docpipe's: chunk_size 1600 characters with 200 of overlap is ~400 / ~50
cl100k tokens on English prose (docpipe: CHUNK_MAX_TOKENS 400, CHUNK_OVERLAP_TOKENS 50),
and the embedder gets batches of 64 texts. One process, files one after the other,
as such a script runs; the embedder uses both cores.

Metadata is cut down to {source, page}: LanceDB fixes the metadata struct's schema when
the table is created, and PyPDFLoader's metadata keys differ from PDF to PDF (producer,
creator, ...), so the second file of a mixed set fails without it.

Not like for like, on purpose (that is the peer): no parse isolation (a hostile PDF
runs inside the process), no enrichment, random ids (a re-run duplicates every
vector), no per-page offsets or token counts, no idempotency or failure handling.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from bench import read_workloads, workload_parser

CHUNK_SIZE = 1600
CHUNK_OVERLAP = 200
EMBED_BATCH = 64


def _embeddings_class():
    from langchain_core.embeddings import Embeddings

    from ray_jobs.backends.local_embedder import LocalEmbedder

    class DocpipeLocalEmbeddings(Embeddings):
        """all-MiniLM-L6-v2 through docpipe's numpy implementation; times itself so the
        peer's embed and store steps can be told apart."""

        def __init__(self):
            self.inner = LocalEmbedder().load()
            self.seconds = 0.0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            t0 = time.monotonic()
            out: list[list[float]] = []
            for start in range(0, len(texts), EMBED_BATCH):
                out += self.inner.embed(texts[start:start + EMBED_BATCH]).vectors
            self.seconds += time.monotonic() - t0
            return out

        def embed_query(self, text: str) -> list[float]:
            return self.inner.embed([text]).vectors[0]

    return DocpipeLocalEmbeddings


def run(workloads: dict[str, list[str]], lancedb_uri: str) -> dict:
    warnings.filterwarnings("ignore")  # langchain-community announces its sunset on import
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # per-font "fontTools is required" notes
    t0 = time.monotonic()
    from langchain_community.document_loaders import PyPDFLoader
    from langchain_community.vectorstores import LanceDB
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    embeddings = _embeddings_class()()
    embeddings.embed_documents(["warm up the model"])
    embeddings.seconds = 0.0
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    # mode="append": with the default "overwrite", every add_documents call replaces the table.
    store = LanceDB(uri=lancedb_uri, embedding=embeddings, table_name="peer", mode="append")
    store.add_texts(["warm-up row: creates the table and imports lancedb"],
                    metadatas=[{"source": "warm-up", "page": 0}])
    embeddings.seconds = 0.0
    warmup = time.monotonic() - t0

    out = {}
    for name, files in workloads.items():
        out[name] = _workload(files, PyPDFLoader, store, splitter, embeddings)
        out[name]["warmup_s"] = round(warmup, 3)
    return out


def _workload(files, loader, store, splitter, embeddings) -> dict:
    rows = []
    t_start = time.monotonic()
    for path in files:
        row = {"file": Path(path).name, "bytes": os.path.getsize(path)}
        t = [time.monotonic()]
        try:
            pages = loader(path).load()
            t.append(time.monotonic())
            chunks = splitter.split_documents(pages)
            for c in chunks:
                # LanceDB fixes the metadata struct at table creation and PyPDFLoader's keys
                # differ per PDF (producer, creator, ...): keep what a citation needs.
                c.metadata = {"source": str(c.metadata.get("source", "")), "page": int(c.metadata.get("page", 0))}
            t.append(time.monotonic())
            before = embeddings.seconds
            if chunks:
                store.add_documents(chunks)
            t.append(time.monotonic())
        except Exception as err:
            row.update(status="FAILED", error_code=type(err).__name__, error=str(err)[:200],
                       seconds=time.monotonic() - t[0])
            rows.append(row)
            continue
        embed_s = embeddings.seconds - before
        row.update(status="COMPLETED" if chunks else "FAILED", pages=len(pages), chunks=len(chunks),
                   seconds=t[-1] - t[0], chars=sum(len(c.page_content) for c in chunks),
                   durations={"load": round(t[1] - t[0], 4), "split": round(t[2] - t[1], 4),
                              "embed": round(embed_s, 4), "store": round(t[3] - t[2] - embed_s, 4)})
        if not chunks:
            row["error_code"] = "NoText"
        rows.append(row)
    wall = time.monotonic() - t_start
    return {"workers": 1, "wall_s": round(wall, 4), "docs": rows,
            "chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP}


def main(argv=None) -> int:
    args = workload_parser("python -m bench.peer", __doc__).parse_args(argv)
    args.out.write_text(json.dumps(run(read_workloads(args), args.lancedb), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
