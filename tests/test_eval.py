"""bench.eval (`make eval`): the scoring arithmetic on hand-made hits, the question checks,
and one real --quick run on three small corpus files (docpipe in every search mode the
checkout has, and the LangChain peer when requirements/bench.txt is installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS, REPO

sys.path.insert(0, str(REPO))
from bench import eval as bench_eval
from bench.eval_index import Chunking, index_set

needs_corpus = pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(),
                                  reason=f"test corpus not found at {CORPUS} (../shared/corpus beside the checkout)")
SCOTUS = "pdfplumber/tests/pdfs/scotus-transcript-p1.pdf"
SENATE = "pdfplumber/tests/pdfs/senate-expenditures.pdf"
MINUTES = "pdfplumber/tests/pdfs/2023-06-20-PV.pdf"


def _q(qid: str, category: str, answers: list[tuple[str, list[int]]], evidence: str = "some words",
       question: str = "a question?") -> dict:
    return {"id": qid, "category": category, "question": question,
            "answers": [{"document": d, "pages": p} for d, p in answers], "answer": "an answer", "evidence": evidence}


def _hit(document: str, start: int, end: int | None = None) -> dict:
    return {"document": document, "page_start": start, "page_end": start if end is None else end}


def test_a_hit_is_relevant_when_its_document_matches_and_its_pages_meet_the_answer():
    answers = [{"document": "a.pdf", "pages": [3]}, {"document": "b.pdf", "pages": [7, 8]}]
    assert bench_eval.relevant(_hit("a.pdf", 3), answers)
    assert bench_eval.relevant(_hit("a.pdf", 2, 4), answers)  # a span over the page
    assert bench_eval.relevant(_hit("b.pdf", 8, 9), answers)
    assert not bench_eval.relevant(_hit("a.pdf", 4, 6), answers)  # right document, other pages
    assert not bench_eval.relevant(_hit("b.pdf", 3), answers)  # a's page in b
    assert not bench_eval.relevant({"document": "a.pdf", "page_start": None, "page_end": None}, answers)


def test_recall_and_mrr_per_category_and_overall():
    questions = [_q("f1", "filings", [("a.pdf", [1])]), _q("f2", "filings", [("a.pdf", [2])]),
                 _q("t1", "tables", [("b.pdf", [5])]), _q("t2", "tables", [("b.pdf", [6])])]
    miss = _hit("c.pdf", 1)
    hits = [[_hit("a.pdf", 1)],  # rank 1
            [miss, miss, miss, _hit("a.pdf", 2)],  # rank 4
            [miss] * 7 + [_hit("b.pdf", 4, 5)],  # rank 8
            [miss] * 10 + [_hit("b.pdf", 6)]]  # rank 11: outside the top 10
    s = bench_eval.score(questions, hits)
    assert [q["rank"] for q in s["questions"]] == [1, 4, 8, None]
    assert s["overall"] == {"questions": 4, "recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.75,
                            "mrr@10": round((1 + 1 / 4 + 1 / 8) / 4, 4)}
    assert s["by_category"]["filings"] == {"questions": 2, "recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0,
                                           "mrr@10": 0.625}
    assert s["by_category"]["tables"] == {"questions": 2, "recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.5,
                                          "mrr@10": 0.0625}
    assert set(s["by_category"]) == {"filings", "tables"}  # categories without questions are left out
    # Only the first relevant hit counts.
    assert bench_eval.first_rank([miss, _hit("a.pdf", 1), _hit("a.pdf", 1)], questions[0]["answers"]) == 2


def test_chunking_choices_parse():
    assert Chunking.parse("254/32/prefer") == Chunking(254, 32, "prefer")
    assert Chunking.parse("128/16 never").label == "128/16 never"
    for bad in ("254/32", "254/32/sometimes", "a/32/prefer"):
        with pytest.raises(ValueError, match="MAX/OVERLAP"):
            Chunking.parse(bad)


def test_question_checks_name_each_problem():
    indexed = {"a.pdf"}
    questions = [_q("x-01", "filings", [("a.pdf", [1])], evidence="Net   revenue\n rose"),
                 _q("x-01", "recipes", [("a.pdf", [1])]),
                 _q("x-03", "tables", [("z.pdf", [1])]),
                 _q("x-04", "tables", [("a.pdf", [0])]),
                 {"id": "x-05", "category": "tables"}]
    problems = bench_eval.structure_problems(questions, indexed)
    assert problems == ["x-01: id used twice", "x-01: unknown category 'recipes' "
                        "(filings, tables, multi-column, long, non-english)",
                        "x-03: document 'z.pdf' is not in the index set",
                        "x-04: pages must be a non-empty list of page numbers from 1, got [0]",
                        "x-05: missing question, answers, answer, evidence"]
    pages = {"a.pdf": {1: "Net revenue rose 5% in 2025.", 2: "Costs fell."}}
    good, wrong_page = questions[0], _q("x-06", "filings", [("a.pdf", [2, 3])], evidence="revenue rose")
    assert bench_eval.evidence_problems([good], pages.__getitem__) == []  # whitespace collapsed
    assert bench_eval.evidence_problems([wrong_page], pages.__getitem__) == [
        "x-06: a.pdf has no page 3 in docpipe's text", "x-06: evidence 'revenue rose' is on none of its answer pages"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench.eval", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _write(path: Path, questions: list[dict]) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


@needs_corpus
def test_check_questions_on_a_fixture(tmp_path):
    good = _q("filings-01", "filings", [(SCOTUS, [1])], evidence="Washington,   D.C.\nTuesday, January 13, 2009")
    bad = _q("tables-01", "tables", [(SENATE, [1])], evidence="a phrase that is not on the page")
    ok = _run("--check-questions", "--questions", str(_write(tmp_path / "ok.jsonl", [good])),
              "--cache", str(tmp_path / "cache"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 questions" in ok.stdout and ": ok" in ok.stdout
    failed = _run("--check-questions", "--questions", str(_write(tmp_path / "bad.jsonl", [good, bad])),
                  "--cache", str(tmp_path / "cache"))
    assert failed.returncode == 1
    assert "tables-01: evidence 'a phrase that is not on the page' is on none of its answer pages" in failed.stdout


@needs_corpus
def test_the_real_question_file_checks():
    questions = REPO / "bench" / "eval_questions.jsonl"
    if not questions.exists():
        pytest.skip("bench/eval_questions.jsonl is not written yet")
    proc = _run("--check-questions")  # the default cache: make eval fills the same one
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(bench_eval.read_questions(questions)) >= 60


@needs_corpus
def test_a_question_about_a_file_outside_the_index_set_is_a_run_error(tmp_path):
    scan = "unstructured/example-docs/pdf/loremipsum-flat.pdf"  # no text layer: not indexed
    assert scan not in index_set(CORPUS)
    proc = _run("--quick", "--questions", str(_write(tmp_path / "q.jsonl", [_q("long-01", "long", [(scan, [1])])])),
                "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "is not in the index set" in proc.stderr
    assert not list(tmp_path.glob("eval-*.json"))


@needs_corpus
def test_quick_run_end_to_end(tmp_path):
    questions = [
        _q("filings-01", "filings", [(SCOTUS, [1])], question="Who argued for the respondent in Knowles v. Mirzayance?"),
        _q("tables-01", "tables", [(SENATE, [1])], question="How much was the train fare for Senator Hawley?"),
        _q("non-english-01", "non-english", [(MINUTES, [2])],
           question="À quelle heure la séance du comité de démolition a-t-elle été levée?"),
        _q("long-01", "long", [("unstructured/example-docs/pdf/DA-619p.pdf", [3])]),  # not a --quick file: dropped
    ]
    peer = all(importlib.util.find_spec(m) for m in ("langchain_community", "langchain_text_splitters"))
    proc = _run("--quick", "--questions", str(_write(tmp_path / "q.jsonl", questions)), "--chunking", "254/32/prefer",
                "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *([] if peer else ["--skip-peer"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = (tmp_path / "out").glob("eval-*.json")
    result = json.loads(path.read_text())
    assert result["meta"]["questions"] == 3 and result["meta"]["files"] == 3
    modes = result["meta"]["modes"]
    assert "vector" in modes
    rows = result["rows"]
    assert [(r["system"], r["chunking"], r["mode"]) for r in rows] == (
        [("docpipe", "254/32 prefer", m) for m in modes] + ([("langchain", "1000/150 chars", "vector")] if peer else []))
    for r in rows:
        assert r["chunks"] > 0
        assert set(r["overall"]) == {"questions", "recall@1", "recall@5", "recall@10", "mrr@10"}
        assert set(r["by_category"]) == {"filings", "tables", "non-english"}
        assert {"extract", "chunk", "embed", "load", "query"} <= set(r["durations"])
        ranks = {q["id"]: q["rank"] for q in r["questions"]}
        # Three files, and the court transcript is the only one about Knowles v. Mirzayance.
        assert ranks["filings-01"] == 1, (r["system"], r["mode"], r["questions"][0]["hits"])
        assert all(len(q["hits"]) <= 10 for q in r["questions"])
    assert {f["path"] for f in result["files"]} == {SCOTUS, SENATE, MINUTES}
    assert all(f["docpipe_error"] is None for f in result["files"])
    markdown = path.with_suffix(".md").read_text()
    assert "| docpipe | 254/32 prefer | vector |" in markdown
    assert markdown.strip() in proc.stdout


@needs_corpus
def test_a_file_the_peer_cannot_load_gives_no_pages_and_says_why():
    pytest.importorskip("langchain_community", reason="the peer needs requirements/bench.txt")
    from bench.eval_peer import load

    fuzzed = "pdf.js/test/pdfs/PDFBOX-3148-2-fuzzed.pdf"  # a trailer pypdf cannot read
    out = load(CORPUS, fuzzed, None, timeout=120)
    assert out["pages"] == [] and not out["cached"]
    assert out["error"].startswith("pypdf.errors.PdfReadError: Trailer cannot be read")
