"""The LangChain peer of `python -m bench.eval`: the usual retrieval script on the same files.

PyPDFLoader (one Document per page) -> RecursiveCharacterTextSplitter(chunk_size=1000,
chunk_overlap=150) -> all-MiniLM-L6-v2 (bench.peer's wrapper of docpipe's LocalEmbedder as
a LangChain `Embeddings`: HuggingFaceEmbeddings needs torch) -> langchain-community's
LanceDB vector store -> `similarity_search(question, k=10)`. A hit's page is its
metadata "page" + 1 (PyPDFLoader counts from 0).

Each file is loaded in a child process with a timeout and a memory limit
(`python -m bench.eval_peer FILE OUT`): PyPDFLoader parses inside the process, and some
corpus PDFs are hostile. A file the peer cannot load contributes no chunks (recorded).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.eval_index import cached, file_sha
from bench.run import REPO

CHUNK_SIZE = 1000
CHUNK_OVERLAP = 150
LABEL = f"{CHUNK_SIZE}/{CHUNK_OVERLAP} chars"
LOAD_MEMORY_MB = 4096


def packages_missing() -> list[str]:
    import importlib.util

    return [m for m in ("langchain_community", "langchain_text_splitters", "langchain_core", "pypdf")
            if importlib.util.find_spec(m) is None]


def load(corpus: Path, rel: str, cache_dir: Path | None, timeout: float) -> dict[str, Any]:
    """PyPDFLoader's pages of one file, loaded in a child -> {"pages": [{"page", "text"}],
    "seconds", "error", "cached"}."""
    path = corpus / rel
    sha = file_sha(path)

    def make() -> dict[str, Any]:
        fd, name = tempfile.mkstemp(prefix="docpipe-eval-peer-", suffix=".json")
        os.close(fd)
        out = Path(name)
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.eval_peer", str(path), str(out)], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=timeout, check=False)
            if proc.returncode != 0:
                lines = (proc.stderr or "").strip().splitlines()
                error = lines[-1][:300] if lines else f"exit code {proc.returncode}"
                return {"pages": [], "seconds": round(time.monotonic() - t0, 3), "error": error}
            pages = json.loads(out.read_text())
        except subprocess.TimeoutExpired:
            return {"pages": [], "seconds": round(time.monotonic() - t0, 3), "error": f"no answer within {timeout:g} s: killed"}
        finally:
            out.unlink(missing_ok=True)
        return {"pages": pages, "seconds": round(time.monotonic() - t0, 3),
                "error": None if any(p["text"].strip() for p in pages) else "no page has text"}

    return cached(cache_dir, f"peer-{sha[:16]}-pypdf{version('pypdf')}-lc{version('langchain-community')}", make)


def build_and_query(docs: dict[str, dict[str, Any]], questions: list[dict[str, Any]], store_dir: Path,
                    progress: Any) -> dict[str, Any]:
    """Split, embed and store every loaded file, then ask every question ->
    {"chunks", "hits": [[{"document", "page_start", "page_end"}] per question], "durations"}."""
    warnings.filterwarnings("ignore")  # langchain-community announces its sunset on import
    from langchain_community.vectorstores import LanceDB
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from bench.peer import _embeddings_class

    embeddings = _embeddings_class()()
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    # mode="append": with the default "overwrite" every add_documents call replaces the table.
    store = LanceDB(uri=str(store_dir), embedding=embeddings, table_name="peer", mode="append")
    spent = dict.fromkeys(("chunk", "embed", "load"), 0.0)
    n_chunks = 0
    task = progress.add_task(f"langchain {LABEL}", total=len(docs), item="")
    for rel, doc in docs.items():
        progress.update(task, item=rel)
        t0 = time.monotonic()
        # Metadata cut down to {source, page} as in bench.peer: LanceDB fixes the metadata
        # struct at table creation and PyPDFLoader's keys differ from PDF to PDF.
        pages = [Document(page_content=p["text"], metadata={"source": rel, "page": p["page"]}) for p in doc["pages"]]
        chunks = splitter.split_documents(pages)
        t1 = time.monotonic()
        before = embeddings.seconds
        if chunks:
            store.add_documents(chunks)
        embed_s = embeddings.seconds - before
        spent["chunk"] += t1 - t0
        spent["embed"] += embed_s
        spent["load"] += time.monotonic() - t1 - embed_s
        n_chunks += len(chunks)
        progress.advance(task)
    progress.update(task, item="questions")
    hits = []
    t0 = time.monotonic()
    for q in questions:
        found = store.similarity_search(q["question"], k=10) if n_chunks else []
        hits.append([{"document": d.metadata["source"], "page_start": d.metadata["page"] + 1,
                      "page_end": d.metadata["page"] + 1} for d in found])
    query_s = time.monotonic() - t0
    progress.update(task, item="")
    return {"chunks": n_chunks, "hits": hits, "query_s": round(query_s, 3),
            "durations": {k: round(v, 3) for k, v in spent.items()}}


def _child(path: str, out: str) -> int:
    """PyPDFLoader on one file in this (child) process, its pages as JSON."""
    limit = LOAD_MEMORY_MB * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.filterwarnings("ignore")
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    from langchain_community.document_loaders import PyPDFLoader

    pages = [{"page": int(d.metadata.get("page", 0)), "text": d.page_content} for d in PyPDFLoader(path).load()]
    Path(out).write_text(json.dumps(pages))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
