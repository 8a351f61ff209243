"""Rich tables of one result (bench.run); also `python -m bench.report FILE.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _f(v, digits=1, suffix=""):
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{suffix}"
    return f"{v}{suffix}"


def _usd(v):
    if v is None:
        return "–"
    if v == 0:
        return "$0"
    return f"${v:.6f}" if v < 0.01 else f"${v:.4f}"


PROFILE_STAGES = ("extract", "chunk", "enrich", "embed", "load")
ENGINE_LABEL = {"peer_ablation": "peer, docpipe's embedder"}


def _common_note(ratios: dict) -> str:
    counts = sorted({x["common_documents"] for x in ratios.values()})
    return "/".join(map(str, counts)) if counts else "–"


def tables(r: dict) -> list[Table]:
    out = []
    e2e = r.get("e2e", {}).get("workloads", {})
    bare = r.get("bare", {}).get("workloads", {})
    peer = r.get("peer", {}).get("workloads", {})
    ablation = r.get("peer_ablation", {}).get("workloads", {})
    names = list(r.get("workloads", {}))
    ratios = r.get("ratios", {})

    t = Table(title="Throughput on the same files and machine (wall time of each workload; "
                    "pages, chunks: of the documents each engine completed)",
              caption=f"common: the {_common_note(ratios)} documents every engine completed, their pages ÷ "
                      "each engine's wall; peer = the LangChain script (PyPDFLoader, 1000/150 splitter, "
                      "HuggingFaceEmbeddings on torch, LanceDB); bare = docpipe's stage code in a warm pool")
    for c in ("workload", "engine", "docs", "pages", "chunks", "wall s", "docs/min", "pages/s", "chunks/s",
              "common pages/s"):
        t.add_column(c, justify="left" if c in ("workload", "engine") else "right")
    for name in names:
        first = True
        for engine, label, w in (("docpipe", "docpipe", e2e.get(name)), ("bare", "bare", bare.get(name)),
                                 ("peer", "peer", peer.get(name)),
                                 ("peer_ablation", "peer, docpipe's embedder", ablation.get(name))):
            if not w:
                continue
            t.add_row(name if first else "", label, _f(w.get("completed")), _f(w.get("pages")), _f(w.get("chunks")),
                      _f(w.get("wall_s"), 1), _f(w.get("docs_per_min"), 2), _f(w.get("pages_per_s"), 2),
                      _f(w.get("chunks_per_s"), 2),
                      _f(ratios.get(name, {}).get("common_pages_per_s", {}).get(engine), 2))
            first = False
        t.add_section()
    out.append(t)

    if ratios:
        t = Table(title="Throughput ratios (pages/s ÷ pages/s; > 1 = the first faster). "
                        "Targets: docpipe ÷ peer >= 3, docpipe ÷ bare >= 0.85",
                  caption="all: pages of the documents each engine completed; common: pages of the documents "
                          "every engine completed")
        cols = [(a, b) for a, b in (("docpipe", "peer"), ("docpipe", "bare"), ("bare", "peer"), ("peer_ablation", "peer"))
                if any(x.get(f"{a}_over_{b}") is not None for x in ratios.values())]
        short = {"docpipe": "docpipe", "bare": "bare", "peer": "peer", "peer_ablation": "peer (docpipe's embedder)"}
        t.add_column("workload")
        t.add_column("common docs", justify="right")
        t.add_column("common pages", justify="right")
        for a, b in cols:
            t.add_column(f"{short[a]} ÷ {short[b]}", justify="right")
            t.add_column("(common)", justify="right")
        for name, x in ratios.items():
            t.add_row(name, _f(x["common_documents"]), _f(x["common_pages"]),
                      *[_f(x.get(f"{a}_over_{b}{sfx}"), 2) for a, b in cols for sfx in ("", "_common")])
        out.append(t)

    rounds = r.get("rounds")
    if rounds:
        t = Table(title=f"Ratios over {rounds['rounds']} interleaved rounds: median (min-max); "
                        "targets: docpipe ÷ peer >= 3, docpipe ÷ bare >= 0.85",
                  caption="each round runs bare, peer and docpipe again on the same files (docpipe on a new "
                          "local stack); wall s per round in the last columns")
        keys = [k for k in ("docpipe_over_peer", "docpipe_over_bare", "bare_over_peer", "docpipe_over_peer_common")
                if any(k in w for w in rounds["workloads"].values())]
        engines = sorted({e for w in rounds["workloads"].values() for e in w.get("wall_s", {})})
        t.add_column("workload")
        for k in keys:
            t.add_column(k.replace("_over_", " ÷ ").replace("_common", " (common)"), justify="right")
        for e in engines:
            t.add_column(f"{e} wall s", justify="right")
        for name, w in rounds["workloads"].items():
            t.add_row(name, *[f"{w[k]['median']:.2f} ({w[k]['min']:.2f}-{w[k]['max']:.2f})" if k in w else "–"
                              for k in keys],
                      *[" / ".join(_f(v, 1) for v in w.get("wall_s", {}).get(e, [])) or "–" for e in engines])
        out.append(t)

    prof = r.get("profile", {})
    if prof:
        t = Table(title="Per-page profile: seconds per page of each stage (Σ over the completed documents ÷ "
                        "their pages), wall per page, orchestration",
                  caption="orchestration = docpipe's wall per page − bare's wall per page; stages run concurrently "
                          "(2 cores), so they can add up to more than the wall. Peer: extract = PyPDFLoader.load, "
                          "chunk = split, load = LanceDB write (add_documents minus embedding)")
        t.add_column("workload")
        t.add_column("engine")
        for c in (*PROFILE_STAGES, "orchestration", "wall"):
            t.add_column(f"{c} s/page", justify="right")
        for name, rows in prof.items():
            first = True
            for engine, row in rows.items():
                t.add_row(name if first else "", ENGINE_LABEL.get(engine, engine),
                          *[_f(row.get(c), 4) for c in (*PROFILE_STAGES, "orchestration", "wall")])
                first = False
            t.add_section()
        out.append(t)

    if r.get("stage_cpu"):
        t = Table(title="The stage code's CPU: docpipe's document tasks against bare, Σ over the same documents (s)",
                  caption="documents both completed that docpipe ran through its stage services; each side's worker "
                          "process time per document (PDF parse children not counted on either side)")
        for c in ("workload", "documents", "docpipe extract", "docpipe embed", "docpipe total", "bare", "docpipe ÷ bare"):
            t.add_column(c, justify="left" if c == "workload" else "right")
        for name, w in r["stage_cpu"].items():
            t.add_row(name, str(w["documents"]), _f(w["extract_cpu_s"], 1), _f(w["embed_cpu_s"], 1),
                      _f(w["docpipe_task_cpu_s"], 1), _f(w["bare_cpu_s"], 1), _f(w["docpipe_over_bare"], 2))
        out.append(t)

    if e2e or bare or peer or ablation:
        t = Table(title="Time per stage, Σ over the documents (s): docpipe's jobs (control-item durations), bare, peer",
                  caption="peer rows: extract = PyPDFLoader.load, chunk = split, load = LanceDB write "
                          "(add_documents minus embedding); the peer does no enrichment")
        t.add_column("workload")
        t.add_column("engine")
        for s in PROFILE_STAGES:
            t.add_column(s, justify="right")
        for name in names:
            rows = []
            if name in e2e:
                rows.append(("docpipe", [e2e[name]["stage_compute_s"].get(s) for s in PROFILE_STAGES]))
            if name in bare:
                rows.append(("bare", [bare[name]["stage_s"].get(s) for s in PROFILE_STAGES]))
            for label, eng in (("peer", peer), ("peer, docpipe's embedder", ablation)):
                if name in eng:
                    ps = eng[name]["stage_s"]
                    rows.append((label, [ps.get("load"), ps.get("split"), None, ps.get("embed"), ps.get("store")]))
            for i, (label, values) in enumerate(rows):
                t.add_row(name if i == 0 else "", label, *[_f(v, 2) for v in values])
            t.add_section()
        out.append(t)

    if e2e:
        t = Table(title="docpipe end to end: latency (upload -> terminal status), overhead, memory",
                  caption="wall − Σ stage: the issue's definition (negative when concurrent jobs' stages overlap); "
                          "wall − bare: time the pipeline adds to its own code run warm; "
                          "peak memory: moto server + every Ray process (PSS counts shared pages once)")
        for c in ("workload", "p50 s", "p95 s", "max s", "wall s", "Σ stage s", "wall − Σ stage s",
                  "wall − bare s", "share", "latency − Σ stages p50 s", "peak PSS MB", "peak RSS MB",
                  "foreign CPU s"):
            t.add_column(c, justify="left" if c == "workload" else "right")
        for name, w in e2e.items():
            p = w["procs"]
            b = bare.get(name, {}).get("wall_s")
            over = (w["wall_s"] - b) if b is not None else None
            t.add_row(name, _f(w["latency_p50_s"], 2), _f(w["latency_p95_s"], 2), _f(w["latency_max_s"], 2),
                      _f(w["wall_s"], 1), _f(w["stage_compute_total_s"], 1), _f(w["orchestration_overhead_s"], 1),
                      _f(over, 1), _f(over / w["wall_s"] * 100 if over is not None and w["wall_s"] else None, 0, "%"),
                      _f(w["overhead_per_doc_p50_s"], 2), _f(p["peak_pss_mb"], 0), _f(p["peak_rss_mb"], 0),
                      _f(p.get("foreign_cpu_s"), 0))
        out.append(t)

        parts = ["ingress", "register", "extract_submit", "extract_ray_startup", "extract_compute",
                 "extract_driver_other", "embed_submit", "embed_ray_startup", "embed_compute",
                 "embed_driver_other", "finalize", "stepfunctions_other"]
        t = Table(title="Where one document's latency goes (median per document, s)")
        t.add_column("part")
        for name in e2e:
            t.add_column(name, justify="right")
        for part in parts:
            t.add_row(part, *[_f(w["latency_parts_median_s"].get(part), 2) for w in e2e.values()])
        t.add_row("cold start (first doc)", *[_f(r["e2e"].get("cold_start_latency_s"), 2)] + [""] * (len(e2e) - 1))
        out.append(t)

        groups = sorted({g for w in e2e.values() for g in w["procs"]["cpu_s_by_group"]},
                        key=lambda g: -sum(w["procs"]["cpu_s_by_group"].get(g, 0) for w in e2e.values()))
        t = Table(title="CPU seconds by process group during each docpipe workload (per document in brackets)")
        t.add_column("process group")
        for name in e2e:
            t.add_column(name, justify="right")
        for g in groups:
            t.add_row(g, *[f"{w['procs']['cpu_s_by_group'].get(g, 0):.1f} "
                           f"({w['procs']['cpu_s_by_group'].get(g, 0) / max(1, w['documents']):.2f})"
                           for w in e2e.values()])
        t.add_row("[b]total[/b]", *[f"{w['procs']['cpu_s']:.1f} ({w['procs']['cpu_s'] / max(1, w['documents']):.2f})"
                                    for w in e2e.values()])
        out.append(t)

        if any("ray_head_rss_mb" in w["procs"] for w in e2e.values()):
            t = Table(title="Ray head memory (RSS MB of GCS, raylet, dashboard, agents, job supervisors) "
                            "before and after each workload")
            for c in ("workload", "documents", "before MB", "after MB", "growth MB", "growth per document MB"):
                t.add_column(c, justify="left" if c == "workload" else "right")
            for name, w in e2e.items():
                head = w["procs"].get("ray_head_rss_mb")
                if head:
                    grow = head["after"]["total"] - head["before"]["total"]
                    t.add_row(name, _f(w["documents"]), _f(head["before"]["total"], 0), _f(head["after"]["total"], 0),
                              _f(grow, 0), _f(grow / max(1, w["documents"]), 2))
            out.append(t)

    sc = r.get("scaling", {})
    if sc.get("pages"):
        t = Table(title="Scaling with pages per document (one generated document)")
        for c in ("pages", "chunks", "docpipe latency s", "Σ stage s", "bare s", "peer s", "time growth ÷ size growth"):
            t.add_column(c, justify="right")
        for x in sc["pages"]:
            t.add_row(_f(x["pages"]), _f(x["chunks"]), _f(x["docpipe_latency_s"], 1), _f(x["docpipe_stage_compute_s"], 1),
                      _f(x["bare_s"], 1), _f(x["peer_s"], 1), _f(x.get("docpipe_time_growth_per_size_growth"), 2))
        out.append(t)
    if sc.get("documents"):
        t = Table(title=f"Scaling with documents (generated, {r['meta']['plan']['doc_pages']} pages each); "
                        f"marginal {_f(sc.get('marginal_s_per_document'), 2)} s per extra document")
        for c in ("documents", "docpipe wall s", "docs/min", "p50 s", "p95 s", "bare s", "peer s",
                  "time growth ÷ size growth"):
            t.add_column(c, justify="right")
        for x in sc["documents"]:
            t.add_row(_f(x["documents"]), _f(x["docpipe_wall_s"], 1), _f(x["docpipe_docs_per_min"], 2),
                      _f(x["latency_p50_s"], 1), _f(x["latency_p95_s"], 1), _f(x["bare_s"], 1), _f(x["peer_s"], 1),
                      _f(x.get("docpipe_time_growth_per_size_growth"), 2))
        out.append(t)

    per_doc = r.get("cost", {}).get("per_document", {})
    if per_doc:
        lines = [("step_functions", "SFN"), ("lambda_requests", "λ req"), ("lambda_duration", "λ GB-s"),
                 ("dynamodb", "DynamoDB"), ("s3_requests", "S3 req"), ("fargate", "Fargate"),
                 ("openai_embeddings", "OpenAI"), ("pinecone_writes", "Pinecone")]
        t = Table(title=f"Cost per document on AWS, USD — {r['cost']['prices_as_of']}")
        t.add_column("workload")
        t.add_column("backends")
        for _, short in lines:
            t.add_column(short, justify="right")
        t.add_column("total", justify="right")
        t.add_column("per 1k docs", justify="right")
        for name, c in per_doc.items():
            for config, key, total in (("local", "as_benchmarked", "total_as_benchmarked_usd"),
                                       ("managed", "managed_backends", "total_managed_usd")):
                t.add_row(name if config == "local" else "", config,
                          *[_usd(c[key].get(line, {}).get("usd")) if line in c[key] else "–" for line, _ in lines],
                          _usd(c[total]), f"${c[total] * 1000:.2f}")
            t.add_section()
        fm = r["cost"]["fixed_monthly"]
        first = next(iter(per_doc.values()))
        bases = "; ".join(f"{short}: {first['managed_backends'][line]['basis']}" for line, short in lines
                          if line in first["managed_backends"])
        ten = r["cost"].get("ten_page_document") or {}
        ten_note = ""
        if ten.get("usd") is not None:
            verdict = "meets" if ten["meets_target"] else "misses"
            others = "; ".join(f"{k}: {_usd(v['usd'])} ({v['basis']})" for k, v in ten.items()
                               if k in ("measured", "scaled"))
            ten_note = (f"A 10-page document, local model: {_usd(ten['usd'])} — {verdict} the target "
                        f"{_usd(ten['target_usd'])} ({others}). ")
        t.caption = (f"{ten_note}local = EmbeddingBackend local + LanceDB on the workers; managed = OpenAI "
                     f"text-embedding-3-small + Pinecone serverless + S3 embedding cache. {bases}. "
                     f"Fixed per month, not in the totals: Ray head ${fm['ray_head_fargate_usd']}, "
                     f"PublishBacklog ${fm['publish_backlog_lambda_usd']}.")
        out.append(t)
    return out


def render(r: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(160, Console().width))
    for t in tables(r):
        console.print(t)
    m = r["meta"]
    console.print(f"mode {m['plan']['mode']}{' (' + m['plan']['label'] + ')' if m['plan']['label'] else ''}, "
                  f"{m['machine']['cores']} cores {m['machine']['cpu']}, {m['machine']['memory_gb']} GB, "
                  f"commit {m['machine']['git_commit']}{' (dirty)' if m['machine']['git_dirty'] else ''}, "
                  f"started {m['started']}, runtime {m['runtime_s']:.0f} s, "
                  f"load average {' '.join(m['machine']['loadavg_at_start'])} -> {' '.join(m['loadavg_at_end'])}")
    split = (r.get("e2e") or {}).get("split_cores")
    if split:
        console.print(f"--split-cores: Ray, bare and the peer on CPUs {split['ray']}; the AWS emulation (moto) and "
                      f"the bench's client on {split['aws']}")


def markdown(r: dict) -> str:
    """The same tables as GitHub markdown (for docs/performance.md)."""
    import re

    def plain(cell) -> str:
        text = cell.plain if hasattr(cell, "plain") else str(cell)
        return re.sub(r"\[/?[a-z ]+\]", "", text).replace("|", "\\|")

    out = []
    for t in tables(r):
        out.append(f"**{plain(t.title)}**\n")
        cols = t.columns
        out.append("| " + " | ".join(plain(c.header) for c in cols) + " |")
        out.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in cols) + "|")
        for i in range(t.row_count):
            out.append("| " + " | ".join(plain(c._cells[i]) for c in cols) + " |")
        if t.caption:
            out.append(f"\n{plain(t.caption)}")
        out.append("")
    return "\n".join(out)


def recompute(r: dict) -> dict:
    """Derive ratios, scaling, cost and headline again from the raw measurements (after a
    change of the cost model or of a price, without re-running the benchmark)."""
    from bench import run
    from bench.procs import grouped

    e2e = r.get("e2e", {})
    for w in e2e.get("workloads", {}).values():
        w["procs"]["cpu_s_by_group"] = grouped(w["procs"]["cpu_s_by_category"])
    r["ratios"] = run.ratios(r)
    r["profile"] = run.profile(r)
    r["stage_cpu"] = run.stage_cpu(r)
    r["scaling"] = run.scaling(e2e, r.get("bare"), r.get("peer"))
    r["cost"] = run.costs(e2e, r.get("bare"))
    r["headline"] = run.headline(r)
    return r


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.report", description="Print the tables of a bench run.")
    ap.add_argument("result", type=Path, help="bench/results/<timestamp>.json (or <timestamp>-ocr.json)")
    ap.add_argument("--markdown", action="store_true", help="print GitHub markdown tables instead")
    ap.add_argument("--recompute", action="store_true",
                    help="derive ratios, scaling and cost again with the current code and rewrite the file")
    args = ap.parse_args(argv)
    r = json.loads(args.result.read_text())
    if r.get("kind") == "ocr":  # a `python -m bench.ocr` result: its own tables
        from bench import ocr

        print(ocr.markdown(r))
        return 0
    if args.recompute:
        r = recompute(r)
        args.result.write_text(json.dumps(r, indent=1, default=str))
    if args.markdown:
        print(markdown(r))
    else:
        render(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
