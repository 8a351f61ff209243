"""`python -m bench.eval` (also `make eval`): retrieval quality on ../shared/corpus, issue #12.

Questions (bench/eval_questions.jsonl, one JSON object a line: id, category, question,
answers [{document, pages}], answer, evidence) are asked of:
- docpipe, in this process (no local stack): every index-set file extracted once as the
  extract stage does with OCR_BACKEND=none (cached in bench/results/.eval-cache/), then per
  chunking choice chunk_pages -> LocalEnricher -> LocalEmbedder -> a LanceDBStore in a
  temporary directory, searched with ray_jobs.search.search(top_k=10) in each mode;
- the usual LangChain script on the same files (bench/eval_peer.py).
A hit is relevant when its document is one of the question's answers' and its pages
[page_start, page_end] meet that answer's pages. Per system row, overall and per category:
recall@1/5/10 (share of questions with a relevant hit in the top k) and MRR@10; chunk
counts and time per stage. JSON and Markdown in bench/results/eval-<UTC stamp>.*; the
Markdown also on stdout. See docs/retrieval.md.

`--check-questions` checks the question file instead: ids unique, categories known,
documents in the index set, and each question's evidence on one of its answer pages in
docpipe's extracted text (whitespace collapsed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.eval_index import Chunking
from bench.run import CORPUS_DIR

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE / "eval_questions.jsonl"
CATEGORIES = ("filings", "tables", "multi-column", "long", "non-english")
# The default first, then one change each: overlap, page breaks (two), size.
CHUNKINGS = "254/0/prefer,254/32/prefer,254/0/cross,254/0/never,128/0/prefer"
KS = (1, 5, 10)
QUESTION_KEYS = ("id", "category", "question", "answers", "answer", "evidence")
# --quick: three small files of three categories (4 pages; well under a minute on 2 cores).
QUICK = [
    "pdfplumber/tests/pdfs/scotus-transcript-p1.pdf",  # 1 p, court transcript (filings)
    "pdfplumber/tests/pdfs/senate-expenditures.pdf",  # 1 p, table
    "pdfplumber/tests/pdfs/2023-06-20-PV.pdf",  # 2 p, French minutes
]


# ---------------------------------------------------------------------------- questions
def read_questions(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON: {err}") from err
    return out


def collapse(text: str) -> str:
    return " ".join(text.split())


def structure_problems(questions: list[dict[str, Any]], indexed: set[str]) -> list[str]:
    """What is wrong with the questions without reading any page."""
    problems, seen = [], set()
    for i, q in enumerate(questions, 1):
        qid = q.get("id", f"line {i}")
        missing = [k for k in QUESTION_KEYS if not q.get(k)]
        if missing:
            problems.append(f"{qid}: missing {', '.join(missing)}")
            continue
        if qid in seen:
            problems.append(f"{qid}: id used twice")
        seen.add(qid)
        if q["category"] not in CATEGORIES:
            problems.append(f"{qid}: unknown category {q['category']!r} ({', '.join(CATEGORIES)})")
        for a in q["answers"]:
            pages = a.get("pages")
            if a.get("document") not in indexed:
                problems.append(f"{qid}: document {a.get('document')!r} is not in the index set")
            if not pages or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in pages):
                problems.append(f"{qid}: pages must be a non-empty list of page numbers from 1, got {pages!r}")
    return problems


def evidence_problems(questions: list[dict[str, Any]], page_texts: Callable[[str], dict[int, str]]) -> list[str]:
    """Each question's evidence on one of its answer pages (whitespace collapsed)."""
    problems = []
    for q in questions:
        evidence = collapse(q["evidence"])
        texts = [(a["document"], p, page_texts(a["document"]).get(p)) for a in q["answers"] for p in a["pages"]]
        for doc, p, text in texts:
            if text is None:
                problems.append(f"{q['id']}: {doc} has no page {p} in docpipe's text")
        if not any(text is not None and evidence in collapse(text) for _, _, text in texts):
            problems.append(f"{q['id']}: evidence {evidence[:60]!r} is on none of its answer pages")
    return problems


# ---------------------------------------------------------------------------- scoring
def relevant(hit: dict[str, Any], answers: list[dict[str, Any]]) -> bool:
    start, end = hit.get("page_start"), hit.get("page_end")
    if start is None:
        return False
    end = start if end is None else end
    return any(hit.get("document") == a["document"] and any(start <= p <= end for p in a["pages"]) for a in answers)


def first_rank(hits: list[dict[str, Any]], answers: list[dict[str, Any]], k: int = 10) -> int | None:
    """The rank (from 1) of the first relevant hit among the top `k`, else None."""
    return next((i for i, h in enumerate(hits[:k], 1) if relevant(h, answers)), None)


def metrics(ranks: list[int | None]) -> dict[str, Any]:
    n = len(ranks)
    out: dict[str, Any] = {"questions": n}
    for k in KS:
        out[f"recall@{k}"] = round(sum(1 for r in ranks if r is not None and r <= k) / n, 4) if n else None
    out["mrr@10"] = round(sum(1 / r for r in ranks if r is not None and r <= 10) / n, 4) if n else None
    return out


def score(questions: list[dict[str, Any]], hits: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Overall and per-category metrics of one system row, and each question's rank."""
    ranks = [first_rank(h, q["answers"]) for q, h in zip(questions, hits, strict=True)]
    by_category = {c: metrics([r for q, r in zip(questions, ranks, strict=True) if q["category"] == c])
                   for c in CATEGORIES if any(q["category"] == c for q in questions)}
    return {"overall": metrics(ranks), "by_category": by_category,
            "questions": [{"id": q["id"], "category": q["category"], "rank": r,
                           "hits": [[h["document"], h["page_start"], h["page_end"]] for h in hs]}
                          for q, r, hs in zip(questions, ranks, hits, strict=True)]}


# ---------------------------------------------------------------------------- the run
def _progress() -> Any:
    from bench.ocr import _progress as progress

    return progress()


def extract_all(corpus: Path, files: list[str], cache_dir: Path | None, progress: Any) -> dict[str, dict[str, Any]]:
    from bench.eval_index import extract

    task = progress.add_task("docpipe text (OCR off)", total=len(files), item="")
    out = {}
    for rel in files:
        progress.update(task, item=rel)
        out[rel] = extract(corpus, rel, cache_dir)
        progress.advance(task)
    progress.update(task, item="")
    return out


def check(args: argparse.Namespace) -> int:
    from bench.eval_index import apply_env, index_set

    apply_env()
    questions = read_questions(args.questions)
    indexed = set(index_set(args.corpus))
    problems = structure_problems(questions, indexed)
    if not problems:
        with _progress() as progress:
            docs = extract_all(args.corpus, sorted({a["document"] for q in questions for a in q["answers"]}),
                               args.cache, progress)
        pages = {rel: {p["page_number"]: p["text"] for p in d["pages"]} for rel, d in docs.items()}
        problems = evidence_problems(questions, pages.__getitem__)
    for p in problems:
        print(p)
    counts = {c: sum(1 for q in questions if q.get("category") == c) for c in CATEGORIES}
    print(f"{len(questions)} questions ({', '.join(f'{c} {n}' for c, n in counts.items())}), "
          f"{len({a.get('document') for q in questions for a in q.get('answers') or []})} documents: "
          + (f"{len(problems)} problems" if problems else "ok"))
    return 1 if problems else 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import eval_index, eval_peer
    from bench.run import machine
    from ray_jobs.settings import StageSettings

    t_start = time.monotonic()
    started = datetime.now(UTC)
    eval_index.apply_env()
    notes: list[str] = []
    files = eval_index.index_set(args.corpus)
    questions = read_questions(args.questions)
    problems = structure_problems(questions, set(files))
    if problems:
        raise ValueError(f"{args.questions}: " + "; ".join(problems[:10]))
    if args.quick:
        files = [f for f in QUICK if f in files]
        questions = [{**q, "answers": [a for a in q["answers"] if a["document"] in files]} for q in questions]
        questions = [q for q in questions if q["answers"]]
        notes.append(f"--quick: {len(files)} files ({', '.join(files)}) and the {len(questions)} questions about them")
    if not questions:
        raise ValueError(f"no questions to ask ({args.questions}{' about the --quick files' if args.quick else ''})")
    if not eval_index.supports_page_breaks():
        skipped = [c.label for c in args.chunking if c.page_breaks != "prefer"]
        args.chunking = [c for c in args.chunking if c.page_breaks == "prefer"]
        notes.append("ray_jobs.chunking.chunk_pages has no page_breaks yet: chunked as it does today (across "
                     f"page breaks); not run: {', '.join(skipped) or 'none'}")
    modes, mode_notes = eval_index.available_modes()
    modes = [m for m in modes if m in args.modes]
    notes += mode_notes
    peer = not args.skip_peer
    if peer and (missing := eval_peer.packages_missing()):
        raise ValueError(f"the LangChain peer needs requirements/bench.txt (missing {', '.join(missing)}): "
                         ".venv/bin/pip install -r requirements/bench.txt -c requirements/constraints.txt, "
                         "or pass --skip-peer")
    settings = StageSettings.from_env()
    default = {"chunking": Chunking(settings.chunk_max_tokens, settings.chunk_overlap_tokens,
                                    settings.chunk_page_breaks).label, "mode": settings.query_mode}
    result: dict[str, Any] = {"meta": {
        "started": started.isoformat(timespec="seconds"), "machine": machine(), "corpus": str(args.corpus),
        "quick": args.quick, "questions_file": str(args.questions), "questions": len(questions),
        "questions_by_category": {c: sum(1 for q in questions if q["category"] == c) for c in CATEGORIES},
        "files": len(files), "chunkings": [c.label for c in args.chunking], "modes": modes, "default": default,
        "env": dict(eval_index.ENV), "notes": notes}}
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="docpipe-eval-"))
    try:
        with _progress() as progress:
            docs = extract_all(args.corpus, files, args.cache, progress)
            readable = {rel: d for rel, d in docs.items() if d["pages"] and not d["error"]}
            extract_s = round(sum(d["seconds"] for d in docs.values()), 3)
            from ray_jobs.backends.local_embedder import LocalEmbedder

            embedder = eval_index.cached_embedder(LocalEmbedder().load(), args.cache)
            for chunking in args.chunking:
                store = work / f"docpipe-{chunking.label.replace('/', '-').replace(' ', '-')}"
                built = eval_index.build(chunking, readable, store, embedder, progress)
                hits, query_s = eval_index.query(store, questions, modes, chunking.label, progress)
                for mode in modes:
                    rows.append({"system": "docpipe", "chunking": chunking.label, "mode": mode, "chunks": built["chunks"],
                                 "tokens": built["tokens"],
                                 "durations": {"extract": extract_s, **built["durations"], "query": query_s[mode]},
                                 **score(questions, hits[mode])})
                shutil.rmtree(store, ignore_errors=True)
            peer_docs: dict[str, dict[str, Any]] = {}
            if peer:
                task = progress.add_task("langchain PyPDFLoader (children)", total=len(files), item="")
                for rel in files:
                    progress.update(task, item=rel)
                    peer_docs[rel] = eval_peer.load(args.corpus, rel, args.cache, args.file_timeout)
                    progress.advance(task)
                progress.update(task, item="")
                loaded = {rel: d for rel, d in peer_docs.items() if d["pages"]}
                p = eval_peer.build_and_query(loaded, questions, work / "langchain", progress)
                rows.append({"system": "langchain", "chunking": eval_peer.LABEL, "mode": "vector", "chunks": p["chunks"],
                             "durations": {"extract": round(sum(d["seconds"] for d in peer_docs.values()), 3),
                                           **p["durations"], "query": p["query_s"]},
                             **score(questions, p["hits"])})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["files"] = [{"path": rel, "pages": len(docs[rel]["pages"]), "docpipe_error": docs[rel]["error"],
                        "extract_cached": docs[rel]["cached"],
                        **({"peer_error": peer_docs[rel]["error"], "peer_cached": peer_docs[rel]["cached"]} if peer else {})}
                       for rel in files]
    result["rows"] = rows
    result["targets"] = targets(rows, default)
    result["meta"]["runtime_s"] = round(time.monotonic() - t_start, 1)
    return result


def targets(rows: list[dict[str, Any]], default: dict[str, str]) -> dict[str, Any] | None:
    """Issue #12's targets for the default row: recall@5 >= 0.95, MRR@10 >= 0.85, above
    LangChain on every overall metric."""
    row = next((r for r in rows if r["system"] == "docpipe" and r["chunking"] == default["chunking"]
                and r["mode"] == default["mode"]), None)
    if row is None:
        return None
    o = row["overall"]
    peer = next((r["overall"] for r in rows if r["system"] == "langchain"), None)
    keys = [f"recall@{k}" for k in KS] + ["mrr@10"]
    out = {"row": f"{row['chunking']} {row['mode']}", "recall@5>=0.95": o["recall@5"] >= 0.95,
           "mrr@10>=0.85": o["mrr@10"] >= 0.85,
           "above_langchain": None if peer is None else all(o[k] > peer[k] for k in keys)}
    out["met"] = all(v is not False for k, v in out.items() if k != "row")
    return out


# ---------------------------------------------------------------------------- Markdown
def _f(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f}"


def markdown(r: dict[str, Any]) -> str:
    from bench.ocr import _table

    m, rows = r["meta"], r["rows"]
    cats = [c for c in CATEGORIES if m["questions_by_category"].get(c)]
    parts = [f"`python -m bench.eval{' --quick' if m['quick'] else ''}` — {m['started']}; {m['machine']['cores']} cores "
             f"({m['machine']['cpu']}); commit {m['machine']['git_commit']}{' (dirty)' if m['machine']['git_dirty'] else ''}; "
             f"{m['questions']} questions over {m['files']} files; runtime {m['runtime_s']:.0f} s.", ""]
    parts.append(_table(["system", "chunking", "mode", "chunks", "recall@1", "recall@5", "recall@10", "MRR@10"],
                        [[x["system"], x["chunking"], x["mode"], x["chunks"],
                          *(_f(x["overall"][k]) for k in ("recall@1", "recall@5", "recall@10", "mrr@10"))] for x in rows],
                        "lllr" + "r" * 4))
    parts += ["", "recall@5 / MRR@10 per category (questions): "
              + ", ".join(f"{c} {m['questions_by_category'][c]}" for c in cats), ""]
    parts.append(_table(["system", "chunking", "mode", *cats],
                        [[x["system"], x["chunking"], x["mode"],
                          *(f"{_f(x['by_category'][c]['recall@5'])} / {_f(x['by_category'][c]['mrr@10'])}" for c in cats)]
                         for x in rows], "lll" + "r" * len(cats)))
    parts += ["", "Seconds per stage (extract is per system, shared by its rows; query = all questions in that mode):", ""]
    stages = ("extract", "chunk", "enrich", "embed", "load", "query")
    parts.append(_table(["system", "chunking", "mode", *stages],
                        [[x["system"], x["chunking"], x["mode"], *(_f(x["durations"].get(s)) for s in stages)] for x in rows],
                        "lll" + "r" * len(stages)))
    t = r.get("targets")
    if t:
        verdict = ", ".join(f"{k} {'yes' if v else 'no' if v is False else '–'}" for k, v in t.items() if k not in ("row", "met"))
        parts += ["", f"Targets (issue #12) for the default row ({t['row']}): {verdict}."]
    failed = [(f["path"], f["docpipe_error"], f.get("peer_error"))
              for f in r["files"] if f["docpipe_error"] or f.get("peer_error")]
    if failed:
        parts += ["", "Files without chunks: " + "; ".join(
            f"{p} ({', '.join(x for x in (f'docpipe: {d}' if d else '', f'langchain: {e}' if e else '') if x)})"
            for p, d, e in failed)]
    if m["notes"]:
        parts += ["", *(f"Note: {n}" for n in m["notes"])]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- CLI
def _chunkings(spec: str) -> list[Chunking]:
    try:
        return [Chunking.parse(s.strip()) for s in spec.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _modes(spec: str) -> list[str]:
    from bench.eval_index import MODES

    modes = [s.strip() for s in spec.split(",") if s.strip()]
    if not modes or set(modes) - set(MODES):
        raise argparse.ArgumentTypeError(f"modes: a list of {', '.join(MODES)}")
    return modes


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.eval",
        description="Retrieval quality (issue #12): the questions of bench/eval_questions.jsonl asked of docpipe "
                    "(each chunking choice x each search mode, in-process, OCR off) and of the usual LangChain "
                    "script on the same corpus files: recall@1/5/10 and MRR@10 overall and per category, chunks and "
                    "seconds per stage. Markdown on stdout, progress on stderr, JSON and Markdown in "
                    "bench/results/eval-<UTC stamp>.*. Exit code 1 when the run (or --check-questions) fails.",
        epilog="Full run: ~25-35 minutes on 2 idle cores (each chunking choice embeds the whole index set); "
               "--quick: under a minute. See docs/retrieval.md.")
    ap.add_argument("--questions", type=Path, default=QUESTIONS, metavar="FILE",
                    help="question file, JSON lines (default bench/eval_questions.jsonl)")
    ap.add_argument("--corpus", type=Path, default=CORPUS_DIR, metavar="DIR",
                    help="the corpus directory with MANIFEST.tsv (default ../shared/corpus)")
    ap.add_argument("--chunking", type=_chunkings, default=_chunkings(CHUNKINGS), metavar="LIST",
                    help=f"chunking choices MAX/OVERLAP/PAGE_BREAKS, comma-separated (default {CHUNKINGS})")
    ap.add_argument("--modes", type=_modes, default=["vector", "keyword", "hybrid"], metavar="LIST",
                    help="search modes (default vector,keyword,hybrid; those the checkout lacks are skipped with a note)")
    ap.add_argument("--quick", action="store_true",
                    help=f"only {len(QUICK)} small files (4 pages) and the questions about them")
    ap.add_argument("--skip-peer", action="store_true", help="no LangChain peer (requirements/bench.txt not needed)")
    ap.add_argument("--check-questions", action="store_true",
                    help="check the question file against docpipe's extracted text instead of running the eval")
    ap.add_argument("--file-timeout", type=float, default=300.0, metavar="S",
                    help="seconds the peer's PyPDFLoader may take on one file before it is killed (default 300)")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / ".eval-cache", metavar="DIR",
                    help="extracted pages per file (keyed by file hash and extraction code; default bench/results/.eval-cache)")
    ap.add_argument("--no-cache", dest="cache", action="store_const", const=None, help="extract every file again")
    ap.add_argument("--out", type=Path, default=HERE / "results", metavar="DIR",
                    help="where the JSON and Markdown go (default bench/results/)")
    args = ap.parse_args(argv)
    if args.file_timeout <= 0:
        ap.error("--file-timeout must be > 0")
    if not args.chunking:
        ap.error("--chunking: at least one choice")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not (args.corpus / "MANIFEST.tsv").exists():
        print(f"error: no MANIFEST.tsv in {args.corpus} (../shared/corpus beside the checkout, or --corpus)", file=sys.stderr)
        return 1
    if not args.questions.exists():
        print(f"error: no question file {args.questions} (--questions FILE)", file=sys.stderr)
        return 1
    try:
        if args.check_questions:
            return check(args)
        result = run(args)
    except Exception as err:  # a run error: say what, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(result["meta"]["started"]).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"eval-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    text = markdown(result)
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nraw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
