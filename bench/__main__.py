"""`python -m bench` (also `make bench`): docpipe end to end vs its bare compute vs the
usual LangChain ingestion script, on the same files and machine; tables on stdout, raw
figures in bench/results/<timestamp>.json. See docs/performance.md."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# What bench/peer.py imports (requirements/bench.txt).
PEER_MODULES = ("langchain_community", "langchain_text_splitters", "langchain_huggingface",
                "sentence_transformers", "torch")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"{what} wants KEY=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark docpipe end to end on the local stack against the bare compute of its "
                    "own stages and against a LangChain ingestion, on the same files: throughput, "
                    "latency p50/p95, time per stage, orchestration overhead, peak memory, "
                    "scaling with pages and documents, and cost per document on AWS.",
        epilog="default mode: 8 to 11 minutes on 2 cores; --quick: 2 to 3 minutes. "
               "Experiments: e.g. --env EMBED_BATCH_SIZE=128 --label batch128, or --job-slots 2. "
               "The whole ../shared/corpus (every PDF, hostile ones included): --full, or --only full. "
               "OCR speed, cost per page and corpus outcomes: python -m bench.ocr (make bench-ocr).")
    ap.add_argument("--quick", action="store_true", help="small workloads (3 corpus files, 10/100 pages, 4/12 documents)")
    ap.add_argument("--docs", type=int, metavar="N",
                    help="largest generated document set (default 50; quick 12); 200 for the issue's full range")
    ap.add_argument("--out", type=Path, default=HERE / "results", metavar="DIR",
                    help="where the JSON goes (default bench/results/)")
    ap.add_argument("--skip-peer", action="store_true", help="no LangChain peer (requirements/bench.txt not needed)")
    ap.add_argument("--peer-ablation", action="store_true",
                    help="also run the peer with docpipe's embedder instead of torch (same script otherwise)")
    ap.add_argument("--full", action="store_true",
                    help="also the `full` workload: every PDF of ../shared/corpus, docpipe through "
                         "`docpipe ingest`'s upload and follow path (adds several minutes per engine)")
    ap.add_argument("--skip-bare", action="store_true", help="no bare-compute run")
    ap.add_argument("--skip-e2e", action="store_true", help="no local stack (bare and peer only)")
    ap.add_argument("--job-slots", type=int, default=8, metavar="N",
                    help="job_slot resources of the local Ray head = concurrent stage jobs (default 8)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the local stack, inherited by every Ray job (repeatable), "
                         "e.g. EMBED_BATCH_SIZE=128, PDF_PARALLEL_THRESHOLD_PAGES=100")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="template parameter override for the local stack (repeatable)")
    ap.add_argument("--only", default="", metavar="LIST",
                    help="comma-separated workload kinds to run: corpus, pages, docs, full "
                         "(default: corpus, pages, docs)")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="run every engine N times, interleaved (bare, peer, docpipe, bare, ...), and report "
                         "each ratio per round and its median: this machine's speed drifts 10-30%% within "
                         "minutes (default 1)")
    ap.add_argument("--split-cores", action="store_true",
                    help="Ray, bare compute and the peer on half the CPUs, the AWS emulation (moto) and the "
                         "bench's client on the other half, as in AWS where those services do not run on "
                         "the cluster: the Ray side against bare on the same CPUs (bench/cores.py)")
    ap.add_argument("--label", default="", help="name of this run (added to the JSON file name)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from rich.console import Console

    from bench import report
    from bench.run import Plan, run

    if args.docs is not None and args.docs < 1:
        raise SystemExit("--docs must be >= 1")
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    if not args.skip_peer:
        import importlib.util

        missing = [m for m in PEER_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(f"the LangChain peer needs requirements/bench.txt ({', '.join(missing)} not installed): "
                             ".venv/bin/pip install -r requirements/bench.txt -c requirements/constraints.txt "
                             "(or pass --skip-peer)")
    plan = Plan.make(args.quick, args.docs, skip_peer=args.skip_peer, skip_bare=args.skip_bare,
                     skip_e2e=args.skip_e2e, job_slots=args.job_slots, env=_pairs(args.env, "--env"),
                     parameters=_pairs(args.param, "--param"), label=re.sub(r"[^A-Za-z0-9_.=-]", "_", args.label),
                     only=[k.strip() for k in args.only.split(",") if k.strip()], full=args.full,
                     peer_ablation=args.peer_ablation, rounds=args.rounds,
                     split_cores=args.split_cores)
    console = Console(width=max(160, Console().width))
    result, path = run(plan, args.out, echo=lambda msg: console.print(msg, highlight=False))
    report.render(result, console)
    console.print(f"raw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
