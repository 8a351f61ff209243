"""Execution graphs drawn from REAL Step Functions histories (moto's in-process ASL engine)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from docpipe_local.graph import (
    COLORS,
    ExecutionGraph,
    build_graph,
    fetch_execution,
    render_html,
    render_svg,
    write_graph,
)

ROLE = "arn:aws:iam::123456789012:role/sfn"
SVG_NS = "{http://www.w3.org/2000/svg}"

# A direct DynamoDB integration on a table that does not exist: moto fails it with this error,
# which lets us exercise Retry and Catch without Lambda (no Docker here).
MISSING_TABLE_ERROR = "DynamoDB.ResourceNotFoundException"


def _failing_get(**extra) -> dict:
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::dynamodb:getItem",
        "Parameters": {"TableName": "no-such-table", "Key": {"pk": {"S": "doc-1"}}},
        **extra,
    }


SUCCESS_DEF = {
    "Comment": "route by size",
    "StartAt": "Validate",
    "States": {
        "Validate": {"Type": "Pass", "Next": "Route"},
        "Route": {
            "Type": "Choice",
            # '<' and '&' end up in edge labels: they must be escaped in SVG/HTML.
            "Choices": [
                {"Variable": "$.size", "NumericLessThan": 100, "Next": "Small"},
                {"Variable": "$.kind", "StringEquals": "a&b", "Next": "Odd"},
            ],
            "Default": "Large",
        },
        "Small": {"Type": "Wait", "Seconds": 0, "Next": "Done"},
        "Large": {"Type": "Wait", "Seconds": 0, "Next": "Done"},
        "Odd": {"Type": "Fail", "Error": "Odd", "Cause": "odd kind"},
        "Done": {"Type": "Succeed"},
    },
}

FAILURE_DEF = {
    "StartAt": "Prepare",
    "States": {
        "Prepare": {"Type": "Pass", "Next": "Lookup"},
        "Lookup": _failing_get(
            Retry=[{"ErrorEquals": [MISSING_TABLE_ERROR], "MaxAttempts": 1, "IntervalSeconds": 1}],
            Catch=[{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Cleanup"}],
            Next="Store",
        ),
        "Store": {"Type": "Pass", "Next": "Finished"},
        "Finished": {"Type": "Succeed"},
        "Cleanup": {"Type": "Pass", "Next": "Failed"},
        "Failed": {"Type": "Fail", "Error": "Docpipe.LookupFailed", "Cause": "lookup <failed>"},
    },
}

UNCAUGHT_DEF = {
    "StartAt": "Lookup",
    "States": {"Lookup": _failing_get(Next="After"), "After": {"Type": "Succeed"}},
}

LOOP_DEF = {
    "StartAt": "Init",
    "States": {
        "Init": {"Type": "Pass", "Result": 1, "ResultPath": "$.n", "Next": "Ready?"},
        "Ready?": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.n", "NumericEquals": 2, "Next": "Go"}],
            "Default": "Sleep",
        },
        "Sleep": {"Type": "Wait", "Seconds": 0, "Next": "Bump"},
        "Bump": {"Type": "Pass", "Result": 2, "ResultPath": "$.n", "Next": "Ready?"},
        "Go": {"Type": "Succeed"},
    },
}

CONTAINER_DEF = {
    "StartAt": "Each",
    "States": {
        "Each": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Item",
                "States": {"Item": {"Type": "Pass", "End": True}},
            },
            "ResultPath": "$.mapped",
            "Next": "Both",
        },
        "Both": {
            "Type": "Parallel",
            "Branches": [
                {"StartAt": "Fine", "States": {"Fine": {"Type": "Pass", "End": True}}},
                {"StartAt": "Broken", "States": {"Broken": _failing_get(End=True)}},
            ],
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Recovered"}],
            "Next": "Unreached",
        },
        "Unreached": {"Type": "Succeed"},
        "Recovered": {"Type": "Succeed"},
    },
}


def _run(client, definition: dict, name: str, payload: dict) -> tuple[dict, list[dict], str]:
    arn = client.create_state_machine(
        name=f"sm-{name}", definition=json.dumps(definition), roleArn=ROLE
    )["stateMachineArn"]
    # moto's engine breaks without an execution name
    ex = client.start_execution(stateMachineArn=arn, name=name, input=json.dumps(payload))
    for _ in range(1000):  # bounded: ~20 s at most, the slowest run needs ~1 s
        if client.describe_execution(executionArn=ex["executionArn"])["status"] != "RUNNING":
            break
        time.sleep(0.02)
    return fetch_execution(client, ex["executionArn"])


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[dict, list[dict], str]]:
    """Execute every machine once on moto; tests only read the histories."""
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        c = boto3.client("stepfunctions", region_name="us-east-1")
        note = {"note": "<script>alert('x')</script> & more"}
        return {
            "success": _run(c, SUCCESS_DEF, "ok-1", {"size": 5, **note}),
            "failure": _run(c, FAILURE_DEF, "fail-1", {"doc": "doc-1"}),
            "uncaught": _run(c, UNCAUGHT_DEF, "uncaught-1", {}),
            "loop": _run(c, LOOP_DEF, "loop-1", {}),
            "containers": _run(c, CONTAINER_DEF, "containers-1", {"items": [1, 2, 3]}),
        }


def _graph(runs, key) -> ExecutionGraph:
    definition, history, name = runs[key]
    return build_graph(definition, history, execution_name=name)


def _svg_state_rects(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    out = {}
    for g in root.iter(f"{SVG_NS}g"):
        if "data-outcome" in g.attrib:
            out[g.attrib["data-state"]] = g.find(f"{SVG_NS}rect")
    return out


# ------------------------------------------------------------------ real executions


def test_success_path_green_and_unvisited_branch_grey(runs):
    g = _graph(runs, "success")
    assert g.execution_status == "SUCCEEDED"
    assert g.execution_name == "ok-1"
    outcomes = {n: s.outcome for n, s in g.states.items()}
    assert outcomes == {
        "Validate": "succeeded",
        "Route": "succeeded",
        "Small": "succeeded",
        "Done": "succeeded",
        "Large": "not_run",
        "Odd": "not_run",
    }
    assert g.edges_taken == [("Validate", "Route"), ("Route", "Small"), ("Small", "Done")]
    for name in ("Validate", "Route", "Small", "Done"):
        run = g.states[name]
        assert run.entries == 1 and run.duration_s is not None and run.duration_s >= 0
        assert run.entered_at is not None and run.exited_at is not None
    assert g.states["Large"].entered_at is None and g.states["Large"].duration_s is None

    rects = _svg_state_rects(render_svg(g))
    assert rects["Small"].attrib["stroke"] == COLORS["succeeded"]["stroke"] == "#2ea44f"
    assert rects["Small"].attrib["fill"] == COLORS["succeeded"]["fill"]
    assert rects["Large"].attrib["stroke"] == COLORS["not_run"]["stroke"]
    assert rects["Large"].attrib["fill"] == COLORS["not_run"]["fill"]

    # only the choice rule that matched is a taken edge
    by_dst = {e.dst: e for e in g.edges if e.src == "Route"}
    assert by_dst["Small"].taken and by_dst["Small"].kind == "choice"
    assert not by_dst["Large"].taken and by_dst["Large"].kind == "default"
    assert not by_dst["Odd"].taken


def test_failure_path_fail_red_and_retried_task_caught_orange(runs):
    g = _graph(runs, "failure")
    assert g.execution_status == "FAILED"
    assert g.error == "Docpipe.LookupFailed"

    lookup = g.states["Lookup"]
    assert lookup.outcome == "caught"
    assert lookup.attempts == 2 and lookup.retries == 1
    assert lookup.error == MISSING_TABLE_ERROR
    assert "not found" in (lookup.cause or "")
    assert lookup.resource == "dynamodb:getItem"

    failed = g.states["Failed"]
    assert failed.outcome == "failed"
    assert failed.error == "Docpipe.LookupFailed" and failed.cause == "lookup <failed>"
    assert g.states["Cleanup"].outcome == "succeeded"
    assert g.states["Store"].outcome == "not_run" and g.states["Finished"].outcome == "not_run"

    assert g.edges_taken == [("Prepare", "Lookup"), ("Lookup", "Cleanup"), ("Cleanup", "Failed")]
    kinds = {(e.src, e.dst): e for e in g.edges}
    assert kinds[("Lookup", "Cleanup")].kind == "catch" and kinds[("Lookup", "Cleanup")].taken
    assert not kinds[("Lookup", "Store")].taken

    svg = render_svg(g)
    rects = _svg_state_rects(svg)
    assert rects["Failed"].attrib["stroke"] == COLORS["failed"]["stroke"]
    assert rects["Lookup"].attrib["stroke"] == COLORS["caught"]["stroke"]
    assert "×1 retry" in svg
    # the catch edge is dashed and dark (taken); the unused Next edge is light grey
    root = ET.fromstring(svg)
    paths = {(p.get("data-src"), p.get("data-dst")): p for p in root.iter(f"{SVG_NS}path")
             if p.get("data-src")}
    catch = paths[("Lookup", "Cleanup")]
    assert catch.get("stroke-dasharray") and catch.get("data-taken") == "true"
    assert paths[("Lookup", "Store")].get("data-taken") == "false"
    assert paths[("Lookup", "Store")].get("stroke") != catch.get("stroke")


def test_uncaught_task_failure_is_red(runs):
    g = _graph(runs, "uncaught")
    assert g.execution_status == "FAILED"
    assert g.states["Lookup"].outcome == "failed"
    assert g.states["Lookup"].error == MISSING_TABLE_ERROR
    assert g.states["Lookup"].retries == 0 and g.states["Lookup"].attempts == 1
    assert g.states["After"].outcome == "not_run"
    assert g.edges_taken == []


def test_loop_sums_entries_and_keeps_transition_order(runs):
    g = _graph(runs, "loop")
    assert g.execution_status == "SUCCEEDED"
    assert g.edges_taken == [
        ("Init", "Ready?"),
        ("Ready?", "Sleep"),
        ("Sleep", "Bump"),
        ("Bump", "Ready?"),
        ("Ready?", "Go"),
    ]
    assert g.states["Ready?"].entries == 2
    assert all(s.outcome == "succeeded" for s in g.states.values())
    back = next(e for e in g.edges if (e.src, e.dst) == ("Bump", "Ready?"))
    assert back.taken and back.count == 1
    ET.fromstring(render_svg(g))  # the back edge is routed without breaking the SVG


def test_map_and_parallel_are_single_nodes(runs):
    g = _graph(runs, "containers")
    assert set(g.states) == {"Each", "Both", "Unreached", "Recovered"}  # no inner states
    assert g.states["Each"].outcome == "succeeded"
    assert g.states["Both"].outcome == "caught"
    assert g.states["Both"].error == MISSING_TABLE_ERROR
    assert g.edges_taken == [("Each", "Both"), ("Both", "Recovered")]
    svg = render_svg(g)
    assert "Map" in svg and "Parallel · 2 branches" in svg


def test_svg_is_valid_standalone_xml_with_names_and_colours(runs):
    for key in runs:
        g = _graph(runs, key)
        svg = render_svg(g)
        root = ET.fromstring(svg)  # raises on anything unescaped
        assert root.tag == f"{SVG_NS}svg"
        assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
        texts = "".join(root.itertext())
        for name in g.states:
            assert name in texts
        assert g.execution_name in texts and g.execution_status in texts
    svg = render_svg(_graph(runs, "success"))
    assert "$.size &lt; 100" in svg and "a&amp;b" in svg  # full rule in the tooltip
    assert ">size &lt; 100<" in svg  # short form on the arrow
    for colour in (COLORS["succeeded"]["fill"], COLORS["not_run"]["fill"]):
        assert colour in svg
    # the legend shows every outcome, whatever the run used
    for outcome in COLORS.values():
        assert outcome["label"] in svg and outcome["stroke"] in svg


def test_html_has_state_table_and_escaped_io(runs):
    g = _graph(runs, "success")
    page = render_html(g, render_svg(g))
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and '<table class="states">' in page
    assert page.count("<tr>") == 1 + len(g.states)
    for name in g.states:
        assert f"<td class=name>{name}</td>" in page
    assert "<script>" not in page  # the input carried one
    assert "&lt;script&gt;" in page

    g = _graph(runs, "failure")
    page = render_html(g, render_svg(g))
    assert MISSING_TABLE_ERROR in page and "lookup &lt;failed&gt;" in page


def test_write_graph_writes_both_files(runs, tmp_path):
    definition, history, name = runs["failure"]
    paths = write_graph(definition, history, tmp_path / "graphs", name)
    assert paths["svg"].endswith("fail-1.svg") and paths["html"].endswith("fail-1.html")
    svg = Path(paths["svg"]).read_text(encoding="utf-8")
    ET.fromstring(svg)
    assert "fail-1" in svg
    assert Path(paths["html"]).read_text(encoding="utf-8").count("<svg") == 1


# ------------------------------------------------------------------ hand-built histories

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _ev(i: int, typ: str, ms: int, **details) -> dict:
    ev = {"id": i, "previousEventId": i - 1, "timestamp": T0 + timedelta(milliseconds=ms),
          "type": typ}
    ev.update(details)
    return ev


def test_running_state_from_hand_built_history():
    definition = {
        "StartAt": "First",
        "States": {
            "First": {"Type": "Pass", "Next": "Work"},
            "Work": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                     "Parameters": {"FunctionName": "docpipe-extract"}, "Next": "Last"},
            "Last": {"Type": "Succeed"},
        },
    }
    history = [
        _ev(1, "ExecutionStarted", 0, executionStartedEventDetails={"input": "{}"}),
        _ev(2, "PassStateEntered", 10, stateEnteredEventDetails={"name": "First"}),
        _ev(3, "PassStateExited", 30, stateExitedEventDetails={"name": "First"}),
        _ev(4, "TaskStateEntered", 40, stateEnteredEventDetails={"name": "Work"}),
        _ev(5, "TaskScheduled", 41),
        _ev(6, "TaskStarted", 45),
    ]
    g = build_graph(definition, list(reversed(history)), execution_name="live")  # order-proof
    assert g.execution_status == "RUNNING"
    assert g.states["First"].outcome == "succeeded"
    assert g.states["First"].duration_s == pytest.approx(0.02)
    work = g.states["Work"]
    assert work.outcome == "running" and work.attempts == 1 and work.exited_at is None
    assert work.resource == "lambda:docpipe-extract"
    assert g.states["Last"].outcome == "not_run"
    assert g.edges_taken == [("First", "Work")]

    rects = _svg_state_rects(render_svg(g))
    assert rects["Work"].attrib["stroke"] == COLORS["running"]["stroke"]

    # the same run later: a retried failure, then success
    history += [
        _ev(7, "TaskFailed", 1000, taskFailedEventDetails={"error": "Lambda.TooManyRequests",
                                                           "cause": "slow down"}),
        _ev(8, "TaskScheduled", 2000),
        _ev(9, "TaskStarted", 2001),
        _ev(10, "TaskSucceeded", 2240),
        _ev(11, "TaskStateExited", 2250, stateExitedEventDetails={"name": "Work"}),
        _ev(12, "SucceedStateEntered", 2260, stateEnteredEventDetails={"name": "Last"}),
        _ev(13, "SucceedStateExited", 2261, stateExitedEventDetails={"name": "Last"}),
        _ev(14, "ExecutionSucceeded", 2262, executionSucceededEventDetails={"output": "{}"}),
    ]
    g = build_graph(definition, history)
    work = g.states["Work"]
    assert work.outcome == "succeeded" and work.attempts == 2 and work.retries == 1
    assert work.error == "Lambda.TooManyRequests"  # last error kept even though it recovered
    assert work.duration_s == pytest.approx(2.21)
    assert g.edges_taken == [("First", "Work"), ("Work", "Last")]
    assert next(e for e in g.edges if e.src == "Last").taken  # Last -> End


def test_hostile_names_are_escaped():
    name = 'Check <size> & "type" \x01'
    definition = {"StartAt": name, "States": {name: {"Type": "Pass", "End": True,
                                                     "Comment": "]]> <!-- x"}}}
    history = [
        _ev(1, "ExecutionStarted", 0, executionStartedEventDetails={"input": '{"a": "</pre>"}'}),
        _ev(2, "PassStateEntered", 1, stateEnteredEventDetails={"name": name}),
        _ev(3, "PassStateExited", 2, stateExitedEventDetails={"name": name}),
        _ev(4, "ExecutionSucceeded", 3, executionSucceededEventDetails={"output": "{}"}),
    ]
    g = build_graph(definition, history, execution_name="<evil & name>")
    svg = render_svg(g)
    root = ET.fromstring(svg)
    assert "Check <size> & \"type\"" in "".join(root.itertext())
    page = render_html(g, svg)
    assert "<evil" not in page and "</pre>\"" not in page


@pytest.mark.parametrize(
    "definition",
    [
        {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "A"}}},  # self-loop
        {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Ghost"}}},  # missing target
        {"StartAt": "A", "States": {"A": {"Type": "Succeed"}, "Orphan": {"Type": "Pass",
                                                                          "Next": "A"}}},
        {},
    ],
    ids=["self-loop", "missing-target", "unreachable", "empty"],
)
def test_odd_definitions_still_render(definition):
    g = build_graph(definition, [])  # not started yet: no history
    assert g.execution_status == "UNKNOWN" and g.edges_taken == []
    assert all(s.outcome == "not_run" for s in g.states.values())
    svg = render_svg(g)
    ET.fromstring(svg)
    if "Ghost" in json.dumps(definition):
        assert "missing state" in svg
    assert "<table" in render_html(g, svg)
