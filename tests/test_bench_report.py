"""The bench's derived figures and tables from a small synthetic result: pages/s of the
documents each engine completed, "common" pages/s, the ratios, the per-page profile, the
cost of a 10-page document, and which workloads a plan runs (the `full` corpus as
`docpipe ingest <folder>` names it)."""

from __future__ import annotations

import sys

import pytest
from conftest import CORPUS, REPO

sys.path.insert(0, str(REPO))
from bench import cost, report, run


def _doc(file, pages, status="COMPLETED", **kw):
    return {"file": file, "pages": pages, "status": status, "seconds": 1.0, **kw}


def _result() -> dict:
    """docpipe reads the scan (OCR), the peer does not; nobody reads bad.pdf."""
    per_doc = [_doc("a.pdf", 10, latency_s=3.0), _doc("scan.pdf", 15, "PARTIAL", latency_s=6.0),
               _doc("b.pdf", 5, latency_s=2.0), _doc("bad.pdf", 0, "FAILED", latency_s=1.0)]
    e2e = {"wall_s": 10.0, "pages": 30, "completed": 3, "per_doc": per_doc,
           "stage_compute_s": {"extract": 6.0, "chunk": 0.3, "enrich": 0.6, "embed": 9.0, "load": 1.5}}
    bare = {"wall_s": 8.0, "completed": 3, "pages": 30, "chunks": 60,
            "docs": [_doc("a.pdf", 10), _doc("scan.pdf", 15), _doc("b.pdf", 5), _doc("bad.pdf", 0, "FAILED")],
            "stage_s": {"extract": 3.0, "chunk": 0.15, "enrich": 0.3, "embed": 6.0, "load": 0.6}}
    peer_docs = [_doc("a.pdf", 10), _doc("scan.pdf", 15, "FAILED", error_code="NoText"), _doc("b.pdf", 5),
                 _doc("bad.pdf", 0, "FAILED", error_code="Timeout")]
    peer = {"wall_s": 30.0, "completed": 2, "pages": 15, "chunks": 40, "docs": peer_docs,
            "stage_s": {"load": 3.0, "split": 0.03, "embed": 24.0, "store": 0.3}}
    ablation = {**peer, "wall_s": 12.0, "stage_s": {"load": 3.0, "split": 0.03, "embed": 6.0, "store": 0.3}}
    return {"meta": {"plan": {"doc_pages": 2}}, "workloads": {"full": ["a.pdf", "scan.pdf", "b.pdf", "bad.pdf"]},
            "e2e": {"workloads": {"full": e2e}}, "bare": {"workloads": {"full": bare}},
            "peer": {"workloads": {"full": peer}}, "peer_ablation": {"workloads": {"full": ablation}}}


def test_pages_per_second_count_completed_documents_and_common_ones_exclude_a_docpipe_only_scan():
    x = run.ratios(_result())["full"]
    assert x["pages_per_s"] == {"docpipe": 3.0, "bare": 3.75, "peer": 0.5, "peer_ablation": 1.25}
    assert (x["common_documents"], x["common_pages"]) == (2, 15)  # a.pdf and b.pdf
    assert x["common_pages_per_s"] == {"docpipe": 1.5, "bare": 1.875, "peer": 0.5, "peer_ablation": 1.25}
    assert (x["docpipe_over_peer"], x["docpipe_over_peer_common"]) == (6.0, 3.0)
    assert (x["docpipe_over_bare"], x["docpipe_over_bare_common"]) == (0.8, 0.8)
    assert (x["bare_over_peer"], x["peer_ablation_over_peer"]) == (7.5, 2.5)


def test_profile_is_seconds_per_page_and_orchestration_is_the_wall_per_page_over_bare():
    p = run.profile(_result())["full"]
    assert p["docpipe"]["extract"] == 0.2 and p["docpipe"]["embed"] == 0.3
    assert p["docpipe"]["orchestration"] == pytest.approx(10 / 30 - 8 / 30, abs=1e-5)
    assert "orchestration" not in p["bare"]
    # The peer's steps under docpipe's stage names; it does no enrichment.
    assert p["peer"] == {"extract": 0.2, "chunk": 0.002, "enrich": None, "embed": 1.6, "load": 0.02, "wall": 2.0}


def test_a_ten_page_document_costs_its_per_document_lines_and_ten_pages_of_fargate():
    lines = {"step_functions": 0.00015, "lambda_duration": 0.00001, "fargate": 0.0004}
    per_doc = {"as_benchmarked": {k: {"basis": "", "usd": v} for k, v in lines.items()},
               "total_as_benchmarked_usd": sum(lines.values())}
    assert cost.scaled_to_pages(per_doc, pages_per_doc=40) == pytest.approx(0.00016 + 0.0001)

    e2e = {"workloads": {"corpus": {"completed": 2, "pages": 80}}}
    ten = run.ten_page_document(e2e, {"corpus": per_doc})
    assert ten["usd"] == pytest.approx(0.00026) and ten["meets_target"] and "scaled" in ten["basis"]
    measured = {**per_doc, "total_as_benchmarked_usd": 0.00031}
    ten = run.ten_page_document(e2e, {"corpus": per_doc, "pages-10": measured})
    assert (ten["usd"], ten["meets_target"]) == (0.00031, False)
    assert ten["scaled"]["usd"] == pytest.approx(0.00026)  # shown beside it


def test_the_tables_show_every_engine_and_the_ratios():
    r = _result()
    del r["e2e"]  # the e2e tables need a whole local-stack run
    r["ratios"], r["profile"] = run.ratios(r), run.profile(r)
    md = report.markdown(r)
    assert "| full | bare | 3 | 30 | 60 | 8.0 |" in md
    assert "|  | peer, docpipe's embedder | 2 | 15 |" in md
    ratio_row = next(line for line in md.splitlines() if line.startswith("| full | 2 | 15 |"))
    assert "7.50" in ratio_row and "2.50" in ratio_row  # bare ÷ peer, ablation ÷ peer


def test_the_full_workload_is_every_corpus_pdf_named_as_docpipe_ingest_names_it(tmp_path):
    if not CORPUS.exists():
        pytest.skip(f"{CORPUS} not found (../shared/corpus beside the checkout)")
    from docpipe_local import ingest

    pdfs = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    keys = [d.key for d in ingest.plan(run.full_sources(), "bucket", "input/")]
    assert sorted(keys) == sorted(f"input/corpus/{p.relative_to(CORPUS).as_posix()}" for p in pdfs)

    assert "full" not in run.workloads(run.Plan.make(True, only=["corpus"]), tmp_path)
    loads = run.workloads(run.Plan.make(True, only=["corpus"], full=True), tmp_path)
    assert set(loads) == {"corpus", "full"} and sorted(loads["full"]) == pdfs
    assert set(run.workloads(run.Plan.make(True, only=["full"]), tmp_path)) == {"full"}


def test_rounds_give_each_ratio_per_round_its_median_and_range_and_a_table():
    first = _result()
    first["ratios"] = run.ratios(first)
    engines = ("e2e", "bare", "peer", "peer_ablation")
    slow = {k: v for k, v in _result().items() if k in engines}
    slow["e2e"]["workloads"]["full"]["wall_s"] = 20.0  # round 2: docpipe ran half as fast
    quick = {k: v for k, v in _result().items() if k in engines}
    quick["bare"]["workloads"]["full"]["wall_s"] = 6.0  # round 3: bare ran faster

    summary = run.rounds_summary(first, [slow, quick])

    w = summary["workloads"]["full"]
    assert summary["rounds"] == 3
    # 30 pages: docpipe 3.0 pages/s (1.5 in round 2), bare 3.75 (5.0 in round 3), peer 15 / 30 s.
    assert w["docpipe_over_bare"] == {"rounds": [0.8, 0.4, 0.6], "median": 0.6, "min": 0.4, "max": 0.8}
    assert w["docpipe_over_peer"]["rounds"] == [6.0, 3.0, 6.0] and w["docpipe_over_peer"]["median"] == 6.0
    assert w["wall_s"]["docpipe"] == [10.0, 20.0, 10.0] and w["wall_s"]["bare"] == [8.0, 8.0, 6.0]
    first["rounds"] = summary
    assert run.headline({**first, "e2e": {"workloads": {}}}) == {}  # no docpipe run: no headline row
    del first["e2e"]  # the e2e tables need a whole local-stack run
    first["profile"] = run.profile(first)
    row = next(line for line in report.markdown(first).splitlines() if line.startswith("| full | 6.00 (3.00-6.00)"))
    assert "0.60 (0.40-0.80)" in row and "10.0 / 20.0 / 10.0" in row


def test_the_timelines_read_a_jobs_log_once_and_never_a_stage_services():
    from bench import e2e
    from docpipe.rayjobs import KIND_SERVICE

    line = '{"message": "stage started", "timestamp": "2026-12-01 16:54:42,123+0000"}'
    answers = {"/api/jobs/svc": {"metadata": {"docpipe": KIND_SERVICE}},
               "/api/jobs/own": {"metadata": {}, "start_time": 1000, "end_time": 9000},
               "/api/jobs/own/logs": {"logs": f"noise\n{line}\n"}}
    asked = []

    class FakeClients:
        def ray(self, path):
            asked.append(path)
            return answers[path]

    jobs: dict = {}
    for _ in range(3):
        assert e2e._job(FakeClients(), "svc", jobs) == ({}, {})
        job, logs = e2e._job(FakeClients(), "own", jobs)
    assert job["end_time"] == 9000 and logs == {"stage_started": 1796144082.123}
    assert asked == ["/api/jobs/svc", "/api/jobs/own", "/api/jobs/own/logs"]


def test_the_stage_codes_cpu_sets_docpipes_tasks_against_bare_on_the_documents_both_ran():
    from bench import e2e

    r = _result()
    docs = r["e2e"]["workloads"]["full"]["per_doc"]
    docs[0]["task_cpu_s"] = {"extract": 1.0, "embed": 3.0}  # a.pdf
    docs[1]["task_cpu_s"] = {"extract": 2.0, "embed": 2.5}  # scan.pdf (PARTIAL counts)
    # b.pdf ran as its own Ray job: no task CPU, left out; bad.pdf failed everywhere.
    for d, cpu in zip(r["bare"]["workloads"]["full"]["docs"], (3.5, 4.0, 1.0, 0.1), strict=True):
        d["cpu_s"] = cpu
    w = run.stage_cpu(r)["full"]
    assert w == {"documents": 2, "docpipe_task_cpu_s": 8.5, "bare_cpu_s": 7.5, "docpipe_over_bare": 1.133,
                 "extract_cpu_s": 3.0, "embed_cpu_s": 5.5}
    r["stage_cpu"] = run.stage_cpu(r)
    del r["e2e"]  # the e2e tables need a whole local-stack run
    assert any(line.startswith("| full | 2 | 3.0 | 5.5 | 8.5 | 7.5 | 1.13") for line in report.markdown(r).splitlines())

    # The figures come from the services' "document answered" lines, read once each.
    log = "\n".join([
        "noise",
        '{"message": "document answered", "stage": "extract", "document_id": "a", "ok": true, "task_cpu_s": 1.25}',
        '{"message": "document answered", "stage": "embed", "document_id": "a", "ok": true, "task_cpu_s": 2.5}',
        '{"message": "document answered", "stage": "embed", "document_id": "b", "ok": false, "task_cpu_s": null}',
        '{"message": "document answered", "stage": "embed", "document_id": "other-batch", "ok": true, "task_cpu_s": 9}',
    ])
    assert e2e.task_cpu(log, {"a", "b"}) == {"a": {"extract": 1.25, "embed": 2.5}}
