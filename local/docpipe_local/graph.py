"""Execution graphs like the Step Functions console draws them, without the console.

`build_graph` folds an ASL definition and an execution history (boto3
`get_execution_history` events, all pages) into an `ExecutionGraph`: per state its outcome,
times, attempts, retries and last error, plus the transitions actually taken.
`render_svg` lays that graph out top to bottom (layered, Sugiyama style) in pure Python;
`render_html` wraps the SVG with a table of states and the execution's input/output.

Parallel and Map states are drawn as one node each; events of their inner states only
contribute errors to that node.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

__all__ = [
    "COLORS",
    "Edge",
    "ExecutionGraph",
    "StateRun",
    "build_graph",
    "fetch_execution",
    "render_html",
    "render_svg",
    "write_graph",
]

OUTCOMES = ("succeeded", "failed", "caught", "running", "not_run")

# Console-like palette: stroke is the saturated colour, fill a light tint of it.
COLORS: dict[str, dict[str, str]] = {
    "succeeded": {"stroke": "#2ea44f", "fill": "#e6f6ea", "text": "#16191f", "label": "Succeeded"},
    "failed": {"stroke": "#d13212", "fill": "#fdebe7", "text": "#16191f", "label": "Failed"},
    "caught": {"stroke": "#ec7211", "fill": "#fff2e3", "text": "#16191f", "label": "Caught error"},
    "running": {"stroke": "#0972d3", "fill": "#e6f1fc", "text": "#16191f", "label": "In progress"},
    "not_run": {"stroke": "#b8bcc2", "fill": "#f4f5f6", "text": "#687078", "label": "Not run"},
}
EDGE_TAKEN = "#232f3e"
EDGE_NOT_TAKEN = "#c4c8cd"
STATUS_COLORS = {
    "SUCCEEDED": "#2ea44f",
    "FAILED": "#d13212",
    "TIMED_OUT": "#d13212",
    "ABORTED": "#d13212",
    "RUNNING": "#0972d3",
    "PENDING_REDRIVE": "#ec7211",
    "UNKNOWN": "#687078",
}

START, END = "__start__", "__end__"  # pseudo-nodes, as in the console

_TERMINAL_EXEC = {
    "ExecutionSucceeded": "SUCCEEDED",
    "ExecutionFailed": "FAILED",
    "ExecutionTimedOut": "TIMED_OUT",
    "ExecutionAborted": "ABORTED",
}


# --------------------------------------------------------------------------- model


@dataclass
class StateRun:
    name: str
    type: str
    resource: str | None = None
    comment: str | None = None
    outcome: str = "not_run"
    entries: int = 0
    attempts: int = 0  # task/activity/lambda schedules (container: starts)
    retries: int = 0  # failures followed by a new attempt in the same entry
    entered_at: datetime | None = None  # first entry
    exited_at: datetime | None = None  # last exit
    duration_s: float | None = None  # summed over closed entries
    error: str | None = None
    cause: str | None = None
    input: str | None = None  # of the last entry
    output: str | None = None  # of the last exit


@dataclass
class Edge:
    src: str
    dst: str
    kind: str  # next | choice | default | catch | start | end | undeclared
    label: str = ""
    taken: bool = False
    count: int = 0


@dataclass
class ExecutionGraph:
    execution_name: str
    execution_status: str
    states: dict[str, StateRun]
    edges_taken: list[tuple[str, str]]
    edges: list[Edge] = field(default_factory=list)
    start_at: str | None = None
    comment: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    input: str | None = None
    output: str | None = None
    error: str | None = None
    cause: str | None = None
    definition: dict = field(default_factory=dict, repr=False)

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.stopped_at:
            return (self.stopped_at - self.started_at).total_seconds()
        return None


# --------------------------------------------------------------------------- definition


_PLACEHOLDER = re.compile(r"^\$\{(\w+?)(?:FunctionArn|Arn)?\}$")
_WAIT_SUFFIX = {".waitForTaskToken": " (token)", ".sync": " (sync)", ".sync:2": " (sync)"}


def _function_name(ref: str) -> str | None:
    """Short name of a Lambda reference: ARN, plain name or an unsubstituted ${...}."""
    m = _PLACEHOLDER.match(ref)
    if m:
        return m.group(1)
    if "$" in ref or "{%" in ref:  # a path or JSONata: not known before the run
        return None
    return ref.rsplit(":function:", 1)[-1].split(":")[0]


def _resource_label(state: dict) -> str | None:
    res = state.get("Resource")
    if not isinstance(res, str):
        return None
    m = re.match(r"arn:aws[\w-]*:states:::(.+)$", res)
    if m:
        label = m.group(1)
        if label.startswith("lambda:invoke"):
            fn = (state.get("Parameters") or state.get("Arguments") or {}).get("FunctionName")
            name = _function_name(fn) if isinstance(fn, str) else None
            if name:
                suffix = label[len("lambda:invoke"):]
                label = "lambda:" + name + _WAIT_SUFFIX.get(suffix, suffix)
        return label
    name = _function_name(res) if (res.startswith("${") or ":function:" in res) else None
    if name:
        return "lambda:" + name
    m = re.match(r"arn:aws[\w-]*:states:[^:]*:[^:]*:activity:(.+)$", res)
    if m:
        return "activity:" + m.group(1)
    return res.rsplit(":", 1)[-1] or res


def _type_label(run: StateRun, state: dict) -> str:
    if run.type == "Parallel":
        n = len(state.get("Branches") or [])
        return f"Parallel · {n} branch{'es' if n != 1 else ''}"
    if run.type == "Map":
        proc = state.get("ItemProcessor") or {}
        mode = (proc.get("ProcessorConfig") or {}).get("Mode")
        return "Map · distributed" if mode == "DISTRIBUTED" else "Map"
    if run.resource:
        return f"{run.type} · {run.resource}"
    return run.type


_OPS = {
    "Equals": "==",
    "GreaterThan": ">",
    "GreaterThanEquals": ">=",
    "LessThan": "<",
    "LessThanEquals": "<=",
    "Matches": "~",
}


def _rule_label(rule: dict) -> str:
    """A short human form of a Choice rule (the full text goes to a tooltip)."""
    if "Condition" in rule:  # JSONata
        return str(rule["Condition"]).strip("{}% ")
    for key, joiner in (("And", " && "), ("Or", " || ")):
        if key in rule:
            return "(" + joiner.join(_rule_label(r) for r in rule[key]) + ")"
    if "Not" in rule:
        return "!" + _rule_label(rule["Not"])
    var = str(rule.get("Variable", "?"))
    for key, val in rule.items():
        if key in ("Variable", "Next", "Comment", "Assign", "Output"):
            continue
        if key == "IsPresent":
            return f"{var} {'present' if val else 'absent'}"
        if key.startswith("Is"):
            return f"{var} {key[2:].lower()}{'' if val else ' (not)'}"
        path = key.endswith("Path")
        base = key[:-4] if path else key
        for suffix, op in _OPS.items():
            if base.endswith(suffix):
                shown = str(val) if path else json.dumps(val)
                return f"{var} {op} {shown}"
        return f"{var} {key} {val}"
    return var


def _declared_edges(definition: dict) -> list[Edge]:
    edges: list[Edge] = []
    seen: dict[tuple[str, str, str], Edge] = {}

    def add(e: Edge) -> None:
        # Several rules or catchers to one target make one arrow with a merged label.
        key = (e.src, e.dst, "choice" if e.kind == "default" else e.kind)
        prev = seen.get(key)
        if prev is None:
            seen[key] = e
            edges.append(e)
        elif e.label and e.label not in prev.label.split(" | "):
            prev.label = f"{prev.label} | {e.label}" if prev.label else e.label

    states = definition.get("States") or {}
    if definition.get("StartAt"):
        add(Edge(START, definition["StartAt"], "start"))
    for name, st in states.items():
        if not isinstance(st, dict):
            continue
        typ = st.get("Type")
        if typ == "Choice":
            for rule in st.get("Choices") or []:
                if rule.get("Next"):
                    add(Edge(name, rule["Next"], "choice", _rule_label(rule)))
            if st.get("Default"):
                add(Edge(name, st["Default"], "default", "Default"))
        elif st.get("Next"):
            add(Edge(name, st["Next"], "next"))
        if st.get("End") or typ in ("Succeed", "Fail"):
            add(Edge(name, END, "end"))
        for c in st.get("Catch") or []:
            if c.get("Next"):
                add(Edge(name, c["Next"], "catch", ", ".join(c.get("ErrorEquals") or [])))
    return edges


# --------------------------------------------------------------------------- history


def _ts(value: Any) -> datetime | None:
    # Accept boto3 datetimes, but also ISO strings / epoch numbers from a history saved as JSON.
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _details(event: dict) -> dict:
    t = event.get("type", "")
    d = event.get(t[:1].lower() + t[1:] + "EventDetails")
    if isinstance(d, dict):
        return d
    for k, v in event.items():  # e.g. stateEnteredEventDetails on *StateEntered
        if k.endswith("EventDetails") and isinstance(v, dict):
            return v
    return {}


def _is_failure(etype: str) -> bool:
    return etype.endswith(("Failed", "TimedOut", "StartFailed", "ScheduleFailed", "SubmitFailed", "Aborted"))


def _error_from_output(output: str | None) -> tuple[str | None, str | None]:
    # A caught error lands in the state's output as {"Error", "Cause"} (default ResultPath).
    try:
        data = json.loads(output or "")
    except (TypeError, ValueError):
        return None, None
    if isinstance(data, dict) and isinstance(data.get("Error"), str):
        return data["Error"], data.get("Cause")
    return None, None


@dataclass
class _Entry:
    state: str
    entered: datetime | None
    exited: datetime | None = None
    closed_at: datetime | None = None  # exit, or the execution's end if it stopped here
    outcome: str | None = None
    pending_error: tuple[str | None, str | None] | None = None  # a failure not (yet) retried
    inner_error: tuple[str | None, str | None] | None = None  # last failure inside a container
    last_failure: tuple[str | None, str | None] | None = None  # even if retried successfully


def _execution_name_from_arn(arn: str | None) -> str | None:
    if not arn:
        return None
    parts = arn.split(":")
    return parts[-1] if len(parts) >= 8 else None


def build_graph(
    definition: dict,
    history: Iterable[dict],
    *,
    execution_name: str | None = None,
    execution_arn: str | None = None,
) -> ExecutionGraph:
    """Fold an ASL definition and its execution history into an `ExecutionGraph`.

    `history` is the `events` list of `get_execution_history` over all pages, in any order
    (events are sorted by id). The execution name is not in the history, so pass it (or the
    ARN) if you want it in the title.
    """
    if isinstance(definition, str):
        definition = json.loads(definition)
    sdefs = definition.get("States") or {}
    states: dict[str, StateRun] = {}
    for name, st in sdefs.items():
        st = st if isinstance(st, dict) else {}
        states[name] = StateRun(
            name=name,
            type=str(st.get("Type", "?")),
            resource=_resource_label(st),
            comment=st.get("Comment"),
        )
    edges = _declared_edges(definition)
    graph = ExecutionGraph(
        execution_name=execution_name or _execution_name_from_arn(execution_arn) or "execution",
        execution_status="UNKNOWN",
        states=states,
        edges_taken=[],
        edges=edges,
        start_at=definition.get("StartAt"),
        comment=definition.get("Comment"),
        definition=definition,
    )

    events = sorted(history, key=lambda e: (e.get("id", 0)))
    entries: list[_Entry] = []
    current: _Entry | None = None  # open top-level entry
    last_top: _Entry | None = None  # last top-level entry, open or not (for transitions)
    stack: list[str] = []  # open Parallel/Map containers, outermost first
    transitions: list[tuple[_Entry | None, _Entry]] = []

    def close(entry: _Entry, at: datetime | None) -> None:
        if entry.closed_at is None:
            entry.closed_at = at

    for ev in events:
        etype = ev.get("type", "")
        at = _ts(ev.get("timestamp"))
        det = _details(ev)

        if etype == "ExecutionStarted":
            graph.started_at = graph.started_at or at
            graph.input = det.get("input", graph.input)
            graph.execution_status = "RUNNING"
            continue
        if etype == "ExecutionRedriven":
            # A redrive re-enters the failed state: not a transition from it.
            graph.execution_status = "RUNNING"
            graph.stopped_at = None
            current, last_top, stack = None, None, []
            continue
        if etype in _TERMINAL_EXEC:
            graph.execution_status = _TERMINAL_EXEC[etype]
            graph.stopped_at = at
            graph.output = det.get("output", graph.output)
            graph.error, graph.cause = det.get("error"), det.get("cause")
            if current is not None:
                if etype == "ExecutionSucceeded":  # lenient: an End state without its exit
                    current.exited = current.exited or at
                elif current.outcome is None:
                    current.outcome = "failed"
                    if current.pending_error is None:
                        err = graph.error or {"ExecutionTimedOut": "States.Timeout",
                                              "ExecutionAborted": "Aborted"}.get(etype)
                        current.pending_error = (err, graph.cause)
                close(current, at)  # the state ends with the execution (lenient for End states)
            current = None
            continue

        is_entered = etype.endswith("StateEntered")
        is_exited = etype.endswith("StateExited")
        name = det.get("name") if (is_entered or is_exited) else None
        container_evt = etype.startswith(("ParallelState", "MapState", "MapRun"))

        if stack:
            # Inside a Parallel/Map: inner states are not nodes; keep their errors only.
            if is_exited and name in stack:
                del stack[stack.index(name):]
                if stack or current is None or current.state != name:
                    continue
                # else: the container's own exit, handled below like any exit
            else:
                if is_entered and etype.startswith(("Parallel", "Map")):
                    stack.append(name or "?")
                elif current is not None:
                    _container_event(current, states[current.state], etype, det,
                                     own=container_evt and len(stack) == 1)
                continue

        if is_entered:
            if name not in states:
                continue  # not a top-level state (or a foreign history): ignore
            if current is not None:  # lenient: previous state never reported its exit
                current.exited = current.exited or at
                close(current, at)
            entry = _Entry(state=name, entered=at)
            states[name].input = det.get("input", states[name].input)
            entries.append(entry)
            transitions.append((last_top, entry))
            current = last_top = entry
            if etype.startswith(("Parallel", "Map")):
                stack.append(name)
            if states[name].type == "Fail":
                entry.outcome = "failed"
                sd = sdefs.get(name) or {}
                entry.pending_error = (sd.get("Error"), sd.get("Cause"))
            continue

        if current is None:
            continue

        if is_exited:
            if name == current.state:
                current.exited = at
                close(current, at)
                states[name].output = det.get("output", states[name].output)
                current = None
            continue

        run = states[current.state]
        if etype.endswith("Scheduled"):  # TaskScheduled, LambdaFunctionScheduled, Activity...
            run.attempts += 1
            if current.pending_error is not None:
                run.retries += 1
                current.pending_error = None
        elif etype.endswith("Succeeded"):
            current.pending_error = None
        elif _is_failure(etype):
            current.pending_error = current.last_failure = (det.get("error"), det.get("cause"))

    # ---- outcomes per entry
    catch_only: set[tuple[str, str]] = set()
    normal: set[tuple[str, str]] = set()
    for e in edges:
        (catch_only if e.kind == "catch" else normal).add((e.src, e.dst))
    catch_only -= normal
    running = graph.execution_status == "RUNNING"
    for i, entry in enumerate(entries):
        nxt = entries[i + 1] if i + 1 < len(entries) else None
        if entry.outcome is None:
            if entry.exited is not None or (nxt is not None and transitions[i + 1][0] is entry):
                routed = nxt is not None and (entry.state, nxt.state) in catch_only
                entry.outcome = "caught" if (entry.pending_error or routed) else "succeeded"
                if entry.outcome == "caught" and not entry.pending_error:
                    entry.pending_error = entry.inner_error or _error_from_output(
                        states[entry.state].output)
            elif running:
                entry.outcome = "running"
            else:
                entry.outcome = "failed"
        elif entry.outcome == "failed" and states[entry.state].type == "Fail":
            # A Fail state ends the execution; its error is the execution's if reported.
            if graph.execution_status == "FAILED" and graph.error and nxt is None:
                entry.pending_error = (graph.error, graph.cause)

    # ---- fold entries into states
    for name, run in states.items():
        mine = [e for e in entries if e.state == name]
        if not mine:
            continue
        run.entries = len(mine)
        run.entered_at = mine[0].entered
        exits = [e.exited for e in mine if e.exited]
        run.exited_at = exits[-1] if exits else None
        spans = [(e.closed_at - e.entered).total_seconds() for e in mine
                 if e.closed_at and e.entered]
        run.duration_s = sum(spans) if spans else None
        last = mine[-1].outcome or "succeeded"
        if last == "succeeded" and any(e.outcome == "caught" for e in mine):
            last = "caught"  # an earlier handled error is worth showing
        run.outcome = last
        # The error that decided an entry, else one that was retried away: still worth showing.
        errs = [e.pending_error or e.last_failure for e in mine]
        errs = [err for err in errs if err and err[0]]
        if errs:
            run.error, run.cause = errs[-1]

    # ---- transitions taken
    by_pair: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        by_pair.setdefault((e.src, e.dst), []).append(e)
    if entries:
        _mark(by_pair, edges, START, entries[0].state, prefer_catch=False)
    for prev, entry in transitions:
        if prev is None:
            continue
        pair = (prev.state, entry.state)
        graph.edges_taken.append(pair)
        _mark(by_pair, edges, *pair, prefer_catch=prev.outcome == "caught")
    if entries and not running:
        last = entries[-1]
        if last.outcome == "succeeded" or states[last.state].type == "Fail":
            _mark(by_pair, edges, last.state, END, prefer_catch=False)
    return graph


def _container_event(entry: _Entry, run: StateRun, etype: str, det: dict, *, own: bool) -> None:
    """An event inside a Parallel/Map; `own` when it is the container's own (not nested)."""
    if _is_failure(etype):
        err = (det.get("error"), det.get("cause"))
        if own:  # the container failed; moto leaves its error empty, the inner one names it
            entry.pending_error = err if err[0] else (entry.inner_error or err)
            entry.last_failure = entry.pending_error
        elif err[0]:
            entry.inner_error = err
    elif own and etype.endswith("StateStarted"):  # a (re)try of the whole container
        run.attempts += 1
        if entry.pending_error is not None:
            run.retries += 1
            entry.pending_error = None
    elif own and etype.endswith("StateSucceeded"):
        entry.pending_error = None


def _mark(by_pair, edges: list[Edge], src: str, dst: str, *, prefer_catch: bool) -> None:
    cands = by_pair.get((src, dst))
    if not cands:
        e = Edge(src, dst, "undeclared", "not in definition")
        edges.append(e)
        by_pair[(src, dst)] = cands = [e]
    ranked = sorted(cands, key=lambda e: (e.kind == "catch") != prefer_catch)
    ranked[0].taken = True
    ranked[0].count += 1


# --------------------------------------------------------------------------- formatting

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: Any) -> str:
    """Escape for XML text and attribute values; drop characters XML 1.0 forbids."""
    return html.escape(_XML_BAD.sub("\ufffd", str(text)), quote=True)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"


def _fmt_retries(n: int) -> str:
    return f"×{n} retr{'y' if n == 1 else 'ies'}"


def _fmt_time(t: datetime | None, start: datetime | None = None) -> str:
    if t is None:
        return ""
    s = t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"
    if start is not None:
        s += f" (+{(t - start).total_seconds():.3f} s)"
    return s


# Glyph widths (fraction of font size) of DejaVu Sans, the widest common fallback face; boxes
# sized with it also fit Helvetica/Arial, just with more air.
_W_GROUPS = (
    ("il|!.,:;'`", 0.31),
    ("ftrjIJ ()[]{}\"/\\", 0.40),
    ("=<>+~^*", 0.84),
    ("mwMW%", 0.96),
    ("&@#", 0.85),
)
_W = {ch: w for chars, w in _W_GROUPS for ch in chars}


def _text_w(text: str, size: float, bold: bool = False) -> float:
    w = 0.0
    for ch in text:
        if ch in _W:
            w += _W[ch]
        elif ch.isupper():
            w += 0.74
        elif ord(ch) > 0x2E7F:  # CJK and friends are about square
            w += 1.0
        else:
            w += 0.63
    return w * size * (1.12 if bold else 1.0)


def _fit(text: str, max_w: float, size: float, bold: bool = False) -> str:
    if _text_w(text, size, bold) <= max_w:
        return text
    while text and _text_w(text + "…", size, bold) > max_w:
        text = text[:-1]
    return text + "…"


# --------------------------------------------------------------------------- layout

NODE_H = 66
MIN_W, MAX_W = 150, 300
PAD_X = 14
LAYER_GAP = 70
NODE_GAP = 34
DUMMY_W = 14
PSEUDO_W, PSEUDO_H = 64, 26
F_NAME, F_SMALL, F_LABEL = 13, 11, 10


@dataclass
class _Node:
    key: str
    w: float
    h: float
    layer: int = 0
    x: float = 0.0  # centre
    y: float = 0.0  # top
    dummy: bool = False


def _node_lines(run: StateRun, sdef: dict) -> list[tuple[str, str]]:
    """(text, role) lines shown in a box, before fitting to width."""
    lines = [(run.name, "name"), (_type_label(run, sdef), "type")]
    stats = []
    if run.outcome == "running":
        stats.append("in progress…")
    elif run.outcome == "not_run":
        stats.append("not run")
    elif run.duration_s is not None:
        stats.append(fmt_duration(run.duration_s))
    if run.entries > 1:
        stats.append(f"{run.entries} entries")
    if run.retries:
        stats.append(_fmt_retries(run.retries))
    lines.append(("  ·  ".join(stats), "stats"))
    if run.error and run.outcome in ("failed", "caught"):
        lines.append((run.error, "error"))
    return lines


def _layout(graph: ExecutionGraph, definition_types: dict[str, dict]):
    names = list(graph.states)
    fwd_edges = [e for e in graph.edges if e.src != e.dst]
    succ: dict[str, list[str]] = {n: [] for n in [START, END, *names]}
    for e in fwd_edges:
        succ.setdefault(e.src, [])
        succ.setdefault(e.dst, [])
        if e.dst not in succ[e.src]:
            succ[e.src].append(e.dst)

    # 1. break cycles: DFS from Start (then from anything unreached); back edges point upward.
    back: set[tuple[str, str]] = set()
    color: dict[str, int] = {}
    order_seen: list[str] = []

    def dfs(root: str) -> None:
        stack = [(root, iter(succ[root]))]
        color[root] = 1
        order_seen.append(root)
        while stack:
            node, it = stack[-1]
            for nxt in it:
                c = color.get(nxt, 0)
                if c == 0:
                    color[nxt] = 1
                    order_seen.append(nxt)
                    stack.append((nxt, iter(succ[nxt])))
                    break
                if c == 1:
                    back.add((node, nxt))
            else:
                color[node] = 2
                stack.pop()

    dfs(START)
    for n in [*names, END]:
        if n not in color:
            dfs(n)

    dag = {n: [m for m in succ[n] if (n, m) not in back and m != END] for n in succ}
    preds: dict[str, list[str]] = {n: [] for n in succ}
    for n, ms in dag.items():
        for m in ms:
            preds[m].append(n)

    # 2. longest-path layering; End goes alone at the bottom.
    layer: dict[str, int] = {}

    def layer_of(n: str) -> int:
        if n in layer:
            return layer[n]
        todo = [n]
        while todo:
            cur = todo[-1]
            missing = [p for p in preds[cur] if p not in layer]
            if missing:
                todo.extend(missing)
                continue
            todo.pop()
            if cur not in layer:
                layer[cur] = 0 if cur == START else max((layer[p] + 1 for p in preds[cur]), default=1)
        return layer[n]

    for n in order_seen:
        if n != END:
            layer_of(n)
    has_end = any(e.dst == END for e in graph.edges)
    if has_end:
        layer[END] = max(layer.values(), default=0) + 1

    # 3. nodes (with dummies on long edges)
    nodes: dict[str, _Node] = {}
    for n, lv in layer.items():
        if n in (START, END):
            nodes[n] = _Node(n, PSEUDO_W, PSEUDO_H, lv)
        elif n not in graph.states:  # a Next to a state the definition lacks: show the bug
            w = max(_text_w(n, F_NAME, True), _text_w("missing state", F_SMALL)) + 2 * PAD_X
            nodes[n] = _Node(n, min(MAX_W, max(MIN_W, w)), 44, lv)
        else:
            run = graph.states[n]
            lines = _node_lines(run, definition_types.get(n, {}))
            w = max(_text_w(t, F_NAME if r == "name" else F_SMALL, r in ("name", "error"))
                    for t, r in lines)
            nodes[n] = _Node(n, min(MAX_W, max(MIN_W, w + 2 * PAD_X + 6)), NODE_H, lv)

    routes: list[tuple[Edge, list[str], bool]] = []  # (edge, node chain, is_back)
    dummy_id = 0
    for e in graph.edges:
        if e.src not in nodes or e.dst not in nodes:
            continue
        is_back = (e.src, e.dst) in back or e.src == e.dst
        if is_back:
            routes.append((e, [e.src, e.dst], True))
            continue
        chain = [e.src]
        for lv in range(nodes[e.src].layer + 1, nodes[e.dst].layer):
            dummy_id += 1
            key = f"__d{dummy_id}"
            nodes[key] = _Node(key, DUMMY_W, 0, lv, dummy=True)
            chain.append(key)
        chain.append(e.dst)
        routes.append((e, chain, False))

    nlayers = max((n.layer for n in nodes.values()), default=0) + 1
    up: dict[str, list[str]] = {k: [] for k in nodes}
    down: dict[str, list[str]] = {k: [] for k in nodes}
    for _, chain, is_back in routes:
        if is_back:
            continue
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)

    # 4. ordering within layers: DFS order first, then barycentre sweeps, keep the best.
    rank_seen = {n: i for i, n in enumerate(order_seen)}
    layers: list[list[str]] = [[] for _ in range(nlayers)]
    for k, nd in nodes.items():
        layers[nd.layer].append(k)

    def first_rank(k: str) -> float:
        if k in rank_seen:
            return rank_seen[k]
        # dummies: follow the rank of the source of their chain
        src = k
        while nodes[src].dummy and up[src]:
            src = up[src][0]
        return rank_seen.get(src, 0) + 0.5

    for lv in layers:
        lv.sort(key=first_rank)

    def crossings(lys: list[list[str]]) -> int:
        total = 0
        for i in range(len(lys) - 1):
            pos = {k: j for j, k in enumerate(lys[i + 1])}
            segs = [(j, pos[b]) for j, a in enumerate(lys[i]) for b in down[a] if b in pos]
            for s in range(len(segs)):
                for t in range(s + 1, len(segs)):
                    (a1, b1), (a2, b2) = segs[s], segs[t]
                    if (a1 - a2) * (b1 - b2) < 0:
                        total += 1
        return total

    best = [list(lv) for lv in layers]
    best_c = crossings(best)
    for it in range(12):
        rng = range(1, nlayers) if it % 2 == 0 else range(nlayers - 2, -1, -1)
        for i in rng:
            ref = layers[i - 1] if it % 2 == 0 else layers[i + 1]
            pos = {k: j for j, k in enumerate(ref)}
            nb = up if it % 2 == 0 else down
            cur = {k: j for j, k in enumerate(layers[i])}

            def bary(k: str) -> float:
                ps = [pos[p] for p in nb[k] if p in pos]
                return sum(ps) / len(ps) if ps else cur[k]

            layers[i].sort(key=lambda k: (bary(k), cur[k]))
        c = crossings(layers)
        if c < best_c:
            best, best_c = [list(lv) for lv in layers], c
    layers = best

    # 5. x positions: pull each node toward its neighbours' mean, keep order and spacing.
    # Dummies weigh more so long edges run straight and real boxes move aside instead.
    def place(lv: list[str], desired: list[float]) -> list[float]:
        if not lv:
            return []
        offs = [0.0]
        for j in range(1, len(lv)):
            offs.append(offs[-1] + (nodes[lv[j - 1]].w + nodes[lv[j]].w) / 2 + NODE_GAP)
        # weighted pool-adjacent-violators: least squares under "order and gaps kept"
        blocks: list[list[float]] = []  # [weighted sum, weight, count]
        for k, d, o in zip(lv, desired, offs):
            wt = 4.0 if nodes[k].dummy else 1.0
            blocks.append([(d - o) * wt, wt, 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                s_, w_, c_ = blocks.pop()
                blocks[-1][0] += s_
                blocks[-1][1] += w_
                blocks[-1][2] += c_
        fitted: list[float] = []
        for s_, w_, c_ in blocks:
            fitted.extend([s_ / w_] * int(c_))
        return [f + o for f, o in zip(fitted, offs)]

    for lv in layers:  # initial: centred rows
        for k, x in zip(lv, place(lv, [0.0] * len(lv))):
            nodes[k].x = x

    def sweep(rng: Iterable[int], nbmaps: tuple[dict[str, list[str]], ...]) -> None:
        for i in rng:
            lv = layers[i]
            desired = []
            for k in lv:
                ns = [m for nb in nbmaps for m in nb[k]]
                desired.append(sum(nodes[m].x for m in ns) / len(ns) if ns else nodes[k].x)
            for k, x in zip(lv, place(lv, desired)):
                nodes[k].x = x

    for _ in range(8):
        sweep(range(1, nlayers), (up,))
        sweep(range(nlayers - 2, -1, -1), (down,))
    sweep(range(nlayers), (up, down))
    sweep(range(1, nlayers), (up,))  # last word to the parents: chains end up vertical

    # 6. straighten long edges: move a whole dummy chain onto one x where every layer has room.
    where = {k: (i, j) for i, lv in enumerate(layers) for j, k in enumerate(lv)}

    def fits(k: str, x: float) -> bool:
        i, j = where[k]
        lv, half = layers[i], nodes[k].w / 2
        if j > 0:
            left = nodes[lv[j - 1]]
            if left.x + left.w / 2 + NODE_GAP > x - half:
                return False
        if j + 1 < len(lv):
            right = nodes[lv[j + 1]]
            if right.x - right.w / 2 - NODE_GAP < x + half:
                return False
        return True

    chains = sorted((c[1:-1] for _, c, b in routes if not b and len(c) > 2), key=len, reverse=True)
    for dums in chains:
        xs = sorted(nodes[k].x for k in dums)
        for x in (xs[len(xs) // 2], xs[0], xs[-1]):
            if all(fits(k, x) for k in dums):
                for k in dums:
                    nodes[k].x = x
                break

    return nodes, layers, routes


# --------------------------------------------------------------------------- SVG


def _legend_items() -> list[tuple[str, str]]:
    return [(k, COLORS[k]["label"]) for k in OUTCOMES]


Point = tuple[float, float]


def _seg_point(seg: tuple, t: float) -> Point:
    kind, pts = seg[0], seg[1:]
    if kind == "L":
        (x0, y0), (x1, y1) = pts
        return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    if kind == "Q":
        (x0, y0), (cx, cy), (x1, y1) = pts
        u = 1 - t
        return u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1
    (x0, y0), (ax, ay), (bx, by), (x1, y1) = pts
    u = 1 - t
    return (u**3 * x0 + 3 * u * u * t * ax + 3 * u * t * t * bx + t**3 * x1,
            u**3 * y0 + 3 * u * u * t * ay + 3 * u * t * t * by + t**3 * y1)


def _seg_path(segs: list[tuple]) -> str:
    x, y = segs[0][1]
    d = [f"M{x:.1f},{y:.1f}"]
    for seg in segs:
        kind, pts = seg[0], seg[2:]
        d.append(kind + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts))
    return " ".join(d)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _short_label(e: Edge) -> str:
    """What fits on an arrow; the full text stays in the edge's tooltip."""
    if e.kind == "catch":
        errors = list(dict.fromkeys(x.strip() for part in e.label.split(" | ")
                                    for x in part.split(",") if x.strip()))
        errors.sort(key=lambda x: x != "States.ALL")  # the catch-all says the most
        more = f" +{len(errors) - 1}" if len(errors) > 1 else ""
        return f"catch: {errors[0] if errors else '?'}{more}"
    # "$.registration.decision == ..." -> "decision == ...": the last path step names it
    return re.sub(r"\$\$?(?:\.[\w-]+|\[[^\]]*\])*\.([\w-]+)", r"\1", e.label)


def render_svg(graph: ExecutionGraph) -> str:
    """A standalone SVG of the execution graph (top to bottom, console colours)."""
    sdefs = graph.definition.get("States") or {}
    nodes, layers, routes = _layout(graph, sdefs)

    # ---- vertical placement (drawing coordinates; translated under the header at the end)
    layer_h = [max((nodes[k].h for k in lv), default=0) for lv in layers]
    layer_top: list[float] = []
    y = 0.0
    for lv, h in zip(layers, layer_h):
        layer_top.append(y)
        for k in lv:
            nodes[k].y = y + (h - nodes[k].h) / 2
        y += h + LAYER_GAP

    # ---- back edges: leave the source's bottom, run up a lane right of everything they pass,
    # enter the target's top. Horizontal runs stay in the gaps between layers, so they never
    # cross a box.
    lane_x: dict[int, float] = {}
    lane_i: dict[int, int] = {}
    for i, ri in enumerate(ri for ri, r in enumerate(routes) if r[2]):
        _, chain, _ = routes[ri]
        lo, hi = sorted((nodes[chain[0]].layer, nodes[chain[1]].layer))
        span_right = max(n.x + n.w / 2 for n in nodes.values() if lo <= n.layer <= hi)
        lane_x[ri] = span_right + 26 + 16 * i
        lane_i[ri] = i

    # ---- ports: spread several edges over a node's bottom (out) / top (in) side
    out_ports: dict[str, list[tuple[float, int]]] = {}
    in_ports: dict[str, list[tuple[float, int]]] = {}
    for idx, (e, chain, is_back) in enumerate(routes):
        if is_back:
            out_ports.setdefault(chain[0], []).append((lane_x[idx], idx))
            in_ports.setdefault(chain[1], []).append((lane_x[idx], idx))
        else:
            out_ports.setdefault(chain[0], []).append((nodes[chain[1]].x, idx))
            in_ports.setdefault(chain[-1], []).append((nodes[chain[-2]].x, idx))

    def port_x(table: dict, key: str, idx: int) -> float:
        lst = sorted(table[key])
        n = nodes[key]
        k = len(lst)
        step = min(22.0, (n.w - 24) / (k - 1)) if k > 1 else 0.0
        j = [i for _, i in lst].index(idx)
        return n.x + (j - (k - 1) / 2) * step

    segments: dict[int, list[tuple]] = {}
    for idx, (e, chain, is_back) in enumerate(routes):
        s_node, t_node = nodes[chain[0]], nodes[chain[-1]]
        p0 = (port_x(out_ports, chain[0], idx), s_node.y + s_node.h)
        p_end = (port_x(in_ports, chain[-1], idx), t_node.y - 2)
        segs: list[tuple] = []
        if is_back:
            lx, r, i = lane_x[idx], 8.0, lane_i[idx]
            y_lo = layer_top[s_node.layer] + layer_h[s_node.layer] + 14 + 6 * (i % 6)
            y_hi = layer_top[t_node.layer] - 14 - 6 * (i % 6)
            x0, x2 = p0[0], p_end[0]
            segs = [
                ("L", p0, (x0, y_lo - r)),
                ("Q", (x0, y_lo - r), (x0, y_lo), (x0 + r, y_lo)),
                ("L", (x0 + r, y_lo), (lx - r, y_lo)),
                ("Q", (lx - r, y_lo), (lx, y_lo), (lx, y_lo - r)),
                ("L", (lx, y_lo - r), (lx, y_hi + r)),
                ("Q", (lx, y_hi + r), (lx, y_hi), (lx - r, y_hi)),
                ("L", (lx - r, y_hi), (x2 + r, y_hi)),
                ("Q", (x2 + r, y_hi), (x2, y_hi), (x2, y_hi + r)),
                ("L", (x2, y_hi + r), p_end),
            ]
        else:
            pts = [p0]
            for k in chain[1:-1]:
                dn = nodes[k]
                pts.append((dn.x, layer_top[dn.layer]))
                pts.append((dn.x, layer_top[dn.layer] + layer_h[dn.layer]))
            pts.append(p_end)
            for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
                if abs(xa - xb) < 0.5:
                    segs.append(("L", (xa, ya), (xb, yb)))
                else:
                    my = (ya + yb) / 2
                    segs.append(("C", (xa, ya), (xa, my), (xb, my), (xb, yb)))
        segments[idx] = segs

    # ---- edge labels: first free spot along the edge (boxes and other labels are obstacles)
    obstacles = [(n.x - n.w / 2 - 3, n.y - 3, n.x + n.w / 2 + 3, n.y + n.h + 3)
                 for n in nodes.values() if not n.dummy]
    labels: list[tuple[int, str, tuple[float, float, float, float]]] = []
    for idx in sorted(range(len(routes)), key=lambda i: not routes[i][0].taken):
        e = routes[idx][0]
        if not e.label or e.kind not in ("choice", "default", "catch", "undeclared"):
            continue
        text = _fit(_short_label(e), 160, F_LABEL)
        tw, th = _text_w(text, F_LABEL) + 8, 15.0
        segs = segments[idx]
        if routes[idx][2]:
            segs = [sg for sg in segs if sg[0] == "L" and abs(sg[1][0] - sg[2][0]) < 0.5][1:2] or segs
        cands = [_seg_point(sg, t) for sg in segs for t in (0.62, 0.76, 0.48, 0.88, 0.34)]
        chosen = None
        for cx, cy in cands:
            rect = (cx - tw / 2, cy - th / 2, cx + tw / 2, cy + th / 2)
            if not any(_overlaps(rect, o) for o in obstacles):
                chosen = rect
                break
        if chosen is None:
            cx, cy = cands[0]
            chosen = (cx - tw / 2, cy - th / 2, cx + tw / 2, cy + th / 2)
        obstacles.append(chosen)
        labels.append((idx, text, chosen))

    # ---- bounding box of the drawing, canvas size, header
    boxes = [(n.x - n.w / 2, n.y, n.x + n.w / 2, n.y + n.h) for n in nodes.values()]
    boxes += [(x, y, x, y) for segs in segments.values() for sg in segs for x, y in sg[1:]]
    boxes += [r for _, _, r in labels]
    min_x = min((b[0] for b in boxes), default=0.0)
    max_x = max((b[2] for b in boxes), default=0.0)
    max_y = max((b[3] for b in boxes), default=0.0)
    draw_w = max_x - min_x

    margin = 28
    header_h = 104
    title = f"Execution {graph.execution_name}"
    title = _fit(title, 900, 17, True)
    status = graph.execution_status
    sub_parts = []
    if graph.started_at:
        sub_parts.append("started " + graph.started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip())
    if graph.duration_s is not None:
        sub_parts.append("took " + fmt_duration(graph.duration_s))
    if graph.error:
        sub_parts.append(f"error {graph.error}")
    subtitle = "  ·  ".join(sub_parts)
    legend_rows = [
        [(k, lbl, _text_w(lbl, F_SMALL) + 40) for k, lbl in _legend_items()],
        [(k, lbl, _text_w(lbl, F_SMALL) + 46)
         for k, lbl in (("taken", "transition taken"), ("idle", "not taken"), ("catch", "Catch"))],
    ]
    legend_w = max(sum(w for *_, w in row) for row in legend_rows)
    title_w = _text_w(title, 17, True) + _text_w(status, 11, True) + 34
    width = max(draw_w + 2 * margin, legend_w + 2 * margin, title_w + 2 * margin, 380)
    height = header_h + margin + max_y + margin
    dx = margin - min_x + (width - 2 * margin - draw_w) / 2
    dy = header_h + margin

    out: list[str] = []
    w_, h_ = math.ceil(width), math.ceil(height)
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w_}" height="{h_}" '
        f'viewBox="0 0 {w_} {h_}" font-family="Helvetica, Arial, sans-serif" '
        f'role="img" aria-label="{_x(title + " " + status)}">'
    )
    out.append(f"<title>{_x(title)} ({_x(status)})</title>")
    out.append("<defs>")
    for mid, colr in (("arrow-taken", EDGE_TAKEN), ("arrow-idle", EDGE_NOT_TAKEN)):
        out.append(
            f'<marker id="{mid}" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" '
            f'markerHeight="7" markerUnits="userSpaceOnUse" orient="auto">'
            f'<path d="M0,0.5 L10,5 L0,9.5 z" fill="{colr}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<rect x="0" y="0" width="{w_}" height="{h_}" fill="#ffffff"/>')

    # header: title + status badge, subtitle, legend
    sc = STATUS_COLORS.get(status, STATUS_COLORS["UNKNOWN"])
    out.append(f'<text x="{margin}" y="{margin + 8}" font-size="17" font-weight="bold" '
               f'fill="#16191f">{_x(title)}</text>')
    bx = margin + _text_w(title, 17, True) + 12
    bw = _text_w(status, 11, True) + 16
    out.append(f'<rect x="{bx:.1f}" y="{margin - 7}" width="{bw:.1f}" height="20" rx="10" '
               f'fill="{sc}"/>')
    out.append(f'<text x="{bx + bw / 2:.1f}" y="{margin + 7}" font-size="11" font-weight="bold" '
               f'fill="#ffffff" text-anchor="middle">{_x(status)}</text>')
    if subtitle:
        out.append(f'<text x="{margin}" y="{margin + 28}" font-size="11" fill="#5f6b7a">'
                   f'{_x(_fit(subtitle, width - 2 * margin, 11))}</text>')
    ly = margin + 50
    lx = float(margin)
    for key, lbl, w in legend_rows[0]:
        c = COLORS[key]
        out.append(f'<rect x="{lx:.1f}" y="{ly - 10}" width="20" height="13" rx="3" '
                   f'fill="{c["fill"]}" stroke="{c["stroke"]}" stroke-width="1.5"/>')
        out.append(f'<text x="{lx + 26:.1f}" y="{ly}" font-size="{F_SMALL}" fill="#414d5c">'
                   f'{_x(lbl)}</text>')
        lx += w
    ly += 19
    lx = float(margin)
    for key, lbl, w in legend_rows[1]:
        colr = EDGE_NOT_TAKEN if key == "idle" else EDGE_TAKEN
        dash = ' stroke-dasharray="6 4"' if key == "catch" else ""
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 26:.1f}" y2="{ly - 4}" '
                   f'stroke="{colr}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 32:.1f}" y="{ly}" font-size="{F_SMALL}" fill="#414d5c">'
                   f'{_x(lbl)}</text>')
        lx += w
    out.append(f'<line x1="{margin}" y1="{header_h}" x2="{w_ - margin}" y2="{header_h}" '
               f'stroke="#e9ebed"/>')

    out.append(f'<g transform="translate({dx:.1f},{dy:.1f})">')
    # edges: not taken first so taken ones sit on top
    out.append('<g class="edges">')
    for idx in sorted(range(len(routes)), key=lambda i: routes[i][0].taken):
        e = routes[idx][0]
        colr = EDGE_TAKEN if e.taken else EDGE_NOT_TAKEN
        marker = "arrow-taken" if e.taken else "arrow-idle"
        dash = {"catch": ' stroke-dasharray="6 4"', "undeclared": ' stroke-dasharray="2 3"'}.get(
            e.kind, "")
        sw = 2 if e.taken else 1.5
        tip = f"{_pretty(e.src)} → {_pretty(e.dst)}"
        if e.label:
            tip += f": {e.label}"
        if e.count > 1:
            tip += f" (taken {e.count}×)"
        out.append(
            f'<path d="{_seg_path(segments[idx])}" fill="none" stroke="{colr}" '
            f'stroke-width="{sw}"{dash} marker-end="url(#{marker})" data-src="{_x(e.src)}" '
            f'data-dst="{_x(e.dst)}" data-kind="{e.kind}" data-taken="{str(e.taken).lower()}">'
            f"<title>{_x(tip)}</title></path>"
        )
    out.append("</g>")

    out.append('<g class="nodes">')
    for key, n in nodes.items():
        if n.dummy:
            continue
        if key in (START, END):
            reached = any(e.taken for e in graph.edges if key in (e.src, e.dst))
            fill = "#414d5c" if reached else "#c4c8cd"
            out.append(
                f'<g data-state="{_pretty(key)}"><rect x="{n.x - n.w / 2:.1f}" y="{n.y:.1f}" '
                f'width="{n.w}" height="{n.h}" rx="{n.h / 2}" fill="{fill}"/>'
                f'<text x="{n.x:.1f}" y="{n.y + n.h / 2 + 4:.1f}" font-size="11" '
                f'font-weight="bold" fill="#ffffff" text-anchor="middle">{_pretty(key)}</text></g>'
            )
            continue
        if key not in graph.states:
            red = COLORS["failed"]["stroke"]
            out.append(
                f'<g data-state="{_x(key)}" data-missing="true"><rect x="{n.x - n.w / 2:.1f}" '
                f'y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h}" rx="9" fill="#ffffff" '
                f'stroke="{red}" stroke-width="1.5" stroke-dasharray="4 3"/>'
                f'<text x="{n.x:.1f}" y="{n.y + 19:.1f}" text-anchor="middle" font-size="{F_NAME}" '
                f'font-weight="bold" fill="{red}">{_x(_fit(key, n.w - 2 * PAD_X, F_NAME, True))}'
                f'</text><text x="{n.x:.1f}" y="{n.y + 34:.1f}" text-anchor="middle" '
                f'font-size="{F_SMALL}" fill="{red}">missing state</text></g>'
            )
            continue
        run = graph.states[key]
        c = COLORS.get(run.outcome, COLORS["not_run"])
        sw = 1.5 if run.outcome == "not_run" else 2.2
        dash = ' stroke-dasharray="6 3"' if run.outcome == "running" else ""
        tip = [f"{run.name} ({run.type}): {c['label']}"]
        if run.comment:
            tip.append(str(run.comment))
        if run.error:
            tip.append(f"{run.error}: {run.cause or ''}"[:500])
        out.append(f'<g data-state="{_x(key)}" data-outcome="{run.outcome}">'
                   f"<title>{_x(chr(10).join(tip))}</title>")
        out.append(
            f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h}" '
            f'rx="9" fill="{c["fill"]}" stroke="{c["stroke"]}" stroke-width="{sw}"{dash}/>'
        )
        lines = _node_lines(run, sdefs.get(key, {}))
        inner = n.w - 2 * PAD_X
        spacing = {"name": 17, "type": 15, "stats": 15, "error": 15}
        total = sum(spacing[r] for _, r in lines)
        ty = n.y + (n.h - total) / 2 + 12
        for text, role in lines:
            if role == "name":
                attrs = f'font-size="{F_NAME}" font-weight="bold" fill="{c["text"]}"'
                text = _fit(text, inner, F_NAME, True)
            elif role == "error":
                attrs = f'font-size="{F_SMALL}" fill="{c["stroke"]}" font-weight="bold"'
                text = _fit(text, inner, F_SMALL, True)
            else:
                grey = "#5f6b7a" if run.outcome != "not_run" else "#8d99a8"
                attrs = f'font-size="{F_SMALL}" fill="{grey}"'
                text = _fit(text, inner, F_SMALL)
            out.append(f'<text x="{n.x:.1f}" y="{ty:.1f}" text-anchor="middle" {attrs}>'
                       f"{_x(text)}</text>")
            ty += spacing[role]
        out.append("</g>")
    out.append("</g>")

    out.append('<g class="labels">')
    for idx, text, (x0, y0, x1, y1) in labels:
        tcol = "#414d5c" if routes[idx][0].taken else "#8d99a8"
        out.append(
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" rx="3" '
            f'fill="#ffffff" fill-opacity="0.94"/>'
            f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 - 4:.1f}" font-size="{F_LABEL}" fill="{tcol}" '
            f'text-anchor="middle">{_x(text)}</text>'
        )
    out.append("</g>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _pretty(key: str) -> str:
    return {START: "Start", END: "End"}.get(key, key)


# --------------------------------------------------------------------------- HTML


def _pretty_json(text: str | None, limit: int = 4000) -> str:
    if text is None:
        return ""
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        pass
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    return text


def render_html(graph: ExecutionGraph, svg: str) -> str:
    """A self-contained page: the SVG, a table of states, the execution's input/output."""
    e = html.escape
    status = graph.execution_status
    sc = STATUS_COLORS.get(status, STATUS_COLORS["UNKNOWN"])
    rows = []
    ordered = sorted(
        graph.states.values(),
        key=lambda r: (r.entered_at is None, r.entered_at or datetime.max.replace(tzinfo=timezone.utc)),
    )
    for r in ordered:
        c = COLORS.get(r.outcome, COLORS["not_run"])
        retries = f"{r.retries}" if r.retries else ""
        attempts = str(r.attempts) if r.attempts else ""
        err = ""
        if r.error:
            cause = (r.cause or "")
            cause = cause[:300] + ("…" if len(cause) > 300 else "")
            err = f"<b>{e(r.error)}</b>" + (f"<br><span class=cause>{e(cause)}</span>" if cause else "")
        rows.append(
            "<tr>"
            f"<td class=name>{e(r.name)}</td>"
            f"<td>{e(r.type)}{('<br><span class=res>' + e(r.resource) + '</span>') if r.resource else ''}</td>"
            f"<td><span class=badge style=\"background:{c['fill']};border-color:{c['stroke']}\">"
            f"{e(c['label'])}</span></td>"
            f"<td>{e(_fmt_time(r.entered_at, graph.started_at))}</td>"
            f"<td class=num>{e(fmt_duration(r.duration_s))}</td>"
            f"<td class=num>{e(str(r.entries) if r.entries else '')}</td>"
            f"<td class=num>{e(attempts)}</td>"
            f"<td class=num>{e(retries)}</td>"
            f"<td>{err}</td>"
            "</tr>"
        )
    io_blocks = []
    for title, text in (("Input", graph.input), ("Output", graph.output)):
        if text is not None:
            io_blocks.append(f"<div class=io><h3>{title}</h3><pre>{e(_pretty_json(text))}</pre></div>")
    if graph.error or graph.cause:
        io_blocks.append(
            f"<div class=io><h3>Error</h3><pre>{e(graph.error or '')}\n\n"
            f"{e(_pretty_json(graph.cause))}</pre></div>"
        )
    meta = []
    if graph.started_at:
        meta.append(f"started {e(graph.started_at.isoformat(timespec='milliseconds'))}")
    if graph.stopped_at:
        meta.append(f"stopped {e(graph.stopped_at.isoformat(timespec='milliseconds'))}")
    if graph.duration_s is not None:
        meta.append(f"duration {e(fmt_duration(graph.duration_s))}")
    if graph.comment:
        meta.append(e(str(graph.comment)))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(graph.execution_name)} – {e(status)}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; color: #16191f; margin: 24px; background: #fafafa; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.status {{ color: #fff; background: {sc}; border-radius: 10px; padding: 2px 10px; font-size: 12px;
  vertical-align: middle; margin-left: 8px; }}
.meta {{ color: #5f6b7a; font-size: 13px; margin-bottom: 16px; }}
.graph {{ background: #fff; border: 1px solid #e9ebed; border-radius: 8px; padding: 8px;
  overflow: auto; margin-bottom: 20px; }}
table {{ border-collapse: collapse; background: #fff; font-size: 13px; width: 100%; }}
th, td {{ border-bottom: 1px solid #e9ebed; padding: 6px 10px; text-align: left; vertical-align: top; }}
th {{ background: #f4f5f6; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.name {{ font-weight: 600; }}
.badge {{ border: 1.5px solid; border-radius: 10px; padding: 1px 8px; white-space: nowrap; }}
.res, .cause {{ color: #5f6b7a; font-size: 12px; }}
.ios {{ display: flex; gap: 16px; flex-wrap: wrap; margin-top: 20px; }}
.io {{ flex: 1 1 320px; min-width: 0; }}
.io h3 {{ font-size: 14px; margin: 0 0 6px; }}
pre {{ background: #fff; border: 1px solid #e9ebed; border-radius: 6px; padding: 10px;
  font-size: 12px; overflow: auto; max-height: 360px; white-space: pre-wrap; word-break: break-all; }}
</style>
</head>
<body>
<h1>Execution {e(graph.execution_name)}<span class="status">{e(status)}</span></h1>
<div class="meta">{" · ".join(meta)}</div>
<div class="graph">
{svg}
</div>
<table class="states">
<thead><tr><th>State</th><th>Type</th><th>Outcome</th><th>Entered</th><th>Duration</th>
<th>Entries</th><th>Attempts</th><th>Retries</th><th>Error</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<div class="ios">
{chr(10).join(io_blocks)}
</div>
</body>
</html>
"""


# --------------------------------------------------------------------------- files / AWS


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


def fetch_execution(sfn_client, execution_arn: str) -> tuple[dict, list[dict], str]:
    """(definition, full history, execution name) for one execution, via a boto3 client."""
    desc = sfn_client.describe_execution(executionArn=execution_arn)
    try:
        # the definition the execution actually ran (versions/aliases), when supported
        sm = sfn_client.describe_state_machine_for_execution(executionArn=execution_arn)
    except Exception:  # noqa: BLE001 - older emulators lack it
        sm = sfn_client.describe_state_machine(stateMachineArn=desc["stateMachineArn"])
    events: list[dict] = []
    kwargs = {"executionArn": execution_arn, "includeExecutionData": True}
    while True:
        page = sfn_client.get_execution_history(**kwargs)
        events.extend(page["events"])
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return json.loads(sm["definition"]), events, desc.get("name") or execution_arn.rsplit(":", 1)[-1]
