"""Execution graphs like the Step Functions console draws them, without the console.

`build_graph` (model) folds an ASL definition and an execution history (boto3
`get_execution_history` events, all pages) into an `ExecutionGraph`: per state its outcome,
times, attempts, retries and last error, plus the transitions actually taken.
`render_svg` (render) lays that graph out top to bottom (layout: layered, Sugiyama style) in
pure Python; `render_html` wraps the SVG with a table of states and the execution's
input/output.

Parallel and Map states are drawn as one node each; events of their inner states only
contribute errors to that node.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from docpipe_local.executions import execution_history

from .model import Edge, ExecutionGraph, StateRun, build_graph
from .render import COLORS, render_html, render_svg

__all__ = [
    "COLORS",
    "Edge",
    "ExecutionGraph",
    "StateRun",
    "build_graph",
    "fetch_execution",
    "read_execution",
    "render_html",
    "render_svg",
    "write_graph",
]


def write_graph(
    definition: dict,
    history: list[dict],
    out_dir: str | os.PathLike,
    name: str,
    *,
    execution_name: str | None = None,
) -> dict:
    """Write `<name>.svg` and `<name>.html` into `out_dir`; return their paths."""
    graph = build_graph(definition, history, execution_name=execution_name or name)
    svg = render_svg(graph)
    page = render_html(graph, svg)
    os.makedirs(out_dir, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "execution"  # names come from users
    paths = {"svg": os.path.join(out_dir, safe + ".svg"), "html": os.path.join(out_dir, safe + ".html")}
    with open(paths["svg"], "w", encoding="utf-8") as f:
        f.write(svg)
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(page)
    return {**paths, "status": graph.execution_status}


def fetch_execution(sfn_client: Any, execution_arn: str) -> tuple[dict, list[dict], str]:
    """(definition, full history, execution name) for one execution, via a boto3 client."""
    desc, definition, events = read_execution(sfn_client, execution_arn)
    return definition, events, desc.get("name") or execution_arn.rsplit(":", 1)[-1]


def read_execution(sfn_client: Any, execution_arn: str) -> tuple[dict, dict, list[dict]]:
    """(DescribeExecution's answer, the definition it ran, its full history)."""
    desc = sfn_client.describe_execution(executionArn=execution_arn)
    try:
        # the definition the execution actually ran (versions/aliases), when supported
        sm = sfn_client.describe_state_machine_for_execution(executionArn=execution_arn)
    except Exception:  # older emulators lack it
        sm = sfn_client.describe_state_machine(stateMachineArn=desc["stateMachineArn"])
    return desc, json.loads(sm["definition"]), execution_history(sfn_client, execution_arn)
