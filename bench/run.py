"""One benchmark run: workloads -> bare compute, LangChain peer (and its ablation with
docpipe's embedder), docpipe end to end -> pages/s and ratios, per-page profile, scaling,
cost -> one JSON document (rendered by bench.report)."""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import cores, cost
from bench.gen import generate
from bench.procs import Sampler, own_cpu_s
from docpipe.costs import PRICES_AS_OF

REPO = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO.parent / "shared" / "corpus"

# Good documents of ../shared/corpus (all COMPLETED in docpipe and readable by pypdf),
# from one page to a 117-page book, English, French and German. The 400- and 619-page
# files are left out: their embedding alone would take ~2.5 min per engine, and the
# generated 1000-page document measures long documents.
CORPUS = [
    "py-pdf-sample-files/009-pdflatex-geotopo/GeoTopo-komprimiert.pdf",  # 117 p, German textbook
    "pdfplumber/tests/pdfs/chelsea_pdta.pdf",  # 65 p, French report, 2.9 MB
    "pdfplumber/tests/pdfs/issue-71-duplicate-chars-2.pdf",  # 20 p, fake-bold duplicate glyphs
    "pdf.js/test/pdfs/tracemonkey.pdf",  # 14 p, two-column paper, ligatures
    "unstructured/example-docs/pdf/multi-column.pdf",  # 13 p, columns
    "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf",  # 4 p
    "unstructured/example-docs/pdf/reliance.pdf",  # 3 p, annual report pages
    "pdfplumber/tests/pdfs/2023-06-20-PV.pdf",  # 2 p, French minutes
    "unstructured/example-docs/pdf/layout-parser-paper-with-table.pdf",  # 1 p, table
    "py-pdf-sample-files/011-google-doc-document/google-doc-document.pdf",  # 1 p
]
KINDS = ("corpus", "pages", "docs", "full")
DEFAULT_KINDS = ("corpus", "pages", "docs")  # `full` only when asked: it adds minutes per engine
ENGINES = (("docpipe", "e2e"), ("bare", "bare"), ("peer", "peer"), ("peer_ablation", "peer_ablation"))
STAGES = ("extract", "chunk", "enrich", "embed", "load")
# The peer's steps under docpipe's stage names (it does no enrichment).
PEER_STAGES = {"extract": "load", "chunk": "split", "embed": "embed", "load": "store"}
CORPUS_QUICK = [
    "pdf.js/test/pdfs/tracemonkey.pdf",
    "unstructured/example-docs/pdf/reliance.pdf",
    "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf",
]


@dataclass
class Plan:
    mode: str
    corpus: list[str]
    page_sizes: list[int]  # one generated document of each size
    doc_counts: list[int]  # generated sets of this many documents
    doc_pages: int = 2  # pages per document of the generated sets
    skip_peer: bool = False
    skip_bare: bool = False
    skip_e2e: bool = False
    job_slots: int = 8  # docpipe_local.stack.start's default
    env: dict = field(default_factory=dict)  # environment of the stack (Ray jobs inherit it)
    parameters: dict = field(default_factory=dict)  # template parameter overrides
    label: str = ""
    only: list = field(default_factory=list)  # workload kinds (KINDS); empty = DEFAULT_KINDS
    full: bool = False  # also the `full` workload (every PDF of ../shared/corpus)
    peer_ablation: bool = False  # also the peer with docpipe's embedder
    rounds: int = 1  # engines run this many times, interleaved; ratios reported per round and median
    split_cores: bool = False  # Ray, bare and peer on half the CPUs, the AWS emulation on the rest (bench.cores)

    @classmethod
    def make(cls, quick: bool, docs: int | None = None, **kw) -> Plan:
        if quick:
            plan = cls("quick", list(CORPUS_QUICK), [10, 100], sorted({4, docs or 12}), **kw)
        else:
            # 10 -> 50 documents fits the 15-minute budget; `--docs 200` runs the issue's
            # full 10 -> 200 range (~12 more minutes: ~3-5 s of machine time per document).
            counts = [10, 50] if docs is None else sorted({10, docs} | ({50} if docs > 50 else set()))
            plan = cls("default", list(CORPUS), [10, 100, 1000], counts, **kw)
        return plan


def full_sources(corpus_dir: Path = CORPUS_DIR) -> list:
    """Every PDF under the corpus folder, as `docpipe ingest <corpus folder>` finds and names
    them (docpipe_local.ingest.find_documents: keys input/corpus/<path>); the folder's
    README and LICENSE files (Markdown, text) are left out: the workload is its PDFs."""
    from docpipe_local.ingest import find_documents

    return [s for s in find_documents([str(corpus_dir)]) if s.path.suffix.lower() == ".pdf"]


def workloads(plan: Plan, work: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    unknown = set(plan.only) - set(KINDS)
    if unknown:
        raise SystemExit(f"--only: unknown workload kinds {sorted(unknown)} ({', '.join(KINDS)})")
    kinds = set(plan.only or DEFAULT_KINDS) | ({"full"} if plan.full else set())
    wanted = lambda kind: kind in kinds  # noqa: E731
    corpus = [CORPUS_DIR / rel for rel in plan.corpus] if wanted("corpus") else []
    missing = [str(p) for p in corpus if not p.exists()]
    if missing:
        raise SystemExit(f"corpus files not found (../shared/corpus beside the checkout): {missing}")
    if corpus:
        out["corpus"] = corpus
    for pages in plan.page_sizes if wanted("pages") else []:
        out[f"pages-{pages}"] = generate(work / "gen", 1, pages, seed=10_000 + pages)
    for n in plan.doc_counts if wanted("docs") else []:
        out[f"docs-{n}"] = generate(work / "gen", n, plan.doc_pages, seed=20_000 + 1000 * n)
    if wanted("full"):
        out["full"] = [s.path for s in full_sources()]
        if not out["full"]:
            raise SystemExit(f"no PDF under {CORPUS_DIR} (../shared/corpus beside the checkout)")
    return out


# ---------------------------------------------------------------------------- engines
def _subprocess(module: str, spec: dict[str, list[Path]], work: Path, echo, args: tuple = (),
                name: str = "", cpus: set[int] | None = None) -> dict:
    """Run bench.bare / bench.peer in a child (own imports, own memory), sampled; on
    `cpus` only when given (bare then runs one process per CPU)."""
    name = name or module.rsplit(".", 1)[-1]
    if cpus and module == "bench.bare":
        args = (*args, "--procs", str(len(cpus)))
    spec_file, out_file = work / f"{name}-spec.json", work / f"{name}-out.json"
    spec_file.write_text(json.dumps({k: [str(p) for p in v] for k, v in spec.items()}))
    cmd = [sys.executable, "-m", module, "--spec", str(spec_file), "--out", str(out_file),
           "--lancedb", str(work / f"{name}-lancedb"), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DOCPIPE_NO_RAY": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    sampler = Sampler([proc.pid]).start()
    code = proc.wait()
    procs = sampler.stop()
    if code != 0:
        raise RuntimeError(f"{module} exited {code}")
    result = json.loads(out_file.read_text())
    for w in result.values():
        _summarise_engine(w)
    echo(f"  {name}: {time.monotonic() - t0:.0f} s")
    return {"workloads": result, "procs": procs, "runtime_s": round(time.monotonic() - t0, 1)}


def _compute(plan: Plan) -> set[int] | None:
    """The CPUs bare and the peer run on: Ray's half under --split-cores, else all."""
    return cores.split(os.sched_getaffinity(0))[0] if plan.split_cores else None


def _summarise_engine(w: dict) -> None:
    ok = [d for d in w["docs"] if d.get("status") == "COMPLETED"]
    wall = w["wall_s"]
    w["completed"] = len(ok)
    w["failed"] = [(d["file"], d.get("error_code")) for d in w["docs"] if d not in ok]
    w["pages"] = sum(d.get("pages", 0) for d in ok)
    w["chunks"] = sum(d.get("chunks", 0) for d in ok)
    w["docs_per_min"] = round(len(ok) / wall * 60, 3) if wall else None
    w["pages_per_s"] = round(w["pages"] / wall, 3) if wall else None
    w["chunks_per_s"] = round(w["chunks"] / wall, 3) if wall else None
    stages: dict[str, float] = {}
    for d in ok:
        for k, v in (d.get("durations") or {}).items():
            stages[k] = stages.get(k, 0.0) + v
    w["stage_s"] = {k: round(v, 3) for k, v in stages.items()}
    secs = sorted(d["seconds"] for d in ok)
    if secs:
        from bench.e2e import pct

        w["doc_s_p50"] = round(pct(secs, 50), 3)
        w["doc_s_p95"] = round(pct(secs, 95), 3)


def run_e2e(plan: Plan, loads: dict[str, list[Path]], work: Path, echo) -> dict:
    from bench import e2e

    out: dict = {"workloads": {}}
    home = work / "docpipe-home"
    t0 = time.monotonic()
    compute, aws = cores.split(os.sched_getaffinity(0)) if plan.split_cores else (set(), set())
    mine = os.sched_getaffinity(0)
    with e2e.local_stack(home, job_slots=plan.job_slots, env=plan.env, parameters=plan.parameters,
                         num_cpus=len(compute) or 2) as state:
        out["stack_start_s"] = state["start_s"]
        echo(f"  local stack up in {state['start_s']} s (Ray {state['ray_url']})")
        if plan.split_cores:
            # Before the first document: every worker, driver and supervisor Ray starts later
            # descends from a pinned process; so does every thread of the moto server.
            cores.pin_tree(state["ray_pid"], compute)
            cores.pin_tree(state["moto_pid"], aws)
            os.sched_setaffinity(0, aws)  # the bench's client is AWS-side work (uploads, polls)
            out["split_cores"] = {"ray": sorted(compute), "aws": sorted(aws)}
            echo(f"  Ray on CPUs {sorted(compute)}, the AWS emulation and this client on {sorted(aws)}")
        c = e2e.Clients(state)
        # First document of a fresh stack: creates the embedder actor and the LanceDB
        # table, unpacks the Lambda code. Reported as the cold start, not measured below.
        warm = e2e.run_batch(c, generate(work / "gen", 1, 1, seed=99_999), "warm-up", echo=echo)
        if warm["failed"]:
            # E.g. RayHeadUnavailable "No available agent": the head's dashboard agent could
            # not bind its fixed port (52365) because another Ray runs on this machine.
            raise SystemExit(f"the local stack cannot process a document: {warm['failed']}")
        out["cold_start_latency_s"] = warm["latency_p50_s"]
        out["cold_start_parts_s"] = warm["latency_parts_median_s"]
        for i, (name, files) in enumerate(loads.items()):
            t = time.monotonic()
            if i:
                # Each workload starts as the first did: fresh stage services, warmed by one
                # new document. Without this the embedding cache of the services' workers
                # (warm.embedder, memory mode) still held the vectors of every chunk an
                # earlier workload embedded: `full` follows `corpus`, whose 10 PDFs it
                # contains, and got ~56% of their chunks free (docs/performance.md, seventh pass).
                c.stop_services()
                again = e2e.run_batch(c, generate(work / f"gen-warm-{i}", 1, 1, seed=99_999 + i), f"warm-up {i}")
                if again["failed"]:
                    raise SystemExit(f"the local stack cannot process a document after a restart: {again['failed']}")
            if name == "full":
                # As `docpipe ingest <corpus folder>` does it (keys, upload, following by the
                # control items): see e2e.run_batch.
                out["workloads"][name] = e2e.run_batch(c, full_sources(), name, timeout=3600.0,
                                                       follow="ingest", echo=lambda *_: None)
            else:
                out["workloads"][name] = e2e.run_batch(c, files, name, echo=lambda *_: None)
            r = out["workloads"][name]
            echo(f"  docpipe {name}: {r['completed']}/{r['documents']} in {r['wall_s']:.1f} s "
                 f"(p50 {r['latency_p50_s']} s; {time.monotonic() - t:.0f} s with collection)")
    os.sched_setaffinity(0, mine)
    out["stack_stop_s"] = state.get("stop_s")
    out["runtime_s"] = round(time.monotonic() - t0, 1)
    return out


def _round(plan: Plan, loads: dict[str, list[Path]], work: Path, i: int, echo) -> dict:
    """Round `i` of `plan.rounds`: the same engines on the same files again, in the same
    order (bare and peer first, each in a new process; docpipe on a new local stack)."""
    echo(f"round {i} of {plan.rounds} ...")
    work.mkdir(parents=True)
    out: dict = {}
    if not plan.skip_bare:
        out["bare"] = _subprocess("bench.bare", loads, work, echo, cpus=_compute(plan))
    if not plan.skip_peer:
        out["peer"] = _subprocess("bench.peer", loads, work, echo, cpus=_compute(plan))
    if not plan.skip_peer and plan.peer_ablation:
        out["peer_ablation"] = _subprocess("bench.peer", loads, work, echo, ("--embedder", "docpipe"),
                                           name="peer-docpipe-embedder", cpus=_compute(plan))
    if not plan.skip_e2e:
        out["e2e"] = run_e2e(plan, loads, work, echo)
    return out


def rounds_summary(first: dict, more: list[dict]) -> dict:
    """Per workload, each ratio in every round and their median, min and max, plus each
    engine's wall per round. The machine's speed drifts by 10-30% within minutes (seen in
    docs/performance.md): a ratio of two runs minutes apart is one sample of that drift,
    the median over interleaved rounds is the figure to compare with a target."""
    per_round = [first.get("ratios") or ratios(first)]
    per_round += [ratios({"workloads": first.get("workloads", {}), **r}) for r in more]
    out: dict = {"rounds": len(per_round), "workloads": {}}
    for name in first.get("workloads", {}):
        rows = [r.get(name, {}) for r in per_round]
        w: dict = {"wall_s": {}}
        for label in sorted({k for row in rows for k in row.get("wall_s", {})}):
            w["wall_s"][label] = [row.get("wall_s", {}).get(label) for row in rows]
        for key in (f"{a}_over_{b}{sfx}" for a, b in RATIOS for sfx in ("", "_common")):
            values = [row.get(key) for row in rows]
            if any(v is None for v in values):
                continue
            w[key] = {"rounds": values, "median": round(statistics.median(values), 3),
                      "min": min(values), "max": max(values)}
        out["workloads"][name] = w
    return out


# ---------------------------------------------------------------------------- derived
def _engine(r: dict, key: str, name: str) -> dict:
    return (r.get(key) or {}).get("workloads", {}).get(name) or {}


def completed_pages(w: dict) -> dict[str, int]:
    """File name -> pages of each document the engine completed (docpipe end to end:
    COMPLETED or PARTIAL, as its summary counts them)."""
    if "per_doc" in w:
        return {d["file"]: int(d.get("pages") or 0) for d in w["per_doc"]
                if d.get("status") in ("COMPLETED", "PARTIAL") and "latency_s" in d}
    return {d["file"]: int(d.get("pages") or 0) for d in w.get("docs", []) if d.get("status") == "COMPLETED"}


RATIOS = (("docpipe", "peer"), ("docpipe", "bare"), ("bare", "peer"), ("peer_ablation", "peer"),
          ("docpipe", "peer_ablation"), ("bare", "peer_ablation"))


def ratios(r: dict) -> dict:
    """Per workload and engine: pages/s of the documents it completed, and "common" pages/s:
    the pages of the documents EVERY engine of the run completed over each engine's wall
    (a document only docpipe reads, e.g. a scan through OCR, does not inflate its ratio).
    A common document's pages are docpipe's count (pdfium's), else the peer's (pypdf's)."""
    out = {}
    for name in r.get("workloads", {}):
        engines = {label: w for label, key in ENGINES
                   if (w := _engine(r, key, name)) and w.get("wall_s") and w["wall_s"] == w["wall_s"]}
        if not engines:
            continue
        done = {label: completed_pages(w) for label, w in engines.items()}
        common = set.intersection(*(set(d) for d in done.values()))
        ref = done[next(label for label, _ in ENGINES if label in done)]
        common_pages = sum(ref[f] for f in common)
        row: dict = {"common_documents": len(common), "common_pages": common_pages, "wall_s": {}, "completed": {},
                     "pages": {}, "pages_per_s": {}, "common_pages_per_s": {}}
        for label, w in engines.items():
            pages = sum(done[label].values())
            row["wall_s"][label] = w["wall_s"]
            row["completed"][label] = len(done[label])
            row["pages"][label] = pages
            row["pages_per_s"][label] = round(pages / w["wall_s"], 3)
            row["common_pages_per_s"][label] = round(common_pages / w["wall_s"], 3)
        for a, b in RATIOS:
            for key, suffix in (("pages_per_s", ""), ("common_pages_per_s", "_common")):
                x, y = row[key].get(a), row[key].get(b)
                # Throughput ratio a / b: > 1 = a faster.
                row[f"{a}_over_{b}{suffix}"] = round(x / y, 3) if x and y else None
        out[name] = row
    return out


def profile(r: dict) -> dict:
    """Per workload and engine: seconds per page of each stage (Σ over the completed
    documents ÷ their pages; documents run concurrently, so the stages can add up to more
    than the wall per page) and the wall per page; for docpipe end to end also
    orchestration = its wall per page − the bare run's wall per page (what the pipeline
    adds to its own code run warm)."""
    out: dict = {}
    for name in r.get("workloads", {}):
        rows = {}
        for label, key in ENGINES:
            w = _engine(r, key, name)
            pages = w.get("pages")
            if not pages or not w.get("wall_s"):
                continue
            if label == "docpipe":
                stage = w.get("stage_compute_s", {})
            elif label == "bare":
                stage = w.get("stage_s", {})
            else:
                stage = {s: w.get("stage_s", {}).get(p) for s, p in PEER_STAGES.items()}
            row = {s: round(stage[s] / pages, 5) if stage.get(s) is not None else None for s in STAGES}
            row["wall"] = round(w["wall_s"] / pages, 5)
            rows[label] = row
        if "docpipe" in rows and "bare" in rows:
            rows["docpipe"]["orchestration"] = round(rows["docpipe"]["wall"] - rows["bare"]["wall"], 5)
        if rows:
            out[name] = rows
    return out


def stage_cpu(r: dict) -> dict:
    """Per workload: the CPU seconds docpipe's document tasks took (extract + embed, each
    the task's worker process: ray_jobs.service.run_document) against bare's CPU for the
    same documents (its worker's process time per document), over the documents both
    completed and docpipe ran through its stage services (a document's own Ray job reports
    none). The same code on the same files: a ratio near 1 says the stage work costs what
    it costs bare, and the rest of the gap is around it (emulated AWS, Ray, drivers).
    Neither side counts the PDF parse children (processes of their own)."""
    out: dict = {}
    for name in r.get("workloads", {}):
        e2e, bare = _engine(r, "e2e", name), _engine(r, "bare", name)
        bare_cpu = {d["file"]: d["cpu_s"] for d in bare.get("docs", [])
                    if d.get("status") == "COMPLETED" and d.get("cpu_s") is not None}
        both = [(d, bare_cpu[d["file"]]) for d in e2e.get("per_doc", [])
                if d.get("status") in ("COMPLETED", "PARTIAL") and d["file"] in bare_cpu
                and {"extract", "embed"} <= set(d.get("task_cpu_s") or {})]
        if not both:
            continue
        docpipe = sum(sum(d["task_cpu_s"].values()) for d, _ in both)
        bare_s = sum(b for _, b in both)
        out[name] = {"documents": len(both), "docpipe_task_cpu_s": round(docpipe, 2), "bare_cpu_s": round(bare_s, 2),
                     "docpipe_over_bare": round(docpipe / bare_s, 3) if bare_s else None,
                     "extract_cpu_s": round(sum(d["task_cpu_s"]["extract"] for d, _ in both), 2),
                     "embed_cpu_s": round(sum(d["task_cpu_s"]["embed"] for d, _ in both), 2)}
    return out


def scaling(e2e: dict, bare: dict | None, peer: dict | None) -> dict:
    def wl(eng, name):
        return (eng or {}).get("workloads", {}).get(name) or {}

    pages, docs = [], []
    for name, r in e2e.get("workloads", {}).items():
        if name.startswith("pages-"):
            pages.append({"pages": int(name.split("-")[1]), "docpipe_latency_s": r["latency_p50_s"],
                          "docpipe_stage_compute_s": r["stage_compute_total_s"],
                          "bare_s": wl(bare, name).get("wall_s"), "peer_s": wl(peer, name).get("wall_s"),
                          "chunks": r["chunks"]})
        elif name.startswith("docs-"):
            docs.append({"documents": int(name.split("-")[1]), "docpipe_wall_s": r["wall_s"],
                         "docpipe_docs_per_min": r["docs_per_min"], "latency_p50_s": r["latency_p50_s"],
                         "latency_p95_s": r["latency_p95_s"],
                         "bare_s": wl(bare, name).get("wall_s"), "peer_s": wl(peer, name).get("wall_s")})
    pages.sort(key=lambda x: x["pages"])
    docs.sort(key=lambda x: x["documents"])
    for series, key, wall in ((pages, "pages", "docpipe_latency_s"), (docs, "documents", "docpipe_wall_s")):
        for a, b in itertools.pairwise(series):
            # Growth of time per growth of size: 1.0 = linear, < 1 = fixed costs amortised.
            if a[wall] and b[wall]:
                b["docpipe_time_growth_per_size_growth"] = round((b[wall] / a[wall]) / (b[key] / a[key]), 3)
    if len(docs) >= 2 and docs[-1]["docpipe_wall_s"] and docs[0]["docpipe_wall_s"]:
        d0, d1 = docs[0], docs[-1]
        marginal = (d1["docpipe_wall_s"] - d0["docpipe_wall_s"]) / (d1["documents"] - d0["documents"])
        docs_summary = {"marginal_s_per_document": round(marginal, 3)}
    else:
        docs_summary = {}
    return {"pages": pages, "documents": docs, **docs_summary}


def costs(e2e: dict, bare: dict | None) -> dict:
    out = {"prices_as_of": PRICES_AS_OF, "fixed_monthly": cost.fixed_monthly(), "per_document": {}}
    # Lambda time per document with nothing else running: the least of the workloads'
    # medians (the local stack serialises Lambdas, so a batch's durations include waiting).
    medians = []
    for r in e2e.get("workloads", {}).values():
        per = [sum(math.ceil(x * 1000) for x in d["lambda_s"]) for d in r["per_doc"] if d.get("lambda_s")]
        if per:
            medians.append(statistics.median(per))
    out["lambda_ms_per_doc_idle"] = min(medians) if medians else None
    for name, r in e2e.get("workloads", {}).items():
        if r["completed"]:
            b = (bare or {}).get("workloads", {}).get(name)
            out["per_document"][name] = cost.per_document(r, b, out["lambda_ms_per_doc_idle"])
    out["ten_page_document"] = ten_page_document(e2e, out["per_document"])
    return out


def ten_page_document(e2e: dict, per_document: dict) -> dict:
    """The cost of a 10-page document with the local model: the generated 10-page document
    (pages-10) when the run has it; and from the corpus mix (corpus, else full) scaled per
    page (cost.scaled_to_pages) — that one too when both exist, as it is measured at
    throughput while pages-10 is one document alone on the machine."""
    out: dict = {"target_usd": cost.TEN_PAGE_TARGET_USD}
    if "pages-10" in per_document:
        usd = per_document["pages-10"]["total_as_benchmarked_usd"]
        out["measured"] = {"usd": usd, "basis": "pages-10: the generated 10-page document, end to end"}
    for name in ("corpus", "full"):
        w = e2e.get("workloads", {}).get(name)
        if name in per_document and w and w.get("completed") and w.get("pages"):
            pages_per_doc = w["pages"] / w["completed"]
            usd = cost.scaled_to_pages(per_document[name], pages_per_doc, 10)
            out["scaled"] = {"usd": usd, "basis": f"{name} workload ({pages_per_doc:.1f} pages per document) "
                                                  "scaled to 10 pages: Fargate per page, the other lines per document"}
            break
    best = out.get("measured") or out.get("scaled")
    out["usd"] = best["usd"] if best else None
    out["basis"] = best["basis"] if best else "no end-to-end run"
    out["meets_target"] = out["usd"] <= out["target_usd"] if best else None
    return out


def headline(r: dict) -> dict:
    """The few figures docs/performance.md leads with, per workload."""
    out = {}
    for name, w in r.get("e2e", {}).get("workloads", {}).items():
        b = r.get("bare", {}).get("workloads", {}).get(name, {})
        p = r.get("peer", {}).get("workloads", {}).get(name, {})
        pa = r.get("peer_ablation", {}).get("workloads", {}).get(name, {})
        ratio = r.get("ratios", {}).get(name, {})
        c = r.get("cost", {}).get("per_document", {}).get(name, {})
        out[name] = {
            "docs_per_min": {"docpipe": w["docs_per_min"], "bare": b.get("docs_per_min"), "peer": p.get("docs_per_min")},
            "pages_per_s": {"docpipe": w["pages_per_s"], "bare": b.get("pages_per_s"), "peer": p.get("pages_per_s"),
                            "peer_ablation": pa.get("pages_per_s")},
            "common_pages_per_s": ratio.get("common_pages_per_s", {}),
            "docpipe_over_peer": ratio.get("docpipe_over_peer"),
            "docpipe_over_peer_common": ratio.get("docpipe_over_peer_common"),
            "docpipe_over_bare": ratio.get("docpipe_over_bare"),
            # With --rounds: the median over the rounds of each ratio (the figures above are round 1's).
            **({"median_of_rounds": {k: v["median"] for k, v in rnd.items() if k != "wall_s"},
                "rounds": r["rounds"]["rounds"]} if (rnd := r.get("rounds", {}).get("workloads", {}).get(name)) else {}),
            "latency_p50_s": w["latency_p50_s"], "latency_p95_s": w["latency_p95_s"],
            "overhead_vs_bare_share": round(1 - b["wall_s"] / w["wall_s"], 3) if b.get("wall_s") and w["wall_s"] else None,
            "cpu_s_per_doc": round(w["procs"]["cpu_s"] / max(1, w["documents"]), 2),
            "peak_pss_mb": w["procs"]["peak_pss_mb"],
            "cost_per_doc_usd": {"local": c.get("total_as_benchmarked_usd"), "managed": c.get("total_managed_usd")},
        }
    return out


# ---------------------------------------------------------------------------- meta
def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("ray", "moto", "lancedb", "pypdf", "pypdfium2", "numpy", "langchain-community",
                "langchain-text-splitters", "langchain-core", "langchain-huggingface", "sentence-transformers",
                "transformers", "torch"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(), "versions": versions,
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}


def run(plan: Plan, out_dir: Path, echo=print) -> tuple[dict, Path]:
    t0 = time.monotonic()
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="docpipe-bench-"))
    result: dict = {"meta": {"started": started.isoformat(timespec="seconds"), "plan": asdict(plan),
                             "machine": machine()}}
    cpu0 = own_cpu_s()
    try:
        loads = workloads(plan, work)
        result["workloads"] = {k: [str(p) for p in v] for k, v in loads.items()}
        # Bare and peer first, on a quiet machine: the stack's idle daemons are docpipe's cost.
        if not plan.skip_bare:
            echo("bare compute (docpipe's code in a warm 2-process pool) ...")
            result["bare"] = _subprocess("bench.bare", loads, work, echo, cpus=_compute(plan))
        if not plan.skip_peer:
            echo("peer (LangChain PyPDFLoader + RecursiveCharacterTextSplitter + HuggingFaceEmbeddings + LanceDB) ...")
            result["peer"] = _subprocess("bench.peer", loads, work, echo, cpus=_compute(plan))
        if not plan.skip_peer and plan.peer_ablation:
            echo("peer with docpipe's embedder (ablation) ...")
            result["peer_ablation"] = _subprocess("bench.peer", loads, work, echo, ("--embedder", "docpipe"),
                                                  name="peer-docpipe-embedder", cpus=_compute(plan))
        if not plan.skip_e2e:
            echo("docpipe end to end on the local stack ...")
            result["e2e"] = run_e2e(plan, loads, work, echo)
        more = [_round(plan, loads, work / f"round-{i}", i, echo) for i in range(2, max(1, plan.rounds) + 1)]
        e2e = result.get("e2e", {})
        result["ratios"] = ratios(result)
        if more:
            result["rounds"] = rounds_summary(result, more)
        result["profile"] = profile(result)
        result["stage_cpu"] = stage_cpu(result)
        result["scaling"] = scaling(e2e, result.get("bare"), result.get("peer"))
        result["cost"] = costs(e2e, result.get("bare"))
        result["headline"] = headline(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["meta"]["runtime_s"] = round(time.monotonic() - t0, 1)
    result["meta"]["bench_cpu_s"] = round(own_cpu_s() - cpu0, 1)
    result["meta"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + (f"-{plan.label}" if plan.label else "")
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return result, path
