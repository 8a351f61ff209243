"""docpipe benchmarks: `python -m bench` (see bench/__main__.py and docs/performance.md).

Modules: gen (clean text PDFs), bare (docpipe's stage code without the pipeline around
it), peer (the LangChain ingestion script users run; its ablation with docpipe's
embedder), e2e (the local stack, per-document timeline),
procs (memory and CPU from /proc), cost (AWS list prices), run (one run), report (tables),
embed_speed (each embedding runtime), moto_ops (the local stack's moto fixes, call by call).
"""

import argparse
import json
from pathlib import Path


def workload_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments bare and peer share: the same workloads in, a JSON file out."""
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="one workload of these files (or use --spec)")
    ap.add_argument("--spec", type=Path, help='JSON {"workload name": [files...], ...}')
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--lancedb", required=True, help="LanceDB directory (a private one)")
    return ap


def read_workloads(args: argparse.Namespace) -> dict[str, list[str]]:
    return json.loads(args.spec.read_text()) if args.spec else {"files": args.files}
