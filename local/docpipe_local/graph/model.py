"""The model: an ASL definition and its execution history folded into an `ExecutionGraph`.

Per state: its outcome, times, entries, attempts, retries and last error; per declared
transition: whether (and how often) it was taken. Parallel and Map states are one state
each; events of their inner states only contribute errors to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

OUTCOMES = ("succeeded", "failed", "caught", "running", "not_run")

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


def type_label(run: StateRun, state: dict) -> str:
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
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=UTC)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


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
        elif (entry.outcome == "failed" and states[entry.state].type == "Fail"
              and graph.execution_status == "FAILED" and graph.error and nxt is None):
            # A Fail state ends the execution; its error is the execution's if reported.
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


