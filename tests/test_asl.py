"""Static checks of every state machine, after the template's substitutions are applied.

Behaviour is proven by running the state machines instead: every ErrorEquals name is
raised for real in tests/test_error_names.py, and that no state carries document text
is checked on an execution's history in tests/test_ingest_workflow.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from docpipe_local import template

REPO = Path(__file__).resolve().parents[1]
ASL_FILES = sorted((REPO / "statemachine").glob("*.asl.json"))


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


def test_substitutions_leave_no_placeholder(stack):
    for definition in stack.definitions.values():
        text = json.dumps(definition)
        assert "${" not in text, re.findall(r"\$\{[^}]+\}", text)


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


@pytest.mark.skipif(not shutil.which("npx") or not (REPO / "node_modules" / ".bin" / "asl-validator").exists(),
                    reason="asl-validator is installed by `make setup` (npm ci)")
@pytest.mark.parametrize("path", ASL_FILES, ids=lambda p: p.name)
def test_asl_validator_accepts(path):
    out = subprocess.run([str(REPO / "node_modules" / ".bin" / "asl-validator"), "--json-path", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
