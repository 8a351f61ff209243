"""Static checks of every state machine, after the template's substitutions are applied."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from docpipe import errors
from docpipe_local import template

REPO = Path(__file__).resolve().parents[1]
ASL_FILES = sorted((REPO / "statemachine").glob("*.asl.json"))
CODE_DIRS = [REPO / "layers" / "docpipe", REPO / "ray_jobs", REPO / "functions"]
# Raised by AWS itself, not by our code: Lambda, SNS and Step Functions service errors.
AWS_RAISED = re.compile(r"^(Lambda|SNS|StepFunctions)\.[A-Za-z]+Exception$")


@pytest.fixture(scope="module")
def stack():
    return template.load("docpipe", {"RayTokenSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:t-AbCdEf",
                                      "UseExistingRayCluster": "true"})


def all_states(definition: dict):
    for name, state in definition["States"].items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from all_states(branch)
        inner = state.get("ItemProcessor") or state.get("Iterator")
        if inner:
            yield from all_states(inner)


def source_text() -> str:
    return "\n".join(p.read_text() for d in CODE_DIRS for p in d.rglob("*.py"))


def test_substitutions_leave_no_placeholder(stack):
    for definition in stack.definitions.values():
        text = json.dumps(definition)
        assert "${" not in text, re.findall(r"\$\{[^}]+\}", text)


def test_every_retried_error_is_really_raised(stack):
    code = source_text()
    for definition in stack.definitions.values():
        for name, state in all_states(definition):
            for retry in state.get("Retry", []):
                for err in retry["ErrorEquals"]:
                    if AWS_RAISED.match(err) or err.startswith("States."):
                        continue
                    assert hasattr(errors, err), f"{name}: {err} is not a docpipe.errors class"
                    assert re.search(rf"raise {err}\b|\b{err}\.__name__", code), \
                        f"{name}: {err} is retried but never raised"


def test_no_retry_on_states_all(stack):
    for definition in stack.definitions.values():
        for name, state in all_states(definition):
            for retry in state.get("Retry", []):
                assert "States.ALL" not in retry["ErrorEquals"], name


def test_every_task_has_retry_catch_and_comments(stack):
    for definition in stack.definitions.values():
        for name, state in all_states(definition):
            assert state.get("Comment"), f"{name} has no Comment"
            if state["Type"] != "Task":
                continue
            assert state.get("Catch"), f"{name} has no Catch"
            assert state.get("Retry"), f"{name} has no Retry"
            for retry in state["Retry"]:
                assert retry.get("Comment"), f"{name}: a Retry without a Comment saying why"
                assert retry.get("JitterStrategy") == "FULL", f"{name}: retry without jitter"


def test_waiting_tasks_declare_heartbeat_timeout_and_catch_both(stack):
    for definition in stack.definitions.values():
        for name, state in all_states(definition):
            if not str(state.get("Resource", "")).endswith(".waitForTaskToken"):
                continue
            assert "HeartbeatSeconds" in state or "HeartbeatSecondsPath" in state, name
            assert "TimeoutSeconds" in state or "TimeoutSecondsPath" in state, name
            caught = {e for c in state["Catch"] for e in c["ErrorEquals"]}
            assert {"States.HeartbeatTimeout", "States.Timeout"} <= caught, name


def test_every_next_exists_and_every_state_is_reachable(stack):
    for definition in stack.definitions.values():
        states = definition["States"]
        targets = {definition["StartAt"]}
        for name, state in states.items():
            nexts = [state.get("Next"), state.get("Default")]
            nexts += [c.get("Next") for c in state.get("Choices", [])]
            nexts += [c.get("Next") for c in state.get("Catch", [])]
            for n in filter(None, nexts):
                assert n in states, f"{name} -> {n} does not exist"
                targets.add(n)
            if state["Type"] not in ("Succeed", "Fail", "Choice"):
                assert state.get("Next") or state.get("End"), f"{name} neither Next nor End"
        assert set(states) == targets, f"unreachable: {set(states) - targets}"


def test_only_references_travel_in_the_state(stack):
    """No state passes document text: payloads name S3 URIs, ids and counts."""
    for definition in stack.definitions.values():
        text = json.dumps(definition)
        assert "$.text" not in text and "pages.$" not in text


@pytest.mark.skipif(not shutil.which("npx") or not (REPO / "node_modules" / ".bin" / "asl-validator").exists(),
                    reason="asl-validator is installed by `make setup` (npm ci)")
@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_asl_validator_accepts(path):
    out = subprocess.run([str(REPO / "node_modules" / ".bin" / "asl-validator"), "--json-path", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
